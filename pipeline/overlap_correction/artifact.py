"""The overlap adapter as a pipeline artifact: the ``overlap`` params, generic labels, save with identity, load.

The adapter file is :class:`~pipeline.overlap_correction.fitted.FittedAdapter`'s
format plus two metadata entries: ``identity`` (the image model it was trained
for; a cache of another model is refused, as cache readers refuse one) and
``generic`` (which set it was trained on). A JSON sidecar with the summary is
the stage's DVC metric.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch

from pipeline.cache import check_identity
from pipeline.augment import ViewsParams
from pipeline.files import atomic_path
from pipeline.overlap_correction import OverlapAdapterParams
from pipeline.overlap_correction.fitted import FittedAdapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OverlapParams:
    """``overlap`` in params.yaml.

    heads: heads rerun on corrected features as ``<head>_oc`` (those that read
        image embeddings only: zero_shot, tip_adapter, tip_adapter_f).
    generic_task: single-label task of the generic manifest whose classes
        supervise the adapter (``adapter.mode: supervised``); unused otherwise.
    generic_views: the views of the generic set the adapter trains on.
    adapter: the adapter and its training (:class:`OverlapAdapterParams`).
    """

    heads: tuple[str, ...]
    generic_task: str | None
    generic_views: ViewsParams
    adapter: OverlapAdapterParams

    def __post_init__(self) -> None:
        if self.adapter.mode == "supervised" and not self.generic_task:
            raise ValueError("generic_task must name a task of the generic set when adapter.mode is supervised")
        if self.adapter.mode == "unsupervised" and self.generic_views.n < 2:
            raise ValueError("generic_views.n must be >= 2 for the unsupervised (DINO) mode: it distils view pairs")


def generic_labels(manifest: pa.Table, task: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, class index) of the rows of ``ids`` labelled for ``task`` in the generic manifest."""
    from pipeline.manifest_meta import manifest_meta

    tasks = manifest_meta(manifest)["tasks"]
    if task not in tasks or tasks[task]["type"] != "single":
        singles = sorted(t for t, info in tasks.items() if info["type"] == "single")
        raise ValueError(f"overlap.generic_task: '{task}' is not a single-label task of the generic set ({singles})")
    classes = tasks[task]["classes"]
    label_of = dict(zip(manifest.column("id").to_pylist(), manifest.column(task).to_pylist()))
    keep = [sid for sid in ids if label_of.get(sid) is not None]
    if len(keep) < len(ids):
        log.info("overlap adapter: %d of %d generic rows have no '%s' label and are left out",
                 len(ids) - len(keep), len(ids), task)
    return np.asarray(keep, dtype=object), np.asarray([classes.index(label_of[sid]) for sid in keep])


def save_artifact(fitted: FittedAdapter, path: Path, identity: dict[str, Any], generic: dict[str, Any]) -> dict:
    """Write the adapter (weights + metadata) to ``path`` and its summary to ``path.with_suffix('.json')``."""
    fitted.save(path, extra_meta={"identity": identity, "generic": generic})
    summary = describe(read_meta(path))
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    log.info("wrote %s: %s", path, summary)
    return summary


def read_meta(path: Path | str) -> dict[str, Any]:
    """The adapter file's metadata (no weights are built)."""
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]


def describe(meta: dict[str, Any]) -> dict[str, Any]:
    """Short, JSON-ready summary of an adapter's metadata (its DVC metric, the report's note)."""
    history = meta.get("history") or [{}]
    return {"mode": meta["params"]["mode"], "generic": meta.get("generic", {}).get("cache"),
            "generic_task": meta.get("generic", {}).get("task"), "generic_images": len(meta["trained_on"]),
            "generic_ids_sha256": meta["trained_on_sha256"], "epochs": meta["params"]["epochs"],
            "final_loss": history[-1].get("loss")}


def load_correction(path: Path | str, expect: dict[str, Any] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The adapter's ``transform`` after checking it was trained for the expected model."""
    check_identity(read_meta(path).get("identity", {}), expect or {}, path)
    return FittedAdapter.load(path).transform


__all__ = ["OverlapParams", "generic_labels", "save_artifact", "read_meta", "describe", "load_correction"]
