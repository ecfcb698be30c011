"""Joins by sample id: a manifest or a cache in another row order pairs every row with its own features.

The synthetic caches give every id its own known vector, so a row joined by
position instead of by id shows at once; the last test does the same with a
cache the micro model extracted, against each image encoded on its own.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.cache import ArraySpec, CacheWriter, FeatureCache
from pipeline.encoders import ModelParams, RuntimeParams, load_model
from pipeline.extract import ExtractParams, extract
from pipeline.features import TextContext
from pipeline.fewshot import FewShotParams, draw_fewshot, select
from pipeline.imageio import load_rgb
from pipeline.manifest import DatasetParams, TaskSpec, build_manifest
from pipeline.runs import fit_and_predict, load_task

D = 8


@pytest.fixture
def manifest(folder_dataset) -> pa.Table:
    return build_manifest(DatasetParams(name="t", root=str(folder_dataset), layout="folders",
                                        tasks={"daytime": TaskSpec(type="single")}))[0]


def _shuffled(table: pa.Table, seed: int) -> pa.Table:
    out = table.take(np.random.default_rng(seed).permutation(table.num_rows))
    assert out.schema.metadata == table.schema.metadata  # the class lists travel with the rows
    return out


def _column(table: pa.Table, name: str) -> dict:
    return dict(zip(table.column("id").to_pylist(), table.column(name).to_pylist()))


def _write_cache(path, ids: list[str], arrays: dict[str, dict[str, np.ndarray]]) -> FeatureCache:
    """A complete cache whose rows are ``ids`` in that order; ``arrays[name][id]`` is a row's value."""
    first = ids[0]
    specs = [ArraySpec(name, values[first].shape, "float32") for name, values in arrays.items()]
    writer = CacheWriter(path, ids, specs, {"model": "synthetic"}, rows_per_shard=8, rows_per_chunk=4)
    writer.prepare()
    for shard in writer.pending():
        rows = writer.shard_rows(shard)
        writer.write_shard(shard, {name: np.stack([values[ids[r]] for r in rows])
                                   for name, values in arrays.items()})
    writer.finalize()
    return FeatureCache(path)


def _per_id(ids, shape, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {sid: rng.normal(size=shape).astype(np.float32) for sid in ids}


def _text() -> TextContext:
    emb = np.eye(2, D, dtype=np.float32)
    return TextContext(("day", "night"), emb, emb[None], ("{}",), 100.0)


def test_feature_cache_reads_rows_by_id_in_the_asked_order(manifest, tmp_path):
    ids = manifest.column("id").to_pylist()
    cls = _per_id(ids, (D,), 0)
    stored = list(reversed(ids))
    cache = _write_cache(tmp_path / "c.zarr", stored, {"cls": cls})
    assert list(cache.ids) == stored
    ask = [ids[3], ids[0], ids[3], ids[-1], ids[7]]  # any order, repeats allowed
    np.testing.assert_array_equal(cache.read("cls", ask), np.stack([cls[i] for i in ask]))
    np.testing.assert_array_equal(cache.read("cls"), np.stack([cls[i] for i in stored]))  # all rows: stored order


def test_load_task_pairs_each_manifest_row_with_its_own_features(manifest, tmp_path):
    ids = manifest.column("id").to_pylist()
    cls, tokens = _per_id(ids, (D,), 1), _per_id(ids, (3, 4), 2)
    # The cache holds the rows in yet another order than the (shuffled) manifest.
    cache = _write_cache(tmp_path / "images.zarr", [ids[i] for i in np.random.default_rng(5).permutation(len(ids))],
                         {"cls": cls, "block-2": tokens})
    table = _shuffled(manifest, 1)
    labels, splits = _column(table, "daytime"), _column(table, "split")
    data = load_task("daytime", table, cache, _text(), tokens=("block-2",))
    assert list(data.features.ids) == table.column("id").to_pylist()  # the manifest's rows, in its order
    for i, sid in enumerate(data.features.ids):
        np.testing.assert_array_equal(data.features.cls[i], cls[sid])
        np.testing.assert_array_equal(data.features.tokens["block-2"][i], tokens[sid])
        assert data.classes[data.labels[i]] == labels[sid] and data.split[i] == splits[sid]
    # Unlabelled rows of a task are left out, and the rest still line up.
    values = table.column("daytime").to_pylist()
    values[0] = values[5] = None
    partial = table.set_column(table.schema.get_field_index("daytime"), "daytime", pa.array(values, pa.string()))
    data = load_task("daytime", partial.replace_schema_metadata(table.schema.metadata), cache, _text())
    assert len(data.features) == len(ids) - 2
    for i, sid in enumerate(data.features.ids):
        np.testing.assert_array_equal(data.features.cls[i], cls[sid])
        assert data.classes[data.labels[i]] == labels[sid]


def test_views_are_joined_by_id_per_training_draw(manifest, tmp_path):
    ids = manifest.column("id").to_pylist()
    train = [sid for sid, s in zip(ids, manifest.column("split").to_pylist()) if s == "train"]
    images = _write_cache(tmp_path / "images.zarr", ids, {"cls": _per_id(ids, (D,), 3)})
    views = _per_id(train, (2, D), 4)
    view_cache = _write_cache(tmp_path / "views.zarr", train[::-1], {"views": views})  # train rows only, reversed
    data = load_task("daytime", _shuffled(manifest, 2), images, _text(), views=view_cache)
    rows = data.rows([train[4], train[0], train[9]])
    got = data.train_features(rows)
    assert list(got.ids) == [train[4], train[0], train[9]]
    np.testing.assert_array_equal(got.views, np.stack([views[train[i]] for i in (4, 0, 9)]))


def test_view_tokens_are_joined_by_id_and_filled_for_rows_without_views(manifest, tmp_path):
    """A view set with tokens: per draw, each row's per-view tokens and norms by id; in the final fit
    a val row (no cached views) repeats its own embedding, norm and tokens as each view."""
    ids = manifest.column("id").to_pylist()
    split = dict(zip(ids, manifest.column("split").to_pylist()))
    train = [sid for sid in ids if split[sid] == "train"]
    val = [sid for sid in ids if split[sid] == "val"]
    cls, norm, tok = _per_id(ids, (D,), 3), _per_id(ids, (), 5), _per_id(ids, (3, 2), 6)
    images = _write_cache(tmp_path / "images.zarr", ids, {"cls": cls, "cls_norm": norm, "block-2": tok})
    vcls, vnorm, vtok = _per_id(train, (2, D), 4), _per_id(train, (2,), 7), _per_id(train, (2, 3, 2), 8)
    view_cache = _write_cache(tmp_path / "views.zarr", train[::-1],
                              {"views": vcls, "views_norm": vnorm, "views_block-2": vtok})
    data = load_task("daytime", _shuffled(manifest, 2), images, _text(), tokens=("block-2",), views=view_cache)
    got = data.train_features(data.rows([train[3], train[1]]))
    np.testing.assert_array_equal(got.view_tokens["block-2"], np.stack([vtok[train[3]], vtok[train[1]]]))
    np.testing.assert_array_equal(got.views_norm, np.stack([vnorm[train[3]], vnorm[train[1]]]))
    final = data.final_features(data.rows([val[0], train[2]]))
    np.testing.assert_array_equal(final.view_tokens["block-2"][0], np.stack([tok[val[0]]] * 2))
    np.testing.assert_array_equal(final.view_tokens["block-2"][1], vtok[train[2]])
    np.testing.assert_array_equal(final.views_norm, np.stack([[norm[val[0]]] * 2, vnorm[train[2]]]))
    np.testing.assert_array_equal(final.views[0], np.stack([cls[val[0]]] * 2))


class SpyHead:
    """A head that records which rows it was fitted and asked on (fit_and_predict's contract)."""

    def __init__(self):
        self.seen: dict[str, tuple] = {}

    def get_params(self) -> dict:
        return {}

    def fit(self, X, y, *, text, X_val, y_val):
        self.seen["train"] = (list(X.ids), list(y), X.cls.copy())
        self.seen["val"] = (list(X_val.ids), list(y_val), X_val.cls.copy())
        return self

    def predict_proba(self, X):
        return np.tile([0.25, 0.75], (len(X), 1))


def test_draws_and_predictions_carry_their_own_rows(manifest, tmp_path):
    ids = manifest.column("id").to_pylist()
    cls = _per_id(ids, (D,), 6)
    cache = _write_cache(tmp_path / "images.zarr", ids[::-1], {"cls": cls})
    draws = draw_fewshot(manifest, FewShotParams(shots=(2,), seeds=(1,), val_shots=2))
    table = _shuffled(manifest, 3)  # the manifest's rows move after the draws were made
    labels, splits = _column(table, "daytime"), _column(table, "split")
    data = load_task("daytime", table, cache, _text())
    head, predictions = fit_and_predict(SpyHead(), data, draws, 2, 1)
    for subset in ("train", "val"):
        seen_ids, seen_y, seen_cls = head.seen[subset]
        assert sorted(seen_ids) == sorted(select(draws, "daytime", 1, 2, subset))
        assert [data.classes[v] for v in seen_y] == [labels[sid] for sid in seen_ids]
        np.testing.assert_array_equal(seen_cls, np.stack([cls[sid] for sid in seen_ids]))
    rows = predictions.to_pydict()
    test_ids = [sid for sid, s in zip(rows["id"], rows["subset"]) if s == "test"]
    assert sorted(test_ids) == sorted(sid for sid, s in splits.items() if s == "test")
    for sid, y_true in zip(rows["id"], rows["y_true"]):
        assert data.classes[y_true] == labels[sid]


def test_extracted_cache_joins_by_id_whatever_the_row_orders(manifest, micro_model, folder_dataset, tmp_path):
    loaded = load_model(ModelParams(**micro_model))
    runtime = RuntimeParams(device="cpu", precision="fp32", batch_size=5, num_workers=0)
    cfg = ExtractParams(token_blocks=(), dtype="float32", rows_per_shard=8, rows_per_chunk=4)
    ids, paths = manifest.column("id").to_pylist(), manifest.column("path").to_pylist()
    order = np.random.default_rng(7).permutation(len(ids))
    extract("images", loaded, cfg, runtime, [ids[i] for i in order], [paths[i] for i in order],
            folder_dataset, tmp_path / "images.zarr")
    # Each image encoded on its own, straight from its file: the truth for its id.
    path_of = dict(zip(ids, paths))
    with torch.no_grad():
        want = {sid: torch.nn.functional.normalize(loaded.model.encode_image(
            loaded.preprocess(load_rgb(folder_dataset / path_of[sid]))[None]), dim=-1)[0].numpy() for sid in ids}
    table = _shuffled(manifest, 4)
    data = load_task("daytime", table, FeatureCache(tmp_path / "images.zarr"), _text())
    got = data.features.cls
    np.testing.assert_allclose(got, np.stack([want[sid] for sid in data.features.ids]), atol=1e-5)
    # The images differ enough that a row from another image would not pass.
    assert np.abs(got - np.roll(got, 1, axis=0)).max() > 0.05
