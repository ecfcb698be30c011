"""Layout ``folders`` with ``dataset.classnames_file`` (ImageNet-style wnid folders), and the registry.

The tree is built from real day_night photos: ``root/{train,test}/<wnid>/*.jpg`` plus a
CoOp-style ``classnames.txt`` (``<folder> <class name>``, names with spaces).
"""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import get_args

import pytest

from pipeline.datasets import LAYOUT_KEYS, LAYOUTS
from pipeline.manifest import DatasetParams, LayoutName, ManifestError, TaskSpec, build_manifest, manifest_meta

WNIDS = {"day": "n09999002", "night": "n09999001"}
CLASSNAMES = "n09999002 sunlit street scene\nn09999001 street at night\n\nn07777777 unused class\n"


@pytest.fixture
def wnid_tree(shared_data: Path, tmp_path: Path) -> Path:
    """40 photos: 12 train + 8 test per class, in folders named by id."""
    root = tmp_path / "imagenet_like"
    for src_split, split, n in (("training", "train", 12), ("test", "test", 8)):
        for cls, wnid in WNIDS.items():
            photos = sorted((shared_data / "day_night" / src_split / cls).iterdir())[:n]
            (root / split / wnid).mkdir(parents=True)
            for photo in photos:
                shutil.copyfile(photo, root / split / wnid / photo.name)
    (root / "classnames.txt").write_text(CLASSNAMES)
    return root


def _params(root: Path, **kw) -> DatasetParams:
    base = dict(name="wnids", root=str(root), layout="folders", classnames_file="classnames.txt",
                tasks={"scene": TaskSpec(type="single")})
    return DatasetParams(**{**base, **kw})


def test_labels_are_the_class_names_in_file_order(wnid_tree):
    table, skipped = build_manifest(_params(wnid_tree))
    assert skipped == [] and table.num_rows == 40
    rows = table.to_pylist()
    assert {r["scene"] for r in rows} == {"sunlit street scene", "street at night"}
    for r in rows:
        assert r["scene"] == ("street at night" if "/n09999001/" in r["path"] else "sunlit street scene")
    meta = manifest_meta(table)
    # the file's order (not sorted), and only the classes that occur
    assert meta["tasks"]["scene"]["classes"] == ["sunlit street scene", "street at night"]
    assert meta["layout"] == {"name": "folders", "classnames_file": "classnames.txt"}
    splits = table.column("split").to_pylist()
    assert splits.count("test") == 16 and splits.count("val") > 0


def test_without_classnames_file_labels_are_folder_names_and_meta_unchanged(wnid_tree):
    table, _ = build_manifest(_params(wnid_tree, classnames_file=None))
    meta = manifest_meta(table)
    assert meta["tasks"]["scene"]["classes"] == ["n09999001", "n09999002"]
    assert "layout" not in meta  # folders/csv manifests keep their earlier metadata


def test_classnames_errors_name_file_and_line(wnid_tree):
    names = wnid_tree / "classnames.txt"
    where = re.escape(str(names))
    names.write_text("n09999002 sunlit street scene\n")
    with pytest.raises(ManifestError, match=rf"dataset\.classnames_file: {where} has no line for folder 'n09999001'"):
        build_manifest(_params(wnid_tree))
    names.write_text("n09999002 sunlit street scene\nn09999001\n")
    with pytest.raises(ManifestError, match=rf"{where}:2: expected '<folder> <class name>', got 'n09999001'"):
        build_manifest(_params(wnid_tree))
    names.write_text("n09999002 street\nn09999001 street\n")
    with pytest.raises(ManifestError, match=rf"{where}:2: class name 'street' is also given at line 1"):
        build_manifest(_params(wnid_tree))
    names.write_text("n09999002 a\nn09999002 b\n")
    with pytest.raises(ManifestError, match=rf"{where}:2: folder 'n09999002' is listed again"):
        build_manifest(_params(wnid_tree))
    with pytest.raises(ManifestError, match=r"dataset\.classnames_file: .*missing\.txt does not exist"):
        build_manifest(_params(wnid_tree, classnames_file="missing.txt"))


def test_registry_matches_params():
    assert set(get_args(LayoutName)) == set(LAYOUTS)
    fields = {f.name for f in dataclasses.fields(DatasetParams)}
    assert LAYOUT_KEYS <= fields
    for name, layout in LAYOUTS.items():
        assert callable(layout.read) and layout.keys <= fields, name


def test_a_key_of_another_layout_is_an_error(wnid_tree):
    with pytest.raises(ManifestError,
                       match=r"dataset\.include_difficult: not read by layout 'folders' \(only by voc\)"):
        build_manifest(_params(wnid_tree, include_difficult=False))
    with pytest.raises(ManifestError, match=r"dataset\.classnames_file: not read by layout 'csv'"):
        build_manifest(_params(wnid_tree, layout="csv", csv=("x.csv",)))
