"""Pure table builders: evaluation data in, :class:`Table` (cells with a bold flag) out.

Aggregated numbers (mean and std over seeds) come from each head's
``metrics.json``, so the report shows exactly what ``dvc metrics show`` does;
per-seed rows, confusion matrices and the per-shots fit cost come from
``details.json``. Shots are labels as the pipeline writes them (``"16"``,
``"all"``) and sort numerically with ``all`` last.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.cache import flatten
from pipeline.report import METRICS
from pipeline.report.inputs import CdulResults, HeadEval

MISSING = "—"
FIT_STATS = ("trainable_params", "wall_time_s", "peak_memory_mb")
LONG_SCHEMA = pa.schema([("head", pa.string()), ("task", pa.string()), ("shots", pa.string()),
                         ("seed", pa.int64()), ("metric", pa.string()), ("value", pa.float64())])


@dataclass(frozen=True)
class Cell:
    text: str
    bold: bool = False


@dataclass(frozen=True)
class Table:
    id: str
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    note: str = ""
    numeric: bool = True  # right-align every column but the first (False: a key/value listing)


def shots_order(label: str) -> float:
    return math.inf if str(label) == "all" else float(label)


def _shots_keys(by_shots: dict[str, Any]) -> list[str]:
    return [k.removeprefix("shots_") for k in by_shots if k.startswith("shots_")]


def task_order(heads: Sequence[HeadEval], preferred: Sequence[str] = ()) -> list[str]:
    """Tasks evaluated by any head: those in ``preferred`` (train.tasks) first, in its order."""
    found = {t for h in heads for t in h.summary}
    return [t for t in preferred if t in found] + sorted(found - set(preferred))


def choose_shots(heads: Sequence[HeadEval], tasks: Sequence[str], wanted: int | str | None = None) -> str:
    """The shots to tabulate: ``wanted``, or the largest shots that every head ran on every task."""
    common: set[str] | None = None
    for h in heads:
        for t in tasks:
            if t not in h.summary:  # a head that never ran a task does not veto its shots
                continue
            have = set(_shots_keys(h.summary[t]))
            common = have if common is None else common & have
    common = common or set()
    if wanted is not None:
        if str(wanted) not in common:
            missing = [f"{h.head}/{t}" for h in heads for t in tasks
                       if t in h.summary and str(wanted) not in _shots_keys(h.summary[t])]
            raise ValueError(f"report.shots: {wanted} was not evaluated for {', '.join(missing)}")
        return str(wanted)
    if not common:
        raise ValueError("no shots value was evaluated for every head and task; set report.shots")
    return max(common, key=shots_order)


def metric_at(head: HeadEval, task: str, shots: str, metric: str) -> tuple[float, float] | None:
    """(mean, std) over seeds from metrics.json, or None when not evaluated."""
    entry = head.summary.get(task, {}).get(f"shots_{shots}")
    if not entry or entry.get(metric) is None:
        return None
    return float(entry[metric]), float(entry.get(f"{metric}_std", 0.0) or 0.0)


def _bold_best(values: list[float | None], digits: int = 3) -> list[bool]:
    """Flags of the highest values, compared as displayed (rounded), so equal-looking cells agree."""
    shown = [round(v, digits) if v is not None and math.isfinite(v) else None for v in values]
    finite = [v for v in shown if v is not None]
    best = max(finite) if finite else None
    return [v is not None and v == best for v in shown]


def comparison_table(heads: Sequence[HeadEval], tasks: Sequence[str], shots: str, metric: str) -> Table:
    """Heads x tasks (+ mean over tasks): ``mean ± std`` over seeds; the best of each column in bold."""
    columns: list[list[float | None]] = []
    texts: list[list[str]] = []
    for task in tasks:
        vals = [metric_at(h, task, shots, metric) for h in heads]
        columns.append([v[0] if v else None for v in vals])
        texts.append([f"{v[0]:.3f} ± {v[1]:.3f}" if v else MISSING for v in vals])
    means = [float(np.mean(col)) if None not in col else None for col in zip(*columns)] if columns else []
    columns.append(means)
    texts.append([f"{m:.3f}" if m is not None else MISSING for m in means])
    bold = [_bold_best(col) for col in columns]
    rows = tuple((Cell(f"{h.head} {NO_VAL_MARK}" if not selects_on_validation(h) else h.head),
                  *(Cell(texts[c][r], bold[c][r]) for c in range(len(columns))))
                 for r, h in enumerate(heads))
    return Table(id=f"table-comparison-{metric}", title=f"{metric} at {shots} shots (mean ± std over seeds)",
                 header=("head", *tasks, "mean"), rows=rows,
                 note="Best value of each column in bold; 'mean' is the unweighted mean over tasks. "
                      f"{NO_VAL_MARK}: the head chooses nothing on the validation draw (it needs no validation set).")


NO_VAL_MARK = "†"


def selects_on_validation(head: HeadEval) -> bool:
    """False only when every fit of the head says it chose nothing on validation (train stage's fit stats)."""
    flags = [f.get("selects_on_validation") for f in head.fit]
    return not flags or any(flag is not False for flag in flags)


def best_heads(heads: Sequence[HeadEval], tasks: Sequence[str], shots: str, metric: str) -> dict[str, str]:
    """{task: head with the highest mean ``metric`` at ``shots``} (first listed head on ties)."""
    out = {}
    for task in tasks:
        scored = [(v[0], -i, h.head) for i, h in enumerate(heads) if (v := metric_at(h, task, shots, metric))]
        if scored:
            out[task] = max(scored)[2]
    return out


def fit_cost(head: HeadEval, task: str, shots: str) -> dict[str, float] | None:
    """Trainable params (max), wall time (mean) and peak memory (max) over the seeds at ``shots``.

    From details.json's per-run fit stats (metrics.json keeps only the parameter
    count, since times and memory vary by machine); None when details are missing.
    """
    runs = [f for f in head.fit if f.get("task") == task and str(f.get("shots")) == shots]
    if runs:
        return {"trainable_params": max(float(f["trainable_params"]) for f in runs),
                "wall_time_s": float(np.mean([f["wall_time_s"] for f in runs])),
                "peak_memory_mb": max(float(f["peak_memory_mb"]) for f in runs)}
    return None


def cost_table(heads: Sequence[HeadEval], tasks: Sequence[str], shots: str) -> Table:
    """Per head: trainable parameters and fit wall time per task, peak memory over tasks."""
    header = ["head"]
    for task in tasks:
        header += [f"{task} params", f"{task} fit s"]
    header.append("peak MB")
    rows = []
    for h in heads:
        cells, peaks = [Cell(h.head)], []
        for task in tasks:
            cost = fit_cost(h, task, shots)
            if cost is None:
                cells += [Cell(MISSING), Cell(MISSING)]
                continue
            cells += [Cell(f"{int(cost['trainable_params']):,}"), Cell(f"{cost['wall_time_s']:.3g}")]
            peaks.append(cost["peak_memory_mb"])
        cells.append(Cell(f"{max(peaks):.3g}" if peaks else MISSING))
        rows.append(tuple(cells))
    return Table(id="table-cost", title=f"Fit cost at {shots} shots", header=tuple(header), rows=tuple(rows),
                 note="Trainable parameters of the fitted head (max over seeds), fit wall time (mean over seeds), "
                      "peak memory (max over seeds and tasks).")


def cdul_tables(cdul: CdulResults | None) -> list[Table]:
    """The pseudo-label mAP table (split x global/local/final) and the classifier metrics, when present."""
    if cdul is None:
        return []
    tables = []
    if cdul.pseudo:
        kinds = ("global", "local", "final")
        rows = []
        for split, by_kind in cdul.pseudo.get("mAP", {}).items():
            vals = [by_kind.get(k) for k in kinds]
            bold = _bold_best([float(v) if v is not None else None for v in vals], digits=4)
            rows.append((Cell(split), *(Cell(_num(v), b) for v, b in zip(vals, bold))))
        tables.append(Table(id="table-cdul-pseudo", title=f"CDUL pseudo-label mAP ({cdul.pseudo.get('task', '?')})",
                            header=("split", *kinds), rows=tuple(rows),
                            note="mAP of global-only, aggregated-local and final pseudo-label vectors against "
                                 "the ground truth; best per split in bold."))
    if cdul.classifier:
        c = cdul.classifier
        rows = [("test mAP (classifier)", c.get("test_mAP")),
                ("test mAP (final pseudo-labels)", c.get("pseudo_final_test_mAP"))]
        for key in ("f1@0.5", "f1@val_threshold"):
            f1 = c.get(key) or {}
            for name in ("micro_f1", "macro_f1", "threshold"):
                if name in f1:
                    rows.append((f"{key} {name}", f1[name]))
        fit = c.get("fit") or {}
        rows += [(f"fit {k}", fit[k]) for k in FIT_STATS if k in fit]
        tables.append(Table(id="table-cdul-classifier", title=f"CDUL classifier ({c.get('task', '?')})",
                            header=("metric", "value"), rows=tuple((Cell(k), Cell(_num(v))) for k, v in rows)))
    return tables


def _num(v: Any) -> str:
    if v is None:
        return MISSING
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1:
        return f"{int(v):,}"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def identity_table(identity: dict[str, Any] | None, title: str = "Image cache identity") -> Table | None:
    if not identity:
        return None
    rows = tuple((Cell(k), Cell(str(v))) for k, v in flatten(identity).items())
    return Table(id="table-identity", title=title, header=("field", "value"), rows=rows, numeric=False)


def long_table(heads: Sequence[HeadEval], metrics: Sequence[str] = METRICS) -> pa.Table:
    """One row per (head, task, shots, seed, metric): the per-run metrics and fit stats of details.json."""
    cols: dict[str, list] = {name: [] for name in LONG_SCHEMA.names}

    def add(head: str, run: dict, names: Sequence[str]) -> None:
        for m in names:
            if m in run and run[m] is not None:
                for key, val in (("head", head), ("task", run["task"]), ("shots", str(run["shots"])),
                                 ("seed", int(run["seed"])), ("metric", m), ("value", float(run[m]))):
                    cols[key].append(val)

    for h in heads:
        for run in h.runs:
            add(h.head, run, metrics)
        for run in h.fit:
            add(h.head, run, FIT_STATS)
    return pa.table(cols, schema=LONG_SCHEMA)


def summed_confusion(head: HeadEval, task: str, shots: str) -> tuple[np.ndarray, list[str], int] | None:
    """(confusion matrix summed over seeds, class names, number of seeds), or None without details."""
    runs = [r for r in head.runs if r["task"] == task and str(r["shots"]) == shots and "confusion_matrix" in r]
    if not runs:
        return None
    names = list(runs[0]["class_names"])
    if any(list(r["class_names"]) != names for r in runs):
        raise ValueError(f"{head.head}/{task}: runs disagree on the class order")
    return np.sum([np.asarray(r["confusion_matrix"], dtype=np.int64) for r in runs], axis=0), names, len(runs)


def curves(heads: Sequence[HeadEval], tasks: Sequence[str], metric: str
           ) -> dict[str, dict[str, list[tuple[str, float, float]]]]:
    """{task: {head: [(shots, mean, std), ...] in shots order}} for the few-shot curves."""
    out: dict[str, dict[str, list[tuple[str, float, float]]]] = {}
    for task in tasks:
        for h in heads:
            points = [(s, *v) for s in sorted(_shots_keys(h.summary.get(task, {})), key=shots_order)
                      if (v := metric_at(h, task, s, metric))]
            if points:
                out.setdefault(task, {})[h.head] = points
    return out


__all__ = ["Cell", "Table", "MISSING", "LONG_SCHEMA", "shots_order", "task_order", "choose_shots", "metric_at",
           "comparison_table", "best_heads", "fit_cost", "cost_table", "cdul_tables", "identity_table",
           "long_table", "summed_confusion", "curves"]
