"""Extraction throughput: decode alone, forward alone and the whole stage, for each decode path.

    python benchmarks/extract.py --model synthclip-tiny --config-dir pipeline/model_configs --batch-size 128
    python benchmarks/extract.py --model ViT-B-32 --images 512

Prints, for real JPEGs from ../shared/data/katkam_weather (or --data, --photos), one row per
decode path: ``pil`` (exact, PIL in the workers), ``pil+draft`` (``decode.draft``:
JPEG DCT scaling) and ``torchvision`` (``decode.backend: torchvision``: batched
decode_jpeg and resizing on the encoder's device, nvJPEG on CUDA):
  * decode images/s: the input pipeline alone (workers, plus the on-device decode
    and resize for torchvision; no model);
  * forward images/s: the model alone on preloaded tensors of the same batch shape;
  * stage images/s: the real extraction path (decode, forward, zarr shard writes);
  * ratio: stage / forward (1.0 = decoding and writing fully hidden behind the model);
and, per path, the largest absolute difference of its embeddings from the exact
path's (unit vectors). Random initialisation is used: timing does not depend on the weights.
"""
from __future__ import annotations

import argparse
import csv
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pipeline.cache import FeatureCache
from pipeline.device_decode import DeviceFinisher, RawRows, collate
from pipeline.encoders import ModelParams, RuntimeParams, autocast, encode_images, load_model, resolve_device
from pipeline.extract import ExtractParams, ImageRows, extract, input_size
from pipeline.imageio import DecodeParams

REPO = Path(__file__).resolve().parents[1]


def photo_paths(data: Path, name: str, n: int) -> tuple[Path, list[str]]:
    """The first ``n`` paths of DATA/<name>/labels.csv (katkam_weather, camvid_multilabel)."""
    root = data / name
    with (root / "labels.csv").open() as fh:
        paths = [row["path"] for row in csv.DictReader(fh)][:n]
    if len(paths) < n:
        raise SystemExit(f"{root}: only {len(paths)} images")
    return root, paths


def time_forward(loaded, batch: torch.Tensor, blocks: tuple[int, ...], runtime: RuntimeParams, n_batches: int) -> float:
    device = loaded.device
    x = batch.to(device)
    with autocast(device, runtime.precision):
        encode_images(loaded.model, x, blocks)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n_batches):
            encode_images(loaded.model, x, blocks)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n_batches * len(batch) / (time.perf_counter() - start)


def time_decode(dataset, runtime: RuntimeParams, finish=None) -> float:
    loader = DataLoader(dataset, batch_size=runtime.batch_size, num_workers=runtime.num_workers,
                        collate_fn=collate if finish is not None else None)
    start = time.perf_counter()
    for batch in loader:
        if finish is not None:
            finish(batch)
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--config-dir", default=None)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--blocks", type=int, nargs="*", default=[], help="token blocks to store too, e.g. -1 -2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--photos", default="katkam_weather", help="folder of DATA with a labels.csv (path column)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    device = resolve_device(args.device)
    loaded = load_model(ModelParams(name=args.model, pretrained=None, tag="bench", config_dir=args.config_dir), device)
    runtime = RuntimeParams(device=args.device, precision=args.precision, batch_size=args.batch_size,
                            num_workers=args.workers)
    cfg = ExtractParams(token_blocks=tuple(args.blocks), dtype="float32",
                        rows_per_shard=args.batch_size * 4, rows_per_chunk=args.batch_size)
    root, paths = photo_paths(args.data, args.photos, args.images)
    ids = [f"r{i}" for i in range(len(paths))]
    side = max(input_size(loaded))

    exact_rows = ImageRows(root, paths, loaded.preprocess)
    batch = torch.stack([exact_rows[i % len(paths)] for i in range(args.batch_size)])
    forward = time_forward(loaded, batch, cfg.token_blocks, runtime, max(2, args.images // args.batch_size))
    with Image.open(root / paths[0]) as first:
        print(f"model {args.model} {side}px, device {device}, {args.precision}, batch {args.batch_size}, "
              f"workers {args.workers}, torch threads {torch.get_num_threads()}, {len(paths)} {args.photos} JPEGs "
              f"({first.width} x {first.height})")
    print(f"{'decode':12} {'decode img/s':>13} {'forward img/s':>14} {'stage img/s':>12} {'ratio':>6} "
          f"{'max |diff|':>10}")
    paths_to_try = (("pil", DecodeParams()), ("pil+draft", DecodeParams(draft=True)),
                    ("torchvision", DecodeParams(backend="torchvision")))
    exact = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, decode in paths_to_try:
            if decode.backend == "torchvision":
                decoded = time_decode(RawRows(root, paths, ids, decode), runtime,
                                      DeviceFinisher("images", loaded.identity, device))
            else:
                decoded = time_decode(ImageRows(root, paths, loaded.preprocess, decode, min_side=side), runtime)
            start = time.perf_counter()
            extract("images", loaded, cfg, runtime, ids, paths, root, Path(tmp) / f"{name}.zarr", decode)
            stage = len(paths) / (time.perf_counter() - start)
            cls = FeatureCache(Path(tmp) / f"{name}.zarr").read("cls")
            exact = cls if exact is None else exact
            print(f"{name:12} {decoded:13.1f} {forward:14.1f} {stage:12.1f} {stage / forward:6.2f} "
                  f"{np.abs(cls - exact).max():10.4f}")


if __name__ == "__main__":
    main()
