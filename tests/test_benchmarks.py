"""Smoke runs of benchmarks/*.py: the micro model on a few generated images; each prints its figures."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, write_image

NUMBER = r"(\d+(?:\.\d+)?)"


@pytest.fixture
def katkam_like(tmp_path) -> Path:
    """DATA/katkam_weather/labels.csv (path, weather, lighting) and 12 small JPEGs, in the benchmarks' layout."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data" / "katkam_weather"
    rows = []
    for i in range(12):
        path = f"images/{i:03d}.jpg"
        write_image(root / path, rng, size=(64, 48))
        rows.append({"path": path, "weather": ["clear", "rainy"][i % 2], "lighting": ["day", "night", "dusk"][i % 3]})
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "weather", "lighting"])
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path / "data"


def _run(script: str, micro_model: dict, data: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--model", micro_model["name"],
                           "--config-dir", micro_model["config_dir"], "--data", str(data), "--device", "cpu",
                           "--workers", "0", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_extract_benchmark_prints_throughputs_and_ratio(micro_model, katkam_like):
    out = _run("extract.py", micro_model, katkam_like, "--images", "8", "--batch-size", "4", "--blocks", "-1", "-2")
    assert f"model {micro_model['name']} 64px" in out and "8 katkam_weather JPEGs" in out
    for path in ("pil", "pil+draft", "torchvision"):
        row = re.search(rf"^{re.escape(path)}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, re.M)
        assert row, out
        decoded, forward, stage, ratio, diff = map(float, row.groups())
        assert decoded > 0 and forward > 0 and stage > 0
        assert ratio == pytest.approx(stage / forward, abs=0.01 + 0.01 * ratio)
        assert diff == 0.0 if path == "pil" else diff < 0.05  # the same pictures, up to decode rounding


def test_heads_vs_reencode_benchmark_prints_both_heads(micro_model, katkam_like):
    out = _run("heads_vs_reencode.py", micro_model, katkam_like, "--images", "6", "--epochs", "2",
               "--batch-size", "4", "--extract-batch-size", "4")
    assert "data: 6 katkam JPEGs, task 'lighting' (day 2, dusk 2, night 2); 2 epochs x 2 steps of batch 4" in out
    assert re.search(rf"one-off extraction .*: {NUMBER} s; cache read into memory: {NUMBER} s", out)
    for head in ("clip_adapter", "clip_mhadapter"):
        line = re.search(rf"^{head}\s+2\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+(\S+)$", out, re.M)
        assert line, out
        cached, reencode = float(line.group(1)), float(line.group(2))
        assert cached > 0 and reencode > 0
        per_epoch = re.search(rf"^{head} re-encode per epoch: {NUMBER}, {NUMBER} s$", out, re.M)
        assert per_epoch, out


def test_cache_scale_benchmark_counts_files_and_reads_a_draw_by_id(tmp_path):
    """benchmarks/cache_scale.py on a small cache: one file per shard and array (plus metadata), all figures."""
    out = subprocess.run([sys.executable, "benchmarks/cache_scale.py", "--rows", "2048", "--dim", "16",
                          "--tokens", "5x8", "--rows-per-shard", "256", "--rows-per-chunk", "64",
                          "--dir", str(tmp_path)], cwd=REPO, check=True, capture_output=True, text=True).stdout
    figures = dict(re.findall(r"^(\S.*?)\s{2,}(\S.*)$", out, flags=re.M))
    files = int(figures["files"].replace(",", ""))
    # one file per shard of cls, cls_norm and block-2 (8 shards each), the ids, and zarr.json metadata
    assert 3 * 8 <= files <= 4 * 8 + 8, out
    for key in ("dvc add", "dvc status", "read a 16-shot draw by id (160 rows)", "full sequential scan"):
        assert float(figures[key].split()[0]) >= 0, key
    assert not list(tmp_path.iterdir())  # the temp repo is gone
