"""``coco``: COCO instances files, one per split, as one multi-label task.

::

    root/annotations/instances_train2014.json   {"images": [...], "annotations": [...], "categories": [...]}
    root/train2014/COCO_train2014_000000000009.jpg

``dataset.annotations`` maps splits to instances files (relative to the root). The default
is the multi-label protocol of ML-GCN and CDUL: ``{train: annotations/instances_train2014.json,
test: annotations/instances_val2014.json}``, with val carved from train
(``dataset.val_fraction``). ``dataset.image_dirs`` maps splits to image folders; by default
a file ``instances_<x>.json`` has its images in ``<x>/`` (``train2014``, ``val2017``, ...).

Each image is labelled with the names of the categories of its annotations (crowd
annotations included: the category is in the picture); an image without annotations is
labelled with no class. Classes are ordered by category id, as in the files, which must
agree on every category they share. Row ids are the image paths.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.datasets.base import Layout, ManifestError, Rows, existing_file, load_json, only_task, subdir
from pipeline.splits import SPLITS

if TYPE_CHECKING:
    from pipeline.manifest import DatasetParams

DEFAULT_ANNOTATIONS = {"train": "annotations/instances_train2014.json",
                       "test": "annotations/instances_val2014.json"}
SECTIONS = ("images", "annotations", "categories")


def read(params: "DatasetParams", root: Path) -> Rows:
    task = only_task(params, "multi")
    files = dict(params.annotations) or DEFAULT_ANNOTATIONS
    categories: dict[int, tuple[str, Path]] = {}  # category id -> (name, file)
    rows = Rows(labels={task: []})
    dirs = {}
    for split, rel in files.items():
        if split not in SPLITS:
            raise ManifestError(f"dataset.annotations.{split}: not a split name (use {list(SPLITS)})")
        path = existing_file(root, rel, f"dataset.annotations.{split}")
        dirs[split] = subdir(root, _image_dir(params, split, path), f"dataset.image_dirs.{split}")
        _read_split(path, split, dirs[split], _sections(path), categories, rows, task)
    rows.class_order[task] = [categories[k][0] for k in sorted(categories)]
    rows.meta = {"annotations": files, "image_dirs": {s: d.rstrip("/") for s, d in dirs.items()},
                 "iscrowd": "included"}
    return rows


def _image_dir(params: "DatasetParams", split: str, path: Path) -> str:
    if split in params.image_dirs:
        return params.image_dirs[split]
    if not path.stem.startswith("instances_"):
        raise ManifestError(f"dataset.image_dirs.{split}: cannot tell the image folder of {path.name}; name it")
    return path.stem.removeprefix("instances_")


def _sections(path: Path) -> dict[str, list]:
    data = load_json(path)
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a COCO instances object, got {type(data).__name__}")
    for key in SECTIONS:
        if not isinstance(data.get(key), list):
            raise ManifestError(f"{path}: no '{key}' list (a COCO instances file has {', '.join(SECTIONS)})")
    return data


def _read_split(path: Path, split: str, prefix: str, data: dict[str, list],
                categories: dict[int, tuple[str, Path]], rows: Rows, task: str) -> None:
    names = _categories(path, data["categories"], categories)
    images = _images(path, data["images"])
    labels: dict[Any, set[str]] = {image_id: set() for image_id in images}
    for k, ann in enumerate(data["annotations"]):
        where = f"{path}:annotations[{k}]"
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise ManifestError(f"{where}: expected 'image_id' and 'category_id', got {_short(ann)}")
        if ann["image_id"] not in labels:
            raise ManifestError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in names:
            raise ManifestError(f"{where}: category_id {ann['category_id']!r} is not in 'categories'")
        labels[ann["image_id"]].add(names[ann["category_id"]])
    for image_id, (file_name, where) in images.items():
        rows.append(prefix + file_name, prefix + file_name, split, {task: sorted(labels[image_id])}, where)


def _categories(path: Path, entries: list, known: dict[int, tuple[str, Path]]) -> dict[int, str]:
    """This file's ``{category id: name}``; a name differing from another file's is an error."""
    out = {}
    for k, cat in enumerate(entries):
        ok = (isinstance(cat, dict) and isinstance(cat.get("id"), int) and isinstance(cat.get("name"), str)
              and cat["name"].strip())
        if not ok:
            raise ManifestError(f"{path}:categories[{k}]: expected an integer 'id' and a 'name', got {_short(cat)}")
        cid, name = cat["id"], cat["name"]
        if cid in known and known[cid][0] != name:
            raise ManifestError(f"{path}:categories[{k}]: id {cid} is {name!r} here but {known[cid][0]!r} "
                                f"in {known[cid][1]}")
        known.setdefault(cid, (name, path))
        out[cid] = name
    return out


def _images(path: Path, entries: list) -> dict[Any, tuple[str, str]]:
    """``{image id: (file name, "file:images[k]")}``."""
    out: dict[Any, tuple[str, str]] = {}
    for k, img in enumerate(entries):
        where = f"{path}:images[{k}]"
        ok = (isinstance(img, dict) and isinstance(img.get("id"), (int, str))
              and isinstance(img.get("file_name"), str) and img["file_name"].strip())
        if not ok:
            raise ManifestError(f"{where}: expected 'id' and 'file_name', got {_short(img)}")
        if img["id"] in out:
            raise ManifestError(f"{where}: image id {img['id']!r} is also at {out[img['id']][1]}")
        out[img["id"]] = (img["file_name"].strip(), where)
    return out


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


LAYOUT = Layout(read, frozenset({"annotations", "image_dirs"}))
