"""SynthStreets generator: determinism, layout, imbalance, held-out pairs, atomic output."""
from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.params import ParamsError, as_dict, load_section
from pipeline.synth import GLARES, LIGHTINGS, OBJECT_CLASSES, WEATHERS, Camera, SynthParams, default_params
from pipeline.synth import effects
from pipeline.synth import dataset
from pipeline.synth.dataset import generate, plan_bench, plan_pretrain
from pipeline.synth.scene import SceneFacts, render

REPO = Path(__file__).resolve().parents[1]
TINY = dict(n_pretrain=40, n_train=30, n_val=10, n_test=20, heldout_min_per_split=2)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _header(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return next(csv.reader(fh))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate(default_params(**TINY), tmp_path_factory.mktemp("a") / "synthstreets")


def test_same_seed_gives_identical_bytes(tiny: Path, tmp_path: Path) -> None:
    again = generate(default_params(**TINY), tmp_path / "synthstreets")
    assert _digest(tiny) == _digest(again)


def test_different_seed_gives_different_images() -> None:
    facts = SceneFacts("clear", "day", "no", ("car",))
    a, _ = render(facts, 96, np.random.default_rng(1))
    b, _ = render(facts, 96, np.random.default_rng(2))
    assert a.tobytes() != b.tobytes()


def test_bench_layout_and_columns(tiny: Path) -> None:
    bench = tiny / "bench"
    for attr, classes in [("weather", WEATHERS), ("lighting", LIGHTINGS), ("glare", GLARES)]:
        assert _header(bench / f"{attr}.csv") == ["path", attr]
        assert {r[attr] for r in _rows(bench / f"{attr}.csv")} <= set(classes)
    assert _header(bench / "objects.csv") == ["path", "objects"]
    assert _header(bench / "splits.csv") == ["path", "split"]
    assert _header(bench / "captions.csv") == ["path", "caption"]
    paths = [r["path"] for r in _rows(bench / "splits.csv")]
    assert len(paths) == 60 and len(set(paths)) == 60
    assert all(re.fullmatch(r"images/s\d{6}\.png", p) for p in paths)
    for name in ("weather", "lighting", "glare", "objects", "captions"):
        assert [r["path"] for r in _rows(bench / f"{name}.csv")] == paths
    with Image.open(bench / paths[0]) as im:
        assert im.size == (96, 96) and im.mode == "RGB"
    assert sorted(p.name for p in (bench / "images").iterdir()) == sorted(Path(p).name for p in paths)


def test_bench_splits_and_objects(tiny: Path) -> None:
    bench = tiny / "bench"
    assert Counter(r["split"] for r in _rows(bench / "splits.csv")) == {"train": 30, "val": 10, "test": 20}
    rows = _rows(bench / "objects.csv")
    plan = plan_bench(default_params(**TINY))
    assert [r["path"] for r in rows] == [p.path for p in plan]
    # Each row lists exactly its planned objects, ';'-joined in OBJECT_CLASSES order.
    assert [r["objects"] for r in rows] == [";".join(p.facts.objects) for p in plan]
    assert len({r["objects"] for r in rows}) > 3  # the rows really differ
    for value in filter(None, (r["objects"] for r in rows)):
        names = value.split(";")
        assert names == [c for c in OBJECT_CLASSES if c in names]
    # ... and what is drawn: every listed class has a box in boxes.csv, and nothing unlisted is drawn.
    drawn: dict[str, set[str]] = {}
    for b in _rows(bench / "boxes.csv"):
        drawn.setdefault(b["path"], set()).add(b["class"])
    for r in rows:
        assert drawn.get(r["path"], set()) == set(filter(None, r["objects"].split(";"))), r
    assert all(r["caption"].endswith(".") for r in _rows(bench / "captions.csv"))


def test_image_without_objects_writes_an_empty_cell(tmp_path: Path) -> None:
    params = default_params(**TINY)
    empty = dataset.Record("s000000", 0, "train", SceneFacts("clear", "day", "no", ()))
    full = dataset.Record("s000001", 1, "test", SceneFacts("rainy", "night", "yes", ("car", "sign")))
    dataset.write_pool(params, "bench", [empty, full], tmp_path / "bench")
    rows = _rows(tmp_path / "bench" / "objects.csv")
    assert [(r["path"], r["objects"]) for r in rows] == [("images/s000000.png", ""), ("images/s000001.png", "car;sign")]
    assert "no notable objects" in _rows(tmp_path / "bench" / "captions.csv")[0]["caption"]


def test_pretrain_layout(tiny: Path) -> None:
    pre = tiny / "pretrain"
    assert _header(pre / "facts.csv") == ["path", "weather", "lighting", "glare", "objects", "split"]
    rows = _rows(pre / "facts.csv")
    assert len(rows) == 40 and Counter(r["split"] for r in rows) == {"train": 36, "val": 4}
    assert all(re.fullmatch(r"images/p\d{6}\.png", r["path"]) and (pre / r["path"]).exists() for r in rows)
    assert [r["path"] for r in _rows(pre / "captions.csv")] == [r["path"] for r in rows]
    bench_names = {p.name for p in (tiny / "bench" / "images").iterdir()}
    assert not bench_names & {Path(r["path"]).name for r in rows}  # disjoint pools


def test_imbalance_by_design() -> None:
    params = default_params(n_pretrain=1, n_train=3000, n_val=1, n_test=1, heldout_min_per_split=0)
    records = plan_bench(params)
    weather = Counter(r.facts.weather for r in records)
    assert weather["clear"] > 3 * weather["foggy"] and weather["clear"] > weather["cloudy"] > weather["snowy"]
    assert abs(weather["clear"] / len(records) - 0.40) < 0.04
    glare = Counter(r.facts.glare for r in records)
    assert glare["yes"] < 0.2 * len(records)


def test_heldout_pairs_absent_from_pretrain_present_in_bench(tiny: Path) -> None:
    pairs = {("snowy", "night"), ("foggy", "dusk_dawn")}
    big = plan_pretrain(default_params(n_pretrain=3000))
    assert not {(r.facts.weather, r.facts.lighting) for r in big} & pairs
    rows = _rows(tiny / "pretrain" / "facts.csv")
    assert not {(r["weather"], r["lighting"]) for r in rows} & pairs
    bench = tiny / "bench"
    weather = {r["path"]: r["weather"] for r in _rows(bench / "weather.csv")}
    lighting = {r["path"]: r["lighting"] for r in _rows(bench / "lighting.csv")}
    summary = json.loads((tiny / "heldout.json").read_text())
    assert {tuple(p) for p in summary["weather_lighting"]} == pairs
    for pair in pairs:
        counts = Counter(s["split"] for s in _rows(bench / "splits.csv")
                         if (weather[s["path"]], lighting[s["path"]]) == pair)
        assert all(counts[split] >= 2 for split in ("train", "val", "test"))
        assert summary["bench_counts"]["+".join(pair)] == {k: counts[k] for k in ("train", "val", "test")}
        assert summary["pretrain_counts"]["+".join(pair)] == 0


def test_atomic_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "synthstreets"
    out.mkdir()
    (out / "old.txt").write_text("previous complete dataset")
    calls = {"n": 0}
    real_render = dataset.render

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("killed mid-run")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(dataset, "render", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate(default_params(**TINY), out)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]  # untouched, never half-written
    monkeypatch.setattr(dataset, "render", real_render)
    generate(default_params(**TINY), out)
    assert not (out / "old.txt").exists() and (out / "bench" / "splits.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthstreets"]  # no .partial left behind


def test_params_validation(tmp_path: Path) -> None:
    good = {k: v for k, v in default_params().__dict__.items()}
    block = yaml.safe_load(yaml.safe_dump({"synth": as_dict(good)}))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(block))
    assert load_section(SynthParams, "synth", path) == default_params()
    block["synth"]["weather_probs"]["clear"] = 0.9
    path.write_text(yaml.safe_dump(block))
    with pytest.raises(ParamsError, match="weather_probs"):
        load_section(SynthParams, "synth", path)
    block["synth"]["wether"] = 1
    path.write_text(yaml.safe_dump(block))
    with pytest.raises(ParamsError, match="synth.wether"):
        load_section(SynthParams, "synth", path)


def test_repo_params_section_loads() -> None:
    # the demo's params live apart from the product's (demo/dvc.yaml reads demo/params.yaml)
    assert isinstance(load_section(SynthParams, "synth", REPO / "demo/params.yaml"), SynthParams)
    assert "synth" not in yaml.safe_load((REPO / "params.yaml").read_text())


def test_stage_cli(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"synth": as_dict(default_params(**TINY))}))
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "stages.synth", "--out", str(out), "--params", str(params)],
                   check=True, cwd=REPO, capture_output=True)
    assert (out / "bench" / "weather.csv").exists() and (out / "heldout.json").exists()


def test_camera_validation() -> None:
    with pytest.raises(ValueError, match="depth"):
        Camera(depth=(0.6, 0.2))
    with pytest.raises(ValueError, match="veil"):
        Camera(veil=1.0)
    with pytest.raises(ValueError, match="cast"):
        Camera(cast=(1.0, 1.0))
    with pytest.raises(ValueError, match="camera"):
        default_params(camera={"bench": Camera()})
    mixed = default_params(camera={"pretrain": Camera(), "bench": {"veil": 0.2, "depth": [0.1, 0.5]}})
    assert mixed.camera["bench"] == Camera(veil=0.2, depth=(0.1, 0.5))


def test_default_cameras_differ_by_pool() -> None:
    """Web-photo pretraining vs. a washed-out wide webcam: the domain shift few-shot heads adapt to."""
    cams = default_params().camera
    pre, bench = cams["pretrain"], cams["bench"]
    assert bench.depth[1] < pre.depth[1] and bench.depth[0] <= pre.depth[0]  # bench objects farther, smaller
    assert bench.veil > pre.veil and bench.saturation < pre.saturation and bench.cast != pre.cast


def test_neutral_camera_look_is_identity() -> None:
    img = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    neutral = Camera()
    out = effects.camera_look(img, neutral.blur, neutral.veil, neutral.veil_colour, neutral.cast, neutral.saturation)
    assert np.array_equal(out, img)


def _contrast_and_green(image: Image.Image) -> tuple[float, float]:
    a = np.asarray(image, np.float32) / 255.0
    return float(a.std()), float(a[..., 1].mean() - a[..., 0].mean())


def test_bench_camera_look_washes_out_and_casts() -> None:
    facts = SceneFacts("clear", "day", "no", ("car", "tree"))
    bench = default_params().camera["bench"]
    plain, _ = render(facts, 96, np.random.default_rng(5), Camera())
    webcam, _ = render(facts, 96, np.random.default_rng(5), Camera(**{**bench.__dict__, "depth": (0.05, 1.0),
                                                                    "depth_power": 1.25}))
    (c0, g0), (c1, g1) = _contrast_and_green(plain), _contrast_and_green(webcam)
    assert c1 < 0.85 * c0  # lower contrast (veil, desaturation, blur)
    assert g1 > g0  # the webcam's cast


def test_camera_depth_sets_object_size() -> None:
    facts = SceneFacts("clear", "day", "no", ("car", "person", "sign"))

    def mean_height(camera: Camera) -> float:
        heights = [b.box[3] - b.box[1] for seed in range(20)
                   for b in render(facts, 96, np.random.default_rng(seed), camera)[1] if b.cls != "building"]
        return float(np.mean(heights))

    assert mean_height(Camera(depth=(0.05, 0.3))) < 0.5 * mean_height(Camera(depth=(0.6, 1.0)))


def test_pools_rendered_with_their_own_camera(tiny: Path) -> None:
    params = default_params(**TINY)
    for pool, prefix, plan in (("bench", "s", plan_bench), ("pretrain", "p", plan_pretrain)):
        record = plan(params)[0]
        expected, _ = render(record.facts, 96, dataset._rng(params, pool, record.index, 1), params.camera[pool])
        with Image.open(tiny / pool / "images" / f"{prefix}000000.png") as im:
            assert np.array_equal(np.asarray(im), np.asarray(expected))
