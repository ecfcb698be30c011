"""Decoding images, and checking that a list of files decodes.

One function (:func:`load_rgb`) decides how an image file becomes an RGB
``PIL.Image``, so that the prepare stage's check and the extraction stages'
loaders can never disagree:

* EXIF orientation is applied (``ImageOps.exif_transpose``) so phone photos
  are upright. It is a ``decode`` param recorded in every image cache's
  identity (:func:`decode_identity`): a cache made without it is refused.
* 16-bit greyscale is scaled to 8 bits (``convert("RGB")`` would clip it to
  white); every other mode goes through ``convert("RGB")`` as open_clip's
  own transform does (alpha is dropped, palettes expanded, CMYK converted).
* Reduced-scale JPEG decoding (``decode.draft``, off by default): where the
  model needs fewer pixels than the file has, libjpeg decodes at 1/2, 1/4 or
  1/8 scale (PIL's ``draft``, DCT scaling), the smallest scale whose shorter
  side is not below what the model's resize needs; the model's own resize
  follows. It changes pixels slightly, so it is part of the cache identity.
  Other formats and small JPEGs decode at full size as before.
* A pixel limit (``dataset.max_image_pixels``, PIL's default when null) is
  checked on the header, before any pixel is decoded. PIL's own global check
  is switched off here, so a limit above PIL's can take effect; no other code
  path of the project decodes user images.

Any failure to decode a file, of whatever kind (truncated, zero bytes, not an
image, unreadable, a directory, a decompression bomb) becomes one
:class:`ImageDecodeError` naming the file.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from pipeline.errors import UserError
from pipeline.files import sha256_file
from pipeline.params import load_section

log = logging.getLogger(__name__)

#: PIL's own default limit (about 89.5 megapixels): the default of ``dataset.max_image_pixels``.
PIL_MAX_PIXELS = 89_478_485
Image.MAX_IMAGE_PIXELS = None  # we check the header ourselves, against the dataset's limit


@dataclass(frozen=True)
class DecodeParams:
    """The ``decode`` section: how every extraction stage turns a file into pixels.

    exif_transpose: rotate/flip by the EXIF orientation tag (phone photos upright).
    draft: decode JPEGs at the smallest 1/2, 1/4 or 1/8 scale that still covers
        the model's input (see the module docstring); false = full-size decode.
    backend: ``pil`` (workers decode and resize with PIL, as open_clip's own
        transform) or ``torchvision`` (JPEGs decoded in batches on the encoder's
        device, nvJPEG on CUDA, and resized there: :mod:`pipeline.device_decode`).
    """

    exif_transpose: bool = True
    draft: bool = False
    backend: Literal["pil", "torchvision"] = "pil"

    def __post_init__(self) -> None:
        if self.draft and self.backend != "pil":
            raise ValueError("draft (reduced-scale JPEG decoding) applies to backend 'pil' only")


def decode_identity(params: DecodeParams) -> dict:
    """What an image cache records (and a reader expects) of the decoding."""
    return {"decode": {"exif_transpose": params.exif_transpose, "draft": params.draft, "backend": params.backend}}


def expected_decode(params_file: Path | str) -> dict:
    """What a reader expects an image, tiles or views cache to record of the decoding:
    the ``decode`` section of ``params_file``."""
    return decode_identity(load_section(DecodeParams, "decode", params_file))


@dataclass(frozen=True)
class ImageCheck:
    """A problem with one row: where it came from, its path, what is wrong."""

    source: str
    path: str
    reason: str


class ImageDecodeError(UserError, OSError):
    """An image file could not be decoded; the message names the file."""


def load_rgb(path: Path | str, exif_transpose: bool = True, max_pixels: int | None = None) -> Image.Image:
    """Fully decode ``path`` as an RGB image (raises ImageDecodeError naming it).

    ``max_pixels`` None skips the size check (extraction reads only files that
    the prepare stage has already checked against the dataset's limit).
    """
    return decode_rgb(path, exif_transpose, max_pixels)[0]


def decode_rgb(path: Path | str, exif_transpose: bool = True, max_pixels: int | None = None,
               min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``path`` as RGB; returns (image, full size) with full size the (W, H)
    a full-scale decode would have (after EXIF orientation).

    ``min_side``: decode a JPEG at reduced scale (PIL's ``draft``) as long as
    both sides stay at least ``min_side``; the image is then smaller than its
    full size by an integer factor of 2, 4 or 8 (sides rounded up).
    """
    try:
        with Image.open(path) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ValueError(f"{img.width} x {img.height} = {img.width * img.height} pixels is over "
                                 f"dataset.max_image_pixels ({max_pixels}): a decompression bomb?")
            full = img.size
            if min_side is not None and img.format == "JPEG":
                img.draft(img.mode, (min_side, min_side))
            decoded = img.size
            img.load()
            if exif_transpose:
                img = ImageOps.exif_transpose(img)
                if img.size != decoded:  # rotated by 90 degrees
                    full = (full[1], full[0])
            return _to_rgb(img), full
    except Exception as exc:  # a data file may fail in any way; it must never crash a stage
        raise ImageDecodeError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I") and img.getextrema()[1] > 255:
        pixels = (np.asarray(img, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(pixels, "L").convert("RGB")
    return img.convert("RGB")


def _problem(item: tuple[str, str, Path], max_pixels: int) -> ImageCheck | None:
    source, rel, full = item
    try:
        load_rgb(full, exif_transpose=True, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        cause = exc.__cause__
        return ImageCheck(source, rel, f"undecodable image: {type(cause).__name__}: {cause}")
    return None


def file_digests(paths: list[Path], workers: int = 4) -> list[str]:
    """sha256 of each file's bytes: images.parquet carries them so that the extract
    stage reruns when an image changes, but not when only a label does."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(sha256_file, paths))


def check_images(items: list[tuple[str, str, Path]], max_pixels: int = PIL_MAX_PIXELS,
                 workers: int = 4) -> list[ImageCheck]:
    """Decode every (source, relative path, full path); return the failures."""
    # PIL releases the GIL while decoding, so threads give a real speed-up here.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(lambda item: _problem(item, max_pixels), items), total=len(items),
                            desc="verify images", disable=len(items) < 500, leave=False))
    return [r for r in results if r is not None]
