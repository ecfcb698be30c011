"""Stage `fewshot`: manifest.parquet -> fewshot.parquet (ids of every K-shot draw)."""
from pathlib import Path

import pyarrow.parquet as pq
import typer

from pipeline.fewshot import FewShotParams, draw_fewshot
from pipeline.params import load_section
from pipeline.files import atomic_path
from stages import expected_errors, setup_logging


def main(
    manifest: Path = typer.Option(..., help="manifest.parquet from the prepare stage"),
    out: Path = typer.Option(..., help="fewshot.parquet to write"),
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
) -> None:
    setup_logging()
    draws = draw_fewshot(pq.read_table(manifest), load_section(FewShotParams, "fewshot", params))
    with atomic_path(out) as tmp:
        pq.write_table(draws, tmp)


if __name__ == "__main__":
    typer.run(expected_errors(main))
