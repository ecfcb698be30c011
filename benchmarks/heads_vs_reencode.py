"""Training heads on cached features vs re-encoding the images every epoch.

    python benchmarks/heads_vs_reencode.py                       # ViT-B-32, 64 images, 3 epochs
    python benchmarks/heads_vs_reencode.py --images 256 --epochs 5
    python benchmarks/heads_vs_reencode.py --model synthclip-tiny --config-dir pipeline/model_configs

For CLIP-Adapter and CLIP-MHAdapter, on the same N katkam JPEGs (task: the
``lighting`` column of ../shared/data/katkam_weather/labels.csv) and for the
same number of epochs E:

  (a) cached: the images are encoded once by the real extract stage into a
      temporary zarr cache (the one-off extraction cost, timed), read back as
      a FeatureSet, then ``head.fit`` runs E epochs (patience 0, no
      validation) on it; the fit is timed (after an untimed 1-epoch warm-up
      fit, so one-time torch set-up is charged to neither way);
  (b) re-encode (the reference projects' way): the same network (the head's
      own ``_build_net``), optimiser, lr schedule, loss, batch size, batch
      order and number of optimiser steps, but every epoch a DataLoader
      decodes and preprocesses the images and the frozen image encoder runs
      on each batch under ``torch.no_grad`` (``encode_images``, the function
      extraction uses) before the head's training step.

Prints s/epoch for both, the speed-up (re-encode / cached), the one-off
extraction time and the break-even epoch count
extraction / (re-encode - cached per epoch). Random initialisation is used:
timing does not depend on the weights.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone
from torch.utils.data import DataLoader, Sampler

from pipeline.cache import FeatureCache
from pipeline.encoders import ModelParams, RuntimeParams, autocast, encode_images, load_model, logit_scale
from pipeline.extract import ExtractParams, ImageRows, extract
from pipeline.features import FeatureSet, TextContext
from pipeline.heads import make_head
from pipeline.heads.base import resolve_device, seeded
from pipeline.heads.losses import classification_loss
from pipeline.heads.trainable import TorchHead
from pipeline.heads.training import ArrayData, optimisation
from pipeline.text import encode_task

REPO = Path(__file__).resolve().parents[1]
HEAD_NAMES = ("clip_adapter", "clip_mhadapter")
TASK = "lighting"
TEMPLATES = ("a webcam photo taken at {}.",)


def katkam_rows(data: Path, n: int) -> tuple[Path, list[str], list[str]]:
    """(root, paths, lighting labels) of n rows spread evenly over the file (so all classes occur)."""
    root = data / "katkam_weather"
    labels = root / "labels.csv"
    if not labels.is_file():
        raise SystemExit(f"{labels} not found: this benchmark needs the katkam_weather images "
                         f"(pass --data DIR holding katkam_weather/)")
    with labels.open() as fh:
        rows = [(r["path"], r[TASK]) for r in csv.DictReader(fh) if r.get(TASK)]
    if len(rows) < n:
        raise SystemExit(f"{root}: only {len(rows)} labelled images, {n} requested")
    picked = [rows[i] for i in np.linspace(0, len(rows) - 1, n).round().astype(int)]
    missing = [p for p, _ in picked if not (root / p).is_file()]
    if missing:
        raise SystemExit(f"{root}: {len(missing)} image files missing, e.g. {missing[0]}")
    return root, [p for p, _ in picked], [c for _, c in picked]


class EpochOrder(Sampler[list[int]]):
    """Batches in the order the shared loop uses: a fresh ``rng.permutation`` each epoch."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator):
        self.n, self.batch_size, self.rng = n, batch_size, rng

    def __iter__(self):
        order = self.rng.permutation(self.n)
        return iter([order[s:s + self.batch_size].tolist() for s in range(0, self.n, self.batch_size)])

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


class LabelledImages(ImageRows):
    """ImageRows (decode + model preprocess) that also returns the row index."""

    def __getitem__(self, i: int):
        return super().__getitem__(i), i


def fit_cached(head: TorchHead, X: FeatureSet, y: np.ndarray, text: TextContext) -> float:
    start = time.perf_counter()
    head.fit(X, y, text=text)
    elapsed = time.perf_counter() - start
    assert head.epochs_run_ == head.epochs, (head.epochs_run_, head.epochs)
    return elapsed


def fit_reencode(head: TorchHead, loaded, blocks: tuple[int, ...], dataset: ImageRows, y: np.ndarray,
                 text: TextContext, X_probe: FeatureSet, workers: int, precision: str) -> list[float]:
    """Mirror of TorchHead._fit + train_module, images through the frozen encoder every epoch.

    Returns the wall time of each epoch (data loading, encoder forward, head step).
    """
    device = resolve_device(head.device)
    cfg = head._train_config()
    enc_device = loaded.device
    n_classes = len(text.class_names)
    times = []
    with seeded(head.seed, device) as rng:
        net = head._build_net(X_probe, y, text).to(device)
        opt = optimisation(net, y, n_classes, len(dataset), cfg, device)
        optimiser, scheduler, weights, targets = opt.optimiser, opt.scheduler, opt.weights, opt.targets
        loader = DataLoader(dataset, batch_sampler=EpochOrder(len(dataset), cfg.batch_size, rng),
                            num_workers=workers, persistent_workers=workers > 0,
                            pin_memory=enc_device.type == "cuda")
        for _ in range(cfg.epochs):
            start = time.perf_counter()
            net.train()
            total = 0.0
            for images, idx in loader:
                with torch.no_grad(), autocast(enc_device, precision):
                    out = encode_images(loaded.model, images.to(enc_device, non_blocking=True), blocks)
                feats = FeatureSet(ids=idx.numpy(), cls=out["cls"].float().cpu().numpy(),
                                   cls_norm=out["cls_norm"].cpu().numpy(),
                                   tokens={k: v.float().cpu().numpy() for k, v in out.items()
                                           if k not in ("cls", "cls_norm")})
                # The head's own array selection and the shared loop's batch conversion.
                batch = ArrayData(head._arrays(feats)).batch(np.arange(len(idx)), device)
                idx = idx.numpy()
                loss = classification_loss(net(batch), targets[idx], weights, cfg.focal_gamma)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                scheduler.step()
                total += loss.item() * len(idx)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    assert scheduler.last_epoch == cfg.epochs * opt.steps_per_epoch
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--config-dir", default=None)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="head training batch (both ways)")
    parser.add_argument("--extract-batch-size", type=int, default=64, help="encoder batch of the one-off extraction")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (extraction and re-encode)")
    parser.add_argument("--heads", nargs="+", default=list(HEAD_NAMES), choices=HEAD_NAMES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.epochs < 1 or args.images < 1 or args.batch_size < 1:
        raise SystemExit("--epochs, --images and --batch-size must be >= 1")

    root, paths, labels = katkam_rows(args.data, args.images)
    device = resolve_device(args.device)
    loaded = load_model(ModelParams(name=args.model, pretrained=None, tag="bench", config_dir=args.config_dir), device)

    classes = sorted(set(labels))
    y = np.array([classes.index(c) for c in labels], dtype=np.int64)
    per_template, ensemble = encode_task(loaded, TEMPLATES, [c.replace("_", " ") for c in classes])
    text = TextContext(tuple(classes), ensemble, per_template, TEMPLATES, logit_scale(loaded.model))

    heads = {name: make_head(name, {"epochs": args.epochs, "patience": 0, "batch_size": args.batch_size,
                                    "device": args.device}) for name in args.heads}
    # Blocks extraction stores = blocks the heads read ("block-2" -> -2); cls always.
    token_names = sorted({h.get_params()["token_block"] for h in heads.values() if "token_block" in h.get_params()})
    blocks = tuple(int(b.removeprefix("block")) for b in token_names)
    runtime = RuntimeParams(device=args.device, precision=args.precision, batch_size=args.extract_batch_size,
                            num_workers=args.workers)
    cfg = ExtractParams(token_blocks=blocks, dtype="float16",
                        rows_per_shard=args.extract_batch_size * 4, rows_per_chunk=args.extract_batch_size)
    ids = [f"r{i}" for i in range(len(paths))]

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        extract("images", loaded, cfg, runtime, ids, paths, root, Path(tmp) / "bench.zarr")
        extraction_s = time.perf_counter() - start
        start = time.perf_counter()
        cache = FeatureCache(Path(tmp) / "bench.zarr")
        X = FeatureSet(ids=np.array(ids, dtype=object), cls=cache.read("cls", ids),
                       cls_norm=cache.read("cls_norm", ids), tokens={b: cache.read(b, ids) for b in token_names})
        read_s = time.perf_counter() - start

    dataset = LabelledImages(root, paths, loaded.preprocess)
    results = []
    for name, head in heads.items():
        # Untimed 1-epoch fit first: torch's one-time kernel set-up is charged to neither way.
        clone(head).set_params(epochs=1).fit(X, y, text=text)
        cached_s = fit_cached(head, X, y, text) / args.epochs
        # Same blocks as the cache holds for this head (CLIP-Adapter: cls only, the cheaper forward).
        token_block = head.get_params().get("token_block")
        head_blocks = (int(token_block.removeprefix("block")),) if token_block else ()
        epoch_times = fit_reencode(head, loaded, head_blocks, dataset, y, text, X, args.workers, args.precision)
        results.append((name, cached_s, float(np.mean(epoch_times)), epoch_times))

    size = loaded.identity["image_size"]
    steps = math.ceil(len(paths) / args.batch_size)
    print(f"model {args.model} {size[0]}px (random init), device {device}, {args.precision}, "
          f"torch threads {torch.get_num_threads()}, workers {args.workers}")
    print(f"data: {len(paths)} katkam JPEGs, task '{TASK}' ({', '.join(f'{c} {int((y == i).sum())}' for i, c in enumerate(classes))}); "
          f"{args.epochs} epochs x {steps} steps of batch {args.batch_size}")
    print(f"one-off extraction (extract stage, cls + {token_names or 'no tokens'}, batch {args.extract_batch_size}): "
          f"{extraction_s:.2f} s; cache read into memory: {read_s:.3f} s")
    print()
    print(f"{'head':<16}{'epochs':>7}{'cached s/ep':>13}{'re-encode s/ep':>16}{'speed-up':>10}{'break-even ep':>15}")
    for name, cached_s, reencode_s, _ in results:
        gain = reencode_s - cached_s
        breakeven = f"{extraction_s / gain:.2f}" if gain > 0 else "never"
        print(f"{name:<16}{args.epochs:>7}{cached_s:>13.4f}{reencode_s:>16.2f}{reencode_s / cached_s:>9.0f}x{breakeven:>15}")
    print()
    for name, _, _, epoch_times in results:
        print(f"{name} re-encode per epoch: {', '.join(f'{t:.2f}' for t in epoch_times)} s")


if __name__ == "__main__":
    main()
