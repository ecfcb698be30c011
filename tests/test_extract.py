"""Extraction into zarr: values, identity checks, id joins, resume after interruption, torchrun."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
import zarr

from pipeline.cache import CacheMismatchError, CacheWriter, FeatureCache, partial_path
from pipeline.encoders import ModelError, ModelParams, RuntimeParams, load_model, weights_identity
from pipeline.extract import ExtractParams, TilesParams, extract, grid_crops
from pipeline.imageio import load_rgb
from pipeline.manifest import DatasetParams, TaskSpec, build_manifest
from tests.conftest import REPO

RUNTIME = RuntimeParams(device="cpu", precision="fp32", batch_size=4, num_workers=0)
CFG = ExtractParams(token_blocks=(-1, -2), dtype="float32", rows_per_shard=8, rows_per_chunk=4)


@pytest.fixture
def rows(folder_dataset):
    table = build_manifest(DatasetParams(name="t", root=str(folder_dataset), layout="folders",
                                         tasks={"daytime": TaskSpec(type="single")}))[0]
    return table.column("id").to_pylist(), table.column("path").to_pylist(), folder_dataset


@pytest.fixture
def loaded(micro_model):
    return load_model(ModelParams(**micro_model))


def _extract(loaded, rows, out, cfg=CFG, runtime=RUNTIME, kind="images"):
    ids, paths, root = rows
    return extract(kind, loaded, cfg, runtime, ids, paths, root, out)


def _vit_by_hand(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The micro ViT's forward written out with plain module calls (no open_clip forward helpers).

    Returns the projected, normalised embedding and the residual stream after
    every block [B, 1+P, W] (class token first).
    """
    v = model.visual
    with torch.no_grad():
        t = v.conv1(x).flatten(2).transpose(1, 2)                     # [B, P, W] patch embeddings
        t = torch.cat([v.class_embedding.expand(len(x), 1, -1), t], dim=1) + v.positional_embedding
        t = v.ln_pre(t)
        assert v.transformer.batch_first
        blocks = []
        for block in v.transformer.resblocks:
            t = block(t)
            blocks.append(t)
        pooled = v.ln_post(t)[:, 0] @ v.proj                           # class token, after ln_post
    return {"cls": torch.nn.functional.normalize(pooled, dim=-1), "blocks": blocks}


def test_cache_holds_model_outputs_by_id(loaded, rows, tmp_path, micro_model):
    _extract(loaded, rows, tmp_path / "images.zarr")
    cache = FeatureCache(tmp_path / "images.zarr", expect=weights_identity(ModelParams(**micro_model)))
    ids, paths, root = rows
    assert cache.arrays() == ["block-1", "block-2", "cls", "cls_norm"]
    assert cache.identity["token_blocks"] == [-1, -2]
    pick = [ids[5], ids[0], ids[17]]  # out of order on purpose: rows join by id
    x = torch.stack([loaded.preprocess(load_rgb(root / paths[i])) for i in (5, 0, 17)])
    with torch.no_grad():
        raw = loaded.model.encode_image(x).numpy()
    want_cls = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(cache.read("cls", pick), want_cls, atol=1e-5)
    # the norm normalisation threw away is kept (float32), so the raw feature comes back
    assert cache.group["cls_norm"].dtype == np.float32
    np.testing.assert_allclose(cache.read("cls_norm", pick), np.linalg.norm(raw, axis=1), rtol=1e-5)
    rebuilt = cache.read("cls", pick) * cache.read("cls_norm", pick)[:, None]
    np.testing.assert_allclose(rebuilt, raw, rtol=2e-3, atol=2e-3 * np.abs(raw).max())
    by_hand = _vit_by_hand(loaded.model, x)
    np.testing.assert_allclose(by_hand["cls"].numpy(), want_cls, atol=1e-5)  # the hand-written forward is right
    blocks = by_hand["blocks"]
    assert len(blocks) == 3
    # block-2: raw residual stream after the penultimate block (no ln_post), class token first.
    tokens2 = cache.read("block-2", pick)
    assert tokens2.shape == (3, 1 + (64 // 16) ** 2, 64)
    np.testing.assert_allclose(tokens2, blocks[-2].numpy(), atol=1e-4)
    # block-1: the last block's output after ln_post, class token first.
    tokens1 = cache.read("block-1", pick)
    want1 = loaded.model.visual.ln_post(blocks[-1]).detach().numpy()
    np.testing.assert_allclose(tokens1, want1, atol=1e-4)
    # The class token of block-1 projected is the stored embedding.
    proj = tokens1[:, 0] @ loaded.model.visual.proj.detach().numpy()
    np.testing.assert_allclose(proj / np.linalg.norm(proj, axis=1, keepdims=True), want_cls, atol=1e-4)
    with pytest.raises(KeyError, match="not in the cache"):
        cache.read("cls", ["no-such-id"])


def test_reader_refuses_another_model_naming_the_field(loaded, rows, tmp_path, micro_model):
    _extract(loaded, rows, tmp_path / "images.zarr")
    other = tmp_path / "other.pt"
    state = torch.load(micro_model["pretrained"], weights_only=True)
    torch.save({k: v + 1 for k, v in state.items()}, other)
    expect = weights_identity(ModelParams(**{**micro_model, "pretrained": str(other)}))
    with pytest.raises(CacheMismatchError, match=r"'weights' is 'sha256:.*' in the cache but 'sha256:"):
        FeatureCache(tmp_path / "images.zarr", expect=expect)
    with pytest.raises(CacheMismatchError, match="'image_size'"):
        FeatureCache(tmp_path / "images.zarr", expect={"image_size": [224, 224]})


def test_bad_model_params_are_named(micro_model, tmp_path):
    with pytest.raises(ModelError, match="model.pretrained: checkpoint .*missing.pt does not exist"):
        load_model(ModelParams(**{**micro_model, "pretrained": str(tmp_path / "missing.pt")}))
    with pytest.raises(ModelError, match="model.name"):
        load_model(ModelParams(**{**micro_model, "name": "no-such-model"}))


def test_interrupted_run_resumes_without_redoing_finished_shards(loaded, rows, tmp_path, monkeypatch):
    reference = tmp_path / "reference.zarr"
    _extract(loaded, rows, reference)
    out = tmp_path / "images.zarr"
    real_write = CacheWriter.write_shard
    written: list[int] = []

    def dying_write(self, shard, values):
        if len(written) == 2:  # die while writing the third shard: one array there, no marker
            rows_ = self.shard_rows(shard)
            group = zarr.open_group(str(self.work), mode="r+")
            group["cls"][rows_.start:rows_.stop] = np.full_like(values["cls"], 7.0)
            raise KeyboardInterrupt("simulated kill")
        real_write(self, shard, values)
        written.append(shard)

    monkeypatch.setattr(CacheWriter, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        _extract(loaded, rows, out)
    assert not out.exists() and partial_path(out).exists()  # nothing half-written where DVC looks

    monkeypatch.setattr(CacheWriter, "write_shard", real_write)
    encoded: list[int] = []
    real_forward = loaded.model.forward_intermediates

    def counting_forward(*args, **kwargs):
        encoded.append(len(kwargs["image"]))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "forward_intermediates", counting_forward)
    _extract(loaded, rows, out)
    n = len(rows[0])
    # probe (1 row) + only the rows of the shards that were not finished
    assert sum(encoded) == 1 + n - 2 * CFG.rows_per_shard
    assert not partial_path(out).exists()
    a, b = FeatureCache(reference), FeatureCache(out)
    for name in a.arrays():
        np.testing.assert_array_equal(a.read(name), b.read(name))


def test_partial_from_other_params_is_discarded(loaded, rows, tmp_path):
    out = tmp_path / "images.zarr"
    ids, _, _ = rows
    stale = CacheWriter(out, ids, [], {"model": "something-else"}, 8, 4)
    stale.prepare()
    _extract(loaded, rows, out)
    assert FeatureCache(out).identity["model"] == loaded.identity["model"]


def test_workers_and_batch_size_do_not_change_values(loaded, rows, tmp_path):
    _extract(loaded, rows, tmp_path / "a.zarr")
    _extract(loaded, rows, tmp_path / "b.zarr", runtime=RuntimeParams(device="cpu", batch_size=3, num_workers=2))
    a, b = FeatureCache(tmp_path / "a.zarr"), FeatureCache(tmp_path / "b.zarr")
    assert list(a.ids) == list(b.ids) == rows[0]
    # Other batch shapes and worker processes: float results may differ in the last bits, not more.
    for name in a.arrays():
        np.testing.assert_allclose(a.read(name), b.read(name), atol=1e-5, err_msg=name)


def test_tiles_whole_image_then_grid_crops(loaded, rows, tmp_path):
    cfg = TilesParams(grid=2, dtype="float32", rows_per_shard=8, rows_per_chunk=4)
    _extract(loaded, rows, tmp_path / "tiles.zarr", cfg=cfg, kind="tiles")
    _extract(loaded, rows, tmp_path / "images.zarr")
    tiles = FeatureCache(tmp_path / "tiles.zarr").read("tiles")
    assert tiles.shape == (len(rows[0]), 5, 32)
    np.testing.assert_allclose(tiles[:, 0], FeatureCache(tmp_path / "images.zarr").read("cls"), atol=1e-5)
    ids, paths, root = rows
    crop = grid_crops(load_rgb(root / paths[3]), 2)[3]  # bottom-right crop
    with torch.no_grad():
        want = torch.nn.functional.normalize(loaded.model.encode_image(loaded.preprocess(crop)[None]), dim=-1)
    np.testing.assert_allclose(tiles[3, 4], want[0].numpy(), atol=1e-5)


def test_grid_crops_cover_the_image():
    from PIL import Image
    crops = grid_crops(Image.new("RGB", (10, 7)), 3)
    assert [c.size for c in crops[:3]] == [(3, 2), (4, 2), (3, 2)]
    assert sum(c.size[0] * c.size[1] for c in crops) == 70


def _write_params(path: Path, micro_model: dict, root: Path) -> None:
    params = {
        "dataset": {"name": "t", "root": str(root), "layout": "folders", "tasks": {"daytime": {"type": "single"}}},
        "model": micro_model,
        "runtime": {"device": "cpu", "precision": "fp32", "batch_size": 4, "num_workers": 0},
        "decode": {"exif_transpose": True, "draft": False, "backend": "pil"},
        "extract": {"token_blocks": [-2], "dtype": "float16", "rows_per_shard": 8, "rows_per_chunk": 4},
    }
    path.write_text(yaml.safe_dump(params))


def _free_port() -> int:
    """A TCP port that is free now (bound to port 0), so parallel runs do not collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_processes_match_one(micro_model, rows, tmp_path):
    ids, paths, root = rows
    params = tmp_path / "params.yaml"
    _write_params(params, micro_model, root)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "stages.prepare", "--out-dir", str(tmp_path / "prep"),
                    "--params", str(params)], check=True, cwd=REPO, env=env)
    index = tmp_path / "prep" / "images.parquet"
    common = ["-m", "stages.extract", "images", "--index", str(index), "--root", str(root), "--params", str(params)]
    subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one.zarr")], check=True, cwd=REPO, env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    subprocess.run([*torchrun, *common, "--out", str(tmp_path / "two.zarr")], check=True, cwd=REPO, env=env)
    one, two = FeatureCache(tmp_path / "one.zarr"), FeatureCache(tmp_path / "two.zarr")
    assert list(one.ids) == list(two.ids) == pq.read_table(index).column("id").to_pylist()
    assert one.arrays() == two.arrays() == ["block-2", "cls", "cls_norm"]
    # Another process count may change float results in the last bits (thread pools, kernels),
    # so values are compared to within a few float16 steps; a row from the wrong image differs by far more.
    for name in ("cls", "block-2"):
        a, b = one.read(name), two.read(name)
        np.testing.assert_allclose(a, b, atol=2e-3, rtol=2e-3, err_msg=name)
        assert np.abs(a - np.roll(a, 1, axis=0)).max() > 0.05  # rows do differ, so a swap would show
    shutil.rmtree(tmp_path / "prep")
