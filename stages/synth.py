"""Stage `synth`: render the SynthStreets dataset (pretrain pool + benchmark)."""
from __future__ import annotations

from pathlib import Path

import typer

from pipeline.params import load_section
from stages import expected_errors, setup_logging
from pipeline.synth import SynthParams
from pipeline.synth.dataset import generate


def main(
    out: Path = typer.Option(Path("data/synthstreets"), "--out", help="output directory (replaced atomically)"),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params file with a `synth:` section"),
) -> None:
    """Render SynthStreets into OUT (bench/ + pretrain/ + heldout.json)."""
    setup_logging()
    generate(load_section(SynthParams, "synth", params), out)


if __name__ == "__main__":
    typer.run(expected_errors(main))
