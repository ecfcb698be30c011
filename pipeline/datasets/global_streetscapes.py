"""``global_streetscapes``: the Global Streetscapes ``manual_labels`` tree.

::

    root/train/<attribute>.csv    img_path,<attribute>   (other columns are ignored)
    root/test/<attribute>.csv
    root/img/1..7/<uuid>.jpeg     img_path is relative to the root

Each task names its attribute with ``tasks.<t>.column`` (default: the task name): the
CSV's file name and its label column (weather, glare, lighting_condition, quality,
reflection, view_direction, platform, panoramic_status). The attributes' rows are joined
on the image column (``dataset.image_column``, default ``img_path``); ids are the paths,
or ``dataset.id_column`` (e.g. ``uuid``). An empty cell means "unlabelled".

Splits come from the folders. An image in any attribute's test CSV is a test image for
every task, so no official test image lands in train or val. Val is carved from train,
seeded (``dataset.split_seed``) and stratified, with ``dataset.val_fraction`` (0.2, as
CLIP-MHAdapter's reference). Each image's stratum is its label on the first task (in
params order) that labels it.

Labels are stripped and, unless ``dataset.label_case: keep``, lower-cased; the
normalisation is recorded in the manifest metadata (``layout``). Every other character
survives: "dawn/dusk" is a class name, never a file name.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.datasets.base import Layout, ManifestError, Rows

if TYPE_CHECKING:
    from pipeline.manifest import DatasetParams

log = logging.getLogger(__name__)

SPLIT_DIRS = ("train", "val", "test")
DEFAULT_IMAGE_COLUMN = "img_path"


@dataclass
class _Image:
    source: str                                   # first "file:row" naming the image
    rid: str | None = None
    splits: set[str] = field(default_factory=set)
    labels: dict[str, str | None] = field(default_factory=dict)
    label_source: dict[str, str] = field(default_factory=dict)


def read(params: "DatasetParams", root: Path) -> Rows:
    attributes = _attributes(params, root)
    images: dict[str, _Image] = {}
    for split in SPLIT_DIRS:
        for task, attr in attributes.items():
            path = root / split / f"{attr}.csv"
            if path.is_file():
                _read_csv(path, split, task, attr, params, images)
    return _rows(images, attributes, params)


def _attributes(params: "DatasetParams", root: Path) -> dict[str, str]:
    """``{task: attribute}``; every attribute has a CSV in at least one split folder."""
    if not any((root / s).is_dir() for s in SPLIT_DIRS):
        raise ManifestError(f"dataset.root: {root} has no train/ or test/ folder (the manual_labels tree)")
    out = {}
    for task, spec in params.tasks.items():
        if spec.type != "single" or spec.columns:
            raise ManifestError(f"dataset.tasks.{task}: Global Streetscapes attributes are single-label "
                                "(type: single, column: <attribute>)")
        attr = spec.column or task
        if not any((root / s / f"{attr}.csv").is_file() for s in SPLIT_DIRS):
            raise ManifestError(f"dataset.tasks.{task}.column: no {attr}.csv in {root}/train or {root}/test")
        out[task] = attr
    return out


def _read_csv(path: Path, split: str, task: str, attr: str, params: "DatasetParams",
              images: dict[str, _Image]) -> None:
    image_column = params.image_column or DEFAULT_IMAGE_COLUMN
    with path.open(newline="", encoding="utf-8-sig") as fh:  # tolerate a BOM
        reader = csv.DictReader(fh)
        _need_columns(path, reader.fieldnames or [], image_column, attr, params.id_column)
        for i, rec in enumerate(reader, start=2):  # row 1 is the header
            source = f"{path}:{i}"
            key = (rec.get(image_column) or "").strip()
            if not key:
                raise ManifestError(f"{source}: empty '{image_column}' cell")
            image = images.setdefault(key, _Image(source))
            image.splits.add(split)
            _set_id(image, rec, params.id_column, source)
            _set_label(image, task, attr, normalise(rec.get(attr) or "", params.label_case), source)


def _need_columns(path: Path, header: list[str], image_column: str, attr: str, id_column: str | None) -> None:
    needed = [(image_column, "dataset.image_column"), (attr, "the attribute, named like the file")]
    needed += [(id_column, "dataset.id_column")] if id_column else []
    for col, why in needed:
        if col not in header:
            raise ManifestError(f"{path}: no column '{col}' ({why}); columns: {header}")


def _set_id(image: _Image, rec: dict[str, str], id_column: str | None, source: str) -> None:
    if not id_column:
        return
    rid = (rec.get(id_column) or "").strip()
    if not rid:
        raise ManifestError(f"{source}: empty '{id_column}' cell (dataset.id_column)")
    if image.rid is not None and image.rid != rid:
        raise ManifestError(f"{source}: '{id_column}' is '{rid}' here but '{image.rid}' at {image.source}")
    image.rid = rid


def _set_label(image: _Image, task: str, attr: str, label: str | None, source: str) -> None:
    old = image.labels.get(task)
    if old is not None and label is not None and old != label:
        raise ManifestError(f"{source}: '{attr}' is {label!r} here but {old!r} at {image.label_source[task]}")
    if label is not None or task not in image.labels:
        image.labels[task] = label
        image.label_source[task] = source


def normalise(value: str, case: str) -> str | None:
    """A label as stored: stripped, lower-cased unless ``case == 'keep'``; '' is None (unlabelled)."""
    value = value.strip()
    if not value:
        return None
    return value.lower() if case == "lower" else value


def _split(image: _Image) -> str:
    """Test wins: an image in any test CSV never trains."""
    return next(s for s in ("test", "val", "train") if s in image.splits)


def _rows(images: dict[str, _Image], attributes: dict[str, str], params: "DatasetParams") -> Rows:
    rows = Rows(labels={t: [] for t in attributes}, strata=[])
    for key, image in images.items():
        labels = {t: image.labels.get(t) for t in attributes}
        stratum = next((f"{t}={v}" for t, v in labels.items() if v is not None), "")
        rows.append(image.rid or key, key, _split(image), labels, image.source, stratum)
    moved = sum(len(i.splits) > 1 and "test" in i.splits for i in images.values())
    if moved:
        log.warning("%d images are in a test CSV of one attribute and a train CSV of another: kept in test", moved)
    rows.meta = {"label_strip": True, "label_case": params.label_case, "attributes": attributes,
                 "test_images_also_in_train_csvs": moved}
    return rows


LAYOUT = Layout(read, frozenset({"image_column", "id_column", "label_case"}))
