"""``decode.backend: torchvision``: batched JPEG decode and resizing on the encoder's device.

Run here on the CPU (libjpeg-turbo through torchvision); the CUDA test runs where a GPU is.
Every file is built in a temporary directory: no binary fixtures in the repo.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline.device_decode as device_decode
from pipeline.augment import ViewSpec
from pipeline.cache import CacheMismatchError, FeatureCache
from pipeline.device_decode import DeviceFinisher, RawRows, decode_batch
from pipeline.encoders import ModelParams, RuntimeParams, load_model, weights_identity
from pipeline.errors import UserError
from pipeline.extract import ExtractParams, ImageRows, TileRows, ViewRows, extract
from pipeline.imageio import DecodeParams, decode_identity, load_rgb
from tests.test_decode_draft import _photo

TV = DecodeParams(backend="torchvision")
SPEC = ViewSpec(n=3, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), flip=0.5, seed=0)
CPU = torch.device("cpu")


@pytest.fixture
def photos(tmp_path) -> tuple[Path, list[str]]:
    """JPEGs of different sizes (one rotated by EXIF), a PNG and a CMYK JPEG."""
    _photo(tmp_path / "a.jpg", size=(256, 192))
    _photo(tmp_path / "b.jpg", size=(200, 300))
    _photo(tmp_path / "phone.jpg", size=(240, 160), orientation=6)
    _photo(tmp_path / "src.jpg", size=(180, 120))
    Image.open(tmp_path / "src.jpg").save(tmp_path / "c.png")
    Image.open(tmp_path / "src.jpg").convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    return tmp_path, ["a.jpg", "b.jpg", "phone.jpg", "c.png", "cmyk.jpg"]


@pytest.fixture(scope="module")
def loaded(micro_model):
    return load_model(ModelParams(**micro_model))


def test_workers_send_jpeg_bytes_and_other_formats_as_pixels(photos):
    root, paths = photos
    items = [RawRows(root, paths, paths, TV)[i] for i in range(len(paths))]
    assert [it.is_pixels for it in items] == [False, False, False, True, True]
    assert items[2].orientation == 6 and items[0].orientation == 1
    assert items[0].data.dim() == 1 and items[3].data.shape == (3, 120, 180)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    _photo(tmp_path / "o.jpg", size=(64, 40), orientation=orientation)
    got = decode_batch([RawRows(tmp_path, ["o.jpg"], ["o"], TV)[0]], CPU)[0].permute(1, 2, 0).numpy()
    want = np.asarray(load_rgb(tmp_path / "o.jpg"))
    assert got.shape == want.shape
    assert np.abs(got.astype(float) - want).mean() < 2.0  # the same pixels, up to the JPEG decoder's rounding


def test_decoded_pixels_match_pil(photos):
    root, paths = photos
    got = decode_batch([RawRows(root, paths, paths, TV)[i] for i in range(len(paths))], CPU)
    for x, path in zip(got, paths):
        want = np.asarray(load_rgb(root / path)).astype(float)
        assert x.permute(1, 2, 0).numpy().shape == want.shape
        assert np.abs(x.permute(1, 2, 0).numpy() - want).mean() < 2.0, path


def test_a_jpeg_the_batched_decoder_refuses_is_decoded_alone_or_by_pil(photos, monkeypatch):
    root, paths = photos
    items = [RawRows(root, paths, paths, TV)[i] for i in range(3)]
    want = decode_batch(items, CPU)

    def refuse(data, **kwargs):
        raise RuntimeError("nvjpeg refused")
    monkeypatch.setattr(device_decode, "decode_jpeg", refuse)
    got = decode_batch(items, CPU)  # batch refused, each alone refused: PIL decodes them
    for a, b in zip(got, want):
        assert a.shape == b.shape and (a.float() - b.float()).abs().mean() < 2.0


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference in normalised pixel units (about 4 per unit of 0..1)."""
    assert a.shape == b.shape
    return float((a - b).abs().mean())


def test_images_tiles_and_views_match_the_pil_path(photos, loaded):
    root, paths = photos
    finisher = {kind: DeviceFinisher(kind, loaded.identity, CPU, grid=2, spec=SPEC) for kind in ("images", "tiles", "views")}
    raw = RawRows(root, paths, paths, TV)
    pil = {"images": ImageRows(root, paths, loaded.preprocess),
           "tiles": TileRows(root, paths, loaded.preprocess, 2),
           "views": ViewRows(root, paths, paths, loaded.preprocess, (64, 64), SPEC)}
    for kind, rows in pil.items():
        got = finisher[kind]([raw[i] for i in range(len(paths))])
        want = torch.stack([rows[i] for i in range(len(paths))])
        assert _close(got, want) < 0.05, kind
    # a view is drawn by (seed, id, view): another id, another picture
    other = finisher["views"]([RawRows(root, paths, ["x"] * len(paths), TV)[0]])
    assert _close(other[0], pil["views"][0]) > 0.1


def test_extraction_with_the_torchvision_backend_records_it(photos, loaded, micro_model):
    root, paths = photos
    cfg = ExtractParams(token_blocks=(-2,), dtype="float32", rows_per_shard=4, rows_per_chunk=2)
    runtime = RuntimeParams(device="cpu", precision="fp32", batch_size=3, num_workers=0)
    extract("images", loaded, cfg, runtime, paths, paths, root, root / "tv.zarr", TV)
    extract("images", loaded, cfg, runtime, paths, paths, root, root / "pil.zarr")
    expect = {**weights_identity(ModelParams(**micro_model)), **decode_identity(TV)}
    with pytest.raises(CacheMismatchError, match="'decode.backend' is 'pil' in the cache but 'torchvision'"):
        FeatureCache(root / "pil.zarr", expect=expect)
    tv = FeatureCache(root / "tv.zarr", expect=expect)
    pil = FeatureCache(root / "pil.zarr")
    assert list(tv.ids) == list(pil.ids)
    assert np.all((tv.read("cls") * pil.read("cls")).sum(1) > 0.99)  # unit vectors: the same pictures
    assert tv.read("block-2").shape == pil.read("block-2").shape


def test_settings_the_backend_does_not_implement_are_refused(loaded):
    with pytest.raises(ValueError, match="draft .* applies to backend 'pil' only"):
        DecodeParams(draft=True, backend="torchvision")
    with pytest.raises(UserError, match="'shortest' resize mode only"):
        DeviceFinisher("images", {**loaded.identity, "resize_mode": "squash"}, CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_cuda_decode_matches_the_cpu_decode(photos, loaded):
    root, paths = photos
    raw = RawRows(root, paths, paths, TV)
    items = [raw[i] for i in range(len(paths))]
    on_gpu = DeviceFinisher("images", loaded.identity, torch.device("cuda"))(items).cpu()
    on_cpu = DeviceFinisher("images", loaded.identity, CPU)(items)
    assert _close(on_gpu, on_cpu) < 0.02
