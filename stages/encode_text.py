"""Stage `encode_text`: class-name prompts of every task -> text.zarr."""
from pathlib import Path

import pyarrow.parquet as pq
import typer

from pipeline.encoders import ModelParams, RuntimeParams, load_model, resolve_device
from pipeline.manifest_meta import manifest_meta
from pipeline.params import load_section
from pipeline.text import TextParams, write_text_cache
from stages import expected_errors, setup_logging


def main(
    manifest: Path = typer.Option(..., help="manifest.parquet (its metadata holds the class lists)"),
    out: Path = typer.Option(..., help="text.zarr to write"),
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
) -> None:
    setup_logging()
    model_params = load_section(ModelParams, "model", params)
    runtime = load_section(RuntimeParams, "runtime", params)
    text = load_section(TextParams, "text", params)
    meta = manifest_meta(pq.read_schema(manifest))
    tasks = {name: info["classes"] for name, info in meta["tasks"].items()}
    write_text_cache(out, load_model(model_params, resolve_device(runtime.device)), tasks, text)


if __name__ == "__main__":
    typer.run(expected_errors(main))
