"""Zarr v3 feature caches: create, write whole shards, resume, open with expectations.

Layout of one cache (a zarr group)::

    images.zarr/
      zarr.json          attributes: identity (model, weights, preprocessing, ...)
      ids                [N] sample ids, the join key of every reader
      cls                [N, D] float16
      block-2            [N, L, W] float16  (one array per stored block)

Arrays are chunked along rows and sharded (``rows_per_shard`` rows per shard
file), so 100k images make a few hundred files, not the tens of thousands of
tiny chunk files that DVC hashes slowly. Writers only ever write whole shards.

Crash safety: everything is written into ``<name>.partial/`` next to the
target. After a shard is written to every array, a marker file records it as
done; a re-run with the same identity skips marked shards and redoes the rest
(a shard interrupted mid-write has no marker, so it is rewritten whole). When
all shards are done the markers are removed and the directory is renamed to
the target in one step, so DVC never sees a half-written cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr

from pipeline.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MARKERS = "_done"


class CacheMismatchError(UserError, ValueError):
    """A cache was written for a different model, preprocessing or dataset."""


@dataclass(frozen=True)
class ArraySpec:
    """One per-row array: its row shape and storage dtype."""

    name: str
    row_shape: tuple[int, ...]
    dtype: str = "float16"


def ids_digest(ids: list[str] | np.ndarray) -> str:
    """Order-sensitive hash of the sample ids (part of every cache's identity)."""
    digest = hashlib.sha256()
    for sid in ids:
        digest.update(str(sid).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class CacheWriter:
    """Shard-by-shard writer of one cache group (see module docstring)."""

    def __init__(self, path: Path, ids: list[str], arrays: list[ArraySpec], identity: dict,
                 rows_per_shard: int, rows_per_chunk: int):
        if rows_per_shard % rows_per_chunk:
            raise ValueError(f"rows_per_shard ({rows_per_shard}) must be a multiple of rows_per_chunk ({rows_per_chunk})")
        self.path = Path(path)
        self.work = partial_path(self.path)
        self.ids = list(ids)
        self.arrays = arrays
        self.rows_per_shard = rows_per_shard
        self.rows_per_chunk = rows_per_chunk
        self.identity = {**identity, "ids_sha256": ids_digest(self.ids), "rows_per_shard": rows_per_shard,
                         "arrays": {a.name: [list(a.row_shape), a.dtype] for a in arrays},
                         "format_version": FORMAT_VERSION}

    @property
    def n_shards(self) -> int:
        return -(-len(self.ids) // self.rows_per_shard)

    def shard_rows(self, shard: int) -> range:
        start = shard * self.rows_per_shard
        return range(start, min(start + self.rows_per_shard, len(self.ids)))

    def prepare(self) -> None:
        """Create the partial group, or keep it when it was started with the same identity."""
        if self.work.exists():
            found = _read_attrs(self.work).get("identity")
            if found == _jsonable(self.identity):
                log.info("resuming %s: %d of %d shards already done", self.path, len(self.done()), self.n_shards)
                return
            log.warning("discarding %s: it was started with different params", self.work)
            shutil.rmtree(self.work)
        tmp = self.work.with_name(self.work.name + ".init")
        shutil.rmtree(tmp, ignore_errors=True)
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        n = len(self.ids)
        ids = group.create_array("ids", shape=(n,), chunks=(max(n, 1),), dtype=str)
        ids[:] = np.array(self.ids, dtype=str)
        for spec in self.arrays:
            group.create_array(
                spec.name, shape=(n, *spec.row_shape), dtype=spec.dtype,
                chunks=(self.rows_per_chunk, *spec.row_shape), shards=(self.rows_per_shard, *spec.row_shape))
        group.attrs["identity"] = _jsonable(self.identity)
        group.attrs["complete"] = False
        (tmp / MARKERS).mkdir()
        os.replace(tmp, self.work)  # the partial group appears whole or not at all

    def done(self) -> set[int]:
        marker_dir = self.work / MARKERS
        return {int(p.name) for p in marker_dir.iterdir()} if marker_dir.is_dir() else set()

    def pending(self) -> list[int]:
        done = self.done()
        return [s for s in range(self.n_shards) if s not in done]

    def write_shard(self, shard: int, values: dict[str, np.ndarray]) -> None:
        """Write all arrays of one shard, then mark it done."""
        rows = self.shard_rows(shard)
        group = zarr.open_group(str(self.work), mode="r+")
        for spec in self.arrays:
            data = values[spec.name]
            if data.shape != (len(rows), *spec.row_shape):
                raise ValueError(f"{spec.name}: shard {shard} has shape {data.shape}, "
                                 f"expected {(len(rows), *spec.row_shape)}")
            group[spec.name][rows.start:rows.stop] = data.astype(spec.dtype, copy=False)
        marker = self.work / MARKERS / f"{shard}"
        tmp = marker.with_name(f".{shard}.tmp")
        tmp.write_text("")
        os.replace(tmp, marker)

    def finalize(self) -> None:
        """Turn a fully written partial group into the target cache, atomically."""
        missing = self.pending()
        if missing:
            raise RuntimeError(f"{self.work}: cannot finalize, shards {missing[:10]} not written")
        group = zarr.open_group(str(self.work), mode="r+")
        group.attrs["complete"] = True
        shutil.rmtree(self.work / MARKERS)
        replace_dir(self.work, self.path)
        log.info("wrote %s (%d rows, %d shards)", self.path, len(self.ids), self.n_shards)


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing an existing ``dst`` without a window where neither exists whole."""
    if dst.exists():
        old = dst.with_name(dst.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


class FeatureCache:
    """Read side of a cache: checked identity, rows fetched by sample id."""

    def __init__(self, path: Path | str, expect: dict[str, Any] | None = None):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise FileNotFoundError(f"{self.path}: no feature cache here (run the extract stage)")
        self.group = zarr.open_group(str(self.path), mode="r")
        if (reason := self.group.attrs.get("not_applicable")) is not None:
            raise CacheMismatchError(f"{self.path}: no features here, the cache is marked not applicable ({reason})")
        if not self.group.attrs.get("complete", False):
            raise CacheMismatchError(f"{self.path}: cache is incomplete (interrupted extraction)")
        self.identity = dict(self.group.attrs["identity"])
        check_identity(self.identity, expect or {}, self.path)
        self.ids = np.asarray(self.group["ids"][:], dtype=object)
        self._row = {sid: i for i, sid in enumerate(self.ids)}

    def arrays(self) -> list[str]:
        return sorted(name for name in self.group.array_keys() if name != "ids")

    def rows(self, ids: list[str] | np.ndarray) -> np.ndarray:
        missing = [sid for sid in ids if sid not in self._row]
        if missing:
            raise KeyError(f"{self.path}: {len(missing)} ids not in the cache, e.g. {missing[:3]}")
        return np.array([self._row[sid] for sid in ids], dtype=np.int64)

    def read(self, name: str, ids: list[str] | np.ndarray | None = None, dtype: str = "float32") -> np.ndarray:
        """Array ``name`` for ``ids`` in that order (all rows when ids is None)."""
        if name not in self.group:
            raise KeyError(f"{self.path}: no array '{name}' (stored: {self.arrays()})")
        arr = self.group[name]
        if ids is None:
            return np.asarray(arr[:], dtype=dtype)
        rows = self.rows(ids)
        order = np.argsort(rows, kind="stable")
        # zarr reads sorted coordinate selections efficiently; undo the sort afterwards.
        data = np.asarray(arr.get_orthogonal_selection((rows[order],)), dtype=dtype)
        out = np.empty_like(data)
        out[order] = data
        return out


def write_not_applicable(path: Path | str, reason: str) -> None:
    """An empty zarr group that says why a stage made no features (DVC needs its output to exist).

    DVC has no conditional stages: a stage whose work does not apply to this
    dataset (tiles without a multi-label task, a view set with ``n: 0``) still
    writes its declared output, and readers refuse it with ``reason``.
    """
    path = Path(path)
    tmp = partial_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(str(tmp), mode="w")
    group.attrs.update({"not_applicable": reason, "format_version": FORMAT_VERSION})
    replace_dir(tmp, path)
    log.info("%s: not applicable (%s)", path, reason)


def check_identity(found: dict, expect: dict, path: Path | str) -> None:
    """Raise naming every field where the cache differs from what the caller expects."""
    diffs = []
    have_all = flatten(found)
    for key, want in flatten(_jsonable(expect)).items():
        have = have_all.get(key, "<absent>")
        if have != want:
            diffs.append(f"'{key}' is {have!r} in the cache but {want!r} is expected")
    if diffs:
        raise CacheMismatchError(f"{path}: cache does not match the params: " + "; ".join(diffs))


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested identity as dotted keys (``decode.exif_transpose``), the names errors and tables use."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=list))


def _read_attrs(path: Path) -> dict:
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # an unreadable partial group is simply discarded
        return {}
