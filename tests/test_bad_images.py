"""Unusable image files become named rows (never a crash); odd but valid images keep working.

Every file is built here in a temporary directory: no binary fixtures in the repo.
"""
from __future__ import annotations

import csv
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest
import yaml
from PIL import Image

from pipeline.cache import CacheMismatchError, FeatureCache
from pipeline.encoders import ModelParams, RuntimeParams, load_model, weights_identity
from pipeline.extract import ExtractParams, extract
from pipeline.imageio import DecodeParams, ImageDecodeError, decode_identity, load_rgb
from pipeline.manifest import DatasetParams, ManifestError, TaskSpec, build_manifest
from tests.conftest import REPO, write_image


def _png_with_size(path: Path, width: int, height: int) -> None:
    """A valid 1x1 PNG whose header claims width x height (what a decompression bomb looks like)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    # IHDR chunk: 8-byte signature, 4-byte length, b"IHDR", then width and height.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def _jpeg_bytes(rng: np.random.Generator, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


BAD = {  # name -> expected words of its reason
    "bomb.png": "max_image_pixels",
    "empty.jpg": "undecodable",
    "truncated.jpg": "undecodable",
    "text.jpg": "undecodable",
    "escape.jpg": "escapes the dataset root",
    "dangling.jpg": "broken link",
    "folder.jpg": "is a directory",
    "locked.jpg": "PermissionError",
}


@pytest.fixture
def bad_set(tmp_path, monkeypatch) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    images = root / "images"
    for i in range(6):
        write_image(images / f"ok{i}.png", rng)
    _png_with_size(images / "bomb.png", 30000, 30000)
    (images / "empty.jpg").write_bytes(b"")
    (images / "truncated.jpg").write_bytes(_jpeg_bytes(rng)[:300])
    (images / "text.jpg").write_text("this is not an image\n")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(_jpeg_bytes(rng))
    (images / "escape.jpg").symlink_to(outside)
    (images / "dangling.jpg").symlink_to(images / "nowhere.jpg")
    (images / "folder.jpg").mkdir()
    (images / "locked.jpg").write_bytes(_jpeg_bytes(rng))
    # Root reads any file whatever its mode, so the unreadable file is simulated at open().
    real_open = Image.open

    def guarded_open(fp, *args, **kwargs):
        if str(fp).endswith("locked.jpg"):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", guarded_open)
    names = [f"ok{i}.png" for i in range(6)] + list(BAD)
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows((f"images/{n}", "a" if i % 2 else "b") for i, n in enumerate(names))
    return root


def _params(root: Path, **kw) -> DatasetParams:
    return DatasetParams(name="t", root=str(root), layout="csv", csv=("labels.csv",),
                         tasks={"label": TaskSpec(type="single", column="label")}, **kw)


def test_every_unusable_file_is_named_in_strict_mode(bad_set):
    with pytest.raises(ManifestError) as err:
        build_manifest(_params(bad_set))
    msg = str(err.value)
    assert msg.startswith(f"{len(BAD)} bad rows")
    for row, (name, words) in enumerate(BAD.items(), start=8):  # header + 6 good rows come first
        line = next((ln for ln in msg.splitlines() if f"images/{name}" in ln), "")
        assert f"labels.csv:{row}" in line and words in line, (name, msg)


def test_every_unusable_file_is_skipped_and_listed(bad_set):
    table, skipped = build_manifest(_params(bad_set, on_error="skip"))
    assert sorted(table.column("path").to_pylist()) == [f"images/ok{i}.png" for i in range(6)]
    reasons = {s["path"]: s["reason"] for s in skipped}
    assert set(reasons) == {f"images/{n}" for n in BAD}
    for name, words in BAD.items():
        assert words in reasons[f"images/{name}"]


def test_folder_layout_reports_a_directory_named_like_an_image(tmp_path):
    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        for i in range(5):
            write_image(tmp_path / "f" / cls / f"{i}.png", rng)
    (tmp_path / "f" / "a" / "odd.jpg").mkdir()
    params = DatasetParams(name="t", root=str(tmp_path / "f"), layout="folders", on_error="skip",
                           tasks={"label": TaskSpec(type="single")})
    table, skipped = build_manifest(params)
    assert table.num_rows == 10 and [s["path"] for s in skipped] == ["a/odd.jpg"]


def test_pixel_limit_is_a_dataset_param(tmp_path):
    write_image(tmp_path / "x.png", np.random.default_rng(2), size=(40, 30))
    with pytest.raises(ImageDecodeError, match="1200 pixels is over dataset.max_image_pixels"):
        load_rgb(tmp_path / "x.png", max_pixels=1000)
    assert load_rgb(tmp_path / "x.png", max_pixels=1200).size == (40, 30)
    _png_with_size(tmp_path / "big.png", 30000, 30000)  # over PIL's default, allowed by a raised limit
    with pytest.raises(ImageDecodeError, match="over dataset.max_image_pixels"):
        load_rgb(tmp_path / "big.png", max_pixels=89_478_485)


def _odd_images(root: Path) -> dict[str, Image.Image]:
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    grey16 = Image.fromarray(np.full((24, 32), 32896, np.uint16))  # 32896 / 257 = 128
    out = {"cmyk.jpg": rgb.convert("CMYK"), "grey16.png": grey16, "palette.png": rgb.convert("P"),
           "rgba.png": rgb.convert("RGBA"), "photo.webp": rgb, "scan.tif": rgb,
           "straße café.png": rgb, "with space.jpg": rgb}
    root.mkdir(parents=True, exist_ok=True)
    for name, img in out.items():
        img.save(root / name)
    return out


def test_odd_but_valid_images_decode(tmp_path):
    root = tmp_path / "odd" / "cls"
    _odd_images(root)
    for path in sorted(root.iterdir()):
        img = load_rgb(path)
        assert img.mode == "RGB" and img.size == (32, 24), path.name
    grey = np.asarray(load_rgb(root / "grey16.png"))
    assert np.all(grey == 128)  # scaled to 8 bits, not clipped to white
    params = DatasetParams(name="t", root=str(tmp_path / "odd"), layout="folders",
                           tasks={"label": TaskSpec(type="single")})
    table, skipped = build_manifest(params)
    assert skipped == [] and table.num_rows == 8


def _rotated_jpeg(path: Path) -> np.ndarray:
    """A 40 x 20 JPEG whose EXIF says 'rotate 90 degrees clockwise to display' (orientation 6)."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return pixels


def test_exif_orientation_applied(tmp_path):
    _rotated_jpeg(tmp_path / "phone.jpg")
    upright = np.asarray(load_rgb(tmp_path / "phone.jpg"))
    assert upright.shape == (40, 20, 3)
    assert upright[:15].mean() > 200 and upright[-15:].mean() < 50  # the stored left half is now on top
    assert np.asarray(load_rgb(tmp_path / "phone.jpg", exif_transpose=False)).shape == (20, 40, 3)


def test_cache_without_exif_is_refused_by_name(micro_model, tmp_path):
    _rotated_jpeg(tmp_path / "phone.jpg")
    loaded = load_model(ModelParams(**micro_model))
    cfg = ExtractParams(token_blocks=(), dtype="float32", rows_per_shard=4, rows_per_chunk=2)
    runtime = RuntimeParams(device="cpu", precision="fp32", batch_size=2, num_workers=0)
    extract("images", loaded, cfg, runtime, ["p"], ["phone.jpg"], tmp_path, tmp_path / "plain.zarr",
            DecodeParams(exif_transpose=False))
    extract("images", loaded, cfg, runtime, ["p"], ["phone.jpg"], tmp_path, tmp_path / "upright.zarr")
    expect = {**weights_identity(ModelParams(**micro_model)), **decode_identity(DecodeParams())}
    with pytest.raises(CacheMismatchError, match="'decode.exif_transpose' is False in the cache but True"):
        FeatureCache(tmp_path / "plain.zarr", expect=expect)
    upright = FeatureCache(tmp_path / "upright.zarr", expect=expect).read("cls")
    plain = FeatureCache(tmp_path / "plain.zarr").read("cls")
    assert not np.allclose(upright, plain, atol=1e-3)  # the orientation reached the encoder


def _run_stage(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_stage_errors_are_one_short_line(bad_set, tmp_path):
    params = tmp_path / "params.yaml"
    block = {"name": "t", "root": str(bad_set), "layout": "csv", "csv": ["labels.csv"],
             "tasks": {"label": {"type": "single", "column": "label"}}, "on_error": "strict"}
    params.write_text(yaml.safe_dump({"dataset": block}))
    # The monkeypatched PermissionError does not reach a subprocess: there locked.jpg decodes.
    res = _run_stage(["stages.prepare", "--out-dir", str(tmp_path / "out"), "--params", str(params)], REPO)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "╭" not in res.stderr
    assert "labels.csv:8: images/bomb.png" in res.stderr and "labels.csv:14: images/folder.jpg" in res.stderr
    assert not (tmp_path / "out" / "manifest.parquet").exists()

    params.write_text(yaml.safe_dump({"dataset": {**block, "on_error": "skip"}}))
    res = _run_stage(["stages.prepare", "--out-dir", str(tmp_path / "out"), "--params", str(params)], REPO)
    assert res.returncode == 0, res.stderr
    skipped = pacsv.read_csv(tmp_path / "out" / "skipped.csv").column("path").to_pylist()
    assert set(skipped) == {f"images/{n}" for n in BAD if n != "locked.jpg"}

    params.write_text(yaml.safe_dump({"dataset": {**block, "on_eror": "skip"}}))
    res = _run_stage(["stages.prepare", "--out-dir", str(tmp_path / "out2"), "--params", str(params)], REPO)
    assert res.returncode == 2 and "'dataset.on_eror'" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 3
