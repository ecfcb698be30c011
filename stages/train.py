"""Stages `train@<head>` and `train_oc@<head>`: fit one head for every task x shots x seed on cached features.

With ``--overlap-adapter`` (stage ``train_oc``) the image embeddings and views
pass through the overlap-correcting adapter first; only heads that read image
embeddings alone accept it (zero_shot, tip_adapter, tip_adapter_f).
"""
import json
from pathlib import Path
from typing import Optional

import pyarrow.parquet as pq
import torch
import typer

from pipeline.cache import FeatureCache
from pipeline.encoders import ModelParams, RuntimeParams, load_model, resolve_device, weights_identity
from pipeline.params import load_section, read_params
from pipeline.heads import make_head
from pipeline.heads.base import final_fit_wanted
from pipeline.imageio import expected_decode
from pipeline.modelfile import encoder_identity, save_head, text_identity
from pipeline.fit_pool import map_fits, one_thread_per_fit, resolve_jobs
from pipeline.runs import (FINAL, TrainParams, accepts_feature_correction, final_pins, final_shots, fit_and_predict,
                           fit_final, load_task, needs_text_tower, pinned_params, token_blocks_of, view_set_of,
                           write_predictions)
from pipeline.text import read_text
from pipeline.files import atomic_path
from pipeline.errors import UserError
from stages import expected_errors, setup_logging


def main(
    head: str = typer.Option(..., help="registered head name (pipeline.heads.HEADS)"),
    manifest: Path = typer.Option(..., help="manifest.parquet"),
    fewshot: Path = typer.Option(..., help="fewshot.parquet"),
    images: Path = typer.Option(..., help="images.zarr feature cache"),
    text: Path = typer.Option(..., help="text.zarr"),
    views_dir: Optional[Path] = typer.Option(None, help="directory of named view sets <name>.zarr (optional)"),
    overlap_adapter: Optional[Path] = typer.Option(None, help="overlap-correction adapter to apply (optional)"),
    out_dir: Path = typer.Option(..., help="directory for predictions, fitted heads, fit stats"),
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
) -> None:
    setup_logging()
    if not torch.cuda.is_available():
        one_thread_per_fit()  # in this process and in every fit worker (pipeline.fit_pool)
    train = load_section(TrainParams, "train", params)
    model_params = load_section(ModelParams, "model", params)
    head_params = read_params(params).get("heads", {}).get(head)
    prototype = make_head(head, head_params or {})
    expect = weights_identity(model_params)
    image_expect = {**expect, **expected_decode(params)}
    cache = FeatureCache(images, expect=image_expect)
    view_cache = open_view_set(head, view_set_of(prototype), views_dir, image_expect)
    transform = None
    if overlap_adapter is not None:
        if not accepts_feature_correction(prototype):
            raise typer.BadParameter(f"head '{head}' does not accept a feature correction "
                                     "(overlap.heads may list zero_shot, tip_adapter, tip_adapter_f)")
        from pipeline.overlap_correction.artifact import load_correction  # only train_oc depends on it
        transform = load_correction(overlap_adapter, expect=expect)
    table, draws = pq.read_table(manifest), pq.read_table(fewshot)
    runtime = load_section(RuntimeParams, "runtime", params)
    tower = None
    if needs_text_tower(prototype):
        tower = load_model(model_params, resolve_device(runtime.device))
    tasks = {}
    for task in train.tasks:
        ctx = read_text(text, task, expect=expect)
        if tower is not None:
            ctx = type(ctx)(**{**ctx.__dict__, "model": tower.model, "tokenizer": tower.tokenizer})
        data = load_task(task, table, cache, ctx, token_blocks_of(prototype), view_cache, transform)
        tasks[task] = data, {"task": task, "classes": list(data.classes), "text": text_identity(ctx),
                             "encoder": encoder_identity(cache.identity),
                             "token_blocks": list(token_blocks_of(prototype)),
                             "feature_correction": None if overlap_adapter is None else str(overlap_adapter)}

    chosen = final_shots(train.shots) if train.shots else None

    def fit_draw(job: tuple[str, int | str, int]) -> tuple:
        task, shots, seed = job
        data, info = tasks[task]
        fitted, preds = fit_and_predict(make_head(head, head_params or {}, shots, task), data, draws, shots, seed)
        save_head(fitted, out_dir / "models" / f"{task}-{shots}-{seed}", name=head,
                  shots=str(shots), seed=seed, **info)
        stats = {"task": task, "shots": str(shots), "seed": seed, **fitted.fit_stats_,
                 "selects_on_validation": bool(fitted.selects_on_validation)}
        return preds, stats, (pinned_params(fitted), final_pins(fitted))

    def fit_task_final(task: str) -> None:
        # the head to label new images with: all labelled rows, validation's choices
        data, info = tasks[task]
        final = fit_final(make_head(head, head_params or {}, chosen, task), data, selected[task][1])
        save_head(final, out_dir / FINAL / task, name=head, shots=FINAL, seed=None, **info,
                  selected_on={"shots": str(chosen), "seed": train.seeds[0], "pinned": selected[task][0]})

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    jobs = [(task, shots, seed) for task in train.tasks for shots in train.shots for seed in train.seeds]
    results = map_fits(fit_draw, jobs, resolve_jobs(runtime.fit_jobs, len(jobs), device_type))
    predictions, stats = [r[0] for r in results], [r[1] for r in results]
    selected = {}  # task -> pins of its first draw at the chosen shot count (first seed)
    for (task, shots, _), result in zip(jobs, results):
        if str(shots) == str(chosen):
            selected.setdefault(task, result[2])
    if final_fit_wanted(head, head_params):
        finals = [task for task in train.tasks if task in selected]
        map_fits(fit_task_final, finals, resolve_jobs(runtime.fit_jobs, len(finals), device_type))
    write_predictions(predictions, out_dir / "predictions.parquet")
    with atomic_path(out_dir / "fit_stats.json") as tmp:
        tmp.write_text(json.dumps(stats, indent=1))


def open_view_set(head: str, name: str | None, views_dir: Path | None, expect: dict) -> FeatureCache | None:
    """The head's view set ``<views_dir>/<name>.zarr`` (its ``views`` param), or None when it reads none."""
    if name is None or views_dir is None:
        return None
    path = views_dir / f"{name}.zarr"
    if not path.exists():
        have = sorted(p.stem for p in views_dir.glob("*.zarr")) if views_dir.is_dir() else []
        raise UserError(f"heads.{head}.views: no view set '{name}' ({path} does not exist; "
                        f"the sets of `views:` are {have})")
    return FeatureCache(path, expect=expect)


if __name__ == "__main__":
    typer.run(expected_errors(main))
