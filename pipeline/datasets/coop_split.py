"""``coop_split``: a CoOp / Dassl split file, ``split_zhou_<Dataset>.json``.

::

    {"train": [[relative image path, label index, class name], ...], "val": [...], "test": [...]}

``dataset.split_file`` names the file (relative to the root; default: the one
``split_zhou_*.json`` in the root). The image paths are relative to ``dataset.image_dir``
(relative to the root; default the root itself), e.g. ``image_dir: 101_ObjectCategories``
for Caltech101. One single-label task. Class names are CoOp's, exactly as in the file
("face", not "Faces"), and the classes are ordered by label index. Splits come from the
file; a file without ``val`` gets val carved from train (``dataset.val_fraction``).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.datasets.base import Layout, ManifestError, Rows, existing_file, load_json, only_task, subdir
from pipeline.splits import SPLITS

if TYPE_CHECKING:
    from pipeline.manifest import DatasetParams

KEY = "dataset.split_file"
PATTERN = "split_zhou_*.json"


def read(params: "DatasetParams", root: Path) -> Rows:
    task = only_task(params, "single")
    path = _split_file(params, root)
    data = _splits(path)
    prefix = subdir(root, params.image_dir, "dataset.image_dir")
    names: dict[int, tuple[str, str]] = {}  # label index -> (class name, where first seen)
    indices: dict[str, tuple[int, str]] = {}  # class name -> (label index, where first seen)
    rows = Rows(labels={task: []})
    for split in SPLITS:
        for i, entry in enumerate(data.get(split, [])):
            where = f"{path}:{split}[{i}]"
            image, index, name = _entry(entry, where)
            _check_class(names, indices, index, name, where)
            rows.append(prefix + image, prefix + image, split, {task: name}, where)
    rows.class_order[task] = [names[k][0] for k in sorted(names)]
    rows.meta = {"split_file": path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path),
                 "image_dir": prefix.rstrip("/")}
    return rows


def _split_file(params: "DatasetParams", root: Path) -> Path:
    if params.split_file:
        return existing_file(root, params.split_file, KEY)
    found = sorted(root.glob(PATTERN))
    if len(found) != 1:
        names = [p.name for p in found]
        raise ManifestError(f"{KEY}: {len(found)} {PATTERN} files in {root} {names or ''}; name the split file")
    return found[0]


def _splits(path: Path) -> dict[str, list]:
    data = load_json(path)
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected an object {{'train': [...], 'val': [...], 'test': [...]}}, "
                            f"got {type(data).__name__}")
    unknown = sorted(set(data) - set(SPLITS))
    if unknown:
        raise ManifestError(f"{path}: unknown split keys {unknown} (expected {list(SPLITS)})")
    for split, entries in data.items():
        if not isinstance(entries, list):
            raise ManifestError(f"{path}: '{split}' must be a list of entries, got {type(entries).__name__}")
    return data


def _entry(entry: Any, where: str) -> tuple[str, int, str]:
    """``[image path, label index, class name]``, checked."""
    ok = (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and entry[0].strip()
          and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 0
          and isinstance(entry[2], str) and entry[2].strip())
    if not ok:
        raise ManifestError(f"{where}: expected [image path, label index, class name], got {entry!r}")
    return entry[0].strip(), entry[1], entry[2]


def _check_class(names: dict[int, tuple[str, str]], indices: dict[str, tuple[int, str]],
                 index: int, name: str, where: str) -> None:
    """One name per label index and one index per name, across all splits."""
    if index in names and names[index][0] != name:
        raise ManifestError(f"{where}: label {index} is {name!r} here but {names[index][0]!r} at {names[index][1]}")
    if name in indices and indices[name][0] != index:
        raise ManifestError(f"{where}: class {name!r} has label {index} here but {indices[name][0]} "
                            f"at {indices[name][1]}")
    names.setdefault(index, (name, where))
    indices.setdefault(name, (index, where))


LAYOUT = Layout(read, frozenset({"split_file", "image_dir"}))
