"""Stage `pretrain_demo`: train the small demo CLIP on SynthStreets' pretrain pool."""
from __future__ import annotations

import logging
from pathlib import Path

import typer

from pipeline.params import load_section
from pipeline.pretrain import PretrainParams, run
from stages import expected_errors, setup_logging  # stages/__init__ sets OMP_WAIT_POLICY first


def main(
    data: Path = typer.Option(Path("data/synthstreets"), "--data", help="SynthStreets root (pretrain/, bench/)"),
    checkpoint: Path = typer.Option(Path("models/synthclip-tiny.pt"), "--checkpoint", help="state_dict output"),
    metrics: Path = typer.Option(Path("reports/pretrain_demo.json"), "--metrics", help="zero-shot metrics JSON"),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params file with a `pretrain_demo:` section"),
) -> None:
    """Train, save a plain state_dict to CHECKPOINT and write zero-shot METRICS."""
    setup_logging()
    result = run(load_section(PretrainParams, "pretrain_demo", params), data, checkpoint, metrics)
    for part in ("pretrain_val", "bench_val"):
        if part in result:
            logging.getLogger("stages.pretrain_demo").info("%s: %s", part, result[part])


if __name__ == "__main__":
    typer.run(expected_errors(main))
