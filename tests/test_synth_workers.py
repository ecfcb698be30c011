"""SynthStreets renders in several processes; the bytes must not depend on how many."""
from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.synth import default_params
from pipeline.synth import dataset
from pipeline.synth.dataset import generate

TINY = dict(n_pretrain=24, n_train=12, n_val=6, n_test=6, heldout_min_per_split=1)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_one_and_three_render_processes_write_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset, "_render_workers", lambda: 1)
    one = _digest(generate(default_params(**TINY), tmp_path / "one"))
    monkeypatch.setattr(dataset, "_render_workers", lambda: 3)
    three = _digest(generate(default_params(**TINY), tmp_path / "three"))
    assert one == three and len(one) == 24 + 24 + 11  # images of both pools + their CSVs and heldout.json
