"""Stage `pretrain_demo`: train the small demo CLIP on SynthStreets' pretrain pool."""
from __future__ import annotations

import logging
import os
from pathlib import Path

# Before torch loads OpenMP: idle worker threads sleep instead of spinning. Alone this
# costs ~10% per step; when another stage shares the 2 cores, spinning threads of both
# processes made each step ~10x slower (measured). Set OMP_WAIT_POLICY explicitly to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from pipeline.params import load_section  # noqa: E402
from pipeline.pretrain import PretrainParams, run  # noqa: E402
from stages import expected_errors, setup_logging  # noqa: E402


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
