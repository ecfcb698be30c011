"""A feature cache at scale: files, bytes, DVC's view of it, and reading by id.

    python benchmarks/cache_scale.py                       # 100,000 rows: CLS [512] + tokens [50, 64]
    python benchmarks/cache_scale.py --rows 100000 --tokens 197x768   # ViT-B/16's token block (about 30 GB)

Writes a synthetic cache through the real writer (``pipeline.cache.CacheWriter``,
the same shards the extract stage writes), then prints side by side:

* file count and bytes of the cache directory;
* ``dvc add`` and ``dvc status`` wall time on it (a throw-away DVC repo);
* the time to open the cache and read a few-shot draw (``--shots`` x ``--classes``
  random ids, CLS and tokens) by id, as a head's training stage does;
* a full sequential scan (every row of every array, shard by shard).

Values are random: what is measured is storage, not features.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.cache import ArraySpec, CacheWriter, FeatureCache


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.lower().split("x"))


def write_cache(path: Path, rows: int, dim: int, tokens: tuple[int, ...], shard: int, chunk: int,
                seed: int = 0) -> float:
    """Fill a cache of ``rows`` rows shard by shard; return the wall time."""
    ids = [f"img{i:08d}" for i in range(rows)]
    specs = [ArraySpec("cls", (dim,)), ArraySpec("cls_norm", (), "float32"), ArraySpec("block-2", tokens)]
    writer = CacheWriter(path, ids, specs, {"model": "synthetic", "rows": rows}, shard, chunk)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    writer.prepare()
    for s in writer.pending():
        n = len(writer.shard_rows(s))
        cls = rng.standard_normal((n, dim), dtype=np.float32)
        writer.write_shard(s, {"cls": (cls / np.linalg.norm(cls, axis=1, keepdims=True)).astype(np.float16),
                               "cls_norm": np.linalg.norm(cls, axis=1),
                               "block-2": rng.standard_normal((n, *tokens), dtype=np.float32).astype(np.float16)})
    writer.finalize()
    return time.perf_counter() - start


def tree_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def dvc_times(repo: Path, name: str) -> tuple[float, float]:
    """(``dvc add``, ``dvc status``) seconds on ``repo/name`` in a fresh, SCM-less DVC repo."""
    def run(*args: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)
        return time.perf_counter() - start

    run("init", "--no-scm", "-q")
    run("config", "core.analytics", "false")
    return run("add", "-q", name), run("status", "-q")


def read_draw(path: Path, n_ids: int, rows: int, seed: int = 1) -> tuple[float, float]:
    """(open seconds, read seconds) for ``n_ids`` random ids, CLS and tokens, by id."""
    pick = np.random.default_rng(seed).choice(rows, size=n_ids, replace=False)
    ids = [f"img{i:08d}" for i in pick]
    start = time.perf_counter()
    cache = FeatureCache(path)
    opened = time.perf_counter()
    cache.read("cls", ids)
    cache.read("block-2", ids)
    return opened - start, time.perf_counter() - opened


def full_scan(path: Path, shard: int) -> float:
    cache = FeatureCache(path)
    start = time.perf_counter()
    for name in cache.arrays():
        arr = cache.group[name]
        for lo in range(0, arr.shape[0], shard):
            np.asarray(arr[lo:lo + shard])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512, help="CLS embedding width")
    ap.add_argument("--tokens", type=parse_shape, default=(50, 64), help="token block row shape, e.g. 50x64")
    ap.add_argument("--rows-per-shard", type=int, default=1024, help="extract.rows_per_shard")
    ap.add_argument("--rows-per-chunk", type=int, default=128, help="extract.rows_per_chunk")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--dir", type=Path, default=None, help="where to build it (default: a temp dir)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        repo = Path(tmp)
        path = repo / "images.zarr"
        write_s = write_cache(path, args.rows, args.dim, args.tokens, args.rows_per_shard, args.rows_per_chunk)
        files, size = tree_size(path)
        add_s, status_s = dvc_times(repo, path.name)
        open_s, draw_s = read_draw(path, args.shots * args.classes, args.rows)
        scan_s = full_scan(path, args.rows_per_shard)
    mb = size / 2**20
    print(f"cache: {args.rows:,} rows, cls [{args.dim}] float16 + cls_norm + block [{'x'.join(map(str, args.tokens))}] "
          f"float16, {args.rows_per_shard} rows per shard, {os.cpu_count()} CPUs")
    print(f"{'what':<42}{'value':>14}")
    for what, value in (
            ("files", f"{files:,}"), ("size", f"{mb:,.1f} MiB"),
            ("write (through CacheWriter)", f"{write_s:.1f} s"),
            ("dvc add", f"{add_s:.1f} s"), ("dvc status", f"{status_s:.2f} s"),
            ("open the cache (ids, identity)", f"{open_s:.3f} s"),
            (f"read a {args.shots}-shot draw by id ({args.shots * args.classes} rows)", f"{draw_s:.3f} s"),
            ("full sequential scan", f"{scan_s:.1f} s ({mb / max(scan_s, 1e-9):,.0f} MiB/s)")):
        print(f"{what:<42}{value:>14}")


if __name__ == "__main__":
    main()
