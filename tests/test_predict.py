"""The predict command: final fits from the train stage, labelling a folder, bad rows, resume, no re-encode, refusals."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import typer
import yaml
from typer.testing import CliRunner

import pipeline.predict
from pipeline.cache import CacheWriter, FeatureCache, partial_path
from pipeline.features import FeatureSet
from pipeline.modelfile import load_head
from tests.conftest import REPO, write_image
from tests.test_dvc_pipeline import write_tiny_dataset

HEADS = ["zero_shot", "linear_probe", "tip_adapter"]
TASK = "daytime"
RUNS = Path("runs/tiny/micro")


def _invoke(main, args: list[str]):
    app = typer.Typer()
    app.command()(main)
    result = CliRunner().invoke(app, args)
    return result


def _ok(main, args: list[str]) -> None:
    result = _invoke(main, args)
    assert result.exit_code == 0, (result.output, result.exception)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, micro_model):
    """A tiny labelled set run through prepare, fewshot, extract, encode_text and three train stages (in-process)."""
    from stages import encode_text, fewshot, prepare, train
    from stages.extract import app as extract_app

    root = tmp_path_factory.mktemp("predict_repo")
    data = root / "data" / "tiny"
    write_tiny_dataset(data, np.random.default_rng(0))
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["dataset"] = {"name": "tiny", "root": str(data), "layout": "csv", "csv": ["labels.csv"], "image_column": "path",
                    "split_column": "split", "tasks": {TASK: {"type": "single", "column": "daytime"}}}
    p["model"] = {**micro_model, "weights_dep": micro_model["pretrained"]}
    p["runtime"] = {"device": "cpu", "precision": "fp32", "batch_size": 4, "num_workers": 0}
    p["extract"].update(token_blocks=[-1], rows_per_shard=8, rows_per_chunk=4)
    p["fewshot"] = {"shots": [1, 2], "seeds": [1], "val_shots": 2}
    p["train"] = {"heads": HEADS, "tasks": [TASK], "shots": [1, 2], "seeds": [1]}
    p["text"]["templates"] = {"default": ["a photo taken at {}."]}
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    before = os.getcwd()
    os.chdir(root)
    try:
        prep, cache = "data/prepared/tiny", "cache/tiny/micro"
        _ok(prepare.main, ["--out-dir", prep])
        _ok(fewshot.main, ["--manifest", f"{prep}/manifest.parquet", "--out", f"{prep}/fewshot.parquet"])
        result = CliRunner().invoke(extract_app, ["images", "--index", f"{prep}/images.parquet", "--root", str(data),
                                                  "--out", f"{cache}/images.zarr"])
        assert result.exit_code == 0, result.output
        _ok(encode_text.main, ["--manifest", f"{prep}/manifest.parquet", "--out", f"{cache}/text.zarr"])
        for head in HEADS:
            _ok(train.main, ["--head", head, "--manifest", f"{prep}/manifest.parquet", "--fewshot",
                             f"{prep}/fewshot.parquet", "--images", f"{cache}/images.zarr", "--text",
                             f"{cache}/text.zarr", "--out-dir", str(RUNS / head)])
    finally:
        os.chdir(before)
    return root


@pytest.fixture
def in_repo(repo, monkeypatch):
    monkeypatch.chdir(repo)
    return repo


def _photos(repo: Path, dst: Path, bad: bool = True) -> Path:
    """The tiny set's test images in a fresh folder (nested), plus one bad file of each kind."""
    for src in sorted((repo / "data/tiny/test").rglob("*.png")):
        target = dst / "new" / src.parent.name / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    if bad:
        (dst / "empty.jpg").write_bytes(b"")
        (dst / "notes.png").write_text("not an image")
        good = (dst / "new/day/0.png").read_bytes()
        (dst / "truncated.png").write_bytes(good[: len(good) // 2])
        (dst / "folder.jpg").mkdir()
    return dst


def _predict(args: list[str]):
    from stages import expected_errors
    from stages.predict import main

    return _invoke(expected_errors(main), args)


def test_final_fit_exists_for_each_head_and_task(in_repo):
    labelled = 2 * (10 + 4)    # every train and val row of the tiny set
    for head in HEADS:
        assert not list((in_repo / RUNS / head).rglob("*.pkl")), head      # no pickle left anywhere
        final = load_head(in_repo / RUNS / head / "final" / f"{TASK}.json")
        assert final.meta["shots"] == "final" and final.meta["selected_on"]["shots"] == "2"
        assert final.meta["classes"] == ["day", "night"] and final.meta["encoder"]["model"] == "micro-vit-test"
        selected = load_head(in_repo / RUNS / head / "models" / f"{TASK}-2-1.json").head
        if head == "linear_probe":      # validation's C, refitted on all rows
            assert final.head.C == selected.C_ == final.meta["selected_on"]["pinned"]["C"]
        if head == "tip_adapter":       # validation's alpha / beta, a key per labelled row
            assert (final.head.alpha_, final.head.beta_) == (selected.alpha_, selected.beta_)
            assert len(final.head.keys_) == labelled and len(selected.keys_) == 4


def test_predict_labels_a_folder_and_reports_bad_files_as_rows(in_repo, tmp_path):
    photos = _photos(in_repo, tmp_path / "photos")
    result = _predict(["--input", str(photos), "--head", "linear_probe", "--task", TASK, "--csv",
                       "--out", str(tmp_path / "out.parquet")])
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "out.parquet")
    rows = table.to_pylist()
    good = [r for r in rows if r["error"] is None]
    bad = {r["path"]: r["error"] for r in rows if r["error"] is not None}
    assert len(good) == 12 and set(bad) == {"empty.jpg", "notes.png", "truncated.png", "folder.jpg"}
    assert "is a directory" in bad["folder.jpg"] and "undecodable" in bad["truncated.png"]
    for r in good:
        assert r["predicted"] == r["top_classes"][0] and r["probability"] == r["top_probabilities"][0]
        assert sorted(r["top_classes"]) == ["day", "night"] and abs(sum(r["top_probabilities"]) - 1) < 1e-5
    meta = json.loads(table.schema.metadata[b"clipcache"])
    assert (meta["head"], meta["task"], meta["shots"]) == ("linear_probe", TASK, "final")
    assert meta["encoder"]["weights"].startswith("sha256:") and meta["classes"] == ["day", "night"]
    # the same probabilities as the in-memory head on the training cache's features of the same images
    head = load_head(in_repo / RUNS / "linear_probe" / "final" / f"{TASK}.json").head
    dataset = FeatureCache(in_repo / "cache/tiny/micro/images.zarr")
    ids = ["test/" + r["path"].removeprefix("new/") for r in good]
    want = head.predict_proba(FeatureSet(ids=np.array(ids), cls=dataset.read("cls", ids)))
    got = np.array([[p for c, p in sorted(zip(r["top_classes"], r["top_probabilities"]))] for r in good])
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert pacsv.read_csv(tmp_path / "out.csv").num_rows == len(rows)


def test_predicting_again_with_another_head_never_reencodes(in_repo, tmp_path, monkeypatch):
    photos = _photos(in_repo, tmp_path / "again", bad=False)
    args = ["--input", str(photos), "--task", TASK, "--name", "again"]
    assert _predict([*args, "--head", "linear_probe", "--out", str(tmp_path / "a.parquet")]).exit_code == 0

    def forbidden(*a, **k):
        raise AssertionError("the image encoder was loaded")
    monkeypatch.setattr(pipeline.predict, "load_model", forbidden)
    result = _predict([*args, "--head", "tip_adapter", "--shots", "2", "--out", str(tmp_path / "b.parquet")])
    assert result.exit_code == 0, (result.output, result.exception)
    assert pq.read_table(tmp_path / "b.parquet").num_rows == 12
    (photos / "new/day/0.png").write_bytes((photos / "new/night/0.png").read_bytes())   # an edited image
    result = _predict([*args, "--head", "tip_adapter", "--out", str(tmp_path / "c.parquet")])
    assert isinstance(result.exception, AssertionError)        # ... is re-encoded


def test_killed_predict_resumes_where_it_stopped(in_repo, tmp_path, monkeypatch):
    photos = _photos(in_repo, tmp_path / "resume", bad=False)      # 12 images: shards of 8 + 4
    args = ["--input", str(photos), "--head", "zero_shot", "--task", TASK]
    assert _predict([*args, "--name", "whole", "--out", str(tmp_path / "whole.parquet")]).exit_code == 0
    real_write, real_load = CacheWriter.write_shard, pipeline.predict.load_model

    def dying_write(self, shard, values):
        if shard == 1:
            raise KeyboardInterrupt("simulated kill")
        real_write(self, shard, values)
    monkeypatch.setattr(CacheWriter, "write_shard", dying_write)
    out = ["--name", "resumed", "--out", str(tmp_path / "resumed.parquet")]
    try:
        result = _predict([*args, *out])
    except KeyboardInterrupt:
        pass
    else:
        assert result.exit_code == 130, result.output      # click's exit status after a KeyboardInterrupt
    cache = in_repo / "cache/resumed/micro/images.zarr"
    assert not cache.exists() and partial_path(cache).exists() and not (tmp_path / "resumed.parquet").exists()

    monkeypatch.setattr(CacheWriter, "write_shard", real_write)
    encoded: list[int] = []

    def counting_load(*a, **k):
        loaded = real_load(*a, **k)
        forward = loaded.model.encode_image
        loaded.model.encode_image = lambda x, *args, **kw: (encoded.append(len(x)), forward(x, *args, **kw))[1]
        return loaded
    monkeypatch.setattr(pipeline.predict, "load_model", counting_load)
    assert _predict([*args, *out]).exit_code == 0
    assert sum(encoded) == 1 + 4        # the probe row, then only the unfinished shard
    whole, resumed = pq.read_table(tmp_path / "whole.parquet"), pq.read_table(tmp_path / "resumed.parquet")
    assert whole.drop(["error"]).to_pylist() == resumed.drop(["error"]).to_pylist()


def test_a_head_of_another_encoder_is_refused_before_encoding(in_repo, tmp_path):
    src = in_repo / RUNS / "zero_shot" / "final" / f"{TASK}.json"
    other = tmp_path / "other"
    other.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy2(src.with_suffix(suffix), other / src.with_suffix(suffix).name)
    doc = json.loads((other / src.name).read_text())
    doc["encoder"]["weights"] = "sha256:0000"
    (other / src.name).write_text(json.dumps(doc))
    result = _predict(["--input", str(_photos(in_repo, tmp_path / "p", bad=False)), "--model-file",
                       str(other / src.name), "--task", TASK, "--name", "refused", "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2 and "'weights' is 'sha256:0000' in the model file" in result.output
    assert not (in_repo / "cache/refused").exists() and not (tmp_path / "x.parquet").exists()


def test_a_pickled_model_file_is_refused(in_repo, tmp_path):
    (tmp_path / "m.json").write_bytes(pickle.dumps({"head": "zeror"}))
    result = _predict(["--input", str(_photos(in_repo, tmp_path / "p", bad=False)), "--model-file",
                       str(tmp_path / "m.json"), "--task", TASK, "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2 and "is a pickle" in result.output


def test_a_job_of_params_yaml_runs(in_repo, tmp_path):
    p = yaml.safe_load((in_repo / "params.yaml").read_text())
    p["predict"] = {"jobs": {"tinytest": {"input": "data/prepared/tiny/manifest.parquet", "split": "test",
                                          "head": "linear_probe", "task": TASK, "top_k": 1}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert _predict(["--job", "tinytest", "--params", str(tmp_path / "params.yaml")]).exit_code == 0
    table = pq.read_table(in_repo / "predictions/tinytest/predictions.parquet")
    assert table.num_rows == 12 and all(len(v) == 1 for v in table.column("top_classes").to_pylist())
    assert set(table.column("id").to_pylist()) == {i for i in FeatureCache(in_repo / "cache/tinytest/micro/images.zarr").ids}


def test_predict_benchmark_prints_both_rates_and_the_head_share(micro_model, tmp_path):
    import re
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    root = tmp_path / "data" / "katkam_weather"
    lines = ["path,weather,lighting"]
    for i in range(8):
        write_image(root / f"images/{i:03d}.jpg", rng, size=(64, 48))
        lines.append(f"images/{i:03d}.jpg,clear,{['day', 'night'][i % 2]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    common = [sys.executable, str(REPO / "benchmarks" / "predict.py"), "--model", micro_model["name"],
              "--config-dir", micro_model["config_dir"], "--device", "cpu", "--workers", "0", "--batch-size", "4"]
    done = subprocess.run([*common, "--data", str(tmp_path / "data"), "--images", "8"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"extraction alone :\s+\d+(\.\d+)? images/s", done.stdout)
    assert re.search(r"predict          :\s+\d+(\.\d+)? images/s", done.stdout)
    assert re.search(r"head share       :\s+\d+(\.\d+)? %", done.stdout)
    skipped = subprocess.run([*common, "--data", str(tmp_path / "nothing")], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0 and skipped.stdout.startswith("skipped: no katkam photos")
