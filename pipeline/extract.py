"""Run the frozen image encoder once over a dataset and fill a feature cache.

The loop is shard-driven: the rows of each pending shard are cut into fixed
batches (the same batches whatever the number of processes or restarts, so
resumed and distributed runs produce bit-identical arrays), a DataLoader with
worker processes decodes and resizes images while the model runs, and a shard
is written to the cache as soon as its last batch is encoded. With
``decode.backend: torchvision`` the workers only read bytes, and each batch is
decoded and resized on the encoder's device (:mod:`pipeline.device_decode`).

Under ``torchrun`` each rank takes every ``world_size``-th pending shard;
rank 0 creates the cache before and finalises it after the others are done.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from pipeline import distributed
from pipeline.augment import ViewSpec, ViewsParams, augmented_view, grid_boxes, smallest_crop_fraction
from pipeline.cache import ArraySpec, CacheWriter
from pipeline.device_decode import DeviceFinisher, RawRows
from pipeline.device_decode import collate as collate_raw
from pipeline.encoders import LoadedModel, RuntimeParams, autocast, encode_images
from pipeline.imageio import DecodeParams, decode_identity, decode_rgb
from pipeline.params import as_dict

log = logging.getLogger(__name__)

NORM = "_norm"  # suffix of the arrays holding each embedding's norm before L2 normalisation

EncodeFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]
Finisher = Callable[[list], torch.Tensor]


@dataclass(frozen=True)
class ExtractParams:
    """The ``extract`` section: what is stored per image and how it is laid out."""

    token_blocks: tuple[int, ...] = (-1,)
    dtype: Literal["float16", "float32"] = "float16"
    rows_per_shard: int = 1024
    rows_per_chunk: int = 128


@dataclass(frozen=True)
class TilesParams:
    """The ``tiles`` section: CDUL's g x g crops (plus the whole image) per image."""

    grid: int = 3
    dtype: Literal["float16", "float32"] = "float16"
    rows_per_shard: int = 512
    rows_per_chunk: int = 64

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ValueError(f"grid must be >= 1, got {self.grid}")


class ImageRows(Dataset):
    """Row i -> the preprocessed image tensor [3, H, W].

    ``min_side``: with ``decode.draft``, JPEGs decode at the smallest reduced
    scale whose shorter side is still at least this (see :mod:`pipeline.imageio`).
    """

    def __init__(self, root: Path, paths: list[str], transform: Callable, decode: DecodeParams = DecodeParams(),
                 min_side: int | None = None):
        self.root, self.paths, self.transform, self.decode = Path(root), paths, transform, decode
        self.min_side = min_side if decode.draft else None

    def __len__(self) -> int:
        return len(self.paths)

    def decoded(self, i: int):
        """(PIL image, its full-scale size)."""
        return decode_rgb(self.root / self.paths[i], self.decode.exif_transpose, min_side=self.min_side)

    def image(self, i: int):
        return self.decoded(i)[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.image(i))


class TileRows(ImageRows):
    """Row i -> [1 + g*g, 3, H, W]: the whole image, then its g x g crops row by row."""

    def __init__(self, root: Path, paths: list[str], transform: Callable, grid: int,
                 decode: DecodeParams = DecodeParams(), min_side: int | None = None):
        super().__init__(root, paths, transform, decode, min_side)
        self.grid = grid

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.image(i)
        return torch.stack([self.transform(v) for v in [img, *grid_crops(img, self.grid)]])


class ViewRows(ImageRows):
    """Row i -> [A, 3, H, W]: the image's A seeded augmented views (see :mod:`pipeline.augment`)."""

    def __init__(self, root: Path, paths: list[str], ids: list[str], transform: Callable,
                 size: tuple[int, int], spec: ViewSpec, decode: DecodeParams = DecodeParams(),
                 min_side: int | None = None):
        super().__init__(root, paths, transform, decode, min_side)
        self.ids, self.size, self.spec = ids, size, spec

    def __getitem__(self, i: int) -> torch.Tensor:
        img, full = self.decoded(i)
        return torch.stack([self.transform(augmented_view(img, self.size, self.spec, self.ids[i], v, full))
                            for v in range(self.spec.n)])


def grid_crops(img, grid: int) -> list:
    """The g x g crops of a PIL image in row-major order (:func:`pipeline.augment.grid_boxes`)."""
    return [img.crop(box) for box in grid_boxes(*img.size, grid)]


class ShardBatches(Sampler[list[int]]):
    """Fixed batches of row indices covering the given shards, never crossing a shard boundary.

    ``batch_size`` counts rows; :func:`run` passes ``runtime.batch_size`` images
    divided by the images per row (1 + g*g tiles, A views), so a forward pass
    holds about ``runtime.batch_size`` images whatever the cache kind.
    """

    def __init__(self, writer: CacheWriter, shards: list[int], batch_size: int):
        self.batches = [
            list(rows[i:i + batch_size])
            for s in shards for rows in [writer.shard_rows(s)] for i in range(0, len(rows), batch_size)
        ]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def probe_specs(encode: EncodeFn, sample: torch.Tensor, dtype: str, device: torch.device) -> list[ArraySpec]:
    """Array specs of a cache, row shapes read off one forward pass on one sample.

    ``<name>_norm`` arrays (pre-normalisation norms, one float per embedding) are
    always float32: they exist to rebuild the raw feature exactly.
    """
    out = encode(sample.unsqueeze(0).to(device))
    return [ArraySpec(name, tuple(t.shape[1:]), "float32" if name.endswith(NORM) else dtype)
            for name, t in out.items()]


def run(writer: CacheWriter, dataset: Dataset, encode: EncodeFn, runtime: RuntimeParams,
        device: torch.device, finish: Finisher | None = None, images_per_row: int = 1) -> int:
    """Encode every pending shard of ``writer`` (this rank's share); return shards written here.

    ``finish`` turns a worker batch into the model's input on ``device`` (the
    torchvision decode backend); by default workers deliver finished tensors.
    ``images_per_row``: 1 + g*g for tiles, A for views (see :class:`ShardBatches`).
    """
    dist = distributed.context()
    if dist.rank == 0:
        writer.prepare()
    dist.barrier()
    mine = writer.pending()[dist.rank::dist.world_size]
    # runtime.batch_size is images per forward pass: a tiles or views row is a stack of
    # 1 + g*g or A images (128 rows of 10 views made 1280-image passes, 60% slower per image
    # on a CPU, and a GPU memory figure ten times the one asked for).
    loader = DataLoader(
        dataset, batch_sampler=ShardBatches(writer, mine, max(1, runtime.batch_size // images_per_row)),
        num_workers=runtime.num_workers, pin_memory=device.type == "cuda" and finish is None,
        persistent_workers=False, prefetch_factor=4 if runtime.num_workers else None,
        collate_fn=collate_raw if finish is not None else None)
    finish = finish or (lambda batch: batch.to(device, non_blocking=True))
    buffers: dict[str, list[np.ndarray]] = {}
    shard_iter = iter(mine)
    shard = next(shard_iter, None)
    filled = 0
    with tqdm(total=sum(len(writer.shard_rows(s)) for s in mine), desc=f"extract {writer.path.name}",
              unit="img", disable=dist.rank != 0) as bar:
        for batch in loader:
            with autocast(device, runtime.precision):
                out = encode(finish(batch))
            for name, t in out.items():
                buffers.setdefault(name, []).append(t.float().cpu().numpy())
            filled += len(batch)
            bar.update(len(batch))
            if filled == len(writer.shard_rows(shard)):
                writer.write_shard(shard, {k: np.concatenate(v) for k, v in buffers.items()})
                buffers, filled, shard = {}, 0, next(shard_iter, None)
    dist.barrier()
    if dist.rank == 0:
        writer.finalize()
    dist.barrier()
    return len(mine)


def image_encoder(loaded: LoadedModel, blocks: tuple[int, ...]) -> EncodeFn:
    return lambda x: encode_images(loaded.model, x, blocks)


def stacked_encoder(loaded: LoadedModel, name: str, blocks: tuple[int, ...] = ()) -> EncodeFn:
    """Encoder of rows that are stacks of images [B, T, 3, H, W] -> {name: [B, T, D], name_norm: [B, T]}
    and, per token block b, ``<name>_block<b>`` [B, T, 1+P, W]."""
    def encode(x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, t = x.shape[:2]
        out = encode_images(loaded.model, x.flatten(0, 1), blocks)
        stacked = {name: out.pop("cls").view(b, t, -1), f"{name}{NORM}": out.pop("cls_norm").view(b, t)}
        return {**stacked, **{f"{name}_{k}": v.view(b, t, *v.shape[1:]) for k, v in out.items()}}
    return encode


def input_size(loaded: LoadedModel) -> tuple[int, int]:
    """The model's input (width, height), from its recorded preprocessing."""
    height, width = loaded.identity["image_size"]
    return int(width), int(height)


def pil_rows(kind: str, loaded: LoadedModel, cfg: ExtractParams | TilesParams | ViewsParams, ids: list[str],
             paths: list[str], root: Path, decode: DecodeParams, spec: ViewSpec | None) -> ImageRows:
    """The PIL-backend dataset of one cache kind, asking ``decode.draft`` for the pixels its resize needs."""
    side = max(input_size(loaded))
    if kind == "images":
        return ImageRows(root, paths, loaded.preprocess, decode, min_side=side)
    if kind == "tiles":  # each of the g x g tiles is resized to the model's input on its own
        return TileRows(root, paths, loaded.preprocess, cfg.grid, decode, min_side=side * cfg.grid)  # type: ignore[union-attr]
    return ViewRows(root, paths, ids, loaded.preprocess, input_size(loaded), spec, decode,  # type: ignore[arg-type]
                    min_side=math.ceil(side / smallest_crop_fraction(spec)))  # type: ignore[arg-type]


def extract(kind: Literal["images", "tiles", "views"], loaded: LoadedModel,
            cfg: ExtractParams | TilesParams | ViewsParams, runtime: RuntimeParams,
            ids: list[str], paths: list[str], root: Path, out: Path, decode: DecodeParams = DecodeParams()) -> int:
    """Fill cache ``out`` with image, tile or view features of ``paths``; return shards written by this rank."""
    spec = cfg.spec() if kind == "views" else None  # type: ignore[union-attr]
    if kind == "images":
        encode = image_encoder(loaded, cfg.token_blocks)  # type: ignore[union-attr]
    else:
        encode = stacked_encoder(loaded, kind, getattr(cfg, "token_blocks", ()))
    finish: Finisher | None = None
    if decode.backend == "torchvision":
        dataset: Dataset = RawRows(root, paths, ids, decode)
        finish = DeviceFinisher(kind, loaded.identity, loaded.device, grid=getattr(cfg, "grid", 0), spec=spec)
    else:
        dataset = pil_rows(kind, loaded, cfg, ids, paths, root, decode, spec)
    sample = finish([dataset[0]])[0] if finish is not None else dataset[0]
    identity = {**loaded.identity, **decode_identity(decode), "kind": kind, "precision": runtime.precision,
                **as_dict(cfg)}
    specs = probe_specs(encode, sample, cfg.dtype, loaded.device)
    writer = CacheWriter(out, ids, specs, identity, cfg.rows_per_shard, cfg.rows_per_chunk)
    per_row = {"images": 1, "tiles": 1 + getattr(cfg, "grid", 0) ** 2, "views": spec.n if spec else 1}[kind]
    return run(writer, dataset, encode, runtime, loaded.device, finish, per_row)
