"""``csv``: one or more CSV files joined on the image column.

Each task is a ``single`` label column (attribute tables in the Global Streetscapes
style: one CSV per attribute or several columns in one CSV; an empty cell means
"unlabelled for this attribute") or a ``multi`` label task (one column of
``sep``-joined class names, or one 0/1 column per class). The image column
(``dataset.image_column``, default ``path``) holds paths relative to the root; the
split comes from ``dataset.split_column`` or, without one, a seeded stratified split.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.datasets.base import Layout, ManifestError, Rows

if TYPE_CHECKING:
    from pipeline.manifest import DatasetParams, TaskSpec

DEFAULT_IMAGE_COLUMN = "path"


def read(params: "DatasetParams", root: Path) -> Rows:
    if not params.csv:
        raise ManifestError("dataset.csv: the csv layout needs at least one CSV file")
    image_column = params.image_column or DEFAULT_IMAGE_COLUMN
    merged: dict[str, dict[str, str]] = {}
    where: dict[str, str] = {}
    for name in params.csv:
        _read_one(root / name, image_column, merged, where)
    rows = Rows(labels={t: [] for t in params.tasks})
    for key, rec in merged.items():
        rid = rec.get(params.id_column) if params.id_column else key
        split = rec.get(params.split_column) if params.split_column else None
        labels = {t: parse_label(spec, rec, t, where[key]) for t, spec in params.tasks.items()}
        rows.append(str(rid), key, split or None, labels, where[key])
    _check_columns(params, merged)
    return rows


def _read_one(path: Path, image_column: str, merged: dict[str, dict[str, str]], where: dict[str, str]) -> None:
    if not path.is_file():
        raise ManifestError(f"dataset.csv: {path} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if image_column not in (reader.fieldnames or []):
            raise ManifestError(f"{path}: no column '{image_column}' (dataset.image_column)")
        for i, rec in enumerate(reader, start=2):  # row 1 is the header
            key = (rec.get(image_column) or "").strip()
            if not key:
                raise ManifestError(f"{path}:{i}: empty '{image_column}' cell")
            merge_record(merged.setdefault(key, {}), rec, f"{path}:{i}")
            where.setdefault(key, f"{path}:{i}")


def merge_record(target: dict[str, str], rec: dict[str, str], source: str) -> None:
    """Add one CSV record's cells to an image's record; a conflicting cell is an error."""
    for col, val in rec.items():
        val = (val or "").strip()
        if col in target and target[col] and val and target[col] != val:
            raise ManifestError(f"{source}: column '{col}' is '{val}' here but '{target[col]}' in an earlier CSV")
        if val or col not in target:
            target[col] = val


def _check_columns(params: "DatasetParams", merged: dict) -> None:
    seen = set().union(*(rec.keys() for rec in merged.values())) if merged else set()
    needed = [(f"dataset.tasks.{t}.column", s.column) for t, s in params.tasks.items() if s.column]
    needed += [(f"dataset.tasks.{t}.columns", c) for t, s in params.tasks.items() for c in (s.columns or ())]
    needed += [("dataset.split_column", params.split_column)] if params.split_column else []
    needed += [("dataset.id_column", params.id_column)] if params.id_column else []
    for key, col in needed:
        if col not in seen:
            raise ManifestError(f"{key}: column '{col}' is in none of {list(params.csv)}")


def parse_label(spec: "TaskSpec", rec: dict[str, str], task: str, source: str) -> str | list[str] | None:
    """One task's label from an image's merged record (None: unlabelled)."""
    if spec.type == "single":
        if not spec.column:
            raise ManifestError(f"dataset.tasks.{task}.column: a single-label task names its column")
        return rec.get(spec.column) or None
    if spec.columns:
        values = {c: rec.get(c, "") for c in spec.columns}
        bad = {c: v for c, v in values.items() if v not in ("0", "1", "")}
        if bad:
            raise ManifestError(f"{source}: task '{task}' expects 0/1 cells, got {bad}")
        if all(v == "" for v in values.values()):
            return None
        return [c for c, v in values.items() if v == "1"]
    if not spec.column:
        raise ManifestError(f"dataset.tasks.{task}: a multi-label task names 'column' or 'columns'")
    cell = rec.get(spec.column)
    if cell is None:
        return None
    return sorted({c.strip() for c in cell.split(spec.sep) if c.strip()})


LAYOUT = Layout(read, frozenset({"csv", "image_column", "id_column", "split_column",
                                 "split_aliases", "split_fractions"}))
