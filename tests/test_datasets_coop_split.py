"""Layout ``coop_split``: a CoOp / Dassl ``split_zhou_<Dataset>.json`` over real katkam photos.

The tree mimics CoOp's Caltech101: ``root/101_ObjectCategories/<Folder>/image_XXXX.jpg``
and ``root/split_zhou_Caltech101.json`` with CoOp's own class names ("face", not "Faces").
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pipeline.manifest import DatasetParams, ManifestError, TaskSpec, build_manifest, manifest_meta

# folder -> (label index, CoOp class name); sorted names would put 'airplane' first
CLASSES = {"Faces": (0, "face"), "Leopards": (1, "leopard"), "Motorbikes": (2, "motorbike"),
           "airplanes": (3, "airplane")}
PER_SPLIT = {"train": 5, "val": 2, "test": 3}
FILE = "split_zhou_Caltech101.json"


@pytest.fixture
def caltech(shared_data: Path, tmp_path: Path) -> Path:
    """40 photos, 10 per class: 5 train, 2 val, 3 test."""
    root = tmp_path / "caltech-101"
    photos = iter(sorted((shared_data / "katkam_weather" / "images").glob("*.jpg"))[:40])
    split: dict[str, list] = {s: [] for s in PER_SPLIT}
    for folder, (index, name) in CLASSES.items():
        (root / "101_ObjectCategories" / folder).mkdir(parents=True)
        n = 0
        for s, count in PER_SPLIT.items():
            for _ in range(count):
                n += 1
                rel = f"{folder}/image_{n:04d}.jpg"
                shutil.copyfile(next(photos), root / "101_ObjectCategories" / rel)
                split[s].append([rel, index, name])
    (root / FILE).write_text(json.dumps(split, indent=1))
    return root


def _params(root: Path, **kw) -> DatasetParams:
    base = dict(name="caltech101", root=str(root), layout="coop_split", image_dir="101_ObjectCategories",
                tasks={"label": TaskSpec(type="single")})
    return DatasetParams(**{**base, **kw})


def _edit(root: Path, change) -> None:
    data = json.loads((root / FILE).read_text())
    change(data)
    (root / FILE).write_text(json.dumps(data))


def test_rows_splits_and_classes_from_the_file(caltech):
    table, skipped = build_manifest(_params(caltech))  # split_file found: the one split_zhou_*.json
    assert skipped == [] and table.num_rows == 40
    rows = table.to_pylist()
    for s, n in PER_SPLIT.items():
        assert sum(r["split"] == s for r in rows) == n * len(CLASSES)
    face = next(r for r in rows if r["path"] == "101_ObjectCategories/Faces/image_0006.jpg")
    assert face["label"] == "face" and face["split"] == "val" and face["id"] == face["path"]
    meta = manifest_meta(table)
    assert meta["tasks"]["label"]["classes"] == ["face", "leopard", "motorbike", "airplane"]  # by label index
    assert meta["layout"] == {"name": "coop_split", "split_file": FILE, "image_dir": "101_ObjectCategories"}


def test_named_split_file_image_dir_default_and_carved_val(caltech):
    moved = caltech / "101_ObjectCategories" / "my_split.json"
    (caltech / FILE).rename(moved)
    data = json.loads(moved.read_text())
    data["train"] += data.pop("val")
    moved.write_text(json.dumps(data))
    params = _params(caltech, image_dir=None, split_file="101_ObjectCategories/my_split.json")
    with pytest.raises(ManifestError, match="40 bad rows"):  # paths are now relative to the root
        build_manifest(params)
    table, _ = build_manifest(_params(caltech, split_file="101_ObjectCategories/my_split.json"))
    splits = table.column("split").to_pylist()
    assert splits.count("test") == 12 and splits.count("val") + splits.count("train") == 28
    assert splits.count("val") == 4 * round(0.2 * 7)  # carved per class (stratified), seeded


def test_malformed_entries_named_by_file_split_and_index(caltech):
    where = re.escape(str(caltech / FILE))
    _edit(caltech, lambda d: d["train"].__setitem__(3, ["Faces/image_0004.jpg", 0]))
    with pytest.raises(ManifestError, match=rf"{where}:train\[3\]: expected \[image path, label index, class name\]"):
        build_manifest(_params(caltech))
    _edit(caltech, lambda d: d["train"].__setitem__(3, ["Faces/image_0004.jpg", 0, "Faces"]))
    with pytest.raises(ManifestError, match=rf"{where}:train\[3\]: label 0 is 'Faces' here but 'face' at .*train\[0\]"):
        build_manifest(_params(caltech))
    _edit(caltech, lambda d: d["train"].__setitem__(3, ["Faces/image_0004.jpg", 7, "face"]))
    with pytest.raises(ManifestError, match=rf"{where}:train\[3\]: class 'face' has label 7 here but 0 at"):
        build_manifest(_params(caltech))
    _edit(caltech, lambda d: d.__setitem__("training", []))
    with pytest.raises(ManifestError, match=rf"{where}: unknown split keys \['training'\]"):
        build_manifest(_params(caltech))
    (caltech / FILE).write_text('{"train": [\n  ["a.jpg", 0, "face"],,\n]}')
    with pytest.raises(ManifestError, match=rf"{where}:2: not valid JSON"):
        build_manifest(_params(caltech))


def test_split_file_key_errors(caltech):
    (caltech / "split_zhou_Other.json").write_text("{}")
    with pytest.raises(ManifestError, match=r"dataset\.split_file: 2 split_zhou_\*\.json files in .*; name the split"):
        build_manifest(_params(caltech))
    with pytest.raises(ManifestError, match=r"dataset\.split_file: .*nope\.json does not exist"):
        build_manifest(_params(caltech, split_file="nope.json"))
    with pytest.raises(ManifestError, match=r"dataset\.image_dir: directory .*Nope does not exist"):
        build_manifest(_params(caltech, split_file=FILE, image_dir="Nope"))
    with pytest.raises(ManifestError, match=r"dataset\.tasks: the coop_split layout has exactly one single-label"):
        build_manifest(_params(caltech, split_file=FILE, tasks={"a": TaskSpec(type="multi", column="x")}))
