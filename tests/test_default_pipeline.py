"""The embedded default through the real dvc.yaml, every stage from `synth` to `report`.

* ``test_small_default_end_to_end`` (default suite): the default params scaled
  down (fewer and smaller images, a short pretraining, fewer shots and seeds),
  so CI runs the whole DAG -- SynthStreets, the demo CLIP, every cache, every
  head, overlap correction, CDUL, the report -- in a few minutes.
* ``test_default_benchmark_semantics`` (slow, ``make test-slow``): the real
  default, then the benchmark's semantics the README promises, with margins
  loose enough to be stable.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from pipeline.modelfile import load_head
from tests.test_dvc_pipeline import DVC, _copy_repo, _edit, _sh

RESULTS = "reports/synthstreets/synthclip-tiny"


def _metrics(repo: Path, head: str) -> dict:
    return json.loads((repo / "evaluation" / head / "metrics.json").read_text())


def _small_demo(p: dict) -> None:
    """demo/params.yaml: the demo's data and model, scaled down."""
    p["synth"].update(n_pretrain=600, n_train=240, n_val=60, n_test=120, heldout_min_per_split=2)
    p["pretrain_demo"].update(max_steps=12, batch_size=64)


def _small(p: dict) -> None:
    p["fewshot"].update(shots=[1, 4, "all"], seeds=[1])
    p["train"].update(shots=[1, 4], seeds=[1])
    for view_set in p["views"].values():
        view_set.update(n=2)
    p["overlap"]["generic_views"].update(n=2)
    p["overlap"]["adapter"].update(epochs=2)
    for name in ("clip_adapter", "coop"):
        p["heads"][name].update(epochs=5, epochs_by_shots={1: 2})
    p["heads"]["clip_mhadapter"].update(epochs=3)
    p["heads"]["tip_adapter_f"].update(epochs=3)
    p["cdul"]["classifier"].update(epochs=4)


def test_small_default_end_to_end(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _copy_repo(repo)
    _edit(repo, _small)
    _edit(repo, _small_demo, "demo/params.yaml")
    _sh(["git", "init", "-q"], repo)
    _sh([*DVC, "repro"], repo)
    assert "changed" not in _sh([*DVC, "status"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    pretrain = json.loads((repo / "reports/pretrain_demo.json").read_text())
    assert pretrain["train"]["steps"] == 12 and pretrain["bench_val"]["n"] == 60
    tasks = params["train"]["tasks"]
    heads = [*params["train"]["heads"], *(f"{h}_oc" for h in params["overlap"]["heads"])]
    for head in heads:
        metrics = _metrics(repo, head)
        assert set(metrics) == set(tasks), head
        for task in tasks:
            assert {k for k in metrics[task] if k.startswith("shots_")} == \
                {f"shots_{k}" for k in params["train"]["shots"]}, (head, task)
        _assert_finite(metrics, head)
    check_predictions_and_draws(repo, params)
    check_zero_shot_above_zeror(repo, tasks)
    for name in ("clip_adapter", "coop"):  # the per-shot schedule reached the fitted heads
        for shots, epochs in ((1, 2), (4, 5)):
            path = repo / f"runs/synthstreets/synthclip-tiny/{name}/models/weather-{shots}-1.json"
            assert load_head(path).head.epochs == epochs, (name, shots)
    for head in params["train"]["heads"]:  # the final fit of every head and task, for `predict`
        final = repo / f"runs/synthstreets/synthclip-tiny/{head}/final"
        if params["heads"][head].get("final", True) is False:  # CoOp's is off in the default (its cost)
            assert not final.exists(), head
            continue
        for task in tasks:
            assert load_head(final / f"{task}.json").meta["task"] == task
    quality = json.loads((repo / "cdul/synthstreets/synthclip-tiny/pseudo/pseudo_quality.json").read_text())
    assert set(quality["mAP"]["test"]) == {"global", "local", "final"}
    _assert_finite(quality, "pseudo_quality")
    _assert_finite(json.loads((repo / "cdul/synthstreets/synthclip-tiny/classifier/metrics.json").read_text()),
                   "cdul classifier")
    html = (repo / RESULTS / "report.html").read_text()
    for section in ("comparison", "fewshot", "cdul", "overlap", "correction", "params"):
        assert f'<section id="{section}">' in html
    assert "trained_on_sha256" not in html  # the adapter is summarised, not dumped with its ids
    overlap = json.loads((repo / RESULTS / "overlap.json").read_text())
    assert set(overlap) == set(tasks) and all("corrected" in v for v in overlap.values())
    _assert_finite(overlap, "overlap")
    headline = json.loads((repo / "reports/metrics.json").read_text())
    assert set(headline) == {"shots", *heads, "cdul"} and headline["shots"] == max(params["train"]["shots"])
    _assert_finite(headline, "headline")
    assert "accuracy" in _sh([*DVC, "metrics", "show", "--json"], repo)


def _assert_finite(tree, where: str) -> None:
    """Every number in a metrics tree is finite (NaN or inf never passes as a result)."""
    numbers = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            numbers.append((path, node))
        elif node is None:
            raise AssertionError(f"{path} is null")
    walk(tree, where)
    assert numbers, where
    bad = [(p, v) for p, v in numbers if not math.isfinite(v)]
    assert not bad, bad


def check_zero_shot_above_zeror(repo: Path, tasks: list[str]) -> None:
    """Zero-shot beats the majority-class floor on chance-corrected balanced accuracy (ZeroR: exactly 0).

    With the small run's 12-step demo CLIP zero-shot is barely above chance, so the
    check is on the mean over tasks (measured: 0.068 vs 0; weather alone is at chance).
    """
    def adjusted(head: str) -> list[float]:
        m = _metrics(repo, head)
        return [m[t][s]["balanced_accuracy_adjusted"] for t in tasks for s in m[t] if s.startswith("shots_")]

    zeror, zero_shot = adjusted("zeror"), adjusted("zero_shot")
    assert max(abs(v) for v in zeror) < 1e-9, zeror
    assert sum(zero_shot) / len(zero_shot) > 0.02, zero_shot


def check_predictions_and_draws(repo: Path, params: dict) -> None:
    """Predictions cover exactly the test split, by id; no test (or val) id was used in fitting."""
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.cache import FeatureCache
    from pipeline.manifest import manifest_meta

    prepared = repo / "data/prepared/synthstreets"
    manifest = pq.read_table(prepared / "manifest.parquet")
    classes = {t: info["classes"] for t, info in manifest_meta(manifest)["tasks"].items()}
    rows = manifest.to_pylist()
    split = {r["id"]: r["split"] for r in rows}
    test = {r["id"] for r in rows if r["split"] == "test"}
    assert test and len(split) == len(rows)

    # few-shot draws: train rows from train, val rows from val, never a test id
    draws = pq.read_table(prepared / "fewshot.parquet").to_pylist()
    assert draws and not {d["id"] for d in draws} & test
    assert all(split[d["id"]] == d["subset"] for d in draws), "a draw took a row from another split"

    def draw(task, shots, seed, subset):
        return sorted(d["id"] for d in draws if (d["task"], d["shots"], d["seed"], d["subset"]) ==
                      (task, str(shots), seed, subset))

    runs = repo / "runs/synthstreets/synthclip-tiny"
    heads = [*params["train"]["heads"], *(f"{h}_oc" for h in params["overlap"]["heads"])]
    for head in heads:
        preds = pq.read_table(runs / head / "predictions.parquet").to_pylist()
        for task in params["train"]["tasks"]:
            labelled = {r["id"]: classes[task].index(r[task]) for r in rows if r[task] is not None}
            for shots in params["train"]["shots"]:
                for seed in params["train"]["seeds"]:
                    got = [p for p in preds if (p["task"], p["shots"], p["seed"]) == (task, str(shots), seed)]
                    test_ids = [p["id"] for p in got if p["subset"] == "test"]
                    where = (head, task, shots, seed)
                    assert sorted(test_ids) == sorted(test & set(labelled)), where  # each test id once
                    assert sorted(p["id"] for p in got if p["subset"] == "val") == draw(task, shots, seed, "val"), where
                    assert {p["subset"] for p in got} == {"val", "test"}, where
                    assert all(p["y_true"] == labelled[p["id"]] for p in got), where

    # what Tip-Adapter fitted: its cache keys are exactly the train draw's rows (mean of their views)
    views = FeatureCache(repo / "cache/synthstreets/synthclip-tiny/views/tip.zarr")
    assert not set(views.ids) & test
    for task in params["train"]["tasks"]:
        for shots in params["train"]["shots"]:
            for seed in params["train"]["seeds"]:
                fitted = load_head(runs / "tip_adapter" / "models" / f"{task}-{shots}-{seed}.json").head
                ids = [d["id"] for d in draws if (d["task"], d["shots"], d["seed"], d["subset"]) ==
                       (task, str(shots), seed, "train")]  # the order the draw lists them in
                # the reference's keys: the mean of the raw (unnormalised) passes, then normalised
                mean = (views.read("views", ids) * views.read("views_norm", ids)[..., None]).mean(axis=1)
                expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
                np.testing.assert_allclose(fitted.keys_, expected, atol=1e-5, err_msg=f"{task}-{shots}-{seed}")

    # the demo CLIP and the overlap adapter trained on the pretrain pool: no test image among them
    from pipeline.overlap_correction.artifact import read_meta
    adapter = read_meta(repo / "adapters/synthstreets_generic/synthclip-tiny/overlap_adapter.pt")
    assert adapter["trained_on"] and not set(adapter["trained_on"]) & test
    target = {r["id"]: r["sha256"] for r in pq.read_table(prepared / "images.parquet").to_pylist()}
    generic = pq.read_table(repo / "data/prepared/synthstreets_generic/images.parquet").column("sha256").to_pylist()
    assert not {target[i] for i in test} & set(generic)


@pytest.mark.slow
def test_default_benchmark_semantics(tmp_path: Path) -> None:
    """The full default (~14 min on 2 idle cores): adapters beat zero-shot, CDUL above the prior, ..."""
    repo = tmp_path / "repo"
    _copy_repo(repo)
    _sh(["git", "init", "-q"], repo)
    _sh([*DVC, "repro"], repo)
    check_semantics(repo)


def check_semantics(repo: Path) -> None:
    """What the README claims of the default run (also usable on a workspace after `make repro`)."""
    bench = json.loads((repo / "reports/pretrain_demo.json").read_text())["bench_val"]
    # zero-shot clearly above chance (measured: weather 0.75 vs 0.38, lighting 0.80 vs 0.54, glare 0.94
    # vs 0.89; glare's 89% majority leaves little room, hence its smaller margin, as in test_pretrain)
    for task, margin in (("weather", 0.04), ("lighting", 0.04), ("glare", 0.02)):
        assert bench[f"{task}_acc"] > bench[f"{task}_majority"] + margin, task
    assert bench["objects_map"] > bench["objects_prior"] + 0.01

    def acc(head: str, task: str = "weather", shots: str = "16") -> float:
        return _metrics(repo, head)[task][f"shots_{shots}"]["accuracy"]

    # The webcam look leaves zero-shot off its ceiling; 16 labelled shots per class recover it.
    # Measured (weather, lighting): zero-shot 0.775, 0.825; linear probe 0.802, 0.947; CoOp 0.836,
    # 0.957; CLIP-MHAdapter 0.842, 0.941; CLIP-Adapter 0.813, 0.939; Tip-Adapter-F 0.818, 0.923;
    # Tip-Adapter 0.785, 0.845; GDA 0.849, 0.980; ProKeR 0.823, 0.969; CLAP 0.844, 0.963;
    # LP++ 0.800, 0.969. Weather's margin is 2 points: the linear probe and LP++ gain 2.5-2.7
    # (seed std 0.05), the others 4-7.
    for task, margin in (("weather", 0.02), ("lighting", 0.08)):
        zero_shot = acc("zero_shot", task)
        for head in ("linear_probe", "coop", "clip_mhadapter", "gda", "proker", "clap", "lp_plusplus"):
            assert acc(head, task) > zero_shot + margin, (head, task, acc(head, task), zero_shot)
        # With the demo CLIP's temperature at CLIP's 100 (not the learned 10.8) these move too.
        for head in ("clip_adapter", "tip_adapter", "tip_adapter_f"):
            assert acc(head, task) > zero_shot + 0.005, (head, task, acc(head, task), zero_shot)
    quality = json.loads((repo / "cdul/synthstreets/synthclip-tiny/pseudo/pseudo_quality.json").read_text())
    test = quality["mAP"]["test"]  # measured: global 0.364, local 0.334, final 0.353 (prior 0.30): tiles do not help
    assert min(test.values()) > bench["objects_prior"] + 0.03, test
