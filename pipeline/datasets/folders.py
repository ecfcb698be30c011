"""``folders``: one folder per class, optionally under one folder per split.

``root/<split>/<class>/*.jpg`` or ``root/<class>/*.jpg`` (then a seeded, stratified
split by ``dataset.split_fractions``). Split folders are recognised by name after
``dataset.split_aliases`` (``training`` -> ``train``, ...). One single-label task.

The labels are the folder names, or, with ``dataset.classnames_file``, the names that
file gives them: one ``<folder> <class name>`` per line, as CoOp ships ``classnames.txt``
for ImageNet (``n01440764 tench``). A name may contain spaces or any other character;
the classes then follow the file's order, and every class folder must be listed.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.datasets.base import IMAGE_SUFFIXES, Layout, ManifestError, Rows, existing_file, only_task
from pipeline.splits import DEFAULT_SPLIT_ALIASES, SPLITS

if TYPE_CHECKING:
    from pipeline.manifest import DatasetParams

KEY = "dataset.classnames_file"


def read(params: "DatasetParams", root: Path) -> Rows:
    task = only_task(params, "single")
    names_path = existing_file(root, params.classnames_file, KEY) if params.classnames_file else None
    names = read_classnames(names_path) if names_path else None
    rows = Rows(labels={task: []})
    for top, split in _split_dirs(params, root):
        for class_dir in sorted(p for p in top.iterdir() if p.is_dir()):
            label = _label(class_dir, names, root, names_path)
            for img in sorted(class_dir.rglob("*")):
                # Any entry named like an image is a row, so a directory or broken link named
                # x.jpg is reported by name instead of silently left out.
                if img.suffix.lower() in IMAGE_SUFFIXES:
                    rel = img.relative_to(root).as_posix()
                    rows.append(rel, rel, split, {task: label}, f"{rel}:-")
    if names is not None:
        rows.class_order[task] = list(names.values())
        rows.meta["classnames_file"] = params.classnames_file
    return rows


def _split_dirs(params: "DatasetParams", root: Path) -> list[tuple[Path, str | None]]:
    """(folder, split) pairs: the split folders if any, else the root with no split."""
    aliases = {**DEFAULT_SPLIT_ALIASES, **params.split_aliases}
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    split_dirs = [(d, aliases.get(d.name, d.name)) for d in subdirs if aliases.get(d.name, d.name) in SPLITS]
    return split_dirs or [(root, None)]  # type: ignore[list-item]


def _label(class_dir: Path, names: dict[str, str] | None, root: Path, names_path: Path | None) -> str:
    if names is None:
        return class_dir.name
    if class_dir.name not in names:
        raise ManifestError(f"{KEY}: {names_path} has no line for folder '{class_dir.name}' "
                            f"({class_dir.relative_to(root).as_posix()}/)")
    return names[class_dir.name]


def read_classnames(path: Path) -> dict[str, str]:
    """``{folder: class name}`` in file order from lines ``<folder> <class name>``."""
    names: dict[str, str] = {}
    folder_line: dict[str, int] = {}
    name_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            folder, name = _classnames_line(line, f"{path}:{n}")
            if folder in folder_line:
                raise ManifestError(f"{path}:{n}: folder '{folder}' is listed again (line {folder_line[folder]})")
            if name in name_line:
                raise ManifestError(f"{path}:{n}: class name {name!r} is also given at line {name_line[name]}; "
                                    "two folders would merge into one class")
            names[folder], folder_line[folder], name_line[name] = name, n, n
    return names


def _classnames_line(line: str, source: str) -> tuple[str, str]:
    parts = line.strip().split(maxsplit=1)
    if len(parts) != 2:
        raise ManifestError(f"{source}: expected '<folder> <class name>', got {line.strip()!r} ({KEY})")
    return parts[0], parts[1].strip()


LAYOUT = Layout(read, frozenset({"split_aliases", "split_fractions", "classnames_file"}))
