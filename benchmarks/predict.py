"""Labelling throughput: the whole `predict` command vs the extraction stage alone, on the same images.

    python benchmarks/predict.py --model ViT-B-32 --images 256
    python benchmarks/predict.py --model synthclip-tiny --config-dir pipeline/model_configs --images 1024

On real JPEGs from ../shared/data/katkam_weather (or --data; skipped with a message when
absent) it runs, one after the other:
  * the extraction stage alone (pipeline.extract.extract into a fresh cache), whose
    features also fit the head (``--head``, on the ``lighting`` labels; random text weights);
  * `predict` on the same images into another fresh cache: listing and checking the
    input (decoding every file unless --no-verify, hashing it), extraction, applying the
    head shard by shard and writing the parquet.
and prints both images/s side by side, predict's phases, and the head's share of the total
(the requirement: under 5%). Random initialisation: timing does not depend on the weights.
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

from pipeline.cache import FeatureCache
from pipeline.encoders import ModelParams, RuntimeParams, load_model, resolve_device
from pipeline.extract import ExtractParams, extract
from pipeline.features import FeatureSet, TextContext
from pipeline.heads import make_head
from pipeline.imageio import DecodeParams
from pipeline.modelfile import encoder_identity, save_head
from pipeline.predict import predict
from pipeline.predict_input import InputIndex, index_input

REPO = Path(__file__).resolve().parents[1]


def katkam(data: Path, n: int) -> tuple[Path, list[str], list[str]] | None:
    root = data / "katkam_weather"
    if not (root / "labels.csv").is_file():
        return None
    with (root / "labels.csv").open() as fh:
        rows = [(r["path"], r["lighting"]) for r in csv.DictReader(fh) if r.get("lighting")][:n]
    return root, [p for p, _ in rows], [label for _, label in rows]


def fit_head(name: str, cache: FeatureCache, labels: list[str], out: Path) -> Path:
    """A head fitted on the cached features (random text weights): timing only, not accuracy."""
    classes = sorted(set(labels))
    y = np.array([classes.index(label) for label in labels])
    cls = cache.read("cls")
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(classes), cls.shape[1])).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    text = TextContext(tuple(classes), emb, emb[None], ("{}",), 100.0)
    head = make_head(name, {"device": "cpu"} if "device" in make_head(name).get_params() else {})
    head.fit(FeatureSet(ids=cache.ids, cls=cls, cls_norm=cache.read("cls_norm")), y, text=text)
    return save_head(head, out, name=name, task="lighting", shots="all", seed=0, classes=classes,
                     encoder=encoder_identity(cache.identity), token_blocks=[])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--config-dir", default=None)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--head", default="linear_probe", help="a head that fits on image embeddings alone")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--no-verify", action="store_true", help="skip predict's decode check of every file")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    found = katkam(args.data, args.images)
    if found is None:
        print(f"skipped: no katkam photos at {args.data / 'katkam_weather'} (pass --data DIR holding katkam_weather/)")
        return
    root, paths, labels = found
    model = ModelParams(name=args.model, pretrained=None, tag="bench", config_dir=args.config_dir)
    device = resolve_device(args.device)
    runtime = RuntimeParams(device=args.device, precision=args.precision, batch_size=args.batch_size,
                            num_workers=args.workers)
    layout = ExtractParams(token_blocks=(), dtype="float16", rows_per_shard=args.batch_size * 4,
                           rows_per_chunk=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        start = time.perf_counter()
        loaded = load_model(model, device)
        extract("images", loaded, layout, runtime, paths, paths, root, tmp_dir / "alone.zarr", DecodeParams())
        alone_s = time.perf_counter() - start
        head_file = fit_head(args.head, FeatureCache(tmp_dir / "alone.zarr"), labels, tmp_dir / "head")

        start = time.perf_counter()
        listing = tmp_dir / "list.csv"
        listing.write_text("path\n" + "\n".join(paths) + "\n")
        index: InputIndex = index_input(listing, root=root, verify=not args.no_verify)
        index_s = time.perf_counter() - start
        stats = predict(index, head_file, tmp_dir / "predict.zarr", tmp_dir / "out.parquet", model=model,
                        runtime=runtime, decode=DecodeParams(), layout=layout)
        total = time.perf_counter() - start
    assert stats is not None
    n = len(paths)
    size = loaded.identity["image_size"]
    print(f"model {args.model} {size[0]}px, device {device}, {args.precision}, batch {args.batch_size}, "
          f"workers {args.workers}, torch threads {torch.get_num_threads()}, {n} katkam JPEGs, head {args.head}")
    print(f"extraction alone : {n / alone_s:8.1f} images/s ({alone_s:.2f} s, model load included)")
    print(f"predict          : {n / total:8.1f} images/s ({total:.2f} s)")
    print(f"  phases         : input check {index_s:.2f} s (verify {'off' if args.no_verify else 'on'}), "
          f"extraction {stats['extract_s']:.2f} s, head {stats['head_s']:.3f} s, "
          f"rest {total - index_s - stats['extract_s'] - stats['head_s']:.2f} s")
    share = stats["head_s"] / total
    print(f"head share       : {100 * share:8.2f} % of predict's total ({'under' if share < 0.05 else 'OVER'} 5%)")


if __name__ == "__main__":
    main()
