"""Reading a prepared manifest: its metadata (tasks, classes, dataset) and its splits.

Apart from :mod:`pipeline.manifest`, which builds manifests through every dataset
format's reader, so that the many stages that only read a manifest do not
import (and depend on) the format readers.
"""
from __future__ import annotations

import json

import pyarrow as pa

from pipeline.errors import ManifestError

META_KEY = b"clipcache"


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
