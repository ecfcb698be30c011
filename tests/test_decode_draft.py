"""Reduced-scale JPEG decoding (``decode.draft``): the scale chosen, the geometry kept, the identity recorded.

Every file is built here in a temporary directory: no binary fixtures in the repo.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.augment import ViewSpec, augmented_view, smallest_crop_fraction
from pipeline.cache import CacheMismatchError, FeatureCache
from pipeline.encoders import ModelParams, RuntimeParams, load_model, weights_identity
from pipeline.extract import ExtractParams, ImageRows, TileRows, ViewRows, extract, input_size
from pipeline.imageio import DecodeParams, decode_identity, decode_rgb, load_rgb

SPEC = ViewSpec(n=4, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), flip=0.5, seed=0)


def _photo(path: Path, size=(256, 192), orientation: int | None = None) -> None:
    """A smooth photo-like JPEG (gradients and a few blobs): DCT scaling keeps such content."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([x / w * 255, y / h * 255, 128 + 60 * np.sin(x / 17) * np.cos(y / 23)], -1)
    for cx, cy, r in ((0.3, 0.4, 0.12), (0.7, 0.6, 0.08)):
        rgb[(x - cx * w) ** 2 + (y - cy * h) ** 2 < (r * w) ** 2] = (250, 30, 30)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path, quality=95, exif=exif)


@pytest.mark.parametrize("min_side, reduced", [(96, (128, 96)), (40, (64, 48)), (20, (32, 24)), (97, (256, 192))])
def test_draft_picks_the_smallest_scale_that_covers_min_side(tmp_path, min_side, reduced):
    _photo(tmp_path / "p.jpg")
    img, full = decode_rgb(tmp_path / "p.jpg", min_side=min_side)
    assert img.size == reduced and full == (256, 192)
    assert min(img.size) >= min(min_side, 192)


def test_draft_pixels_are_a_downscale_of_the_full_decode(tmp_path):
    _photo(tmp_path / "p.jpg")
    reduced = np.asarray(decode_rgb(tmp_path / "p.jpg", min_side=96)[0], np.float32)
    exact = np.asarray(load_rgb(tmp_path / "p.jpg").resize((128, 96), Image.Resampling.BOX), np.float32)
    assert np.abs(reduced - exact).mean() < 3.0  # grey levels: the same picture, up to DCT-scaling rounding
    assert reduced.shape == exact.shape


def test_draft_with_exif_rotation_reports_the_upright_full_size(tmp_path):
    _photo(tmp_path / "phone.jpg", orientation=6)  # stored 256 x 192, displayed 192 x 256
    img, full = decode_rgb(tmp_path / "phone.jpg", min_side=96)
    assert img.size == (96, 128) and full == (192, 256)
    assert load_rgb(tmp_path / "phone.jpg").size == (192, 256)


def test_draft_leaves_other_formats_and_small_jpegs_alone(tmp_path):
    _photo(tmp_path / "p.jpg", size=(120, 90))
    Image.open(tmp_path / "p.jpg").save(tmp_path / "p.png")
    assert decode_rgb(tmp_path / "p.png", min_side=20)[0].size == (120, 90)
    assert decode_rgb(tmp_path / "p.jpg", min_side=64)[0].size == (120, 90)  # 1/2 would be 60 < 64


def test_views_cover_the_same_region_at_reduced_scale(tmp_path):
    _photo(tmp_path / "p.jpg", size=(512, 384))
    full_img = load_rgb(tmp_path / "p.jpg")
    side = 64
    img, full = decode_rgb(tmp_path / "p.jpg", min_side=int(np.ceil(side / smallest_crop_fraction(SPEC))))
    assert img.size == (256, 192)  # 105 px needed: 1/2 scale, not 1/4
    for v in range(SPEC.n):
        exact = np.asarray(augmented_view(full_img, (side, side), SPEC, "id7", v), np.float32)
        # the same computation with the full size given explicitly: bit-identical
        same = np.asarray(augmented_view(full_img, (side, side), SPEC, "id7", v, full_img.size), np.float32)
        np.testing.assert_array_equal(exact, same)
        draft = np.asarray(augmented_view(img, (side, side), SPEC, "id7", v, full), np.float32)
        other = np.asarray(augmented_view(full_img, (side, side), SPEC, "id8", v), np.float32)
        assert np.abs(draft - exact).mean() < 4.0 < np.abs(other - exact).mean()


def test_smallest_crop_fraction_bounds_every_crop(tmp_path):
    from pipeline.augment import crop_box, view_rng
    for w, h in ((300, 200), (200, 300), (256, 256)):
        for v in range(200):
            _, _, cw, ch = crop_box(w, h, SPEC.scale, SPEC.ratio, view_rng(0, "x", v))
            assert min(cw, ch) >= smallest_crop_fraction(SPEC) * min(w, h) - 1


def test_each_cache_kind_asks_for_the_pixels_its_model_input_needs(micro_model, tmp_path):
    loaded = load_model(ModelParams(**micro_model))
    side = max(input_size(loaded))  # 64
    _photo(tmp_path / "big.jpg", size=(512, 384))
    on, off = DecodeParams(draft=True), DecodeParams(draft=False)
    assert ImageRows(tmp_path, ["big.jpg"], loaded.preprocess, off, min_side=side).image(0).size == (512, 384)
    assert ImageRows(tmp_path, ["big.jpg"], loaded.preprocess, on, min_side=side).image(0).size == (128, 96)
    assert TileRows(tmp_path, ["big.jpg"], loaded.preprocess, 3, on, min_side=3 * side).image(0).size == (256, 192)
    views = ViewRows(tmp_path, ["big.jpg"], ["b"], loaded.preprocess, (side, side), SPEC, on,
                     min_side=int(np.ceil(side / smallest_crop_fraction(SPEC))))
    assert views.decoded(0)[0].size == (256, 192) and views.decoded(0)[1] == (512, 384)
    exact = ImageRows(tmp_path, ["big.jpg"], loaded.preprocess, off)[0]
    draft = ImageRows(tmp_path, ["big.jpg"], loaded.preprocess, on, min_side=side)[0]
    assert exact.shape == draft.shape and 0 < (exact - draft).abs().mean() < 0.05  # normalised pixel units


def test_a_cache_made_without_draft_is_refused_by_name(micro_model, tmp_path):
    _photo(tmp_path / "big.jpg", size=(512, 384))
    loaded = load_model(ModelParams(**micro_model))
    cfg = ExtractParams(token_blocks=(), dtype="float32", rows_per_shard=4, rows_per_chunk=2)
    runtime = RuntimeParams(device="cpu", precision="fp32", batch_size=2, num_workers=0)
    extract("images", loaded, cfg, runtime, ["b"], ["big.jpg"], tmp_path, tmp_path / "exact.zarr")
    extract("images", loaded, cfg, runtime, ["b"], ["big.jpg"], tmp_path, tmp_path / "draft.zarr",
            DecodeParams(draft=True))
    expect = {**weights_identity(ModelParams(**micro_model)), **decode_identity(DecodeParams(draft=True))}
    with pytest.raises(CacheMismatchError, match="'decode.draft' is False in the cache but True"):
        FeatureCache(tmp_path / "exact.zarr", expect=expect)
    draft = FeatureCache(tmp_path / "draft.zarr", expect=expect).read("cls")
    exact = FeatureCache(tmp_path / "exact.zarr").read("cls")
    assert not np.array_equal(draft, exact)  # the reduced decode reached the encoder
    assert (draft * exact).sum() > 0.99  # ... and still shows the same picture (unit vectors)
