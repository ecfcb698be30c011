"""Decoding and resizing on the encoder's device (``decode.backend: torchvision``).

The default backend (``pil``) decodes and resizes in DataLoader workers with
PIL, exactly as open_clip's own transform does. On a GPU that caps extraction
far below the model's speed (clip-retrieval reports about 1,100 img/s per A100
for ViT-B/16, "bottlenecked by resizing"). With ``torchvision`` the workers
only read each file's bytes and EXIF orientation; the main process decodes the
whole batch of JPEGs at once with ``torchvision.io.decode_jpeg(...,
device=<runtime device>)`` (nvJPEG on CUDA, libjpeg-turbo on CPU), then
orients, crops, resizes and normalises on that device:

* images: the shortest side resized to the model's input (bicubic with
  antialiasing, rounded to 8 bits as torchvision's ``Resize`` does on uint8
  tensors), a centre crop, the model's mean/std;
* tiles: the whole image and its g x g crops, each through the same steps;
* views: the same seeded crop boxes and flips as the pil backend
  (:func:`pipeline.augment.crop_box`), resized straight to the input size.

Files that are not baseline RGB/greyscale JPEGs (PNG, WebP, CMYK JPEG...) are
decoded by PIL in the worker (:func:`pipeline.imageio.decode_rgb`) and sent as
pixels; a JPEG the batched decoder refuses is retried alone, then by PIL. The
pixels differ slightly from the pil backend's (IDCT and resampling code), so
the backend is part of every cache's identity. Only open_clip's ``shortest``
resize mode is implemented here.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from pipeline.augment import ViewSpec, crop_box, grid_boxes, view_rng
from pipeline.errors import UserError
from pipeline.imageio import DecodeParams, ImageDecodeError, decode_rgb


@dataclass
class RawImage:
    """What a worker sends for one row: the JPEG's bytes, or PIL-decoded pixels."""

    sample_id: str
    data: torch.Tensor      # uint8: [nbytes] encoded JPEG, or [3, H, W] pixels
    is_pixels: bool
    orientation: int = 1    # EXIF orientation still to apply (1 = none)


class RawRows(Dataset):
    """Row i -> :class:`RawImage` (no decoding of JPEGs in the worker)."""

    def __init__(self, root: Path, paths: list[str], ids: list[str], decode: DecodeParams):
        self.root, self.paths, self.ids, self.decode = Path(root), paths, ids, decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> RawImage:
        path = self.root / self.paths[i]
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                jpeg = img.format == "JPEG" and img.mode in ("RGB", "L")
                orientation = img.getexif().get(0x0112, 1) if self.decode.exif_transpose else 1
        except Exception as exc:  # a data file may fail in any way; it must never crash a stage
            raise ImageDecodeError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        if jpeg:
            return RawImage(self.ids[i], torch.frombuffer(bytearray(data), dtype=torch.uint8), False,
                            orientation if orientation in range(1, 9) else 1)
        pixels = np.asarray(decode_rgb(path, self.decode.exif_transpose)[0])
        return RawImage(self.ids[i], torch.from_numpy(pixels.copy()).permute(2, 0, 1), True)


def collate(items: list[RawImage]) -> list[RawImage]:
    return items


def orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF ``orientation`` to [C, H, W] as ``PIL.ImageOps.exif_transpose`` does."""
    ops = {2: lambda t: t.flip(-1), 3: lambda t: t.flip(-1).flip(-2), 4: lambda t: t.flip(-2),
           5: lambda t: t.transpose(-1, -2), 6: lambda t: torch.rot90(t, -1, (-2, -1)),
           7: lambda t: t.transpose(-1, -2).flip(-1).flip(-2), 8: lambda t: torch.rot90(t, 1, (-2, -1))}
    return ops[orientation](x) if orientation in ops else x


def decode_batch(items: list[RawImage], device: torch.device) -> list[torch.Tensor]:
    """uint8 [3, H, W] per item on ``device``, upright."""
    out: list[torch.Tensor | None] = [None] * len(items)
    jpegs = [i for i, item in enumerate(items) if not item.is_pixels]
    if jpegs:
        try:
            decoded = decode_jpeg([items[i].data for i in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: decode them one by one
            decoded = [_decode_one(items[i], device) for i in jpegs]
        for i, img in zip(jpegs, decoded):
            out[i] = img
    for i, item in enumerate(items):
        if item.is_pixels:
            out[i] = item.data.to(device, non_blocking=True)
    return [orient(x, item.orientation) for x, item in zip(out, items)]  # type: ignore[arg-type]


def _decode_one(item: RawImage, device: torch.device) -> torch.Tensor:
    try:
        return decode_jpeg(item.data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        with Image.open(io.BytesIO(item.data.numpy().tobytes())) as img:
            pixels = np.asarray(img.convert("RGB"))
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(device)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8-range float [C, H, W] -> [C, h, w] (bicubic, antialiased, rounded and clamped to 8 bits)."""
    out = F.interpolate(x[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
    return out.round_().clamp_(0, 255)


def shortest_then_crop(x: torch.Tensor, side: int) -> torch.Tensor:
    """open_clip's eval geometry: shortest side to ``side``, then the centre ``side`` x ``side``."""
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(side * long / short)
    x = resize(x, (side, new_long) if h <= w else (new_long, side))
    h, w = x.shape[-2:]
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    return x[:, top:top + side, left:left + side]


class DeviceFinisher:
    """Turns a worker batch of :class:`RawImage` into the model's input on ``device``."""

    def __init__(self, kind: str, identity: dict, device: torch.device, grid: int = 0,
                 spec: ViewSpec | None = None):
        if identity.get("resize_mode", "shortest") != "shortest":
            raise UserError(f"decode.backend: torchvision implements open_clip's 'shortest' resize mode only, "
                            f"the model uses '{identity['resize_mode']}' (use decode.backend: pil)")
        if identity.get("interpolation", "bicubic") != "bicubic":
            raise UserError(f"decode.backend: torchvision implements bicubic resizing only, the model uses "
                            f"'{identity['interpolation']}' (use decode.backend: pil)")
        self.kind, self.device, self.grid, self.spec = kind, device, grid, spec
        self.side = max(int(s) for s in identity["image_size"])
        self.mean = torch.tensor(identity["mean"], device=device).view(-1, 1, 1) * 255
        self.std = torch.tensor(identity["std"], device=device).view(-1, 1, 1) * 255

    def __call__(self, items: list[RawImage]) -> torch.Tensor:
        images = decode_batch(items, self.device)
        rows = [self._row(x.float(), item.sample_id) for x, item in zip(images, items)]
        return torch.stack(rows)

    def _row(self, x: torch.Tensor, sample_id: str) -> torch.Tensor:
        if self.kind == "images":
            return self._normalise(shortest_then_crop(x, self.side))
        if self.kind == "tiles":
            parts = [x, *grid_crops(x, self.grid)]
            return torch.stack([self._normalise(shortest_then_crop(p, self.side)) for p in parts])
        return torch.stack([self._normalise(self._view(x, sample_id, v)) for v in range(self.spec.n)])  # type: ignore[union-attr]

    def _view(self, x: torch.Tensor, sample_id: str, view: int) -> torch.Tensor:
        spec = self.spec
        rng = view_rng(spec.seed, sample_id, view)  # type: ignore[union-attr]
        left, top, w, h = crop_box(x.shape[-1], x.shape[-2], spec.scale, spec.ratio, rng)  # type: ignore[union-attr]
        out = resize(x[:, top:top + h, left:left + w], (self.side, self.side))
        return out.flip(-1) if rng.random() < spec.flip else out  # type: ignore[union-attr]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def grid_crops(x: torch.Tensor, grid: int) -> list[torch.Tensor]:
    """The g x g crops of [C, H, W] in row-major order (:func:`pipeline.augment.grid_boxes`)."""
    return [x[:, y0:y1, x0:x1] for x0, y0, x1, y1 in grid_boxes(x.shape[-1], x.shape[-2], grid)]


__all__ = ["RawImage", "RawRows", "DeviceFinisher", "collate", "decode_batch", "orient", "grid_crops"]
