"""Stage `predict@<job>` and the `predict` command: label new images with a fitted head.

    python -m stages.predict --input new_photos/ --head linear_probe --task weather          # the final fit
    python -m stages.predict --input list.csv --head coop --task weather --shots 16 --seed 1 --csv
    python -m stages.predict --job mine                # an entry of predict.jobs in params.yaml (the DVC stage)
    torchrun --nproc_per_node=4 -m stages.predict ...  # extraction split over processes / GPUs

The head is read from this run's train output (runs/<dataset>/<model.tag>/<head>/) or from
``--model-file``; features go to cache/<name>/<model.tag>/images.zarr (``--name``: the job's
name, else the input's); the table to predictions/<name>.parquet unless ``--out`` says otherwise.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from pipeline.encoders import ModelParams, RuntimeParams
from pipeline.extract import ExtractParams
from pipeline.imageio import DecodeParams
from pipeline.params import ParamsError, from_dict, load_section, read_params
from pipeline.predict import PredictJob, model_file, predict
from pipeline.predict_input import index_input
from stages import expected_errors, setup_logging


def main(
    job: Optional[str] = typer.Option(None, help="name of a predict.jobs entry in the params file (the DVC stage)"),
    input: Optional[Path] = typer.Option(None, help="folder, .csv / .parquet list of paths, or a manifest.parquet"),
    head: Optional[str] = typer.Option(None, help="head name (a train stage's output dir holds its fits)"),
    task: Optional[str] = typer.Option(None, help="task the head was fitted for"),
    shots: str = typer.Option("final", help="'final' (all labelled rows) or the shots of a few-shot fit"),
    seed: int = typer.Option(1, help="seed of a few-shot fit (ignored for final)"),
    model_file_: Optional[Path] = typer.Option(None, "--model-file", help="a model file (.json) instead of --head"),
    name: Optional[str] = typer.Option(None, help="names the cache and the output (default: the job or input name)"),
    out: Optional[Path] = typer.Option(None, help="predictions parquet (default predictions/<name>.parquet)"),
    csv: bool = typer.Option(False, help="also write a CSV beside the parquet"),
    top_k: int = typer.Option(3, help="classes and probabilities kept per image"),
    root: Optional[Path] = typer.Option(None, help="lists: the folder paths are relative to (default: the list's)"),
    path_column: str = typer.Option("path", help="lists: the column of image paths"),
    id_column: Optional[str] = typer.Option(None, help="lists: the column of ids (default: the path)"),
    split: Optional[str] = typer.Option(None, help="only rows of this split (lists / manifests with a split column)"),
    params: Path = typer.Option(Path("params.yaml"), help="params file (model, runtime, decode, extract layout)"),
) -> None:
    setup_logging()
    spec = _job(job, params) if job else PredictJob(
        input=str(_given(input, "--input")), head=head or "", task=_given(task, "--task"), shots=shots, seed=seed,
        root=None if root is None else str(root), path_column=path_column, id_column=id_column, split=split,
        top_k=top_k, csv=csv)
    model = load_section(ModelParams, "model", params)
    if model_file_ is None:
        dataset = (read_params(params).get("dataset") or {}).get("name")
        runs = Path("runs") / str(dataset) / model.tag / _given(spec.head or None, "--head or --model-file")
        model_file_ = model_file(runs, spec.task, spec.shots, spec.seed)
    name = name or job or Path(spec.input.rstrip("/")).stem
    out = out or (Path("predictions") / job / "predictions.parquet" if job else Path("predictions") / f"{name}.parquet")
    extract_layout = load_section(ExtractParams, "extract", params)
    index = index_input(spec.input, spec.root, spec.path_column, spec.id_column, spec.split, spec.verify_images,
                        spec.max_image_pixels)
    predict(index, model_file_, Path("cache") / name / model.tag / "images.zarr", out, model=model,
            runtime=load_section(RuntimeParams, "runtime", params), decode=load_section(DecodeParams, "decode", params),
            layout=replace(extract_layout, token_blocks=()), top_k=spec.top_k, csv=spec.csv,
            extra_meta={"input": spec.input, "job": job})


def _given(value, flag: str):
    if value is None:
        raise ParamsError(f"{flag} is required (or --job NAME for an entry of predict.jobs)")
    return value


def _job(name: str, params: Path) -> PredictJob:
    jobs = (read_params(params).get("predict") or {}).get("jobs") or {}
    if name not in jobs:
        raise ParamsError(f"{params}: no 'predict.jobs.{name}' (jobs: {', '.join(sorted(jobs)) or 'none'})")
    return from_dict(PredictJob, jobs[name], f"predict.jobs.{name}")


if __name__ == "__main__":
    typer.run(expected_errors(main))
