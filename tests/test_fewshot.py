"""Few-shot draws: train-only, nested, seeded, per-class, with a val subset."""
import numpy as np
import pyarrow as pa
import pytest

from pipeline.fewshot import FewShotParams, draw_fewshot, select
from pipeline.manifest import DatasetParams, TaskSpec, build_manifest


@pytest.fixture
def manifest(folder_dataset) -> pa.Table:
    params = DatasetParams(name="t", root=str(folder_dataset), layout="folders",
                           tasks={"daytime": TaskSpec(type="single")})
    return build_manifest(params)[0]


def _labels(manifest):
    return dict(zip(manifest.column("id").to_pylist(), manifest.column("daytime").to_pylist()))


def _splits(manifest):
    return dict(zip(manifest.column("id").to_pylist(), manifest.column("split").to_pylist()))


def test_k_per_class_from_train_only_and_nested(manifest):
    params = FewShotParams(shots=(1, 2, 4, "all"), seeds=(1, 2), val_shots=2)
    draws = draw_fewshot(manifest, params)
    labels, splits = _labels(manifest), _splits(manifest)
    for seed in (1, 2):
        previous: set[str] = set()
        previous_val: set[str] = set()
        for k in (1, 2, 4):
            ids = select(draws, "daytime", seed, k, "train")
            assert all(splits[i] == "train" for i in ids)
            counts = {c: sum(labels[i] == c for i in ids) for c in ("day", "night")}
            assert counts == {"day": k, "night": k}
            assert previous <= set(ids)  # nested: the 2-shot set contains the 1-shot set
            previous = set(ids)
            val = select(draws, "daytime", seed, k, "val")
            assert all(splits[i] == "val" for i in val)
            assert {c: sum(labels[i] == c for i in val) for c in ("day", "night")} == {"day": min(k, 2), "night": min(k, 2)}
            assert previous_val <= set(val)
            previous_val = set(val)
        assert set(select(draws, "daytime", seed, "all", "train")) == {i for i, s in splits.items() if s == "train"}


def _table(per_class: dict[str, int]) -> pa.Table:
    """A manifest table with the given number of rows per 'split/class' (no files needed for draws)."""
    import json

    from pipeline.manifest import META_KEY
    rows = [(f"{key}/{i:02d}", *key.split("/")) for key, n in per_class.items() for i in range(n)]
    classes = sorted({c for _, _, c in rows})
    meta = {"dataset": "t", "root": ".", "tasks": {"daytime": {"type": "single", "classes": classes}}}
    table = pa.table({"id": [r[0] for r in rows], "path": [r[0] + ".png" for r in rows],
                      "split": [r[1] for r in rows], "daytime": [r[2] for r in rows]})
    return table.replace_schema_metadata({META_KEY: json.dumps(meta)})


def test_val_draws_are_per_class_capped_and_nested():
    table = _table({"train/day": 10, "train/night": 10, "val/day": 8, "val/night": 8, "test/day": 3})
    labels = _labels(table)
    draws = draw_fewshot(table, FewShotParams(shots=(1, 2, 4, 8), seeds=(1, 2), val_shots=4))
    for seed in (1, 2):
        previous: set[str] = set()
        for k in (1, 2, 4, 8):
            val = select(draws, "daytime", seed, k, "val")
            assert all(i.startswith("val/") for i in val)
            n = min(k, 4)
            assert {c: sum(labels[i] == c for i in val) for c in ("day", "night")} == {"day": n, "night": n}
            assert previous <= set(val), (seed, k)  # nested like the training draws
            previous = set(val)
        assert set(select(draws, "daytime", seed, 4, "val")) == set(select(draws, "daytime", seed, 8, "val"))
    assert select(draws, "daytime", 1, 2, "val") != select(draws, "daytime", 2, 2, "val")


def test_seeds_differ_and_draws_are_reproducible(manifest):
    params = FewShotParams(shots=(2,), seeds=(1, 2), val_shots=2)
    a, b = draw_fewshot(manifest, params), draw_fewshot(manifest, params)
    assert a.equals(b)
    assert select(a, "daytime", 1, 2, "train") != select(a, "daytime", 2, 2, "train")


def test_unknown_draw_raises_with_its_description(manifest):
    draws = draw_fewshot(manifest, FewShotParams(shots=(1,), seeds=(1,)))
    with pytest.raises(KeyError, match="shots=8"):
        select(draws, "daytime", 1, 8, "train")


def test_class_with_too_few_examples_gives_all_it_has(manifest):
    draws = draw_fewshot(manifest, FewShotParams(shots=(100,), seeds=(1,)))
    train = [i for i, s in _splits(manifest).items() if s == "train"]
    assert sorted(select(draws, "daytime", 1, 100, "train")) == sorted(train)
    assert np.all(np.isin(select(draws, "daytime", 1, 100, "train"), train))


def _with_extra_class(manifest: pa.Table) -> pa.Table:
    """The manifest plus new train and val rows of a new class 'dusk' (sorted between the others)."""
    import json

    from pipeline.manifest import META_KEY, manifest_meta
    extra = {name: [] for name in manifest.column_names}
    for i, split in enumerate(["train"] * 6 + ["val"] * 3):
        for name in manifest.column_names:
            extra[name].append({"id": f"dusk{i:02d}", "path": f"dusk/{i}.png", "split": split,
                                "daytime": "dusk"}.get(name, manifest.column(name)[0].as_py()))
    table = pa.concat_tables([manifest, pa.table(extra, schema=manifest.schema)])
    meta = manifest_meta(manifest)
    meta["tasks"]["daytime"]["classes"] = ["day", "dusk", "night"]
    key = META_KEY if isinstance(META_KEY, bytes) else META_KEY.encode()
    return table.replace_schema_metadata({**manifest.schema.metadata, key: json.dumps(meta).encode()})


def test_adding_a_class_does_not_reshuffle_the_others(manifest):
    params = FewShotParams(shots=(1, 4), seeds=(1, 2), val_shots=2)
    a = draw_fewshot(manifest, params)
    b = draw_fewshot(_with_extra_class(manifest), params)
    for seed in (1, 2):
        for k in (1, 4):
            for subset in ("train", "val"):
                new = select(b, "daytime", seed, k, subset)
                assert sum(i.startswith("dusk") for i in new) == (k if subset == "train" else min(k, 2))
                assert select(a, "daytime", seed, k, subset) == [i for i in new if not i.startswith("dusk")]


def test_multi_label_tasks_get_only_all(tmp_path):
    import csv
    from tests.conftest import write_image
    rng = np.random.default_rng(0)
    root = tmp_path / "ml"
    rows = []
    for i in range(12):
        write_image(root / f"{i}.png", rng)
        rows.append({"path": f"{i}.png", "labels": ";".join(["car", "tree"][: i % 3]),
                     "split": ["train", "val", "test"][i % 3]})
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "labels", "split"])
        writer.writeheader()
        writer.writerows(rows)
    table = build_manifest(DatasetParams(name="ml", root=str(root), layout="csv", csv=["labels.csv"],
                                         split_column="split",
                                         tasks={"objects": TaskSpec(type="multi", column="labels")}))[0]
    draws = draw_fewshot(table, FewShotParams(shots=(1, 2), seeds=(1,)))
    assert set(draws.column("shots").to_pylist()) == {"all"}
    ids, splits = table.column("id").to_pylist(), table.column("split").to_pylist()
    assert sorted(select(draws, "objects", 1, "all", "train")) == sorted(i for i, s in zip(ids, splits) if s == "train")
    with pytest.raises(KeyError):
        select(draws, "objects", 1, 1, "train")
