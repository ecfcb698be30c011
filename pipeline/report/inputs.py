"""Read what earlier stages wrote: evaluation outputs, CDUL metrics, cache identity, overlap inputs.

Every reader returns plain Python / numpy data; missing *optional* inputs
(CDUL, the image cache) come back as ``None`` so the report still renders.
A head named for the report whose evaluation is missing is an error: a
report silently lacking a head would read as if the head did not exist.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadEval:
    """One head's evaluation: ``metrics.json`` (summary) and ``details.json`` (runs, fit stats)."""

    head: str
    summary: dict[str, Any]                                  # {task: {"shots_<k>": {...}, "fit": {...}}}
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per (task, shots, seed)
    fit: list[dict[str, Any]] = field(default_factory=list)   # one per (task, shots, seed)


@dataclass(frozen=True)
class CdulResults:
    """CDUL outputs: pseudo-label quality and classifier metrics (either may be absent)."""

    pseudo: dict[str, Any] | None
    classifier: dict[str, Any] | None


def _read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def load_head(eval_dir: Path | str, head: str) -> HeadEval:
    """``<eval_dir>/<head>/metrics.json`` and ``details.json`` (details optional)."""
    base = Path(eval_dir) / head
    metrics = base / "metrics.json"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics}: no evaluation of head '{head}' (run the evaluate@{head} stage)")
    details_path = base / "details.json"
    details = _read_json(details_path) if details_path.is_file() else {}
    if not details:
        log.warning("%s missing: no confusion matrices, per-seed rows or per-shots fit cost for '%s'",
                    details_path, head)
    return HeadEval(head=head, summary=_read_json(metrics), runs=list(details.get("runs", [])),
                    fit=list(details.get("fit", [])))


def load_heads(eval_dir: Path | str, heads: list[str] | tuple[str, ...]) -> list[HeadEval]:
    return [load_head(eval_dir, h) for h in heads]


def load_cdul(cdul_dir: Path | str | None) -> CdulResults | None:
    """``pseudo/pseudo_quality.json`` and ``classifier/metrics.json`` under ``cdul_dir``, or None."""
    if cdul_dir is None:
        return None
    base = Path(cdul_dir)
    pseudo, clf = base / "pseudo" / "pseudo_quality.json", base / "classifier" / "metrics.json"
    found = CdulResults(pseudo=_read_json(pseudo) if pseudo.is_file() else None,
                        classifier=_read_json(clf) if clf.is_file() else None)
    if found.pseudo is None and found.classifier is None:
        log.info("no CDUL outputs under %s: the report's CDUL section stays empty", base)
        return None
    return found


def cache_identity(cache_path: Path | str | None) -> dict[str, Any] | None:
    """The ``identity`` attribute of a zarr feature cache, or None when there is no cache."""
    if cache_path is None or not (Path(cache_path) / "zarr.json").is_file():
        return None
    import zarr

    return dict(zarr.open_group(str(cache_path), mode="r").attrs.get("identity", {}))


def single_label_splits(manifest_path: Path | str, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{task: (ids, labels)} of the labelled rows of ``split`` for every single-label task of a manifest."""
    from pipeline.manifest_meta import manifest_meta

    table = pq.read_table(manifest_path)
    tasks = manifest_meta(table)["tasks"]
    ids = np.array(table.column("id").to_pylist(), dtype=object)
    in_split = np.array(table.column("split").to_pylist(), dtype=object) == split
    out = {}
    for task, info in tasks.items():
        if info["type"] != "single":
            continue
        labels = np.array(table.column(task).to_pylist(), dtype=object)
        keep = in_split & np.array([v is not None for v in labels])
        if keep.any():
            out[task] = (ids[keep], labels[keep].astype(str))
    return out


def overlap_inputs(manifest_path: Path | str | None, images_path: Path | str | None,
                   split: str = "test") -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """{task: (cls features [N, D], labels [N])} for the overlap figure, or None without a cache."""
    if manifest_path is None or images_path is None:
        return None
    if not Path(manifest_path).is_file() or not (Path(images_path) / "zarr.json").is_file():
        log.info("no manifest or image cache: the report's overlap section stays empty")
        return None
    from pipeline.cache import FeatureCache

    cache = FeatureCache(images_path)
    return {task: (cache.read("cls", ids), labels)
            for task, (ids, labels) in single_label_splits(manifest_path, split).items()}


__all__ = ["HeadEval", "CdulResults", "load_head", "load_heads", "load_cdul", "cache_identity",
           "single_label_splits", "overlap_inputs"]
