"""The real dvc.yaml on a tiny dataset and micro model: edits rerun exactly the dependent stages.

The repo is copied to a temp dir, params.yaml is pointed at a generated folder
dataset and a micro open_clip checkpoint (so the synth/pretrain stages are not
upstream of anything), the pipeline runs with `dvc repro`, and then
`dvc repro --dry` tells which stages each kind of edit would rerun.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DVC = [sys.executable, "-m", "dvc"]
HEADS = ["zero_shot", "linear_probe"]
TARGETS = ["--glob", "evaluate@*", "evaluate_oc@*", "extract_tiles"]
OC_HEADS = ["zero_shot"]


def _copy_repo(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "dvc.lock").unlink(missing_ok=True)


def _sh(cmd: list[str], cwd: Path) -> str:
    # dvc.yaml commands say `python`: it must be the interpreter running the tests
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cwd)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def _would_run(repo: Path) -> set[str]:
    """Stages whose own inputs changed (`--dry` cannot see past outputs that may come out identical)."""
    out = _sh([*DVC, "repro", "--dry", *TARGETS], repo)
    return set(re.findall(r"Running stage '([^']+)'", out))


def _rerun(repo: Path) -> set[str]:
    """Stages that actually run: DVC stops where a rerun stage's outputs come out unchanged."""
    out = _sh([*DVC, "repro", *TARGETS], repo)
    return set(re.findall(r"Running stage '([^']+)'", out))


def _edit(repo: Path, change) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    change(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory, micro_model) -> Path:
    from tests.conftest import write_image
    import numpy as np

    repo = tmp_path_factory.mktemp("repo")
    _copy_repo(repo)
    data = tmp_path_factory.mktemp("data") / "daynight"
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 4), ("test", 6)):
        for cls, tint in (("day", (60, 60, 0)), ("night", (0, 0, 60))):
            for i in range(n):
                write_image(data / split / cls / f"{i}.png", rng, tint=tint)

    generic = tmp_path_factory.mktemp("data") / "generic"
    for cls, tint in (("red", (80, 0, 0)), ("green", (0, 80, 0)), ("blue", (0, 0, 80))):
        for i in range(8):
            write_image(generic / "train" / cls / f"{i}.png", rng, tint=tint)

    def tiny(p):
        p["dataset"] = {"name": "tiny", "root": str(data), "layout": "folders", "tasks": {"daytime": {"type": "single"}}}
        p["model"] = {**micro_model, "weights_dep": micro_model["pretrained"]}
        p["runtime"] = {"device": "cpu", "precision": "fp32", "batch_size": 16, "num_workers": 0}
        p["extract"].update(rows_per_shard=16, rows_per_chunk=8)
        p["tiles"].update(grid=2, rows_per_shard=16, rows_per_chunk=8)
        p["fewshot"] = {"shots": [1, 2], "seeds": [1], "val_shots": 2}
        p["train"] = {"heads": HEADS, "tasks": ["daytime"], "shots": [1, 2], "seeds": [1]}
        p["text"]["templates"] = {"default": ["a photo taken at {}."]}
        p["views"].update(n=2, rows_per_shard=16, rows_per_chunk=8)
        p["generic"] = {"name": "tinygen", "root": str(generic), "layout": "folders",
                        "tasks": {"colour": {"type": "single"}}}
        p["overlap"]["heads"] = OC_HEADS
        p["overlap"]["generic_task"] = "colour"
        p["overlap"]["generic_views"].update(n=2, rows_per_shard=16, rows_per_chunk=8)
        p["overlap"]["adapter"].update(epochs=2, batch_size=16)
    _edit(repo, tiny)
    _sh(["git", "init", "-q"], repo)
    _sh([*DVC, "repro", *TARGETS], repo)
    return repo


def test_pipeline_runs_and_is_up_to_date(pipeline_repo):
    assert _would_run(pipeline_repo) == set()
    for head in HEADS:
        assert (pipeline_repo / "evaluation" / head / "metrics.json").is_file()
    assert (pipeline_repo / "cache/tiny/micro/images.zarr/zarr.json").is_file()
    shown = _sh([*DVC, "metrics", "show", "--json"], pipeline_repo)
    assert "accuracy" in shown


def test_prompt_edit_reruns_text_and_heads_not_extraction(pipeline_repo):
    _edit(pipeline_repo, lambda p: p["text"]["templates"].update(default=["a street at {}."]))
    heads = {f"{s}@{h}" for s in ("train", "evaluate") for h in HEADS}
    corrected = {f"{s}@{h}" for s in ("train_oc", "evaluate_oc") for h in OC_HEADS}
    assert _rerun(pipeline_repo) == {"encode_text", *heads, *corrected}


def test_head_param_edit_reruns_only_that_head(pipeline_repo):
    _edit(pipeline_repo, lambda p: p["heads"]["linear_probe"].update(max_iter=500))
    assert _rerun(pipeline_repo) == {"train@linear_probe", "evaluate@linear_probe"}


def test_label_only_edit_keeps_the_image_cache(pipeline_repo):
    # a label-side edit (the task's class order) changes the manifest but no image
    _edit(pipeline_repo, lambda p: p["dataset"]["tasks"]["daytime"].update(classes=["night", "day"]))
    ran = _rerun(pipeline_repo)
    assert {"prepare", "fewshot", "encode_text", "train@zero_shot"} <= ran
    # images.parquet and splits.parquet came out identical; the generic set is another dataset
    assert not ran & {"extract", "extract_tiles", "extract_views", "prepare_generic", "extract_generic_views",
                      "overlap_adapter"}


def test_overlap_adapter_trains_on_the_generic_set_only(pipeline_repo):
    import pyarrow.parquet as pq
    from pipeline.cache import FeatureCache
    from pipeline.overlap_correction.artifact import read_meta

    meta = read_meta(pipeline_repo / "adapters/tinygen/micro/overlap_adapter.pt")
    generic = pq.read_table(pipeline_repo / "data/prepared/tinygen/manifest.parquet").column("id").to_pylist()
    target = pq.read_table(pipeline_repo / "data/prepared/tiny/manifest.parquet").column("id").to_pylist()
    views = FeatureCache(pipeline_repo / "cache/tinygen/micro/views.zarr")
    assert sorted(meta["trained_on"]) == sorted(generic) == sorted(views.ids)
    assert not set(meta["trained_on"]) & set(target)
    # The target's views cache holds its training rows only.
    train = pq.read_table(pipeline_repo / "data/prepared/tiny/splits.parquet").to_pylist()
    assert sorted(FeatureCache(pipeline_repo / "cache/tiny/micro/views.zarr").ids) == \
        sorted(r["id"] for r in train if r["split"] == "train")


def test_adapter_edit_reruns_adapter_and_corrected_heads_only(pipeline_repo):
    _edit(pipeline_repo, lambda p: p["overlap"]["adapter"].update(epochs=3))
    corrected = {f"{s}@{h}" for s in ("train_oc", "evaluate_oc") for h in OC_HEADS}
    assert _rerun(pipeline_repo) == {"overlap_adapter", *corrected}


def test_corrected_heads_never_run_the_encoder(pipeline_repo, monkeypatch, tmp_path):
    """train_oc reads caches and the adapter only: building any open_clip model fails the test."""
    import open_clip
    import pyarrow.parquet as pq
    from typer.testing import CliRunner
    import typer

    import pipeline.encoders
    from stages.train import main

    def forbidden(*args, **kwargs):
        raise AssertionError("the image encoder was built")
    for name in ("create_model", "create_model_and_transforms"):
        monkeypatch.setattr(open_clip, name, forbidden)
    monkeypatch.setattr(pipeline.encoders, "load_model", forbidden)
    monkeypatch.setattr("stages.train.load_model", forbidden)
    monkeypatch.chdir(pipeline_repo)
    app = typer.Typer()
    app.command()(main)
    prep, cache = "data/prepared/tiny", "cache/tiny/micro"
    result = CliRunner().invoke(app, [
        "--head", "tip_adapter", "--manifest", f"{prep}/manifest.parquet", "--fewshot", f"{prep}/fewshot.parquet",
        "--images", f"{cache}/images.zarr", "--text", f"{cache}/text.zarr", "--views", f"{cache}/views.zarr",
        "--overlap-adapter", "adapters/tinygen/micro/overlap_adapter.pt", "--out-dir", str(tmp_path / "oc")])
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "oc" / "predictions.parquet").num_rows > 0


def test_model_edit_reruns_extraction(pipeline_repo):
    _edit(pipeline_repo, lambda p: p["model"].update(seed=1, pretrained=None))
    assert {"extract", "extract_tiles", "extract_views", "extract_generic_views", "encode_text"} \
        <= _would_run(pipeline_repo)
