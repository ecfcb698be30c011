"""CDUL on a cache-shaped input: vectors written with their ids, quality per split, no truth in training."""
import numpy as np
import pyarrow as pa
import pytest

from pipeline.cdul import CdulClassifierParams, CdulSimilarityParams
from pipeline.cdul.protocol import multi_hot, pseudo_labels, quality_by_split, scores_table, train_and_test
from pipeline.features import TextContext
from pipeline.manifest import META_KEY


def _manifest(n: int, rng: np.random.Generator) -> pa.Table:
    """A multi-label task ``objects`` beside a real single-label task ``weather``."""
    classes = ["car", "tree", "sign"]
    labels = [[c for c in classes if rng.random() < 0.4] for _ in range(n)]
    weather = [["clear", "rainy"][i % 2] for i in range(n)]
    split = ["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    meta = {"dataset": "t", "root": ".", "tasks": {"objects": {"type": "multi", "classes": classes},
                                                   "weather": {"type": "single", "classes": ["clear", "rainy"]}}}
    table = pa.table({"id": [f"s{i:03d}" for i in range(n)], "path": [f"{i}.png" for i in range(n)],
                      "split": split, "objects": pa.array(labels, pa.list_(pa.string())), "weather": weather})
    import json
    return table.replace_schema_metadata({META_KEY: json.dumps(meta)})


def _tiles_for(y: np.ndarray, class_emb: np.ndarray, rng: np.random.Generator, grid: int = 2) -> np.ndarray:
    """Whole image = noisy mean of its classes; each crop shows one present class (small objects)."""
    n, d = len(y), class_emb.shape[1]
    tiles = rng.normal(0, 0.3, (n, 1 + grid * grid, d))
    for i in range(n):
        present = np.flatnonzero(y[i])
        if len(present):
            tiles[i, 0] += 0.3 * class_emb[present].mean(0)
            for t, c in enumerate(present):
                tiles[i, 1 + t] += 2.0 * class_emb[c]
    return tiles / np.linalg.norm(tiles, axis=-1, keepdims=True)


def test_vectors_written_with_ids_and_tiles_beat_global(tmp_path):
    rng = np.random.default_rng(0)
    table = _manifest(80, rng)
    ids, classes, split, y = multi_hot(table, "objects")
    assert classes == ["car", "tree", "sign"] and y.shape == (80, 3)
    class_emb = np.linalg.qr(rng.normal(size=(16, 3)))[0].T  # orthonormal class directions
    text = TextContext(tuple(classes), class_emb, class_emb[None], ("{}",), 100.0)
    scores = pseudo_labels(_tiles_for(y, class_emb, rng), text, CdulSimilarityParams())
    out = scores_table(ids, split, scores)
    assert out.column("id").to_pylist() == list(ids)
    np.testing.assert_allclose(np.array(out.column("final").to_pylist()), scores.final, rtol=1e-6)
    np.testing.assert_allclose(np.array(out.column("global").to_pylist()), scores.global_, rtol=1e-6)
    quality = quality_by_split(scores, split, y)
    assert set(quality) == {"train", "val", "test"}
    assert quality["test"]["final"] > quality["test"]["global"]


def test_multi_hot_rejects_single_label_task():
    table = _manifest(8, np.random.default_rng(1))
    assert multi_hot(table, "objects")[1] == ["car", "tree", "sign"]  # the same manifest's multi-label task works
    with pytest.raises(ValueError, match="cdul.task: 'weather' is not a multi-label task"):
        multi_hot(table, "weather")
    with pytest.raises(ValueError, match="cdul.task: 'nope' is not a multi-label task"):
        multi_hot(table, "nope")


def test_multi_hot_rows_and_unlabelled_rows():
    table = _manifest(12, np.random.default_rng(3))
    objects = table.column("objects").to_pylist()
    objects[4] = None  # unlabelled for this task: dropped, not an all-zero row
    table = table.set_column(table.schema.get_field_index("objects"), "objects",
                             pa.array(objects, pa.list_(pa.string())))
    ids, classes, split, y = multi_hot(table, "objects")
    keep = [i for i in range(12) if i != 4]
    assert list(ids) == [f"s{i:03d}" for i in keep]
    assert list(split) == [table.column("split")[i].as_py() for i in keep]
    for row, i in enumerate(keep):
        assert {classes[c] for c in np.flatnonzero(y[row])} == set(objects[i])


def test_classifier_trains_on_train_pseudo_labels_only():
    rng = np.random.default_rng(2)
    table = _manifest(120, rng)
    ids, classes, split, y = multi_hot(table, "objects")
    feats = (y @ rng.normal(size=(3, 16)) + rng.normal(0, 0.3, (120, 16))).astype(np.float32)
    noisy = np.clip(y + rng.normal(0, 0.3, y.shape), 0, 1).astype(np.float32)
    params = CdulClassifierParams(epochs=80, device="cpu")  # 60 rows: one step per epoch
    _, a, scores_a = train_and_test(feats, ids, split, y, noisy, classes, params)
    assert a["mAP"] > 0.6
    # Pseudo-labels of val and test rows must not matter for training (val *truth* only selects the epoch).
    other = noisy.copy()
    other[split == "val"] = rng.random(((split == "val").sum(), 3))
    other[split == "test"] = 1 - noisy[split == "test"]
    _, b, scores_b = train_and_test(feats, ids, split, y, other, classes, params)
    np.testing.assert_array_equal(scores_a, scores_b)
    assert b["mAP"] == a["mAP"]
    # Train rows' pseudo-labels do matter: the comparison above can fail.
    flipped = noisy.copy()
    flipped[split == "train"] = 1 - noisy[split == "train"]
    _, _, scores_c = train_and_test(feats, ids, split, y, flipped, classes, params)
    assert np.abs(scores_c - scores_a).max() > 0.1
