"""Layout ``global_streetscapes``: a manual_labels tree built from real katkam photos.

Splits come from the train/ and test/ folders (test wins), val is carved from train,
seeded and stratified; labels are stripped and lower-cased ("dawn/dusk" survives).
"""
from __future__ import annotations

import csv
import re
import math
import shutil
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pipeline.manifest import DatasetParams, ManifestError, TaskSpec, build_manifest, manifest_meta
from pipeline.params import load_section

LIGHTING = {"day": "day", "night": "Night", "dawn_dusk": "Dawn/Dusk "}  # katkam -> GSS spelling, messy case
WEATHER_CASE = {"clear": " Clear", "cloudy": "CLOUDY", "rainy": "rainy"}


def _katkam(shared_data: Path, per_class: int) -> list[dict]:
    """``per_class`` labelled katkam rows per weather class (clear, cloudy, rainy)."""
    with (shared_data / "katkam_weather" / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for weather in WEATHER_CASE:
        out += [r for r in rows if r["weather"] == weather][:per_class]
    return out


def _write(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])


@pytest.fixture
def gss(shared_data: Path, tmp_path: Path) -> dict:
    """48 photos: 36 in train CSVs, 12 in test CSVs; one test image also sits in train/weather.csv."""
    return build_gss(shared_data, tmp_path / "manual_labels", _katkam(shared_data, 16))


def build_gss(shared_data: Path, root: Path, katkam_rows: list[dict]) -> dict:
    """A manual_labels tree of these katkam rows: every 4th in test/, the rest in train/; one test image leaks.

    Returns the root, ``records`` (img_path, uuid, split, weather, lighting as written) and
    ``leak``, the img_path of the test image also listed in train/weather.csv.
    """
    records = []
    for i, rec in enumerate(katkam_rows):
        uid = str(uuid.UUID(int=i + 1))
        rel = f"img/{i % 7 + 1}/{uid}.jpeg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / "katkam_weather" / rec["path"], root / rel)
        split = "test" if i % 4 == 3 else "train"
        records.append((rel, uid, split, WEATHER_CASE[rec["weather"]], LIGHTING[rec["lighting"]]))
    for split in ("train", "test"):
        mine = [r for r in records if r[2] == split]
        _write(root / split / "weather.csv", ["uuid", "source", "weather", "img_path"],
               [[uid, "katkam", w, rel] for rel, uid, _, w, _ in mine])
        _write(root / split / "lighting_condition.csv", ["uuid", "lighting_condition", "img_path"],
               [[uid, light, rel] for rel, uid, _, _, light in mine])
    leak = next(r for r in records if r[2] == "test")
    with (root / "train" / "weather.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow([leak[1], "katkam", leak[3], leak[0]])
    return {"root": root, "records": records, "leak": leak[0]}


def _params(root: Path, **kw) -> DatasetParams:
    base = dict(name="gss", root=str(root), layout="global_streetscapes",
                tasks={"weather": TaskSpec(type="single"),
                       "lighting": TaskSpec(type="single", column="lighting_condition")})
    return DatasetParams(**{**base, **kw})


def test_rows_splits_and_normalised_classes(gss):
    table, skipped = build_manifest(_params(gss["root"]))
    assert skipped == [] and table.num_rows == 48
    rows = {r["id"]: r for r in table.to_pylist()}
    official_test = {rel for rel, _, split, _, _ in gss["records"] if split == "test"}
    assert {i for i, r in rows.items() if r["split"] == "test"} == official_test  # the leak stays in test
    assert gss["leak"] in official_test and rows[gss["leak"]]["split"] == "test"
    meta = manifest_meta(table)
    assert meta["tasks"]["weather"]["classes"] == ["clear", "cloudy", "rainy"]
    assert "dawn/dusk" in meta["tasks"]["lighting"]["classes"]
    assert set(meta["tasks"]["lighting"]["classes"]) <= {"day", "night", "dawn/dusk"}
    assert meta["layout"]["name"] == "global_streetscapes"
    assert meta["layout"]["label_case"] == "lower" and meta["layout"]["label_strip"] is True
    assert meta["layout"]["test_images_also_in_train_csvs"] == 1
    assert all(r["path"].startswith("img/") and r["path"].endswith(".jpeg") for r in rows.values())


def test_val_is_carved_from_train_seeded_and_stratified(gss):
    table, _ = build_manifest(_params(gss["root"]))
    again, _ = build_manifest(_params(gss["root"]))
    assert table.column("split").to_pylist() == again.column("split").to_pylist()
    other_seed, _ = build_manifest(_params(gss["root"], split_seed=7))
    assert table.column("split").to_pylist() != other_seed.column("split").to_pylist()
    rows = table.to_pylist()
    pool = [r for r in rows if r["split"] in ("train", "val")]
    assert len(pool) == 36
    for weather, n in Counter(r["weather"] for r in pool).items():
        val = sum(r["split"] == "val" and r["weather"] == weather for r in pool)
        assert math.floor(0.2 * n) <= val <= math.ceil(0.2 * n), weather  # every stratum keeps its share
    wider, _ = build_manifest(_params(gss["root"], val_fraction=0.5))
    assert wider.column("split").to_pylist().count("val") == 18


def test_label_case_keep_and_uuid_ids(gss):
    table, _ = build_manifest(_params(gss["root"], label_case="keep", id_column="uuid"))
    meta = manifest_meta(table)
    assert meta["tasks"]["weather"]["classes"] == ["CLOUDY", "Clear", "rainy"]  # stripped, case kept
    assert "Dawn/Dusk" in meta["tasks"]["lighting"]["classes"]
    assert meta["layout"]["label_case"] == "keep"
    assert all(len(i) == 36 and i.count("-") == 4 for i in table.column("id").to_pylist())


def test_one_attribute_task(gss):
    table, _ = build_manifest(_params(gss["root"], tasks={"glare_free": TaskSpec(type="single", column="weather")}))
    assert table.column_names == ["id", "path", "split", "glare_free"]
    assert manifest_meta(table)["layout"]["attributes"] == {"glare_free": "weather"}


def test_malformed_csvs_named_by_file_and_row(gss):
    root = gss["root"]
    weather = root / "train" / "weather.csv"
    where = re.escape(str(weather))
    lines = weather.read_text().splitlines()
    parts = lines[3].split(",")
    weather.write_text("\n".join(lines + [",".join([parts[0], "katkam", "snowy", parts[3]])]) + "\n")
    with pytest.raises(ManifestError, match=rf"{where}:{len(lines) + 1}: 'weather' is 'snowy' here but '\w+' at "):
        build_manifest(_params(root))
    weather.write_text("\n".join(lines + ["x,katkam,clear,"]) + "\n")
    with pytest.raises(ManifestError, match=rf"{where}:{len(lines) + 1}: empty 'img_path' cell"):
        build_manifest(_params(root))
    weather.write_text("uuid,source,weather,path\n")
    with pytest.raises(ManifestError, match=rf"{where}: no column 'img_path' \(dataset.image_column\)"):
        build_manifest(_params(root))


def test_params_errors_name_the_key(gss):
    root = gss["root"]
    with pytest.raises(ManifestError, match=r"dataset\.tasks\.glare\.column: no glare\.csv in"):
        build_manifest(_params(root, tasks={"glare": TaskSpec(type="single")}))
    with pytest.raises(ManifestError, match=r"dataset\.tasks\.weather: Global Streetscapes attributes are single"):
        build_manifest(_params(root, tasks={"weather": TaskSpec(type="multi", column="weather")}))
    with pytest.raises(ManifestError, match=r"dataset\.split_file: not read by layout 'global_streetscapes'"):
        build_manifest(_params(root, split_file="split.json"))
    with pytest.raises(ManifestError, match=r"dataset\.root: .* has no train/ or test/ folder"):
        build_manifest(_params(root / "img"))


def test_params_yaml_block_loads_and_builds(gss, tmp_path):
    block = {"name": "gss", "root": str(gss["root"]), "layout": "global_streetscapes", "val_fraction": 0.25,
             "label_case": "lower", "tasks": {"lighting": {"type": "single", "column": "lighting_condition"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"dataset": block}))
    table, _ = build_manifest(load_section(DatasetParams, "dataset", tmp_path / "params.yaml"))
    assert table.column("split").to_pylist().count("val") == 9  # 25% of the 36 train images
