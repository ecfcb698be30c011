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
from pathlib import Path

import pytest
import yaml

from tests.test_dvc_pipeline import DVC, _copy_repo, _edit, _sh

RESULTS = "reports/synthstreets/synthclip-tiny"


def _metrics(repo: Path, head: str) -> dict:
    return json.loads((repo / "evaluation" / head / "metrics.json").read_text())


def _small(p: dict) -> None:
    p["synth"].update(n_pretrain=600, n_train=240, n_val=60, n_test=120, heldout_min_per_split=2)
    p["pretrain_demo"].update(max_steps=12, batch_size=64, time_budget_s=600.0)
    p["fewshot"].update(shots=[1, 4, "all"], seeds=[1])
    p["train"].update(shots=[1, 4], seeds=[1])
    p["views"].update(n=2)
    p["overlap"]["generic_views"].update(n=2)
    p["overlap"]["adapter"].update(epochs=2)
    for name in ("clip_adapter", "coop"):
        p["heads"][name].update(epochs=5)
    p["heads"]["clip_mhadapter"].update(epochs=3)
    p["heads"]["tip_adapter_f"].update(epochs=3)
    p["cdul"]["classifier"].update(epochs=4)


def test_small_default_end_to_end(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _copy_repo(repo)
    _edit(repo, _small)
    _sh(["git", "init", "-q"], repo)
    _sh([*DVC, "repro"], repo)
    assert "changed" not in _sh([*DVC, "status"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    pretrain = json.loads((repo / "reports/pretrain_demo.json").read_text())
    assert pretrain["train"]["steps"] == 12 and pretrain["bench_val"]["n"] == 60
    for head in params["train"]["heads"]:
        assert set(_metrics(repo, head)) == set(params["train"]["tasks"])
    for head in params["overlap"]["heads"]:
        assert set(_metrics(repo, f"{head}_oc")) == set(params["train"]["tasks"])
    quality = json.loads((repo / "cdul/synthstreets/synthclip-tiny/pseudo/pseudo_quality.json").read_text())
    assert set(quality["mAP"]["test"]) == {"global", "local", "final"}
    html = (repo / RESULTS / "report.html").read_text()
    for section in ("comparison", "fewshot", "cdul", "overlap", "correction", "params"):
        assert f'<section id="{section}">' in html
    assert "trained_on_sha256" not in html  # the adapter is summarised, not dumped with its ids
    overlap = json.loads((repo / RESULTS / "overlap.json").read_text())
    assert set(overlap) == set(params["train"]["tasks"]) and all("corrected" in v for v in overlap.values())
    assert "accuracy" in _sh([*DVC, "metrics", "show", "--json"], repo)


@pytest.mark.slow
def test_default_benchmark_semantics(tmp_path: Path) -> None:
    """The full default (~15 min on 2 idle cores): adapters beat zero-shot, tiles beat global, ..."""
    repo = tmp_path / "repo"
    _copy_repo(repo)
    _sh(["git", "init", "-q"], repo)
    _sh([*DVC, "repro"], repo)
    check_semantics(repo)


def check_semantics(repo: Path) -> None:
    """What the README claims of the default run (also usable on a workspace after `make repro`)."""
    bench = json.loads((repo / "reports/pretrain_demo.json").read_text())["bench_val"]
    for task in ("weather", "lighting", "glare"):  # zero-shot clearly above chance
        assert bench[f"{task}_acc"] > bench[f"{task}_majority"] + 0.04, task
    assert bench["objects_map"] > bench["objects_prior"] + 0.01

    def acc(head: str, task: str = "weather", shots: str = "16") -> float:
        return _metrics(repo, head)[task][f"shots_{shots}"]["accuracy"]

    # The webcam look leaves zero-shot off its ceiling; 16 labelled shots per class recover it.
    # Measured: zero-shot 0.808; linear probe 0.895, CoOp 0.854, CLIP-MHAdapter 0.905, Tip-Adapter-F 0.823.
    # (CLIP-Adapter and training-free Tip-Adapter stay at zero-shot: see the README's results.)
    zero_shot = acc("zero_shot")
    for head in ("linear_probe", "coop", "clip_mhadapter"):
        assert acc(head) > zero_shot + 0.03, (head, acc(head), zero_shot)
    assert acc("tip_adapter_f") > zero_shot, (acc("tip_adapter_f"), zero_shot)
    quality = json.loads((repo / "cdul/synthstreets/synthclip-tiny/pseudo/pseudo_quality.json").read_text())
    test = quality["mAP"]["test"]  # measured: global 0.360, final 0.365 (val: 0.371, 0.388)
    assert test["final"] > test["global"], test
