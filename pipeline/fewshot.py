"""Few-shot subsets (ids only) drawn from a manifest.

For each single-label task, seed and K in ``shots``: K training ids per class
plus a validation subset of ``min(K, val_shots)`` ids per class (CoOp's
protocol: few-shot runs choose hyperparameters on a few-shot validation set
too). Draws are nested: for a seed, each class's training ids are permuted
once and the K-shot set is the first K of that permutation, so the 2-shot set
contains the 1-shot set. ``all`` means the whole train and val splits (the
full-data protocol of CLIP-MHAdapter).

Multi-label tasks get only ``all``: "K images per class" is not well defined
when an image carries several classes, and CDUL is trained without labels.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from pipeline.manifest_meta import manifest_meta

log = logging.getLogger(__name__)

ALL = "all"


@dataclass(frozen=True)
class FewShotParams:
    """The ``fewshot`` section of params.yaml."""

    shots: tuple[int | Literal["all"], ...] = (1, 2, 4, 8, 16)
    seeds: tuple[int, ...] = (1, 2, 3)
    val_shots: int = 4

    def __post_init__(self) -> None:
        bad = [k for k in self.shots if k != ALL and (not isinstance(k, int) or k < 1)]
        if bad:
            raise ValueError(f"shots must be positive integers or 'all', got {bad}")


def shot_label(k: int | str) -> str:
    """Shots as they appear in file names and tables: '16' or 'all'."""
    return str(k)


def draw_fewshot(manifest: pa.Table, params: FewShotParams) -> pa.Table:
    """Return a table (task, seed, shots, subset, id) of every draw."""
    meta = manifest_meta(manifest)
    splits = np.array(manifest.column("split").to_pylist(), dtype=object)
    ids = np.array(manifest.column("id").to_pylist(), dtype=object)
    out: dict[str, list] = {"task": [], "seed": [], "shots": [], "subset": [], "id": []}
    for task, info in meta["tasks"].items():
        labels = manifest.column(task).to_pylist()
        shots = params.shots if info["type"] == "single" else (ALL,)
        for seed in params.seeds:
            for subset, cap in (("train", None), ("val", params.val_shots)):
                in_split = np.flatnonzero((splits == subset) & np.array([v is not None for v in labels]))
                perms = _class_permutations(task, seed, subset, in_split, labels, info)
                for k in shots:
                    chosen = _take(perms, in_split, k, cap)
                    _extend(out, task, seed, shot_label(k), subset, ids[np.sort(chosen)])
    return pa.table({
        "task": pa.array(out["task"], pa.string()),
        "seed": pa.array(out["seed"], pa.int32()),
        "shots": pa.array(out["shots"], pa.string()),
        "subset": pa.array(out["subset"], pa.string()),
        "id": pa.array(out["id"], pa.string()),
    })


def select(draws: pa.Table, task: str, seed: int, shots: int | str, subset: str) -> list[str]:
    """Ids of one draw; raises KeyError naming the draw when it does not exist."""
    mask = [
        t == task and s == seed and k == shot_label(shots) and u == subset
        for t, s, k, u in zip(*(draws.column(c).to_pylist() for c in ("task", "seed", "shots", "subset")))
    ]
    chosen = [i for i, m in zip(draws.column("id").to_pylist(), mask) if m]
    if not chosen:
        raise KeyError(f"no few-shot draw task={task} seed={seed} shots={shots} subset={subset}")
    return chosen


def _class_permutations(task: str, seed: int, subset: str, rows: np.ndarray, labels: list, info: dict) -> dict:
    """Per class, a seeded permutation of its rows (independent of other classes)."""
    if info["type"] != "single":
        return {}
    perms = {}
    for cls in info["classes"]:
        members = np.array([r for r in rows if labels[r] == cls], dtype=int)
        rng = np.random.default_rng(_seed_for(task, seed, subset, cls))
        perms[cls] = members[rng.permutation(len(members))]
    return perms


def _take(perms: dict, rows: np.ndarray, k: int | str, cap: int | None) -> np.ndarray:
    if k == ALL:
        return rows
    n = k if cap is None else min(k, cap)
    short = {c: len(p) for c, p in perms.items() if len(p) < n}
    if short:
        log.warning("classes with fewer than %d examples take all they have: %s", n, short)
    return np.concatenate([p[:n] for p in perms.values()]) if perms else np.array([], dtype=int)


def _seed_for(task: str, seed: int, subset: str, cls: str) -> int:
    """A stable 64-bit seed per (task, seed, subset, class): adding a class never reshuffles others."""
    digest = hashlib.sha256(f"{task}\0{seed}\0{subset}\0{cls}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _extend(out: dict, task: str, seed: int, shots: str, subset: str, ids: np.ndarray) -> None:
    n = len(ids)
    out["task"] += [task] * n
    out["seed"] += [seed] * n
    out["shots"] += [shots] * n
    out["subset"] += [subset] * n
    out["id"] += list(ids)
