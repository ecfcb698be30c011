"""Model selection on the validation draw only, and Tip-Adapter's alpha / beta.

Through the few-shot protocol (:func:`pipeline.runs.fit_and_predict`): test rows
and labels that differ must leave every fitted head exactly as it was, while
validation labels that differ must change what the selecting heads choose.
Tip-Adapter's ``init_alpha`` / ``init_beta`` (used without validation rows, and
while Tip-Adapter-F trains) and its ``search_scale`` grid are checked against
an independent transcription of the reference ``search_hp``.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.features import FeatureSet
from pipeline.heads import HEADS, make_head
from pipeline.heads.tip_adapter_f import TipAdapterFNet
from pipeline.runs import TaskData, fit_and_predict
from tests.test_heads_support import (CLASS_NAMES, LEARNING, LOGIT_SCALE, SWAPPED, make_probe_task,  # noqa: F401
                                      make_task, normalise, one_thread)

SHORT: dict[str, dict] = {
    "linear_probe": dict(search_steps=3, c_grid=(1e2, 1.0, 1e-2, 1e-4)),
    "tip_adapter": dict(search_step=(20, 20), search_scale=(7, 30), device="cpu"),
    **{name: {**params, "epochs": 8} for name, params in LEARNING.items()},
}
SELECTING = ("linear_probe", "tip_adapter", "tip_adapter_f", "clip_adapter", "clip_mhadapter", "coop")


@pytest.fixture(scope="module")
def task():
    return make_task(centres=SWAPPED)


def concat(*sets: FeatureSet) -> FeatureSet:
    return FeatureSet(ids=np.concatenate([s.ids for s in sets]), cls=np.concatenate([s.cls for s in sets]),
                      cls_norm=None if sets[0].cls_norm is None else np.concatenate([s.cls_norm for s in sets]),
                      tokens={k: np.concatenate([s.tokens[k] for s in sets]) for k in sets[0].tokens},
                      views=None if sets[0].views is None else np.concatenate([s.views for s in sets]))


def draws_for(name: str, task):
    """(train, y, val, y_val, test, y_test, other test, other y_test) for head ``name``: the hard
    task, or for the linear probe overlapping classes, where its validation accuracy depends on C."""
    if name != "linear_probe":
        other = make_task(seed=3, centres=(3, 2, 1, 0)).test
        return (task.train, task.y_train, task.val, task.y_val, task.test, task.y_test,
                other, (task.y_test + 1) % 4)
    (train, y), (val, y_val) = make_probe_task()
    tests = [make_probe_task(seed)[1] for seed in (5, 6)]
    test, other = (replace(X, ids=np.array([f"te{i}" for i in range(len(X))])) for X, _ in tests)
    return train, y, val, y_val, test, tests[0][1], other, (tests[1][1] + 1) % 4


def protocol_data(train, y, val, y_val, test, y_test, text) -> tuple[TaskData, pa.Table]:
    """One task whose training and validation draws are the given ones, with the given test rows."""
    features = concat(train, val, test)
    n_tr, n_va = len(train), len(val)
    split = np.array(["train"] * n_tr + ["val"] * n_va + ["test"] * len(test), dtype=object)
    data = TaskData("t", list(CLASS_NAMES), features, np.concatenate([y, y_val, y_test]), split, text)
    draws = pa.table({"task": ["t"] * (n_tr + n_va), "seed": [1] * (n_tr + n_va),
                      "shots": ["8"] * (n_tr + n_va), "subset": ["train"] * n_tr + ["val"] * n_va,
                      "id": list(features.ids[:n_tr + n_va])})
    return data, draws


@pytest.fixture(scope="module")
def probe() -> FeatureSet:
    """A fixed input no fit ever sees."""
    return make_task(seed=7).test


def choices(head, probe: FeatureSet) -> dict:
    """What a head selected on validation (hyper-parameters, epoch) and what it learned."""
    out = {k: getattr(head, k) for k in ("C_", "alpha_", "beta_", "best_epoch_", "history_") if hasattr(head, k)}
    out["proba"] = head.predict_proba(probe)
    return out


@pytest.mark.parametrize("name", sorted(HEADS))
def test_test_rows_never_reach_the_fit(name, task, probe):
    """Other test rows with other labels: identical fitted head, identical val predictions."""
    train, y, val, y_val, *tests = draws_for(name, task)
    results = []
    for test, y_test in (tests[:2], tests[2:]):
        data, draws = protocol_data(train, y, val, y_val, test, y_test, task.text)
        head, table = fit_and_predict(make_head(name, SHORT.get(name, {})), data, draws, 8, 1)
        val_rows = table.filter(pc.equal(table.column("subset"), "val"))
        results.append((choices(head, probe), np.array(val_rows.column("proba").to_pylist())))
    (first, val_first), (second, val_second) = results
    assert first.keys() == second.keys()
    for key in first:
        if isinstance(first[key], np.ndarray):
            np.testing.assert_array_equal(first[key], second[key], err_msg=key)
        else:
            assert first[key] == second[key], key
    np.testing.assert_array_equal(val_first, val_second)


@pytest.mark.parametrize("name", SELECTING)
def test_validation_labels_drive_the_choice(name, task, probe):
    """Validation labels of classes 0 and 1 swapped (on the hard task: swapped back to agree
    with zero-shot) must change what is selected: the choice is made on the validation draw."""
    train, y, val, y_val, *_ = draws_for(name, task)
    fitted = [make_head(name, SHORT[name]).fit(train, y, text=task.text, X_val=val, y_val=labels)
              for labels in (y_val, np.array(SWAPPED)[y_val])]
    first, second = (choices(h, probe) for h in fitted)
    assert not np.allclose(first["proba"], second["proba"], rtol=1e-3, atol=1e-4)
    selected = [k for k in ("C_", "alpha_", "beta_", "best_epoch_") if k in first]
    assert any(first[k] != second[k] for k in selected)


# -- Tip-Adapter: init values and the search grid -------------------------------

def reference_search(clip_logits, affinity, values, y, scale, steps, init):
    """Tip-Adapter's ``search_hp``: beta outer, alpha inner, first strictly better pair wins."""
    beta_list = [i * (scale[0] - 0.1) / steps[0] + 0.1 for i in range(steps[0])]
    alpha_list = [i * (scale[1] - 0.1) / steps[1] + 0.1 for i in range(steps[1])]
    best_acc, best = 0.0, init
    for beta in beta_list:
        for alpha in alpha_list:
            logits = clip_logits + alpha * np.exp(-beta * (1 - affinity)) @ values
            acc = np.mean(logits.argmax(1) == y)
            if acc > best_acc:
                best_acc, best = acc, (alpha, beta)
    return best


def ensemble(text) -> np.ndarray:
    return normalise(normalise(text.template_emb.astype(np.float64)).mean(axis=0))


def tip_logits(task, X, keys, alpha, beta, y_train=None) -> np.ndarray:
    f = X.cls.astype(np.float64)
    values = np.eye(4)[task.y_train if y_train is None else y_train]
    return LOGIT_SCALE * f @ ensemble(task.text).T + alpha * np.exp(-beta * (1 - f @ keys.T)) @ values


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("name", ["tip_adapter", "tip_adapter_f"])
def test_init_alpha_beta_used_without_validation(name, task, monkeypatch):
    """No validation rows: the head's own init values (not the reference's 1.17 / 1) predict,
    and Tip-Adapter-F trains its keys with them."""
    during_training = []
    original = TipAdapterFNet.forward

    def forward(self, batch):
        if self.training:
            during_training.append((self.alpha, self.beta))
        return original(self, batch)

    monkeypatch.setattr(TipAdapterFNet, "forward", forward)
    params = {**SHORT[name], "init_alpha": 2.5, "init_beta": 5.5}
    head = make_head(name, params).fit(task.train, task.y_train, text=task.text)
    assert (head.alpha_, head.beta_) == (2.5, 5.5)
    if name == "tip_adapter_f":
        assert during_training and set(during_training) == {(2.5, 5.5)}
        keys = head.net_.adapter.weight.detach().numpy().astype(np.float64)  # the fine-tuned keys
    else:
        keys = normalise((task.train.views * task.train.views_norm[..., None]).astype(np.float64).mean(axis=1))
    np.testing.assert_allclose(head.predict_proba(task.test), softmax(tip_logits(task, task.test, keys, 2.5, 5.5)),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["tip_adapter", "tip_adapter_f"])
def test_empty_search_grid_keeps_the_init_values(name, task):
    params = {**SHORT[name], "init_alpha": 2.5, "init_beta": 5.5, "search_step": (0, 0)}
    head = make_head(name, params).fit(task.train, task.y_train, text=task.text, X_val=task.val, y_val=task.y_val)
    assert (head.alpha_, head.beta_) == (2.5, 5.5)


@pytest.mark.parametrize("name", ["tip_adapter", "tip_adapter_f"])
def test_search_scale_bounds_the_grid_as_the_reference(name, task):
    """search_scale = [beta scale, alpha scale]; the grids are i (scale - 0.1) / steps + 0.1.
    The swap in the hard task needs alpha > 3, which only the wide alpha scale reaches."""
    scale, steps = (2.0, 30.0), (10, 15)
    head = make_head(name, {**SHORT[name], "search_scale": scale, "search_step": steps}).fit(
        task.train, task.y_train, text=task.text, X_val=task.val, y_val=task.y_val)
    if name == "tip_adapter_f":
        keys = head.net_.adapter.weight.detach().numpy().astype(np.float64)
    else:
        keys = normalise((task.train.views * task.train.views_norm[..., None]).astype(np.float64).mean(axis=1))
    f = task.val.cls.astype(np.float64)
    expected = reference_search(LOGIT_SCALE * f @ ensemble(task.text).T, f @ keys.T, np.eye(4)[task.y_train],
                                task.y_val, scale, steps, init=None)
    assert (head.alpha_, head.beta_) == pytest.approx(expected, rel=1e-9)
    assert 3.0 < head.alpha_ < 30.0 and 0.1 <= head.beta_ < 2.0
    # the same search with the scales swapped chooses differently (the order matters)
    swapped = reference_search(LOGIT_SCALE * f @ ensemble(task.text).T, f @ keys.T, np.eye(4)[task.y_train],
                               task.y_val, scale[::-1], steps, init=None)
    assert swapped != pytest.approx(expected)


def test_single_point_grid_is_the_reference_first_point(task):
    """search_step [1, 1] searches the reference grid's one point, (0.1, 0.1)."""
    head = make_head("tip_adapter", {"init_alpha": 2.5, "init_beta": 5.5, "search_step": (1, 1)}).fit(
        task.train, task.y_train, text=task.text, X_val=task.val, y_val=task.y_val)
    assert (head.alpha_, head.beta_) == pytest.approx((0.1, 0.1))
