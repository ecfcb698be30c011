"""Turn a labelled image collection into one manifest table.

Two layouts cover the three input formats of the issue:

* ``folders``: ``root/<split>/<class>/*.jpg`` or ``root/<class>/*.jpg``; one
  single-label task whose labels are the folder names.
* ``csv``: one or more CSV files joined on the image column. Each task is a
  ``single`` label column (attribute tables in the Global Streetscapes style:
  one CSV per attribute or several columns in one CSV; an empty cell means
  "unlabelled for this attribute") or a ``multi`` label task (one column of
  ``sep``-joined class names, or one 0/1 column per class).

The manifest has columns ``id``, ``path`` (relative to the dataset root),
``split`` and one column per task (a string, or a list of strings for multi
tasks), sorted by id. Class lists are built once from the union of all splits
and recorded, in a stable order, in the table's schema metadata.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from pipeline.errors import UserError
from pipeline.imageio import PIL_MAX_PIXELS, ImageCheck, check_images, file_digests
from pipeline.splits import DEFAULT_SPLIT_ALIASES, SPLITS, assign_splits

log = logging.getLogger(__name__)

META_KEY = b"clipcache"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class ManifestError(UserError, ValueError):
    """Bad input data; the message names the file and row."""


@dataclass(frozen=True)
class TaskSpec:
    """One labelling task of a dataset (``dataset.tasks.<name>``)."""

    type: Literal["single", "multi"]
    column: str | None = None
    columns: tuple[str, ...] | None = None
    sep: str = ";"
    classes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class DatasetParams:
    """The ``dataset`` section of params.yaml."""

    name: str
    root: str
    layout: Literal["folders", "csv"]
    tasks: dict[str, TaskSpec]
    csv: tuple[str, ...] = ()
    image_column: str = "path"
    id_column: str | None = None
    split_column: str | None = None
    split_aliases: dict[str, str] = field(default_factory=dict)
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "val": 0.2, "test": 0.2})
    val_fraction: float = 0.2
    split_seed: int = 0
    on_error: Literal["strict", "skip"] = "strict"
    verify_images: bool = True
    max_image_pixels: int | None = None  # null: PIL's default limit (decompression bombs)


@dataclass
class Rows:
    """Column-wise rows while a manifest is being assembled."""

    ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)
    labels: dict[str, list] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # "file:row" for error messages


def build_manifest(params: DatasetParams, root: Path | None = None) -> tuple[pa.Table, list[dict]]:
    """Read the dataset and return (manifest table, skipped-row records)."""
    root = Path(root or params.root)
    if not root.is_dir():
        raise ManifestError(f"dataset.root: directory {root} does not exist")
    rows = _read_folders(params, root) if params.layout == "folders" else _read_csvs(params, root)
    skipped = _check_rows(rows, params, root)
    rows = _drop(rows, {s["source"] for s in skipped})
    if not rows.ids:
        raise ManifestError(f"{root}: no usable images found")
    try:
        splits = assign_splits(rows.splits, _stratify_key(rows, params), params)
    except ValueError as exc:
        raise ManifestError(f"{root}: {exc}") from exc
    classes = {name: _class_list(name, spec, rows.labels[name]) for name, spec in params.tasks.items()}
    table = _to_table(rows, splits, params, classes)
    log.info("manifest: %d rows, %d skipped, splits %s", table.num_rows, len(skipped),
             {s: splits.count(s) for s in SPLITS})
    return table, skipped


def manifest_meta(table: pa.Table | pa.Schema) -> dict:
    """The metadata dict stored in a manifest's schema (tasks, classes, dataset name)."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ManifestError("table has no clipcache metadata: not a manifest written by the prepare stage")
    return json.loads(raw)


def split_ids(table: pa.Table, split: str, key: str = "split") -> set[str]:
    """Ids of the manifest rows in ``split`` (``key`` names the param in the error)."""
    splits = table.column("split").to_pylist()
    if split not in splits:
        raise ManifestError(f"{key}: no manifest row is in split '{split}' (splits: {sorted(set(splits))})")
    return {sid for sid, s in zip(table.column("id").to_pylist(), splits) if s == split}


def image_index(table: pa.Table, root: Path) -> pa.Table:
    """(id, path, sha256) of every manifest row: all that feature extraction depends on."""
    paths = table.column("path").to_pylist()
    digests = file_digests([root / p for p in paths])
    return pa.table({"id": table.column("id"), "path": table.column("path"),
                     "sha256": pa.array(digests, pa.string())})


# --- readers ---------------------------------------------------------------------------------


def _read_folders(params: DatasetParams, root: Path) -> Rows:
    if len(params.tasks) != 1 or next(iter(params.tasks.values())).type != "single":
        raise ManifestError("dataset.tasks: the folders layout has exactly one single-label task")
    task = next(iter(params.tasks))
    aliases = {**DEFAULT_SPLIT_ALIASES, **params.split_aliases}
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    split_dirs = [p for p in subdirs if aliases.get(p.name, p.name) in SPLITS]
    rows = Rows(labels={task: []})
    tops = [(d, aliases.get(d.name, d.name)) for d in split_dirs] if split_dirs else [(root, None)]
    for top, split in tops:
        for class_dir in sorted(p for p in top.iterdir() if p.is_dir()):
            for img in sorted(class_dir.rglob("*")):
                # Any entry named like an image is a row, so a directory or broken link named
                # x.jpg is reported by name instead of silently left out.
                if img.suffix.lower() in IMAGE_SUFFIXES:
                    rel = img.relative_to(root).as_posix()
                    _append(rows, rel, rel, split, {task: class_dir.name}, f"{rel}:-")
    return rows


def _read_csvs(params: DatasetParams, root: Path) -> Rows:
    if not params.csv:
        raise ManifestError("dataset.csv: the csv layout needs at least one CSV file")
    merged: dict[str, dict[str, str]] = {}
    where: dict[str, str] = {}
    for name in params.csv:
        path = root / name
        if not path.is_file():
            raise ManifestError(f"dataset.csv: {path} does not exist")
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if params.image_column not in (reader.fieldnames or []):
                raise ManifestError(f"{path}: no column '{params.image_column}' (dataset.image_column)")
            for i, rec in enumerate(reader, start=2):  # row 1 is the header
                key = (rec.get(params.image_column) or "").strip()
                if not key:
                    raise ManifestError(f"{path}:{i}: empty '{params.image_column}' cell")
                _merge_record(merged.setdefault(key, {}), rec, f"{path}:{i}")
                where.setdefault(key, f"{path}:{i}")
    rows = Rows(labels={t: [] for t in params.tasks})
    for key in merged:
        rec = merged[key]
        rid = rec.get(params.id_column) if params.id_column else key
        split = rec.get(params.split_column) if params.split_column else None
        labels = {t: _parse_label(spec, rec, t, where[key]) for t, spec in params.tasks.items()}
        _append(rows, str(rid), key, split or None, labels, where[key])
    _check_columns(params, merged, where)
    return rows


def _merge_record(target: dict[str, str], rec: dict[str, str], source: str) -> None:
    for col, val in rec.items():
        val = (val or "").strip()
        if col in target and target[col] and val and target[col] != val:
            raise ManifestError(f"{source}: column '{col}' is '{val}' here but '{target[col]}' in an earlier CSV")
        if val or col not in target:
            target[col] = val


def _check_columns(params: DatasetParams, merged: dict, where: dict) -> None:
    seen = set().union(*(rec.keys() for rec in merged.values())) if merged else set()
    needed = [(f"dataset.tasks.{t}.column", s.column) for t, s in params.tasks.items() if s.column]
    needed += [(f"dataset.tasks.{t}.columns", c) for t, s in params.tasks.items() for c in (s.columns or ())]
    needed += [("dataset.split_column", params.split_column)] if params.split_column else []
    needed += [("dataset.id_column", params.id_column)] if params.id_column else []
    for key, col in needed:
        if col not in seen:
            raise ManifestError(f"{key}: column '{col}' is in none of {list(params.csv)}")


def _parse_label(spec: TaskSpec, rec: dict[str, str], task: str, source: str):
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


def _append(rows: Rows, rid: str, path: str, split: str | None, labels: dict, source: str) -> None:
    rows.ids.append(rid)
    rows.paths.append(path)
    rows.splits.append(split)
    rows.sources.append(source)
    for task, value in labels.items():
        rows.labels[task].append(value)


# --- validation --------------------------------------------------------------------------------


def _check_rows(rows: Rows, params: DatasetParams, root: Path) -> list[dict]:
    """Problems per row: escaping paths, missing or undecodable files, duplicate ids."""
    problems: list[ImageCheck] = []
    root_resolved = root.resolve()
    to_decode = []
    seen: dict[str, str] = {}
    for rid, rel, src in zip(rows.ids, rows.paths, rows.sources):
        if rid in seen:
            raise ManifestError(f"{src}: duplicate sample id '{rid}' (first at {seen[rid]})")
        seen[rid] = src
        full = (root / rel).resolve()
        if not full.is_relative_to(root_resolved):
            problems.append(ImageCheck(src, rel, "path escapes the dataset root (through '..' or a link)"))
        elif full.is_dir():
            problems.append(ImageCheck(src, rel, "is a directory, not an image file"))
        elif not full.is_file():
            problems.append(ImageCheck(src, rel, "broken link" if (root / rel).is_symlink() else "file not found"))
        else:
            to_decode.append((src, rel, full))
    if params.verify_images:
        problems += check_images(to_decode, params.max_image_pixels or PIL_MAX_PIXELS)
    if problems and params.on_error == "strict":
        listing = "\n".join(f"  {p.source}: {p.path}: {p.reason}" for p in problems[:20])
        raise ManifestError(f"{len(problems)} bad rows (dataset.on_error=strict; set 'skip' to drop them):\n{listing}")
    for p in problems:
        log.warning("skipping %s (%s): %s", p.path, p.source, p.reason)
    return [{"source": p.source, "path": p.path, "reason": p.reason} for p in problems]


def _drop(rows: Rows, sources: set[str]) -> Rows:
    if not sources:
        return rows
    keep = [i for i, s in enumerate(rows.sources) if s not in sources]
    return Rows(
        ids=[rows.ids[i] for i in keep], paths=[rows.paths[i] for i in keep],
        splits=[rows.splits[i] for i in keep], sources=[rows.sources[i] for i in keep],
        labels={t: [v[i] for i in keep] for t, v in rows.labels.items()},
    )


def _class_list(task: str, spec: TaskSpec, values: list) -> list[str]:
    """Classes from the union of all splits; sorted unless params fix the order."""
    seen: set[str] = set()
    for v in values:
        if v is not None:
            seen.update(v if isinstance(v, list) else [v])
    if spec.type == "multi" and spec.columns:
        seen.update(spec.columns)
    if spec.classes is None:
        return sorted(seen)
    unknown = sorted(seen - set(spec.classes))
    if unknown:
        raise ManifestError(f"dataset.tasks.{task}.classes: labels {unknown} occur in the data but are not listed")
    return list(spec.classes)


def _stratify_key(rows: Rows, params: DatasetParams) -> list[str]:
    """Seeded splits are stratified on the first single-label task (if any)."""
    single = [t for t, s in params.tasks.items() if s.type == "single"]
    if not single:
        return ["" for _ in rows.ids]
    return [v if v is not None else "" for v in rows.labels[single[0]]]


def _to_table(rows: Rows, splits: list[str], params: DatasetParams, classes: dict) -> pa.Table:
    order = np.argsort(np.array(rows.ids, dtype=object), kind="stable")
    cols = {
        "id": pa.array([rows.ids[i] for i in order], pa.string()),
        "path": pa.array([rows.paths[i] for i in order], pa.string()),
        "split": pa.array([splits[i] for i in order], pa.string()),
    }
    for task, spec in params.tasks.items():
        values = [rows.labels[task][i] for i in order]
        cols[task] = pa.array(values, pa.list_(pa.string()) if spec.type == "multi" else pa.string())
    meta = {
        "dataset": params.name,
        "root": params.root,
        "tasks": {t: {"type": s.type, "classes": classes[t]} for t, s in params.tasks.items()},
    }
    return pa.table(cols).replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
