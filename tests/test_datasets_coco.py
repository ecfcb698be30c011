"""Layout ``coco``: COCO-2014-style instances files over real CamVid photos and labels.

CamVid's pedestrian, bicyclist, car and sign classes become COCO's person (1),
bicycle (2), car (3) and stop sign (13) annotations; one training image has none.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from pipeline.manifest import DatasetParams, ManifestError, TaskSpec, build_manifest, manifest_meta

CATEGORIES = {"pedestrian": (1, "person"), "bicyclist": (2, "bicycle"), "car": (3, "car"),
              "sign_symbol": (13, "stop sign")}
COUNTS = {"train2014": 24, "val2014": 12}


def _instances(recs: list[dict], folder: str, first_id: int) -> tuple[dict, dict[str, list[str]]]:
    """(instances JSON, {file name: expected labels}); the first image gets no annotations."""
    images, annotations, expected = [], [], {}
    for k, rec in enumerate(recs):
        image_id, name = first_id + k, f"COCO_{folder}_{first_id + k:012d}.jpg"
        images.append({"id": image_id, "file_name": name, "width": 480, "height": 360})
        present = [] if k == 0 else [c for c in CATEGORIES if c in rec["labels"].split(";")]
        for c in present:
            for crowd in (0, 1 if c == "car" else 0):  # two instances of a car, one a crowd
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": crowd,
                                    "category_id": CATEGORIES[c][0], "bbox": [0, 0, 10, 10]})
        expected[name] = sorted(CATEGORIES[c][1] for c in present)
    cats = [{"id": i, "name": n, "supercategory": "street"} for i, n in CATEGORIES.values()]
    return {"images": images, "annotations": annotations, "categories": cats}, expected


@pytest.fixture
def coco(shared_data: Path, tmp_path: Path) -> dict:
    root = tmp_path / "coco"
    with (shared_data / "camvid_multilabel" / "labels.csv").open(newline="") as fh:
        recs = list(csv.DictReader(fh))[5::17]
    (root / "annotations").mkdir(parents=True)
    expected, start = {}, 0
    for folder, n in COUNTS.items():
        (root / folder).mkdir()
        data, labels = _instances(recs[start:start + n], folder, 1000 * (start + 1))
        for image, rec in zip(data["images"], recs[start:start + n]):
            shutil.copyfile(shared_data / "camvid_multilabel" / rec["path"], root / folder / image["file_name"])
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(data))
        expected.update({f"{folder}/{name}": v for name, v in labels.items()})
        start += n
    return {"root": root, "expected": expected}


def _params(root: Path, **kw) -> DatasetParams:
    base = dict(name="coco", root=str(root), layout="coco", tasks={"objects": TaskSpec(type="multi")})
    return DatasetParams(**{**base, **kw})


def test_default_protocol_rows_labels_and_splits(coco):
    table, skipped = build_manifest(_params(coco["root"]))
    assert skipped == [] and table.num_rows == 36
    rows = {r["id"]: r for r in table.to_pylist()}
    assert {i: r["objects"] for i, r in rows.items()} == coco["expected"]
    assert sum(r["objects"] == [] for r in rows.values()) == 2  # labelled, with no class
    assert {i for i, r in rows.items() if r["split"] == "test"} == {i for i in rows if i.startswith("val2014/")}
    splits = table.column("split").to_pylist()
    assert splits.count("val") == round(0.2 * 24)  # carved from train2014, seeded
    meta = manifest_meta(table)
    assert meta["tasks"]["objects"]["classes"] == ["person", "bicycle", "car", "stop sign"]  # by category id
    assert meta["layout"]["image_dirs"] == {"train": "train2014", "test": "val2014"}


def test_named_files_and_image_folders(coco):
    root = coco["root"]
    shutil.move(root / "val2014", root / "images" / "val")
    params = _params(root, annotations={"train": "annotations/instances_train2014.json",
                                        "val": "annotations/instances_val2014.json"},
                     image_dirs={"val": "images/val"})
    table, _ = build_manifest(params)
    splits = table.column("split").to_pylist()
    assert splits.count("val") == 12 and splits.count("train") == 24 and "test" not in splits
    assert all(p.startswith(("train2014/", "images/val/")) for p in table.column("path").to_pylist())
    assert manifest_meta(table)["layout"]["annotations"]["val"] == "annotations/instances_val2014.json"


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_malformed_files_named_by_file_and_entry(coco):
    train = coco["root"] / "annotations" / "instances_train2014.json"
    where = re.escape(str(train))
    _edit(train, lambda d: d["annotations"][2].update(image_id=99))
    with pytest.raises(ManifestError, match=rf"{where}:annotations\[2\]: image_id 99 is not in 'images'"):
        build_manifest(_params(coco["root"]))
    _edit(train, lambda d: d["annotations"][2].update(image_id=d["images"][1]["id"], category_id=90))
    with pytest.raises(ManifestError, match=rf"{where}:annotations\[2\]: category_id 90 is not in 'categories'"):
        build_manifest(_params(coco["root"]))
    _edit(train, lambda d: d["annotations"][2].update(category_id=3) or d["images"][3].pop("file_name"))
    with pytest.raises(ManifestError, match=rf"{where}:images\[3\]: expected 'id' and 'file_name'"):
        build_manifest(_params(coco["root"]))
    _edit(train, lambda d: d.pop("images"))
    with pytest.raises(ManifestError, match=rf"{where}: no 'images' list"):
        build_manifest(_params(coco["root"]))
    train.write_text('{"images": [],\n "annotations": [}')
    with pytest.raises(ManifestError, match=rf"{where}:2: not valid JSON"):
        build_manifest(_params(coco["root"]))


def test_categories_must_agree_and_keys_are_checked(coco):
    root = coco["root"]
    val = root / "annotations" / "instances_val2014.json"
    _edit(val, lambda d: d["categories"][2].update(name="automobile"))
    with pytest.raises(ManifestError, match=rf"{re.escape(str(val))}:categories\[2\]: id 3 is 'automobile' here "
                                            r"but 'car' in .*instances_train2014\.json"):
        build_manifest(_params(root))
    with pytest.raises(ManifestError, match=r"dataset\.annotations\.training: not a split name"):
        build_manifest(_params(root, annotations={"training": "annotations/instances_train2014.json"}))
    with pytest.raises(ManifestError, match=r"dataset\.annotations\.train: .*train\.json does not exist"):
        build_manifest(_params(root, annotations={"train": "train.json"}))
    shutil.copyfile(val, root / "annotations" / "mine.json")
    with pytest.raises(ManifestError, match=r"dataset\.image_dirs\.test: cannot tell the image folder of mine\.json"):
        build_manifest(_params(root, annotations={"test": "annotations/mine.json"}))
    with pytest.raises(ManifestError, match=r"dataset\.image_dir: not read by layout 'coco' \(only by coop_split, voc"):
        build_manifest(_params(root, image_dir="train2014"))
