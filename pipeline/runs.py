"""The few-shot protocol: fit one head per (task, shots, seed) and keep its predictions.

For every single-label task, every K in ``train.shots`` and every seed in
``train.seeds``, a head is fitted on the K-shot training draw, chooses its
hyperparameters on the matching validation draw (never on test), and predicts
the validation and test rows. Predictions are stored by sample id together
with the true label, so evaluation and reports never need the caches again.

Besides the draws, a ``final`` head per task is refitted on every labelled
train and val row with the hyperparameters that validation chose at the largest
shot count (first seed): the model to label new images with (:func:`fit_final`).
Fitted heads are written as model files (:mod:`pipeline.modelfile`, no pickle).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cache import FeatureCache
from pipeline.features import FeatureSet, TextContext
from pipeline.fewshot import ALL, select, shot_label
from pipeline.manifest_meta import manifest_meta
from pipeline.modelfile import learned_attributes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainParams:
    """The ``train`` section: which heads run (one DVC stage each), on which tasks, shots and seeds."""

    heads: tuple[str, ...]
    tasks: tuple[str, ...]
    shots: tuple[int | str, ...] = (1, 2, 4, 8, 16)
    seeds: tuple[int, ...] = (1, 2, 3)


@dataclass
class TaskData:
    """Everything a head needs for one task: features by id, labels, text side."""

    name: str
    classes: list[str]
    features: FeatureSet          # all labelled rows of the task
    labels: np.ndarray            # class index per row of ``features``
    split: np.ndarray             # split per row
    text: TextContext
    views: FeatureCache | None = None              # augmented views of training rows, read per draw
    transform: Callable[[np.ndarray], np.ndarray] | None = None  # overlap correction of image embeddings

    def train_features(self, rows: np.ndarray) -> FeatureSet:
        """Rows of a training draw, with their cached augmented views when a views cache is given."""
        features = self.features.take(rows)
        if self.views is None:
            return features
        views, norms, tokens = self._cached_views(features.ids)
        return replace(features, views=views, views_norm=norms, view_tokens=tokens,
                       corrected_views=self.transform(views) if self.transform else None)

    def final_features(self, rows: np.ndarray) -> FeatureSet:
        """Rows of the final fit (train and val): views where cached (the view set's ``split``, train
        by default); a row without cached views (val) uses its own features as each of its views."""
        features = self.features.take(rows)
        if self.views is None:
            return features
        cached = set(self.views.ids)
        have = np.array([sid in cached for sid in features.ids], dtype=bool)
        if have.all():
            return self.train_features(rows)
        some_views, some_norms, some_tokens = self._cached_views(features.ids[have]) if have.any() else (None, None, {})
        n_views = some_views.shape[1] if some_views is not None else 1

        def filled(own: np.ndarray | None, cached_part: np.ndarray | None) -> np.ndarray | None:
            if own is None:
                return None
            out = np.repeat(own[:, None], n_views, axis=1)
            if cached_part is not None:
                out[have] = cached_part
            return out

        views = filled(features.cls, some_views)
        norms = None  # a cache made before the norms were stored has none for its views
        if some_views is None or some_norms is not None:
            norms = filled(features.cls_norm, some_norms)
        tokens = {b: filled(features.tokens[b], some_tokens.get(b)) for b in self._view_blocks()}
        return replace(features, views=views, views_norm=norms, view_tokens=tokens,
                       corrected_views=self.transform(views) if self.transform else None)

    def _cached_views(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """(views, their norms or None for an old cache, per-view tokens by block) of ``ids``, read by id."""
        assert self.views is not None
        norms = self.views.read("views_norm", ids) if "views_norm" in self.views.arrays() else None
        tokens = {b: self.views.read(f"views_{b}", ids) for b in self._view_blocks()}
        return self.views.read("views", ids), norms, tokens

    def _view_blocks(self) -> list[str]:
        """Token blocks the head reads that the view set stores per view too."""
        return [b for b in self.features.tokens if f"views_{b}" in self.views.arrays()]  # type: ignore[union-attr]

    def rows(self, ids: list[str]) -> np.ndarray:
        pos = {sid: i for i, sid in enumerate(self.features.ids)}
        return np.array([pos[sid] for sid in ids], dtype=np.int64)


def needs_text_tower(head: Any) -> bool:
    """Heads that run the frozen text transformer themselves (CoOp) need the model loaded."""
    return bool(getattr(head, "needs_text_tower", False))


def token_blocks_of(head: Any) -> tuple[str, ...]:
    """Cached token arrays a head reads (CLIP-MHAdapter: its ``token_block``)."""
    block = head.get_params().get("token_block")
    return (block,) if block else ()


def accepts_feature_correction(head: Any) -> bool:
    """Heads that read only image embeddings opt in to a feature transform (overlap correction)."""
    return bool(getattr(head, "accepts_feature_correction", False))


def view_set_of(head: Any) -> str | None:
    """The view set a head reads (its ``views`` param: Tip-Adapter keys, per-epoch augmentations), or None."""
    return head.get_params().get("views") or None


def load_task(task: str, manifest: pa.Table, images: FeatureCache, text: TextContext,
              tokens: tuple[str, ...] = (), views: FeatureCache | None = None,
              transform: Callable[[np.ndarray], np.ndarray] | None = None) -> TaskData:
    """Labelled rows of ``task`` with their cached features (joined by id).

    ``transform`` maps [..., D] embeddings to corrected ones (the overlap
    adapter); its output goes beside the image embeddings (``corrected``) and,
    per draw, beside the views (``corrected_views``).
    """
    meta = manifest_meta(manifest)["tasks"]
    if task not in meta:
        raise KeyError(f"train.tasks: '{task}' is not a task of the manifest ({sorted(meta)})")
    if meta[task]["type"] != "single":
        raise ValueError(f"train.tasks: '{task}' is multi-label; heads train on single-label tasks (CDUL covers multi)")
    classes = meta[task]["classes"]
    if tuple(classes) != tuple(text.class_names):
        raise ValueError(f"text cache classes {text.class_names} differ from the manifest's {classes} for '{task}'")
    labels = manifest.column(task).to_pylist()
    keep = [i for i, v in enumerate(labels) if v is not None]
    ids = np.array(manifest.column("id").to_pylist(), dtype=object)[keep]
    index = {c: i for i, c in enumerate(classes)}
    cls = images.read("cls", ids)
    # caches written before the norms were stored have no cls_norm: heads that need it say so
    norms = images.read("cls_norm", ids) if "cls_norm" in images.arrays() else None
    features = FeatureSet(ids=ids, cls=cls, tokens={b: images.read(b, ids) for b in tokens}, cls_norm=norms,
                          corrected=transform(cls) if transform else None)
    split = np.array(manifest.column("split").to_pylist(), dtype=object)[keep]
    return TaskData(task, classes, features, np.array([index[labels[i]] for i in keep]), split, text,
                    views, transform)


def fit_and_predict(head: Any, data: TaskData, draws: pa.Table, shots: int | str, seed: int) -> tuple[Any, pa.Table]:
    """Fit ``head`` on one draw; return it and its predictions on val and test."""
    tr = data.rows(select(draws, data.name, seed, shots, "train"))
    va = data.rows(select(draws, data.name, seed, shots, "val"))
    te = np.flatnonzero(data.split == "test")
    if "seed" in head.get_params():
        head.set_params(seed=seed)
    head.fit(data.train_features(tr), data.labels[tr], text=data.text,
             X_val=data.features.take(va), y_val=data.labels[va])
    tables = [_predictions(head, data, rows, subset, shots, seed) for subset, rows in (("val", va), ("test", te))]
    return head, pa.concat_tables(tables)


def _predictions(head: Any, data: TaskData, rows: np.ndarray, subset: str, shots: int | str, seed: int) -> pa.Table:
    proba = head.predict_proba(data.features.take(rows)).astype(np.float32)
    n = len(rows)
    return pa.table({
        "task": pa.array([data.name] * n, pa.string()),
        "shots": pa.array([shot_label(shots)] * n, pa.string()),
        "seed": pa.array([seed] * n, pa.int32()),
        "subset": pa.array([subset] * n, pa.string()),
        "id": pa.array(list(data.features.ids[rows]), pa.string()),
        "y_true": pa.array(data.labels[rows], pa.int32()),
        "y_pred": pa.array(proba.argmax(1), pa.int32()),
        "proba": pa.array(list(proba), pa.list_(pa.float32())),
    })


FINAL = "final"


def final_shots(shots: tuple[int | str, ...]) -> int | str:
    """The shot count whose validation choices the final fit keeps: ``all`` if run, else the largest."""
    return ALL if ALL in [str(s) for s in shots] else max(int(s) for s in shots)


def pinned_params(head: Any) -> dict[str, Any]:
    """Constructor params that fix what validation chose in fitted ``head``, for a refit without validation rows.

    Generic over the estimator contract: a learned scalar ``<p>_`` pins param ``<p>``
    or ``init_<p>`` (the linear probe's C; Tip-Adapter's, GDA's alpha and beta;
    ProKeR's beta and lambda), and ``best_epoch_`` (0-based) pins ``epochs``. A head
    may define ``final_params()`` instead.
    """
    if hasattr(head, "final_params"):
        return dict(head.final_params())
    params = head.get_params()
    pins: dict[str, Any] = {}
    for attr in learned_attributes(head):
        value = getattr(head, attr)
        value = value.item() if isinstance(value, np.generic) else value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        base = attr[:-1]
        if attr == "best_epoch_":
            if "epochs" in params:
                pins["epochs"] = int(value) + 1
        elif base in params:
            pins[base] = value
        elif f"init_{base}" in params:
            pins[f"init_{base}"] = value
    return pins


def final_pins(selected: Any) -> dict[str, Any]:
    """What the final refit takes from ``selected``: :func:`pinned_params`, and its seed if it has one."""
    pins = pinned_params(selected)
    if "seed" in selected.get_params():
        pins = {"seed": selected.get_params()["seed"], **pins}
    return pins


def fit_final(head: Any, data: TaskData, pins: dict[str, Any]) -> Any:
    """Fit ``head`` on every labelled train and val row with validation's choices ``pins``
    (:func:`final_pins` of the selected draw's head), without validation rows."""
    rows = np.flatnonzero(np.isin(data.split, ("train", "val")))
    head.set_params(**pins)
    head.fit(data.final_features(rows), data.labels[rows], text=data.text)
    log.info("%s final fit on %d train+val rows of '%s', pinned %s", type(head).__name__, len(rows), data.name, pins)
    return head


def write_predictions(tables: list[pa.Table], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(tables), path)
