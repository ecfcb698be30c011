"""What ``predict`` labels: a folder, a CSV / parquet list of paths, or a prepared manifest (no labels needed).

Every input becomes one :class:`InputIndex`: ids, paths relative to a root, where
each row came from (``list.csv:8``, a folder's relative path), and the bad rows.
Bad rows are checked as the prepare stage checks a dataset (a path escaping the
root, a directory, a missing file or broken link, an undecodable file or a
decompression bomb, via :func:`pipeline.imageio.check_images`) and become rows of
the predictions file with their reason, never a crash.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.datasets.base import IMAGE_SUFFIXES
from pipeline.errors import UserError
from pipeline.imageio import PIL_MAX_PIXELS, check_images, file_digests
from pipeline.manifest_meta import META_KEY

log = logging.getLogger(__name__)


class InputError(UserError, ValueError):
    """The predict input cannot be read (missing, no path column, duplicate ids)."""


@dataclass
class InputIndex:
    root: Path
    ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    bad: list[dict] = field(default_factory=list)    # id, path, source, reason

    def digest(self) -> str:
        """sha256 over (id, file sha256) of the good rows: what the features depend on."""
        h = hashlib.sha256()
        for sid, sha in zip(self.ids, file_digests([self.root / p for p in self.paths])):
            h.update(f"{sid}\0{sha}\0".encode())
        return h.hexdigest()


def index_input(source: Path | str, root: Path | str | None = None, path_column: str = "path",
                id_column: str | None = None, split: str | None = None, verify: bool = True,
                max_pixels: int | None = None) -> InputIndex:
    """Rows of ``source`` with their problems (see module docstring)."""
    source = Path(source)
    if source.is_dir():
        root_dir = Path(root) if root is not None else source
        rels = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if root is not None:
            rels = [(source / r).relative_to(root_dir).as_posix() for r in rels]
        rows = [(r, r, r) for r in rels]
    elif source.is_file():
        root_dir, rows = _read_list(source, root, path_column, id_column, split)
    else:
        raise FileNotFoundError(f"{source}: predict input not found (a folder, a .csv / .parquet list or a manifest)")
    return _check(root_dir, rows, verify, max_pixels or PIL_MAX_PIXELS)


def _read_list(source: Path, root: Path | str | None, path_column: str, id_column: str | None,
               split: str | None) -> tuple[Path, list[tuple[str, str, str]]]:
    if source.suffix.lower() == ".parquet":
        table = pq.read_table(source)
        where = [f"{source.name}[{i}]" for i in range(table.num_rows)]
    elif source.suffix.lower() in (".csv", ".txt"):
        table = pacsv.read_csv(source, convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
        where = [f"{source.name}:{i + 2}" for i in range(table.num_rows)]   # line 1 is the header
    else:
        raise InputError(f"{source}: predict input must be a folder, a .csv or a .parquet file")
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    default_root = source.parent
    if "tasks" in meta:                      # a manifest written by the prepare stage: its root, its ids
        default_root, path_column, id_column = Path(meta["root"]), "path", "id"
    if split is not None:
        if "split" not in table.column_names:
            raise InputError(f"{source}: split '{split}' asked for, but there is no 'split' column")
        keep = [i for i, s in enumerate(table.column("split").to_pylist()) if s == split]
        table, where = table.take(pa.array(keep, pa.int64())), [where[i] for i in keep]
    for col in (path_column, id_column):
        if col is not None and col not in table.column_names:
            raise InputError(f"{source}: no column '{col}' (columns: {', '.join(table.column_names)})")
    paths = [str(p) for p in table.column(path_column).to_pylist()]
    ids = [str(i) for i in table.column(id_column).to_pylist()] if id_column else paths
    return Path(root) if root is not None else default_root, list(zip(ids, paths, where))


def _check(root: Path, rows: list[tuple[str, str, str]], verify: bool, max_pixels: int) -> InputIndex:
    index = InputIndex(root)
    seen: dict[str, str] = {}
    resolved_root = root.resolve()
    candidates, problems = [], {}
    for sid, rel, src in rows:
        if sid in seen:
            raise InputError(f"{src}: duplicate id '{sid}' (first at {seen[sid]})")
        seen[sid] = src
        full = root / rel
        if not Path(rel).is_absolute() and not full.resolve().is_relative_to(resolved_root):
            problems[src] = "path escapes the input root (through '..' or a link)"
        elif full.is_dir():
            problems[src] = "is a directory, not an image file"
        elif not full.is_file():
            problems[src] = "broken link" if full.is_symlink() else "file not found"
        else:
            candidates.append((src, rel, full))
    if verify:
        problems.update({p.source: p.reason for p in check_images(candidates, max_pixels)})
    for sid, rel, src in rows:
        if src in problems:
            index.bad.append({"id": sid, "path": rel, "source": src, "reason": problems[src]})
        else:
            index.ids.append(sid)
            index.paths.append(rel)
    for b in index.bad[:20]:
        log.warning("bad input row %s (%s): %s", b["path"], b["source"], b["reason"])
    log.info("predict input: %d images, %d bad rows", len(index.ids), len(index.bad))
    return index
