"""Stage `report`: one self-contained HTML page, a Markdown summary, PNG figures and a long parquet.

    python -m stages.report --evaluation evaluation --cdul cdul/<dataset>/<model>
        --images cache/<dataset>/<model>/images.zarr --manifest data/prepared/<dataset>/manifest.parquet
        --adapters adapters --out-dir reports/<dataset>/<model> --metrics reports/metrics.json

Heads are ``report.heads`` or else ``train.heads`` (none when it is empty);
``--cdul``, ``--images`` and ``--manifest`` are optional (their sections then say
they are absent). When the ``generic:`` params section names a generic set, its
adapter ``<adapters>/<set>/<model.tag>/overlap_adapter.pt`` corrects the
features, the overlap is measured again, and the ``<head>_oc`` evaluations of
``overlap.heads`` are set against their plain runs. ``--metrics`` is the run's
small headline file (DVC's metrics).
"""
import logging
from pathlib import Path
from typing import Optional

import typer

from pipeline.params import load_section, read_params
from pipeline.report import ReportParams
from pipeline.report.build import build_report, write_report
from pipeline.report.correction import SUFFIX, CorrectionInputs, pair_heads
from pipeline.report.inputs import cache_identity, load_cdul, load_heads, overlap_inputs
from pipeline.report.overlap import task_overlap
from pipeline.runs import TrainParams
from pipeline.errors import UserError
from stages import expected_errors, setup_logging

log = logging.getLogger("stages.report")


def main(
    evaluation: Path = typer.Option(..., help="directory with <head>/metrics.json and details.json"),
    out_dir: Path = typer.Option(..., help="directory for report.html, report.md, figures/, tables/, overlap.json"),
    cdul: Optional[Path] = typer.Option(None, help="cdul/<dataset>/<model> directory (optional)"),
    images: Optional[Path] = typer.Option(None, help="images.zarr: cache identity and overlap figure (optional)"),
    manifest: Optional[Path] = typer.Option(None, help="manifest.parquet: labels for the overlap figure (optional)"),
    adapters: Optional[Path] = typer.Option(None, help="adapters/ directory of the overlap correction (optional)"),
    metrics: Optional[Path] = typer.Option(None, help="headline metrics JSON to write (DVC's metrics file)"),
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
) -> None:
    setup_logging()
    cfg = load_section(ReportParams, "report", params)
    train = load_section(TrainParams, "train", params)
    run_params = read_params(params)
    heads = load_heads(evaluation, list(cfg.heads or train.heads))

    results = []
    by_task = overlap_inputs(manifest, images, cfg.overlap_split) or {}
    for task in [t for t in train.tasks if t in by_task] + sorted(set(by_task) - set(train.tasks)):
        feats, labels = by_task[task]
        results.append(task_overlap(task, feats, labels, bins=cfg.overlap_bins,
                                    max_pairs=cfg.overlap_max_pairs, seed=cfg.seed))
        log.info("overlap %s: %.3f (%d images)", task, results[-1].overlap, len(labels))

    correction = None
    adapter = _adapter_path(adapters, run_params)
    if adapter is not None and by_task:
        correction = _correction(adapter, by_task, results, heads, evaluation, run_params, cfg)

    name = run_params.get("dataset", {}).get("name", "?")
    tag = run_params.get("model", {}).get("tag", "?")
    report = build_report(heads, cfg, tasks=train.tasks, cdul=load_cdul(cdul), overlap=results, correction=correction,
                          run_params=run_params, identity=cache_identity(images),
                          title=f"clipcache report: {name} / {tag}")
    write_report(report, out_dir, headline=metrics)


def _adapter_path(adapters: Path | None, run_params: dict) -> Path | None:
    """The adapter of the one generic set in params (``generic: {}``: the correction is off)."""
    sets = sorted(run_params.get("generic") or {})
    if adapters is None or not sets:
        return None
    if len(sets) > 1:
        raise UserError(f"generic: the report compares one generic set, params name {len(sets)} ({', '.join(sets)})")
    path = adapters / sets[0] / str(run_params.get("model", {}).get("tag")) / "overlap_adapter.pt"
    if not path.is_file():
        raise UserError(f"{path}: no overlap adapter for generic set '{sets[0]}' (run its overlap_adapter stage)")
    return path


def _correction(adapter_path: Path, by_task: dict, before: list, heads: list, evaluation: Path,
                run_params: dict, cfg: ReportParams) -> CorrectionInputs:
    """Overlap on corrected features, and each plain head paired with its evaluated ``<head>_oc``."""
    from pipeline.overlap_correction.artifact import describe, load_correction, read_meta

    transform = load_correction(adapter_path)
    after = []
    for r in before:
        feats, labels = by_task[r.task]
        after.append(task_overlap(r.task, transform(feats), labels, bins=cfg.overlap_bins,
                                  max_pairs=cfg.overlap_max_pairs, seed=cfg.seed))
        log.info("overlap %s after correction: %.3f (before %.3f)", r.task, after[-1].overlap, r.overlap)
    names = [f"{h}{SUFFIX}" for h in run_params.get("overlap", {}).get("heads", [])]
    plain = {h.head: h for h in heads}
    missing = [n.removesuffix(SUFFIX) for n in names if n.removesuffix(SUFFIX) not in plain]
    plain.update({h.head: h for h in load_heads(evaluation, missing)})
    pairs = pair_heads(list(plain.values()), load_heads(evaluation, names))
    return CorrectionInputs(before=before, after=after, pairs=pairs, adapter=describe(read_meta(adapter_path)))


if __name__ == "__main__":
    typer.run(expected_errors(main))
