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
from pipeline.runs import (FINAL, TrainParams, accepts_feature_correction, final_shots, fit_and_predict, fit_final,
                           load_task, needs_text_tower, pinned_params, token_blocks_of, view_set_of, write_predictions)
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
    # Heads are small: on CPU, one thread avoids OpenMP sync costs that dominate tiny matmuls.
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
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
    tower = None
    if needs_text_tower(prototype):
        tower = load_model(model_params, resolve_device(load_section(RuntimeParams, "runtime", params).device))
    predictions, stats = [], []
    chosen = final_shots(train.shots) if train.shots else None
    for task in train.tasks:
        ctx = read_text(text, task, expect=expect)
        if tower is not None:
            ctx = type(ctx)(**{**ctx.__dict__, "model": tower.model, "tokenizer": tower.tokenizer})
        data = load_task(task, table, cache, ctx, token_blocks_of(prototype), view_cache, transform)
        info = {"task": task, "classes": list(data.classes), "text": text_identity(ctx),
                "encoder": encoder_identity(cache.identity), "token_blocks": list(token_blocks_of(prototype)),
                "feature_correction": None if overlap_adapter is None else str(overlap_adapter)}
        selected = None
        for shots in train.shots:
            for seed in train.seeds:
                fitted, preds = fit_and_predict(make_head(head, head_params or {}, shots, task), data, draws, shots, seed)
                predictions.append(preds)
                stats.append({"task": task, "shots": str(shots), "seed": seed, **fitted.fit_stats_,
                              "selects_on_validation": bool(fitted.selects_on_validation)})
                save_head(fitted, out_dir / "models" / f"{task}-{shots}-{seed}", name=head,
                          shots=str(shots), seed=seed, **info)
                if selected is None and str(shots) == str(chosen):
                    selected = fitted
        if selected is not None and final_fit_wanted(head, head_params):
            # the head to label new images with: all labelled rows, validation's choices
            final = fit_final(make_head(head, head_params or {}, chosen, task), data, selected)
            save_head(final, out_dir / FINAL / task, name=head, shots=FINAL, seed=None, **info,
                      selected_on={"shots": str(chosen), "seed": train.seeds[0], "pinned": pinned_params(selected)})
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
