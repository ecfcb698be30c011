"""Stage `evaluate@<head>`: predictions -> DVC metrics, few-shot plot rows, per-run details."""
import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import typer

from pipeline.evaluate import confusion_rows, fewshot_rows, run_reports, summary
from pipeline.manifest_meta import manifest_meta
from pipeline.files import atomic_path
from stages import expected_errors, setup_logging


def main(
    head: str = typer.Option(..., help="head name (labels the plot rows)"),
    runs: Path = typer.Option(..., help="the head's train output directory"),
    manifest: Path = typer.Option(..., help="manifest.parquet (class names)"),
    out_dir: Path = typer.Option(..., help="directory for metrics.json, details.json, fewshot.csv, confusion.csv"),
) -> None:
    setup_logging()
    classes = {t: info["classes"] for t, info in manifest_meta(pq.read_schema(manifest))["tasks"].items()}
    predictions = pq.read_table(runs / "predictions.parquet")
    reports = run_reports(predictions, classes)
    fit_stats = json.loads((runs / "fit_stats.json").read_text())
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary(reports, fit_stats), indent=2))
    with atomic_path(out_dir / "details.json") as tmp:
        tmp.write_text(json.dumps({"head": head, "runs": reports, "fit": fit_stats}))
    _write_csv(out_dir / "fewshot.csv", ["head", "task", "shots", "accuracy", "macro_f1"], fewshot_rows(head, reports))
    _write_csv(out_dir / "confusion.csv", ["task", "actual", "predicted"], confusion_rows(predictions, classes))


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    typer.run(expected_errors(main))
