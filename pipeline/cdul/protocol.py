"""CDUL on a cache: pseudo-labels for every row, then the classifier on train rows.

Ground truth is read only to *measure*: the pseudo-label quality report
(mAP of global-only, aggregated-local and final vectors, per split), the
classifier's epoch selection on validation (when the dataset has labels) and
test metrics. Training sees only the pseudo-labels of the train split.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.cdul.classifier import CdulClassifier, CdulClassifierParams
from pipeline.cdul.similarity import CdulScores, CdulSimilarityParams, cdul_scores, pseudo_label_quality
from pipeline.features import FeatureSet, TextContext
from pipeline.manifest_meta import manifest_meta
from pipeline.metrics import multilabel_report


def multi_hot(manifest: pa.Table, task: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(ids, classes, split, Y [N, C]) of the labelled rows of a multi-label task."""
    meta = manifest_meta(manifest)["tasks"]
    if task not in meta or meta[task]["type"] != "multi":
        raise ValueError(f"cdul.task: '{task}' is not a multi-label task of the manifest ({sorted(meta)})")
    classes = meta[task]["classes"]
    index = {c: i for i, c in enumerate(classes)}
    labels = manifest.column(task).to_pylist()
    keep = [i for i, v in enumerate(labels) if v is not None]
    y = np.zeros((len(keep), len(classes)), dtype=np.int8)
    for row, i in enumerate(keep):
        y[row, [index[c] for c in labels[i]]] = 1
    ids = np.array(manifest.column("id").to_pylist(), dtype=object)[keep]
    split = np.array(manifest.column("split").to_pylist(), dtype=object)[keep]
    return ids, classes, split, y


def pseudo_labels(tiles: np.ndarray, text: TextContext, params: CdulSimilarityParams) -> CdulScores:
    return cdul_scores(tiles, text, params)


def scores_table(ids: np.ndarray, split: np.ndarray, scores: CdulScores) -> pa.Table:
    """Global, aggregated-local and final vectors with their sample ids."""
    as_list = lambda a: pa.array(list(a.astype(np.float32)), pa.list_(pa.float32()))  # noqa: E731
    return pa.table({"id": pa.array(list(ids), pa.string()), "split": pa.array(list(split), pa.string()),
                     "global": as_list(scores.global_), "local": as_list(scores.local_agg),
                     "final": as_list(scores.final)})


def quality_by_split(scores: CdulScores, split: np.ndarray, y: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    for name in ("train", "val", "test"):
        rows = split == name
        if rows.any():
            part = CdulScores(scores.global_[rows], scores.local_agg[rows], scores.final[rows])
            out[name] = {k: round(v, 4) for k, v in pseudo_label_quality(part, y[rows]).items()}
    return out


def train_and_test(cls: np.ndarray, ids: np.ndarray, split: np.ndarray, y: np.ndarray, final: np.ndarray,
                   classes: list[str], params: CdulClassifierParams) -> tuple[CdulClassifier, dict[str, Any], np.ndarray]:
    """Fit on train pseudo-labels, select on val truth, report on test; return (clf, report, test scores)."""
    feats = FeatureSet(ids=ids, cls=cls)
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    clf = CdulClassifier.from_params(params)
    clf.fit(feats.take(tr), final[tr], X_val=feats.take(va) if len(va) else None, Y_val=y[va] if len(va) else None)
    test_scores = clf.predict_proba(feats.take(te))
    report = multilabel_report(y[te], test_scores, classes, y_val=y[va] if len(va) else None,
                               scores_val=clf.predict_proba(feats.take(va)) if len(va) else None)
    report["pseudo_final_test"] = multilabel_report(y[te], final[te], classes)["mAP"]
    report["fit"] = clf.fit_stats_
    return clf, report, test_scores
