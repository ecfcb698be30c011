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
    """

    exif_transpose: bool = True


def decode_identity(params: DecodeParams) -> dict:
    """What an image cache records (and a reader expects) of the decoding."""
    return {"decode": {"exif_transpose": params.exif_transpose}}


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
    try:
        with Image.open(path) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ValueError(f"{img.width} x {img.height} = {img.width * img.height} pixels is over "
                                 f"dataset.max_image_pixels ({max_pixels}): a decompression bomb?")
            img.load()
            if exif_transpose:
                img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
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
