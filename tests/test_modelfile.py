"""Model files (pipeline.modelfile): every registered head round-trips through JSON + safetensors, no pickle."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from pipeline.heads import HEADS, make_head
from pipeline.modelfile import ModelFileError, load_head, save_head
from tests.test_heads_support import make_task, one_thread  # noqa: F401

# Short schedules (the round trip is under test, not the fit); heads not listed use their defaults.
FAST: dict[str, dict] = {
    "linear_probe": dict(search_steps=2),
    "clip_adapter": dict(epochs=5, device="cpu"),
    "tip_adapter": dict(search_step=(20, 5), device="cpu"),
    "tip_adapter_f": dict(epochs=3, search_step=(20, 5), device="cpu"),
    "coop": dict(n_ctx=4, epochs=2, batch_size=8, device="cpu"),
    "clip_mhadapter": dict(epochs=3, heads=4, device="cpu"),
    "proker": dict(beta_grid=(0.5, 3.0, 3), lmbda_grid=(0.001, 1.0, 3), device="cpu"),
    "clap": dict(epochs=5, device="cpu"),
    "lp_plusplus": dict(epochs=20, device="cpu"),
}
ENCODER = {"model": "m", "weights": "sha256:aaa", "open_clip_version": "3", "image_size": [32, 32],
           "mean": [0.5], "std": [0.5], "interpolation": "bicubic", "resize_mode": "shortest",
           "decode": {"exif_transpose": True, "draft": False, "backend": "pil"}}


@pytest.fixture(scope="module")
def task():
    return make_task()


def _fit(name: str, task):
    params = {k: v for k, v in FAST.get(name, {}).items() if k in HEADS[name]().get_params()}
    return make_head(name, params).fit(task.train, task.y_train, text=task.text, X_val=task.val, y_val=task.y_val)


def _save(head, name, path):
    return save_head(head, path, name=name, task="t", shots="4", seed=1, encoder=ENCODER)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_round_trips(name, task, tmp_path):
    head = _fit(name, task)
    path = _save(head, name, tmp_path / "m.json")
    assert {p.name for p in tmp_path.iterdir()} == {"m.json", "m.safetensors"}
    loaded = load_head(path, expect_encoder=ENCODER).head
    assert type(loaded) is type(head) and loaded.get_params() == head.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(task.test), head.predict_proba(task.test))
    # what predict needs is there, the text tower (CoOp's) is not
    assert "torch" not in json.dumps(json.loads(path.read_text())["params"])


def test_learned_state_keeps_its_types(task, tmp_path):
    head = _fit("linear_probe", task)
    loaded = load_head(_save(head, "linear_probe", tmp_path / "m")).head
    assert loaded.C_ == head.C_ and loaded.search_log_ == head.search_log_   # float keys survive
    assert loaded.class_names_ == head.class_names_ and isinstance(loaded.class_names_, tuple)
    np.testing.assert_array_equal(loaded.model_.coef_, head.model_.coef_)


def test_another_encoder_is_refused_by_field_name(task, tmp_path):
    path = _save(_fit("zero_shot", task), "zero_shot", tmp_path / "m")
    other = {**ENCODER, "weights": "sha256:bbb", "decode": {"exif_transpose": False}}
    with pytest.raises(ModelFileError, match=r"'weights' is 'sha256:aaa' in the model file but 'sha256:bbb'") as err:
        load_head(path, expect_encoder=other)
    assert "'decode.exif_transpose'" in str(err.value)
    load_head(path, expect_encoder={**ENCODER, "ids_sha256": "x", "rows_per_shard": 8})  # layout fields ignored


def test_a_pickled_tensor_file_is_refused(task, tmp_path):
    head = _fit("zeror", task)
    path = _save(head, "zeror", tmp_path / "m")
    tensor_file = path.with_suffix(".safetensors")
    tensor_file.write_bytes(pickle.dumps({"proba_": head.proba_}))
    with pytest.raises(ModelFileError, match="is a pickle"):
        load_head(path)


def test_a_json_pointing_at_a_pickle_is_refused(task, tmp_path):
    path = _save(_fit("zeror", task), "zeror", tmp_path / "m")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(object()))
    doc = json.loads(path.read_text())
    for name in ("evil.pkl", "../evil.safetensors"):
        doc["tensors"]["file"] = name
        path.write_text(json.dumps(doc))
        with pytest.raises(ModelFileError, match="'tensors.file' must name"):
            load_head(path)
    pickled = tmp_path / "old.json"          # a pickle under a model file's name
    pickled.write_bytes(pickle.dumps(_fit("zeror", task)))
    with pytest.raises(ModelFileError, match="is a pickle"):
        load_head(pickled)


def test_tensor_file_from_another_fit_is_refused(task, tmp_path):
    a = _save(_fit("zeror", task), "zeror", tmp_path / "a")
    b = _save(_fit("zero_shot", task), "zero_shot", tmp_path / "b")
    a.with_suffix(".safetensors").write_bytes(b.with_suffix(".safetensors").read_bytes())
    with pytest.raises(ModelFileError, match="sha256 differs"):
        load_head(a)


def test_unknown_head_and_params_are_named(task, tmp_path):
    path = _save(_fit("zeror", task), "zeror", tmp_path / "m")
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "head": "os.system"}))
    with pytest.raises(ModelFileError, match="unknown head 'os.system'"):
        load_head(path)
    path.write_text(json.dumps({**doc, "params": {"probabilities": "prior", "evil": 1}}))
    with pytest.raises(Exception, match="'heads.zeror.evil'"):
        load_head(path)


def test_unstorable_state_is_named(task, tmp_path):
    head = _fit("zeror", task)
    head.callback_ = lambda: None
    with pytest.raises(ModelFileError, match="'callback_'"):
        _save(head, "zeror", tmp_path / "m")


@pytest.mark.parametrize("hidden_dim", [0, 8])
def test_cdul_classifier_round_trips(hidden_dim, tmp_path):
    from pipeline.cdul.classifier import CdulClassifier
    from pipeline.features import FeatureSet

    rng = np.random.default_rng(0)
    X = FeatureSet(ids=np.array([str(i) for i in range(40)]), cls=rng.standard_normal((40, 16)).astype(np.float32))
    clf = CdulClassifier(hidden_dim=hidden_dim, epochs=3, device="cpu").fit(X, rng.random((40, 5)).astype(np.float32))
    path = save_head(clf, tmp_path / "classifier", name="cdul_classifier", task="objs", encoder=ENCODER)
    np.testing.assert_array_equal(load_head(path).head.predict_proba(X), clf.predict_proba(X))
