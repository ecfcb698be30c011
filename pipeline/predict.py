"""Label new images with a fitted head: index, extract into a cache, apply the head shard by shard, write parquet.

1. :func:`pipeline.predict_input.index_input` lists the input and its bad rows.
2. Features come from an image cache keyed like every other
   (``cache/<name>/<model.tag>/images.zarr``), filled by :func:`pipeline.extract.extract`
   (sharded, resumable after a kill, atomic, torchrun, GPU). A complete cache of the
   same images (ids and file hashes), encoder and stored arrays is reused, so
   predicting again with another head never re-encodes. The cache stores the
   embeddings, their norms and the token blocks the head reads (plus the blocks a
   previous cache of the same input held).
3. The head (a model file, :mod:`pipeline.modelfile`) is checked against the cache's
   encoder identity, then applied one shard of rows at a time: memory stays flat in
   the number of images.
4. One parquet (and optionally a CSV) with id, path, predicted class, its probability,
   the top-k classes and probabilities, and an ``error`` for each bad input row; the
   head / model identity is in the file's metadata.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import zarr
from tqdm import tqdm

from pipeline import distributed
from pipeline.cache import FeatureCache, ids_digest
from pipeline.encoders import ModelParams, RuntimeParams, load_model, resolve_device, weights_identity
from pipeline.errors import UserError
from pipeline.extract import ExtractParams, extract
from pipeline.features import FeatureSet
from pipeline.files import atomic_path, sha256_file
from pipeline.imageio import DecodeParams, decode_identity
from pipeline.modelfile import LoadedHead, ModelFileError, check_encoder, load_head
from pipeline.predict_input import InputIndex

log = logging.getLogger(__name__)

META_KEY = b"clipcache"
INDEX_ATTR = "images_sha256"   # the cache attribute: (id, file sha256) digest of the input it holds


@dataclass(frozen=True)
class PredictJob:
    """One entry of ``predict.jobs`` (a name -> job mapping; ``{}`` = no predict stage)."""

    input: str                        # folder, .csv / .parquet list of paths, or a manifest.parquet
    head: str                         # a head of train.heads
    task: str
    shots: int | str = "final"        # final | a shot count of train.shots | all
    seed: int = 1                     # with a shot count: the seed of the fit
    root: str | None = None           # lists: paths are relative to it (default: the list's folder)
    path_column: str = "path"
    id_column: str | None = None      # default: the path
    split: str | None = None          # only rows of this split (a list or manifest with a split column)
    top_k: int = 3
    csv: bool = False                 # also write predictions.csv
    verify_images: bool = True        # decode every file first: bad ones become rows, not a crash
    max_image_pixels: int | None = None


def model_file(runs_dir: Path | str, task: str, shots: int | str = "final", seed: int = 1) -> Path:
    """One fit's model file in a train stage's output dir: final/<task>.json or models/<task>-<shots>-<seed>.json."""
    runs_dir = Path(runs_dir)
    if str(shots) == "final":
        path = runs_dir / "final" / f"{task}.json"
        if not path.is_file() and (runs_dir / "models").is_dir():
            raise FileNotFoundError(f"{path}: no final fit (the head's params say final: false?); "
                                    "pick a few-shot fit with --shots and --seed")
        return path
    return runs_dir / "models" / f"{task}-{shots}-{seed}.json"


def block_ints(names: list[str]) -> set[int]:
    """Cache array names of token blocks ('block-2') as extract.token_blocks values (-2)."""
    return {int(n.removeprefix("block")) for n in names if n.startswith("block")}


def ensure_features(index: InputIndex, out: Path, model: ModelParams, runtime: RuntimeParams, decode: DecodeParams,
                    layout: ExtractParams, blocks: set[int]) -> bool:
    """Make ``out`` hold the features of ``index`` (reused when it already does); return True if encoded here."""
    digest = index.digest()
    expected = {**weights_identity(model), **decode_identity(decode)}
    have: set[int] = set()
    if (out / "zarr.json").is_file():
        try:
            cache = FeatureCache(out)
            check_encoder(cache.identity, expected, out, partial=True)
        except UserError as exc:
            log.info("%s: not reused (%s)", out, exc)
        else:
            same_rows = cache.identity.get("ids_sha256") == ids_digest(index.ids) and \
                cache.group.attrs.get(INDEX_ATTR) == digest
            have = block_ints(cache.arrays())
            if same_rows and blocks <= have and cache.identity.get("dtype") == layout.dtype:
                log.info("%s: features of these %d images are cached; not re-encoding", out, len(index.ids))
                return False
    if not index.ids:
        raise UserError("predict: no usable image in the input (every row is bad)")
    device = distributed.rank_device(resolve_device(runtime.device))
    loaded = load_model(model, device)
    cfg = ExtractParams(token_blocks=tuple(sorted(blocks | have)), dtype=layout.dtype,
                        rows_per_shard=layout.rows_per_shard, rows_per_chunk=layout.rows_per_chunk)
    extract("images", loaded, cfg, runtime, index.ids, index.paths, index.root, out, decode)
    if distributed.context().rank == 0:
        zarr.open_group(str(out), mode="r+").attrs[INDEX_ATTR] = digest
    return True


def apply_head(loaded: LoadedHead, cache: FeatureCache, index: InputIndex, out: Path, top_k: int = 3,
               csv: bool = False, extra_meta: dict | None = None) -> dict[str, Any]:
    """Write predictions of every cached row (one shard at a time) and of every bad row; return counts and time."""
    if loaded.meta.get("feature_correction"):
        raise ModelFileError(f"{loaded.path}: fitted on overlap-corrected features; predict applies plain heads only")
    check_encoder(loaded.meta.get("encoder") or {}, cache.identity, loaded.path)
    head, classes = loaded.head, list(loaded.meta["classes"])
    tokens = list(loaded.meta.get("token_blocks") or [])
    missing = [a for a in ["cls", *tokens] if a not in cache.arrays()]
    if missing:
        raise ModelFileError(f"{cache.path}: no arrays {missing} for {loaded.meta['head']}")
    k = max(1, min(top_k, len(classes)))
    paths = dict(zip(index.ids, index.paths))
    meta = {"head": loaded.meta["head"], **{f: loaded.meta.get(f) for f in ("task", "shots", "seed", "params",
            "classes", "text", "encoder", "selected_on")}, "model_file": str(loaded.path),
            "model_file_sha256": sha256_file(loaded.path), "tensors_sha256": loaded.meta["tensors"]["sha256"],
            "cache": str(cache.path), "top_k": k, **(extra_meta or {})}
    schema = pa.schema([("id", pa.string()), ("path", pa.string()), ("predicted", pa.string()),
                        ("probability", pa.float32()), ("top_classes", pa.list_(pa.string())),
                        ("top_probabilities", pa.list_(pa.float32())), ("error", pa.string())],
                       metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    step, n = int(cache.identity.get("rows_per_shard", 1024)), len(cache.ids)
    head_s = 0.0
    csv_path = out.with_suffix(".csv")
    with atomic_path(out) as tmp, atomic_path(csv_path) if csv else contextlib.nullcontext() as tmp_csv:
        writer = pq.ParquetWriter(tmp, schema)
        csv_writer = pacsv.CSVWriter(tmp_csv, _csv_schema(schema)) if csv else None
        with tqdm(total=n, desc=f"predict {meta['head']}", unit="img", disable=distributed.context().rank != 0) as bar:
            for start in range(0, n, step):
                rows = slice(start, min(n, start + step))
                features = _features(cache, rows, tokens)
                t0 = time.perf_counter()
                proba = np.asarray(head.predict_proba(features), dtype=np.float32)
                head_s += time.perf_counter() - t0
                batch = _batch(schema, features.ids, paths, proba, classes, k)
                _write(writer, csv_writer, batch)
                bar.update(len(features))
        if index.bad:
            _write(writer, csv_writer, pa.record_batch({
                "id": [b["id"] for b in index.bad], "path": [b["path"] for b in index.bad],
                "predicted": [None] * len(index.bad), "probability": [None] * len(index.bad),
                "top_classes": [None] * len(index.bad), "top_probabilities": [None] * len(index.bad),
                "error": [f"{b['source']}: {b['reason']}" for b in index.bad]}, schema=schema))
        writer.close()
        if csv_writer is not None:
            csv_writer.close()
    return {"images": n, "bad": len(index.bad), "head_s": head_s}


def _features(cache: FeatureCache, rows: slice, tokens: list[str]) -> FeatureSet:
    group = cache.group
    return FeatureSet(ids=cache.ids[rows], cls=np.asarray(group["cls"][rows], np.float32),
                      cls_norm=np.asarray(group["cls_norm"][rows], np.float32) if "cls_norm" in group else None,
                      tokens={b: np.asarray(group[b][rows], np.float32) for b in tokens})


def _batch(schema: pa.Schema, ids: np.ndarray, paths: dict, proba: np.ndarray, classes: list[str],
           k: int) -> pa.RecordBatch:
    top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    top_p = np.take_along_axis(proba, top, axis=1)
    names = np.asarray(classes, dtype=object)[top]
    return pa.record_batch({
        "id": list(ids), "path": [paths[i] for i in ids], "predicted": list(names[:, 0]),
        "probability": top_p[:, 0], "top_classes": [list(r) for r in names],
        "top_probabilities": [list(r) for r in top_p], "error": [None] * len(ids)}, schema=schema)


def _csv_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, pa.string() if pa.types.is_list(f.type) else f.type) for f in schema])


def _write(writer: pq.ParquetWriter, csv_writer: Any, batch: pa.RecordBatch) -> None:
    writer.write_batch(batch)
    if csv_writer is not None:
        cols = [pa.array([None if v is None else ";".join(str(x) for x in v) for v in col.to_pylist()], pa.string())
                if pa.types.is_list(col.type) else col for col in batch.columns]
        csv_writer.write_batch(pa.record_batch(cols, schema=_csv_schema(batch.schema)))


def predict(index: InputIndex, head_file: Path, cache_path: Path, out: Path, *, model: ModelParams,
            runtime: RuntimeParams, decode: DecodeParams, layout: ExtractParams, top_k: int = 3,
            csv: bool = False, extra_meta: dict | None = None) -> dict[str, Any] | None:
    """The whole command; returns timings on rank 0 (None on the other ranks of a torchrun)."""
    start = time.perf_counter()
    loaded = load_head(head_file, device=resolve_device(runtime.device))
    # refuse another encoder before encoding anything (the cache is checked again, in full, below)
    check_encoder(loaded.meta.get("encoder") or {}, {**weights_identity(model), **decode_identity(decode)},
                  head_file, partial=True)
    t0 = time.perf_counter()
    encoded = ensure_features(index, cache_path, model, runtime, decode, layout,
                              block_ints(list(loaded.meta.get("token_blocks") or [])))
    extract_s = time.perf_counter() - t0
    if distributed.context().rank != 0:
        distributed.shutdown()
        return None
    stats = apply_head(loaded, FeatureCache(cache_path), index, out, top_k, csv, extra_meta)
    total = time.perf_counter() - start
    stats.update(encoded=encoded, extract_s=extract_s, total_s=total, head_share=stats["head_s"] / max(total, 1e-9))
    log.info("predicted %d images (%d bad rows) in %.1f s: %.0f img/s; applying the head took %.2f s (%.1f%%)",
             stats["images"], stats["bad"], total, stats["images"] / max(total, 1e-9), stats["head_s"],
             100 * stats["head_share"])
    distributed.shutdown()
    return stats
