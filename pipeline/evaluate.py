"""Metrics of one head's predictions, in the shapes DVC understands.

``summary`` is the small, flat-ish dict declared as a DVC metric (test split,
mean and std over seeds per task and shots), so ``dvc metrics show/diff`` and
``dvc exp show`` stay readable; ``details`` keeps every run's full report
(per-class scores, confusion matrix) for the report stage.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.metrics import aggregate_over_seeds, single_label_report

HEADLINE = ("accuracy", "macro_f1", "weighted_f1", "balanced_accuracy", "balanced_accuracy_adjusted")


def run_reports(predictions: pa.Table, classes: dict[str, list[str]], subset: str = "test") -> list[dict[str, Any]]:
    """One full single-label report per (task, shots, seed) on ``subset``."""
    df = predictions.filter(pc.equal(predictions.column("subset"), subset)).to_pydict()
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(df["task"], df["shots"], df["seed"])):
        groups.setdefault(key, []).append(i)
    reports = []
    for (task, shots, seed), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], _shots_order(kv[0][1]), kv[0][2])):
        y_true = np.array([df["y_true"][i] for i in rows])
        y_pred = np.array([df["y_pred"][i] for i in rows])
        report = single_label_report(y_true, y_pred, classes[task])
        reports.append({"task": task, "shots": shots, "seed": seed, **report})
    return reports


def summary(reports: list[dict[str, Any]], fit_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """{task: {shots: {metric: mean, metric_std: std}}} plus the trainable parameter count per task.

    Wall time and peak memory vary from machine to machine, so they stay in
    details.json: a DVC metrics file must be the same on every rerun.
    """
    out: dict[str, Any] = {}
    by_key: dict[tuple[str, str], list[dict]] = {}
    for r in reports:
        by_key.setdefault((r["task"], r["shots"]), []).append({k: r[k] for k in HEADLINE})
    for (task, shots), runs in by_key.items():
        agg = aggregate_over_seeds(runs)
        entry = {}
        for metric in HEADLINE:
            entry[metric] = round(agg[metric]["mean"], 4)
            entry[f"{metric}_std"] = round(agg[metric]["std"], 4) if np.isfinite(agg[metric]["std"]) else 0.0
        entry["seeds"] = agg[HEADLINE[0]]["n"]
        out.setdefault(task, {})[f"shots_{shots}"] = entry
    for task in out:
        stats = [s for s in fit_stats if s["task"] == task]
        if stats:
            out[task]["fit"] = {"trainable_params": int(max(s["trainable_params"] for s in stats))}
    return out


def fewshot_rows(head: str, reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plot rows (one per task and shots, mean over seeds) for the few-shot curve."""
    table = summary(reports, [])
    return [
        {"head": head, "task": task, "shots": shots.removeprefix("shots_"),
         "accuracy": v["accuracy"], "macro_f1": v["macro_f1"]}
        for task, by_shots in table.items() for shots, v in by_shots.items()
    ]


def confusion_rows(predictions: pa.Table, classes: dict[str, list[str]], subset: str = "test") -> list[dict[str, str]]:
    """(task, actual, predicted) rows of the largest shots, all seeds: DVC's confusion template input."""
    df = predictions.filter(pc.equal(predictions.column("subset"), subset)).to_pydict()
    if not df["shots"]:
        return []
    largest = max(set(df["shots"]), key=_shots_order)
    return [
        {"task": t, "actual": classes[t][a], "predicted": classes[t][p]}
        for t, k, a, p in zip(df["task"], df["shots"], df["y_true"], df["y_pred"]) if k == largest
    ]


def _shots_order(shots: str) -> float:
    return float("inf") if shots == "all" else float(shots)
