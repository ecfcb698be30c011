"""Layout ``voc``: a PASCAL VOC tree over real CamVid photos and their real object labels.

``Annotations/<id>.xml`` hold one ``<object>`` per CamVid class present (car, person,
bicycle); a person covering under 1% of the frame is marked ``difficult``, as VOC marks
hard-to-see objects.
"""
from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from pipeline.manifest import DatasetParams, ManifestError, TaskSpec, build_manifest, manifest_meta

VOC_NAMES = {"car": "car", "pedestrian": "person", "bicyclist": "bicycle"}
SPLITS = {"train": 15, "val": 6, "test": 9}


def _xml(objects: list[tuple[str, int]]) -> str:
    body = "".join(f"<object><name>{name}</name><pose>Unspecified</pose><difficult>{d}</difficult>"
                   "<part><name>head</name></part></object>" for name, d in objects)
    return f"<annotation><folder>VOC2012</folder><size><width>480</width></size>{body}</annotation>\n"


def _objects(rec: dict) -> list[tuple[str, int]]:
    present = rec["labels"].split(";")
    out = [(VOC_NAMES[c], int(c == "pedestrian" and float(rec["frac_pedestrian"]) < 0.01))
           for c in VOC_NAMES if c in present]
    return out


@pytest.fixture
def voc(shared_data: Path, tmp_path: Path) -> dict:
    """30 images: train.txt 15, val.txt 6, test.txt 9; image 0 also has a difficult pottedplant."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    with (shared_data / "camvid_multilabel" / "labels.csv").open(newline="") as fh:
        recs = list(csv.DictReader(fh))[::20][:30]
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (root / sub).mkdir(parents=True)
    expected, ids = {}, [f"2008_{i:06d}" for i in range(30)]
    for i, (rid, rec) in enumerate(zip(ids, recs)):
        shutil.copyfile(shared_data / "camvid_multilabel" / rec["path"], root / "JPEGImages" / f"{rid}.jpg")
        objects = _objects(rec) + ([("pottedplant", 1)] if i == 0 else [])
        (root / "Annotations" / f"{rid}.xml").write_text(_xml(objects))
        expected[rid] = objects
    start = 0
    for split, n in SPLITS.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids[start:start + n]) + "\n")
        start += n
    return {"root": root, "ids": ids, "objects": expected}


def _params(root: Path, **kw) -> DatasetParams:
    base = dict(name="voc", root=str(root), layout="voc", tasks={"objects": TaskSpec(type="multi")})
    return DatasetParams(**{**base, **kw})


def test_rows_splits_and_labels_with_difficult_objects(voc):
    table, skipped = build_manifest(_params(voc["root"]))
    assert skipped == [] and table.num_rows == 30
    rows = {r["id"]: r for r in table.to_pylist()}
    ids = voc["ids"]
    assert [rows[i]["split"] for i in ids] == ["train"] * 15 + ["val"] * 6 + ["test"] * 9
    for rid, objects in voc["objects"].items():
        assert rows[rid]["objects"] == sorted({name for name, _ in objects})  # difficult ones count
        assert rows[rid]["path"] == f"JPEGImages/{rid}.jpg"
    assert any(d for objs in voc["objects"].values() for n, d in objs if n == "person")  # the rule bites
    meta = manifest_meta(table)
    assert meta["tasks"]["objects"]["classes"] == ["bicycle", "car", "person", "pottedplant"]
    assert "head" not in meta["tasks"]["objects"]["classes"]  # a person's <part> is not an object
    assert meta["layout"]["include_difficult"] is True
    assert meta["layout"]["image_sets"] == ["ImageSets/Main/train.txt", "ImageSets/Main/val.txt",
                                            "ImageSets/Main/test.txt"]


def test_difficult_objects_dropped_on_request(voc):
    table, _ = build_manifest(_params(voc["root"], include_difficult=False))
    rows = {r["id"]: r for r in table.to_pylist()}
    for rid, objects in voc["objects"].items():
        assert rows[rid]["objects"] == sorted({name for name, d in objects if not d})
    assert "pottedplant" not in manifest_meta(table)["tasks"]["objects"]["classes"]


def test_trainval_only_carves_val_and_a_test_list_without_annotations_is_left_out(voc):
    main = voc["root"] / "ImageSets" / "Main"
    trainval = main.joinpath("train.txt").read_text() + main.joinpath("val.txt").read_text()
    main.joinpath("trainval.txt").write_text(trainval)
    main.joinpath("train.txt").unlink()
    main.joinpath("val.txt").unlink()
    for rid in voc["ids"][21:]:
        (voc["root"] / "Annotations" / f"{rid}.xml").unlink()  # VOC2012's test download has none
    table, _ = build_manifest(_params(voc["root"]))
    splits = table.column("split").to_pylist()
    assert table.num_rows == 21 and "test" not in splits
    assert splits.count("val") == round(0.2 * 21)  # seeded, dataset.val_fraction
    assert splits == build_manifest(_params(voc["root"]))[0].column("split").to_pylist()


def test_malformed_annotations_named_by_file_and_line(voc):
    root, rid = voc["root"], voc["ids"][4]
    xml = root / "Annotations" / f"{rid}.xml"
    where = re.escape(str(xml))
    xml.write_text("<annotation>\n<object><name>car</name>\n</annotation>\n")
    with pytest.raises(ManifestError, match=rf"{where}:3: not well-formed XML"):
        build_manifest(_params(root))
    xml.write_text("<annotation><object><difficult>0</difficult></object></annotation>")
    with pytest.raises(ManifestError, match=rf"{where}: <object> 1 has no <name>"):
        build_manifest(_params(root))
    xml.write_text("<annotation><object><name>car</name><difficult>yes</difficult></object></annotation>")
    with pytest.raises(ManifestError, match=rf"{where}: <object> 1 \(car\): <difficult> is 'yes'"):
        build_manifest(_params(root))
    xml.unlink()
    train = re.escape(str(root / "ImageSets" / "Main" / "train.txt"))
    with pytest.raises(ManifestError, match=rf"{train}:5: annotation .*{rid}\.xml does not exist"):
        build_manifest(_params(root))


def test_split_list_errors(voc):
    main = voc["root"] / "ImageSets" / "Main"
    val = main / "val.txt"
    val.write_text(val.read_text() + voc["ids"][0] + "\n")
    with pytest.raises(ManifestError, match=rf"{re.escape(str(val))}:7: image id '{voc['ids'][0]}' is also listed at "
                                            rf".*train\.txt:1"):
        build_manifest(_params(voc["root"]))
    val.write_text("2008_000015 1\n")
    with pytest.raises(ManifestError, match=rf"{re.escape(str(val))}:1: expected one image id per line"):
        build_manifest(_params(voc["root"]))
    with pytest.raises(ManifestError, match=r"dataset\.root: .*ImageSets/Main does not exist"):
        build_manifest(_params(voc["root"].parent))
    with pytest.raises(ManifestError, match=r"dataset\.tasks: the voc layout has exactly one multi-label task"):
        build_manifest(_params(voc["root"], tasks={"objects": TaskSpec(type="single")}))
