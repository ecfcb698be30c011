"""Augmented views: the crop sampler, seeded determinism, the views cache and its stage."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from pipeline.augment import ViewSpec, augmented_view, crop_box, view_rng
from pipeline.cache import FeatureCache
from pipeline.encoders import ModelParams, RuntimeParams, load_model
from pipeline.augment import ViewsParams
from pipeline.extract import extract
from pipeline.imageio import load_rgb
from pipeline.manifest import DatasetParams, TaskSpec, build_manifest
from tests.conftest import REPO

RUNTIME = RuntimeParams(device="cpu", precision="fp32", batch_size=3, num_workers=0)
CFG = ViewsParams(split=None, n=3, dtype="float32", rows_per_shard=8, rows_per_chunk=4)


def test_crop_boxes_respect_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(300):
        left, top, w, h = crop_box(120, 80, (0.3, 0.9), (0.75, 4 / 3), rng)
        assert 0 <= left and left + w <= 120 and 0 <= top and top + h <= 80
        # Rounding to whole pixels moves area and ratio only a little past the sampled range.
        assert 0.3 * 0.95 <= w * h / (120 * 80) <= 0.9 * 1.05
        assert 0.75 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_crop_box_falls_back_to_a_centre_crop():
    # A scale of 1 with ratio 1 cannot fit a 100x20 image: torchvision's fallback cuts to the nearest ratio.
    assert crop_box(100, 20, (1.0, 1.0), (1.0, 1.0), np.random.default_rng(0)) == (40, 0, 20, 20)


def test_views_are_a_function_of_seed_id_and_view_only():
    a = view_rng(0, "img-1", 2).random(4)
    assert np.array_equal(a, view_rng(0, "img-1", 2).random(4))
    for other in (view_rng(1, "img-1", 2), view_rng(0, "img-2", 2), view_rng(0, "img-1", 3)):
        assert not np.array_equal(a, other.random(4))


def test_full_crop_view_is_the_resized_image_and_flip_mirrors_it():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8))
    keep = ViewSpec(n=1, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0)
    want = np.asarray(img.resize((16, 16), Image.Resampling.BICUBIC))
    assert np.array_equal(np.asarray(augmented_view(img, (16, 16), keep, "x", 0)), want)
    mirrored = ViewSpec(n=1, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=1.0)
    assert np.array_equal(np.asarray(augmented_view(img, (16, 16), mirrored, "x", 0)), want[:, ::-1])


def test_view_params_are_validated():
    with pytest.raises(ValueError, match="views.scale"):
        ViewsParams(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="views.n"):
        ViewsParams(n=-1)
    assert ViewsParams(n=0).n == 0  # no views: the stage writes a cache marked not applicable


@pytest.fixture
def rows(folder_dataset):
    table = build_manifest(DatasetParams(name="t", root=str(folder_dataset), layout="folders",
                                         tasks={"daytime": TaskSpec(type="single")}))[0]
    return table.column("id").to_pylist(), table.column("path").to_pylist(), folder_dataset


def test_views_cache_holds_each_rows_augmented_views(micro_model, rows, tmp_path):
    loaded = load_model(ModelParams(**micro_model))
    ids, paths, root = rows
    extract("views", loaded, CFG, RUNTIME, ids, paths, root, tmp_path / "views.zarr")
    cache = FeatureCache(tmp_path / "views.zarr", expect={"kind": "views", "n": 3, "seed": 0})
    got = cache.read("views", [ids[7], ids[2]])
    assert got.shape == (2, 3, 32)
    spec = CFG.spec()
    x = torch.stack([loaded.preprocess(augmented_view(load_rgb(root / paths[i]), (64, 64), spec, ids[i], v))
                     for i in (7, 2) for v in range(3)])
    with torch.no_grad():
        want = torch.nn.functional.normalize(loaded.model.encode_image(x), dim=-1).numpy().reshape(2, 3, 32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got[:, 0], got[:, 1])  # the views differ from each other
    # Another batch size gives the same views: they depend on (seed, id, view) only. The model's
    # inputs are compared exactly; the embeddings only to float tolerance, since a matrix
    # product's rounding depends on the batch shape (BLAS blocking).
    other = RuntimeParams(device="cpu", precision="fp32", batch_size=9, num_workers=0)  # 3 rows, not 1
    extract("views", loaded, CFG, other, ids, paths, root, tmp_path / "again.zarr")
    again = FeatureCache(tmp_path / "again.zarr")
    assert list(again.ids) == list(cache.ids)
    np.testing.assert_allclose(again.read("views"), cache.read("views"), atol=1e-5)


@pytest.mark.parametrize("kind", ["views", "tiles"])
def test_a_forward_pass_holds_batch_size_images_not_rows(kind, micro_model, rows, tmp_path, monkeypatch):
    """runtime.batch_size counts images: a views row is n images, a tiles row 1 + g*g."""
    import pipeline.extract as extract_module
    from pipeline.extract import TilesParams

    seen: list[int] = []
    real = extract_module.encode_images
    monkeypatch.setattr(extract_module, "encode_images", lambda m, x, b: seen.append(len(x)) or real(m, x, b))
    loaded = load_model(ModelParams(**micro_model))
    ids, paths, root = rows
    cfg = CFG if kind == "views" else TilesParams(grid=2, dtype="float32", rows_per_shard=8, rows_per_chunk=4)
    per_row = 3 if kind == "views" else 5
    runtime = RuntimeParams(device="cpu", precision="fp32", batch_size=2 * per_row + 1, num_workers=0)
    extract(kind, loaded, cfg, runtime, ids, paths, root, tmp_path / f"{kind}.zarr")
    passes = seen[1:]  # the first is the one-sample probe of the array shapes
    assert passes and max(passes) == 2 * per_row, passes
    assert sum(passes) == len(ids) * per_row


def test_views_can_keep_each_views_tokens(micro_model, rows, tmp_path):
    """token_blocks: the block's tokens of every view, from the same forward pass as its embedding."""
    loaded = load_model(ModelParams(**micro_model))
    ids, paths, root = rows
    cfg = ViewsParams(split=None, n=2, token_blocks=(-2,), dtype="float32", rows_per_shard=8, rows_per_chunk=4)
    extract("views", loaded, cfg, RUNTIME, ids[:5], paths[:5], root, tmp_path / "tok.zarr")
    cache = FeatureCache(tmp_path / "tok.zarr", expect={"token_blocks": [-2]})
    got = cache.read("views_block-2", [ids[3]])[0]  # [A, 1+P, W]
    assert got.shape == (2, 1 + (64 // 16) ** 2, 64)
    x = torch.stack([loaded.preprocess(augmented_view(load_rgb(root / paths[3]), (64, 64), cfg.spec(), ids[3], v))
                     for v in range(2)])
    with torch.no_grad():  # block -2 by hand: the residual stream after all but the last block
        visual = loaded.model.visual
        h = visual.conv1(x).flatten(2).transpose(1, 2)
        h = torch.cat([visual.class_embedding.expand(len(x), 1, -1), h], dim=1) + visual.positional_embedding
        h = visual.ln_pre(h)
        for block in visual.transformer.resblocks[:-1]:
            h = block(h)
    np.testing.assert_allclose(got, h.numpy(), atol=1e-4)
    # the embeddings and norms are those of a views cache without tokens (the same views)
    plain = ViewsParams(split=None, n=2, dtype="float32", rows_per_shard=8, rows_per_chunk=4)
    extract("views", loaded, plain, RUNTIME, ids[:5], paths[:5], root, tmp_path / "plain.zarr")
    for name in ("views", "views_norm"):
        np.testing.assert_allclose(cache.read(name), FeatureCache(tmp_path / "plain.zarr").read(name), atol=1e-5)


def test_view_pixels_do_not_depend_on_what_else_is_drawn(rows):
    """The crop box, flip and pixels of a view are the same whatever order views are drawn in."""
    ids, paths, root = rows
    spec = CFG.spec()
    img = load_rgb(root / paths[4])
    forward = [np.asarray(augmented_view(img, (64, 64), spec, ids[4], v)) for v in range(3)]
    backward = [np.asarray(augmented_view(img, (64, 64), spec, ids[4], v)) for v in reversed(range(3))][::-1]
    for a, b in zip(forward, backward):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(forward[0], forward[1])


def test_stage_keeps_only_the_configured_split(micro_model, folder_dataset, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "dataset": {"name": "t", "root": str(folder_dataset), "layout": "folders",
                    "tasks": {"daytime": {"type": "single"}}},
        "model": micro_model,
        "runtime": {"device": "cpu", "precision": "fp32", "batch_size": 4, "num_workers": 0},
        "decode": {"exif_transpose": True, "draft": False, "backend": "pil"},
        "views": {"tip": {"split": "train", "n": 2, "scale": [0.5, 1.0], "ratio": [0.75, 1.3333], "flip": 0.5,
                          "seed": 0, "dtype": "float16", "rows_per_shard": 8, "rows_per_chunk": 4}},
    }))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    prep = tmp_path / "prep"
    subprocess.run([sys.executable, "-m", "stages.prepare", "--out-dir", str(prep), "--params", str(params)],
                   check=True, cwd=REPO, env=env)
    subprocess.run([sys.executable, "-m", "stages.extract", "views", "--index", str(prep / "images.parquet"),
                    "--splits", str(prep / "splits.parquet"), "--root", str(folder_dataset), "--section", "views.tip",
                    "--out", str(tmp_path / "views.zarr"), "--params", str(params)], check=True, cwd=REPO, env=env)
    manifest = pq.read_table(prep / "manifest.parquet")
    train = [i for i, s in zip(manifest.column("id").to_pylist(), manifest.column("split").to_pylist())
             if s == "train"]
    cache = FeatureCache(tmp_path / "views.zarr", expect={"split": "train"})
    assert sorted(cache.ids) == sorted(train) and 0 < len(train) < manifest.num_rows
    _check_no_views_is_marked_not_applicable(params, prep, folder_dataset, tmp_path / "none.zarr", env)
    assert cache.read("views").shape == (len(train), 2, 32)
    assert math.isclose(float(np.linalg.norm(cache.read("views")[0, 1])), 1.0, abs_tol=1e-2)


def _check_no_views_is_marked_not_applicable(params, prep, root, out, env) -> None:
    """views.<set>.n: 0: the declared output exists, and readers refuse it, saying why."""
    from pipeline.cache import CacheMismatchError

    cfg = yaml.safe_load(params.read_text())
    cfg["views"]["tip"]["n"] = 0
    cfg["model"]["pretrained"] = "/nonexistent.pt"  # never loaded: there is nothing to encode
    params.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "stages.extract", "views", "--index", str(prep / "images.parquet"),
                    "--splits", str(prep / "splits.parquet"), "--root", str(root), "--out", str(out),
                    "--section", "views.tip", "--params", str(params)], check=True, cwd=REPO, env=env)
    with pytest.raises(CacheMismatchError, match="not applicable .views.tip.n is 0"):
        FeatureCache(out)
