"""Assemble the report (sections of tables, figures and text) and write it to a directory.

Layout written by :func:`write_report`::

    <out>/report.html          one self-contained page (figures inlined as data URIs)
    <out>/report.md            the same tables in Markdown, figures linked from figures/
    <out>/figures/<name>.png   every figure
    <out>/tables/results.parquet  long format: head, task, shots, seed, metric, value
    <out>/overlap.json         intra-modal overlap per single-label task
    <headline>                 the run's headline metrics (``reports/metrics.json``: DVC's metrics file)
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.files import atomic_path
from pipeline.report import ReportParams, figures
from pipeline.report.correction import CorrectionInputs, overlap_change_table, with_without_table
from pipeline.report.headline import headline_metrics
from pipeline.report.inputs import CdulResults, HeadEval
from pipeline.report.overlap import OverlapResult
from pipeline.report.tables import (Cell, Table, best_heads, cdul_tables, choose_shots, comparison_table,
                                    cost_table, curves, identity_table, long_table, metric_at, summed_confusion,
                                    task_order)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Figure:
    name: str          # file stem under figures/ and the <img> id (fig-<name>)
    title: str
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class Text:
    text: str
    code: bool = False  # preformatted (YAML) instead of a paragraph


Block = Table | Figure | Text


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Report:
    title: str
    sections: tuple[Section, ...]
    results: pa.Table
    metrics: dict[str, Any] = field(default_factory=dict)  # overlap.json
    headline: dict[str, Any] = field(default_factory=dict)  # the run's headline metrics (DVC's metrics file)

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]

    def tables(self) -> list[Table]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Table)]


def _results_section(heads: Sequence[HeadEval], tasks: list[str], shots: str, params: ReportParams) -> Section:
    seeds = sorted({int(r["seed"]) for h in heads for r in h.runs if str(r["shots"]) == shots})
    intro = (f"{len(heads)} heads on {len(tasks)} tasks at {shots} shots per class, test split; "
             f"mean ± std over seeds{f' {seeds}' if seeds else ''}.")
    order = list(dict.fromkeys((params.headline, *params.table_metrics)))
    return Section("comparison", "Comparison of heads",
                   (Text(intro), *(comparison_table(heads, tasks, shots, m) for m in order)))


def _confusion_section(heads: Sequence[HeadEval], tasks: list[str], shots: str, metric: str) -> Section:
    blocks: list[Block] = [Text(f"For each task, the head with the best {metric} at {shots} shots; "
                                "counts summed over seeds, colours are row-normalised (recall on the diagonal).")]
    by_name = {h.head: h for h in heads}
    for task, head in best_heads(heads, tasks, shots, metric).items():
        found = summed_confusion(by_name[head], task, shots)
        if found is None:
            blocks.append(Text(f"{task}: no details.json runs for {head} at {shots} shots."))
            continue
        matrix, names, n_seeds = found
        title = f"{task}: {head}, {shots} shots, {n_seeds} seeds"
        blocks.append(Figure(f"confusion_{task}", f"Confusion matrix: {task}",
                             figures.confusion(matrix, names, title), caption=title))
    return Section("confusion", "Confusion matrices", tuple(blocks))


def _overlap_section(results: Sequence[OverlapResult] | None, params: ReportParams) -> Section:
    if not results:
        return Section("overlap", "Intra-modal overlap",
                       (Text("No image cache or single-label task given: overlap not computed."),))
    sampled = any(r.sampled for r in results)
    intro = (f"Cosine similarity of image embedding pairs on the {params.overlap_split} split "
             f"({'up to ' + format(params.overlap_max_pairs, ',') + ' sampled pairs' if sampled else 'all pairs'}), "
             f"same class vs different class; each histogram ({params.overlap_bins} bins over the joint range) "
             "sums to 1 and the overlap is their shared area (1: indistinguishable, 0: separated).")
    rows = tuple((Cell(r.task), Cell(f"{r.overlap:.3f}"), Cell(f"{r.same_mean:.3f}"), Cell(f"{r.diff_mean:.3f}"),
                  Cell(f"{r.same_pairs:,}"), Cell(f"{r.diff_pairs:,}"), Cell(f"{r.n_images:,}")) for r in results)
    table = Table("table-overlap", "Overlap per task",
                  ("task", "overlap", "same-class mean cos", "different-class mean cos", "same pairs",
                   "different pairs", "images"), rows)
    fig = Figure("overlap", "Same-class vs different-class similarity",
                 figures.overlap_histograms(results, params.overlap_split))
    return Section("overlap", "Intra-modal overlap", (Text(intro), fig, table))


def _correction_section(inputs: CorrectionInputs | None, tasks: list[str], params: ReportParams) -> Section:
    title = "Overlap correction"
    if inputs is None:
        return Section("correction", title, (Text(
            "No overlap-correction adapter: the `generic:` params section names no generic set (correction off)."),))
    meta = ", ".join(f"{k}: {v}" for k, v in inputs.adapter.items())
    blocks: list[Block] = [
        Text("A residual adapter trained on a generic image set (disjoint from this task) maps the cached "
             "image embeddings. Tip-Adapter(-F) rerun with corrected keys and image-image affinities and "
             "the original embedding for the image-text logits, as in the correction's reference code; "
             "zero-shot on corrected embeddings is the control that shows how far the correction moved "
             f"images away from the text embeddings. Adapter: {meta}."),
        overlap_change_table(inputs.before, inputs.after),
    ]
    if inputs.after:
        blocks.append(Figure("overlap_corrected", "Same-class vs different-class similarity after the correction",
                             figures.overlap_histograms(inputs.after, params.overlap_split)))
    if inputs.pairs:
        order = list(dict.fromkeys((params.headline, "macro_f1")))
        blocks += [with_without_table(inputs.pairs, tasks, m) for m in order]
    else:
        blocks.append(Text("No evaluated <head>_oc runs found (overlap.heads)."))
    return Section("correction", title, tuple(blocks))


def build_report(heads: Sequence[HeadEval], params: ReportParams, *, tasks: Sequence[str] = (),
                 cdul: CdulResults | None = None, overlap: Sequence[OverlapResult] | None = None,
                 correction: CorrectionInputs | None = None,
                 run_params: dict[str, Any] | None = None, identity: dict[str, Any] | None = None,
                 title: str = "clipcache report") -> Report:
    """Every section of the report from loaded inputs (no file access).

    ``heads`` may be empty (a dataset whose tasks are all multi-label): the
    head sections then say so, and CDUL carries the report.
    """
    task_list = task_order(heads, tasks)
    shots = choose_shots(heads, task_list, params.shots) if heads else None
    metric = params.headline
    log.info("report: heads %s, tasks %s, %s shots, headline %s", [h.head for h in heads], task_list, shots, metric)
    if heads:
        sections = _head_sections(heads, task_list, shots, params)
    else:
        sections = [Section("comparison", "Comparison", (Text(
            "No single-label head ran: train.heads is empty (a dataset whose tasks are all multi-label)."),))]
    sections += [
        Section("cdul", "CDUL (unsupervised multi-label)", _cdul_blocks(cdul)),
        _overlap_section(overlap, params),
        _correction_section(correction, task_list, params),
    ]
    run_blocks: list[Block] = []
    if (ident := identity_table(identity)) is not None:
        run_blocks.append(ident)
    if run_params:
        run_blocks.append(Text(yaml.safe_dump(run_params, sort_keys=False, allow_unicode=True), code=True))
    sections.append(Section("params", "Run parameters and cache identity",
                            tuple(run_blocks) or (Text("No params or cache identity given."),)))
    metrics = {r.task: r.summary() for r in overlap or ()}
    for r in correction.after if correction else ():
        metrics.setdefault(r.task, {})["corrected"] = r.summary()
    return Report(title=title, sections=tuple(sections), results=long_table(heads), metrics=metrics,
                  headline=headline_metrics([*heads, *(c for _, c in (correction.pairs if correction else ()))],
                                            task_list, shots, cdul))


def _head_sections(heads: Sequence[HeadEval], task_list: list[str], shots: str, params: ReportParams) -> list[Section]:
    metric = params.headline
    head_names = [h.head for h in heads]
    radar_values = {h.head: {t: v[0] for t in task_list if (v := metric_at(h, t, shots, metric))} for h in heads}
    return [
        _results_section(heads, task_list, shots, params),
        Section("cost", "Trainable parameters and fit time", (cost_table(heads, task_list, shots),)),
        Section("fewshot", "Few-shot curves", (
            Figure(f"fewshot_{metric}", f"{metric} vs shots",
                   figures.fewshot_curves(curves(heads, task_list, metric), metric, head_names),
                   caption="Mean over seeds; the band is ± one standard deviation."),)),
        Section("radar", "Heads across tasks", (
            Figure(f"radar_{metric}", f"{metric} at {shots} shots",
                   figures.radar(radar_values, task_list, metric, shots)),)),
        _confusion_section(heads, task_list, shots, metric),
    ]


def _cdul_blocks(cdul: CdulResults | None) -> tuple[Block, ...]:
    reason = next((r.get("not_applicable") for r in (cdul.pseudo, cdul.classifier) if r), None) if cdul else None
    if reason:
        return (Text(f"Not applicable: {reason}."),)
    return tuple(cdul_tables(cdul)) or (Text("No CDUL outputs found."),)


def write_report(report: Report, out_dir: Path | str, headline: Path | str | None = None) -> dict[str, Path]:
    """Write html, md, figures, the long parquet, overlap.json (and the headline metrics); return their paths."""
    from pipeline.report.html import render_html, render_markdown

    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)  # a declared DVC output even when no figure is drawn (no heads)
    keep = {f"{f.name}.png" for f in report.figures()}
    if fig_dir.is_dir():  # figures of an earlier run that this one no longer makes
        for stale in fig_dir.glob("*.png"):
            if stale.name not in keep:
                stale.unlink()
    paths = {"html": out / "report.html", "md": out / "report.md",
             "results": out / "tables" / "results.parquet", "overlap": out / "overlap.json"}
    if headline is not None:
        paths["headline"] = Path(headline)
        with atomic_path(paths["headline"]) as tmp:
            tmp.write_text(json.dumps(report.headline, indent=2))
    for f in report.figures():
        with atomic_path(fig_dir / f"{f.name}.png") as tmp:
            tmp.write_bytes(f.png)
    with atomic_path(paths["results"]) as tmp:
        pq.write_table(report.results, tmp)
    with atomic_path(paths["overlap"]) as tmp:
        tmp.write_text(json.dumps(report.metrics, indent=2))
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(render_markdown(report, figure_dir="figures"))
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text(render_html(report))
    log.info("wrote %s (%d figures, %d tables, %d result rows)", paths["html"], len(report.figures()),
             len(report.tables()), report.results.num_rows)
    return paths


__all__ = ["Figure", "Text", "Section", "Report", "build_report", "write_report"]
