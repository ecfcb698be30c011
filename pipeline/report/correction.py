"""The report's overlap-correction section: overlap before/after and heads with/without the adapter.

The adapter of :mod:`pipeline.overlap_correction` is trained on a generic
image set and applied to the target cache; it is worth its place only if it
(a) lowers the intra-modal overlap of the target task's test images and
(b) lifts the training-free heads that compare images (Tip-Adapter). This
section shows both, next to zero-shot as a control: zero-shot compares
images with text only, so a change there measures how much the correction
moved the image embedding away from the text embedding space.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.report.inputs import HeadEval
from pipeline.report.overlap import OverlapResult
from pipeline.report.tables import MISSING, Cell, Table, _shots_keys, metric_at, shots_order

SUFFIX = "_oc"


@dataclass(frozen=True)
class CorrectionInputs:
    """Overlap per task before and after the correction, and the (plain, corrected) head pairs."""

    before: Sequence[OverlapResult]
    after: Sequence[OverlapResult]
    pairs: Sequence[tuple[HeadEval, HeadEval]]
    adapter: dict  # the adapter's metadata (mode, generic set, ...), shown as a note


def overlap_change_table(before: Sequence[OverlapResult], after: Sequence[OverlapResult]) -> Table:
    """task | overlap before | after | change | same/different-class mean cosine before -> after."""
    by_task = {r.task: r for r in after}
    rows = []
    for b in before:
        a = by_task.get(b.task)
        if a is None:
            continue
        delta = a.overlap - b.overlap
        rows.append((Cell(b.task), Cell(f"{b.overlap:.3f}"), Cell(f"{a.overlap:.3f}", a.overlap < b.overlap),
                     Cell(f"{delta:+.3f}"), Cell(f"{b.same_mean:.3f} → {a.same_mean:.3f}"),
                     Cell(f"{b.diff_mean:.3f} → {a.diff_mean:.3f}")))
    return Table("table-overlap-correction", "Intra-modal overlap before and after the correction",
                 ("task", "before", "after", "change", "same-class mean cos", "different-class mean cos"),
                 tuple(rows), note="Lower is better; a lower 'after' is in bold.")


def _shots(*heads: HeadEval) -> list[str]:
    found = {s for h in heads for entry in h.summary.values() for s in _shots_keys(entry)}
    return sorted(found, key=shots_order)


def with_without_table(pairs: Sequence[tuple[HeadEval, HeadEval]], tasks: Sequence[str],
                       metric: str) -> Table:
    """One row per (head, task, shots): ``metric`` without and with the correction, mean ± std over seeds."""
    rows = []
    for plain, corrected in pairs:
        for task in tasks:
            for shots in _shots(plain, corrected):
                a, b = metric_at(plain, task, shots, metric), metric_at(corrected, task, shots, metric)
                if a is None and b is None:
                    continue
                text = [f"{v[0]:.3f} ± {v[1]:.3f}" if v else MISSING for v in (a, b)]
                delta = f"{b[0] - a[0]:+.3f}" if a and b else MISSING
                rows.append((Cell(plain.head), Cell(task), Cell(shots), Cell(text[0], bool(a and b and a[0] > b[0])),
                             Cell(text[1], bool(a and b and b[0] > a[0])), Cell(delta)))
    return Table(f"table-correction-{metric}", f"{metric} without and with the overlap correction",
                 ("head", "task", "shots", "without", "with", "change"), tuple(rows),
                 note="Test split, mean ± std over seeds; the better of each pair in bold.")


def pair_heads(plain: Sequence[HeadEval], corrected: Sequence[HeadEval]) -> list[tuple[HeadEval, HeadEval]]:
    """(head, head_oc) pairs by name; a corrected head without its plain run is left out."""
    by_name = {h.head: h for h in plain}
    return [(by_name[c.head.removesuffix(SUFFIX)], c) for c in corrected
            if c.head.endswith(SUFFIX) and c.head.removesuffix(SUFFIX) in by_name]


__all__ = ["SUFFIX", "CorrectionInputs", "overlap_change_table", "with_without_table", "pair_heads"]
