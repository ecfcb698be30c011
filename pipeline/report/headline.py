"""The run's headline metrics: the one small file `dvc metrics show` and `dvc exp show` list.

Per head and task, accuracy and macro-F1 (means over seeds) at the shots the
report tabulates (``report.shots``, else the largest shot count every head
ran), and CDUL's test mAP per multi-label task. Nested as
``{head: {task: {accuracy, macro_f1}}}`` so DVC's columns read
``clip_adapter.weather.accuracy`` and ``dvc exp show --only-changed`` after a
head-param edit shows that head's few columns. The per-shot detail stays in
``evaluation/<head>/metrics.json`` and the plots.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.report.inputs import CdulResults, HeadEval
from pipeline.report.tables import metric_at

HEADLINE_METRICS = ("accuracy", "macro_f1")


def headline_metrics(heads: Sequence[HeadEval], tasks: Sequence[str], shots: str | None,
                     cdul: CdulResults | None) -> dict[str, Any]:
    """``{"shots": k, <head>: {<task>: {accuracy, macro_f1}}, "cdul": {<task>: {test_mAP}}}``."""
    out: dict[str, Any] = {}
    if shots is not None and heads:
        out["shots"] = int(shots) if str(shots).isdigit() else str(shots)
        for head in heads:
            by_task = {}
            for task in tasks:
                values = {m: round(v[0], 4) for m in HEADLINE_METRICS
                          if (v := metric_at(head, task, shots, m)) is not None}
                if values:
                    by_task[task] = values
            if by_task:
                out[head.head] = by_task
    clf = cdul.classifier if cdul else None
    if clf and clf.get("task") and clf.get("test_mAP") is not None:
        out["cdul"] = {clf["task"]: {"test_mAP": clf["test_mAP"]}}
    return out


__all__ = ["HEADLINE_METRICS", "headline_metrics"]
