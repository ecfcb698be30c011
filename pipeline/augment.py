"""Seeded augmented views of an image: random resized crop + horizontal flip.

Tip-Adapter's reference builds its cache keys from 10 passes over the
few-shot images with ``RandomResizedCrop(size, scale=(0.5, 1), BICUBIC)`` and
``RandomHorizontalFlip(p=0.5)``; CoOp and CLIP-Adapter train with the same
kind of augmentation. The views stage runs the encoder once over A such views
per image and caches them, so no head ever re-augments.

The crop box follows torchvision's ``RandomResizedCrop.get_params`` (area
fraction uniform in ``scale``, log aspect ratio uniform in ``ratio``, ten
tries, then a centre crop clamped to ``ratio``), but every random number comes
from a generator seeded by ``(seed, sample id, view index)``. A view's pixels
therefore do not depend on batch size, worker count, rank or how often an
extraction was interrupted and resumed.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # left, top, width, height


@dataclass(frozen=True)
class ViewSpec:
    """How views are drawn (the augmentation part of the ``views`` params section)."""

    n: int = 10
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"views.n must be >= 1, got {self.n}")
        if len(self.scale) != 2 or not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"views.scale must be [min, max] with 0 < min <= max <= 1, got {list(self.scale)}")
        if len(self.ratio) != 2 or not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"views.ratio must be [min, max] with 0 < min <= max, got {list(self.ratio)}")
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"views.flip must be in [0, 1], got {self.flip}")


@dataclass(frozen=True)
class ViewsParams:
    """One named view set ``views.<name>`` (or ``overlap.generic_views``): A augmented
    views per image of one split, for Tip-Adapter's keys and per-epoch training draws.

    split: manifest split whose rows get views (``train``: the only rows any
        head fits on); null = every row.
    n, scale, ratio, flip, seed: see :class:`pipeline.augment.ViewSpec`;
        ``n: 0`` = no views (a dataset without single-label heads): the stage
        writes a cache marked not applicable.
    token_blocks: token blocks stored per view too (``views_block-2``
        [N, A, 1+P, W]), for CLIP-MHAdapter's per-epoch augmentation of the
        tokens it reads; A times the images cache's block, so off by default.
    """

    split: str | None = "train"
    n: int = 10
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    seed: int = 0
    token_blocks: tuple[int, ...] = ()
    dtype: Literal["float16", "float32"] = "float16"
    rows_per_shard: int = 256
    rows_per_chunk: int = 32

    def __post_init__(self) -> None:
        if self.n != 0:
            self.spec()  # validates the augmentation fields

    def spec(self) -> ViewSpec:
        return ViewSpec(self.n, tuple(self.scale), tuple(self.ratio), self.flip, self.seed)  # type: ignore[arg-type]


def view_rng(seed: int, sample_id: str, view: int) -> np.random.Generator:
    """The generator of one view: a function of (seed, id, view index) only."""
    key = int.from_bytes(hashlib.sha256(str(sample_id).encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, key, view]))


def crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
             rng: np.random.Generator) -> Box:
    """A random crop box with torchvision's ``RandomResizedCrop`` sampling rule."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    # Fallback (as torchvision): the whole image, cut to the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def augmented_view(img: Image.Image, size: tuple[int, int], spec: ViewSpec, sample_id: str,
                   view: int, full_size: tuple[int, int] | None = None) -> Image.Image:
    """View ``view`` of ``img``: crop, resize to ``size`` (W, H) with bicubic, maybe flip.

    Like the reference, the crop is resized straight to the model's input
    size (its aspect ratio is not preserved), so the model's own resize and
    centre crop afterwards leave it unchanged. ``full_size``: the (W, H) of the
    full-scale image when ``img`` was decoded at reduced scale; the box is
    drawn on the full size, so a view covers the same region either way.
    """
    rng = view_rng(spec.seed, sample_id, view)
    width, height = full_size or img.size
    left, top, w, h = crop_box(width, height, spec.scale, spec.ratio, rng)
    fx, fy = img.width / width, img.height / height
    box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
    out = img.resize(size, Image.Resampling.BICUBIC, box=box)
    if rng.random() < spec.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def grid_boxes(width: int, height: int, grid: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the g x g tiles of an image, row-major, edges split as evenly as integers allow."""
    xs = [round(j * width / grid) for j in range(grid + 1)]
    ys = [round(i * height / grid) for i in range(grid + 1)]
    return [(xs[j], ys[i], xs[j + 1], ys[i + 1]) for i in range(grid) for j in range(grid)]


def smallest_crop_fraction(spec: ViewSpec) -> float:
    """A lower bound on a crop's shorter side as a fraction of the image's shorter side."""
    return math.sqrt(spec.scale[0] * min(spec.ratio[0], 1 / spec.ratio[1]))


__all__ = ["ViewSpec", "ViewsParams", "view_rng", "crop_box", "augmented_view", "grid_boxes", "smallest_crop_fraction"]
