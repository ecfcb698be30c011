"""Turn a labelled image collection into one manifest table.

``dataset.layout`` picks the reader of one input format from the registry in
:mod:`pipeline.datasets` (folders, csv, global_streetscapes, coop_split, voc, coco).
A reader returns the rows (id, image path, split if the format has one, labels);
everything after that is shared by all layouts and lives here: the image files are
checked (bad rows named by file and row), missing splits are drawn seeded and
stratified (:mod:`pipeline.splits`), and the class lists are built.

The manifest has columns ``id``, ``path`` (relative to the dataset root),
``split`` and one column per task (a string, or a list of strings for multi
tasks), sorted by id. Class lists are built once from the union of all splits
and recorded, in a stable order (sorted, the layout's own order such as CoOp's label
indices, or ``tasks.<t>.classes``), in the table's schema metadata.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from pipeline.datasets import ManifestError, Rows, layout_of
from pipeline.manifest_meta import META_KEY, manifest_meta, split_ids  # noqa: F401  (re-exported)
from pipeline.imageio import PIL_MAX_PIXELS, ImageCheck, check_images, file_digests
from pipeline.splits import SPLITS, assign_splits

log = logging.getLogger(__name__)

# The names of pipeline.datasets.LAYOUTS (a test checks they agree).
LayoutName = Literal["folders", "csv", "global_streetscapes", "coop_split", "voc", "coco"]


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
    """The ``dataset`` section of params.yaml.

    Keys marked with layouts are read by those layouts only (``pipeline.datasets``); setting
    one for another layout is an error naming the key.
    """

    name: str
    root: str
    layout: LayoutName
    tasks: dict[str, TaskSpec]
    csv: tuple[str, ...] = ()                    # csv
    image_column: str | None = None              # csv ('path'), global_streetscapes ('img_path')
    id_column: str | None = None                 # csv, global_streetscapes (default: the image path)
    split_column: str | None = None              # csv
    split_aliases: dict[str, str] = field(default_factory=dict)  # csv, folders
    # csv, folders: the seeded split of data without splits
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "val": 0.2, "test": 0.2})
    val_fraction: float = 0.2                    # val carved from train when the data has no val
    split_seed: int = 0
    classnames_file: str | None = None           # folders: '<folder> <class name>' lines
    label_case: Literal["lower", "keep"] = "lower"  # global_streetscapes (labels are always stripped)
    split_file: str | None = None                # coop_split (default: the one split_zhou_*.json in the root)
    image_dir: str | None = None                 # coop_split (default: the root), voc (JPEGImages)
    include_difficult: bool = True               # voc (as CDUL's reference)
    annotations: dict[str, str] = field(default_factory=dict)  # coco: split -> instances JSON
    image_dirs: dict[str, str] = field(default_factory=dict)   # coco: split -> image folder
    on_error: Literal["strict", "skip"] = "strict"
    verify_images: bool = True
    max_image_pixels: int | None = None  # null: PIL's default limit (decompression bombs)


def build_manifest(params: DatasetParams, root: Path | None = None) -> tuple[pa.Table, list[dict]]:
    """Read the dataset and return (manifest table, skipped-row records)."""
    root = Path(root or params.root)
    if not root.is_dir():
        raise ManifestError(f"dataset.root: directory {root} does not exist")
    rows = layout_of(params).read(params, root)
    skipped = _check_rows(rows, params, root)
    rows = _drop(rows, {s["source"] for s in skipped})
    if not rows.ids:
        raise ManifestError(f"{root}: no usable images found")
    strata = rows.strata if rows.strata is not None else _stratify_key(rows, params)
    try:
        splits = assign_splits(rows.splits, strata, params)
    except ValueError as exc:
        raise ManifestError(f"{root}: {exc}") from exc
    classes = {name: _class_list(name, spec, rows.labels[name], rows.class_order.get(name))
               for name, spec in params.tasks.items()}
    table = _to_table(rows, splits, params, classes)
    log.info("manifest: %d rows, %d skipped, splits %s", table.num_rows, len(skipped),
             {s: splits.count(s) for s in SPLITS})
    return table, skipped


def image_index(table: pa.Table, root: Path) -> pa.Table:
    """(id, path, sha256) of every manifest row: all that feature extraction depends on."""
    paths = table.column("path").to_pylist()
    digests = file_digests([root / p for p in paths])
    return pa.table({"id": table.column("id"), "path": table.column("path"),
                     "sha256": pa.array(digests, pa.string())})


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
    return rows.keep([i for i, s in enumerate(rows.sources) if s not in sources])


def _class_list(task: str, spec: TaskSpec, values: list, order: list[str] | None = None) -> list[str]:
    """Classes from the union of all splits: in params' order, else the layout's, else sorted."""
    seen: set[str] = set()
    for v in values:
        if v is not None:
            seen.update(v if isinstance(v, list) else [v])
    if spec.type == "multi" and spec.columns:
        seen.update(spec.columns)
    if spec.classes is None and order is not None:
        return [c for c in order if c in seen] + sorted(seen - set(order))
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
    if rows.meta:  # folders and csv manifests stay byte-identical to earlier versions
        meta["layout"] = {"name": params.layout, **rows.meta}
    return pa.table(cols).replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
