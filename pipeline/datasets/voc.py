"""``voc``: PASCAL VOC, with ``dataset.root`` at ``VOCdevkit/VOC2007`` or ``VOC2012``.

::

    root/Annotations/<id>.xml
    root/ImageSets/Main/{train,val,trainval,test}.txt   one image id per line
    root/JPEGImages/<id>.jpg                            (dataset.image_dir: another folder)

One multi-label task: the object classes present in each image's annotation, sorted
(or ``tasks.<t>.classes``). Objects marked ``difficult`` count by default, as in CDUL's
reference (cs-mshah/CDUL: ``VOCLabelTransform(exclude_difficult=False)``, the default
its training and caching configs use); ``dataset.include_difficult: false`` drops them,
so an image whose objects are all difficult is then labelled with no class.

Splits: ``train.txt`` and ``val.txt``; with ``trainval.txt`` and no ``train.txt``,
trainval is train and val is carved from it, seeded (``dataset.val_fraction``).
``test.txt`` is read when present; a test list none of whose annotations exist (VOC2012's
test download ships none) is left out with a warning.

The XML is parsed with ``xml.etree.ElementTree``: the files are local, and expat resolves
no external entities.
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.datasets.base import Layout, ManifestError, Rows, only_task, subdir

if TYPE_CHECKING:
    from pipeline.manifest import DatasetParams

log = logging.getLogger(__name__)

SETS = Path("ImageSets/Main")
DEFAULT_IMAGE_DIR = "JPEGImages"


def read(params: "DatasetParams", root: Path) -> Rows:
    task = only_task(params, "multi")
    lists = _split_lists(root)
    key = "dataset.image_dir" if params.image_dir else "dataset.root (a VOC root holds JPEGImages/)"
    prefix = subdir(root, params.image_dir or DEFAULT_IMAGE_DIR, key)
    rows = Rows(labels={task: []})
    seen: dict[str, str] = {}
    for split, list_file in lists:
        for rid, source in _ids(list_file, seen):
            labels = read_objects(root / "Annotations" / f"{rid}.xml", params.include_difficult, source)
            rows.append(rid, f"{prefix}{rid}.jpg", split, {task: labels}, source)
    rows.meta = {"include_difficult": params.include_difficult,
                 "image_sets": [f.relative_to(root).as_posix() for _, f in lists]}
    return rows


def _split_lists(root: Path) -> list[tuple[str, Path]]:
    """(split, list file) pairs from ImageSets/Main."""
    sets = root / SETS
    if not sets.is_dir():
        raise ManifestError(f"dataset.root: {sets} does not exist "
                            "(a VOC root holds Annotations/, ImageSets/, JPEGImages/)")
    if (sets / "train.txt").is_file():
        lists = [("train", sets / "train.txt")]
        lists += [("val", sets / "val.txt")] if (sets / "val.txt").is_file() else []
    elif (sets / "trainval.txt").is_file():
        lists = [("train", sets / "trainval.txt")]  # val is carved from it by dataset.val_fraction
    else:
        raise ManifestError(f"dataset.root: neither {sets / 'train.txt'} nor {sets / 'trainval.txt'} exists")
    test = sets / "test.txt"
    if test.is_file() and _has_annotations(root, test):
        lists.append(("test", test))
    return lists


def _has_annotations(root: Path, list_file: Path) -> bool:
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if ids and not any((root / "Annotations" / f"{i}.xml").is_file() for i in ids):
        log.warning("%s: none of its %d images has an annotation; no test split from it", list_file, len(ids))
        return False
    return True


def _ids(list_file: Path, seen: dict[str, str]) -> list[tuple[str, str]]:
    """(image id, "file:line") per line; an id in two lists is an error."""
    out = []
    for n, line in enumerate(list_file.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        source = f"{list_file}:{n}"
        if len(parts) != 1:
            raise ManifestError(f"{source}: expected one image id per line, got {line.strip()!r}")
        if parts[0] in seen:
            raise ManifestError(f"{source}: image id '{parts[0]}' is also listed at {seen[parts[0]]}")
        seen[parts[0]] = source
        out.append((parts[0], source))
    return out


def read_objects(xml: Path, include_difficult: bool, source: str) -> list[str]:
    """Sorted class names of the objects in one annotation file."""
    if not xml.is_file():
        raise ManifestError(f"{source}: annotation {xml} does not exist")
    try:
        tree = ET.parse(xml)
    except ET.ParseError as exc:
        line, col = exc.position
        raise ManifestError(f"{xml}:{line}: not well-formed XML (column {col}): {exc}") from None
    if tree.getroot().tag != "annotation":
        raise ManifestError(f"{xml}: root element is <{tree.getroot().tag}>, expected <annotation>")
    names = set()
    for k, obj in enumerate(tree.getroot().findall("object"), start=1):  # not <part>s of a person
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise ManifestError(f"{xml}: <object> {k} has no <name>")
        difficult = (obj.findtext("difficult") or "0").strip()
        if difficult not in ("0", "1"):
            raise ManifestError(f"{xml}: <object> {k} ({name}): <difficult> is {difficult!r}, expected 0 or 1")
        if include_difficult or difficult == "0":
            names.add(name)
    return sorted(names)


LAYOUT = Layout(read, frozenset({"image_dir", "include_difficult"}))
