"""Registry-wide contract tests and formula checks for pipeline.heads.

Formula tests recompute each head's output independently in plain numpy from
the synthetic task (see test_heads_support) and compare with predict_proba.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.params import ParamsError
import torch
from sklearn.base import clone

from pipeline.heads import HEADS, make_head
from pipeline.heads.clip_adapter import ClipAdapterHead
from pipeline.heads.tip_adapter import TipAdapterHead, search_grid
from pipeline.heads.zero_shot import ZeroShotHead
from pipeline.heads.zeror import ZeroRHead
from tests.test_heads_support import (LEARNING, LOGIT_SCALE, SWAPPED, make_probe_task, make_task,  # noqa: F401
                                      normalise, one_thread)

# Short schedules: the suite checks the machinery, not the papers' numbers.
FAST: dict[str, dict] = {
    "linear_probe": dict(search_steps=2),
    "clip_adapter": dict(epochs=10),
    "tip_adapter": dict(search_step=(50, 10)),
    "tip_adapter_f": dict(epochs=5, search_step=(50, 10)),
    "coop": dict(n_ctx=4, epochs=4, batch_size=8),
    "clip_mhadapter": dict(epochs=10, heads=4),
}
TRAINED = ("linear_probe", "clip_adapter", "tip_adapter", "tip_adapter_f", "coop", "clip_mhadapter")
STATS_KEYS = {"wall_time_s", "trainable_params", "peak_memory_mb", "peak_memory_method"}


@pytest.fixture(scope="module")
def task():
    return make_task()


@pytest.fixture(scope="module")
def fitted(task):
    """Every registered head fitted once on the synthetic task."""
    return {name: make_head(name, FAST.get(name, {})).fit(
        task.train, task.y_train, text=task.text, X_val=task.val, y_val=task.y_val)
        for name in HEADS}


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def accuracy(head, task) -> float:
    return float(np.mean(head.predict(task.test) == task.y_test))


# -- contract, parametrised over the registry ---------------------------------

@pytest.mark.parametrize("name", sorted(HEADS))
def test_fit_predict_contract(name, task, fitted):
    head = fitted[name]
    proba = head.predict_proba(task.test)
    n_classes = len(task.text.class_names)
    assert proba.shape == (len(task.test), n_classes)
    assert np.all(proba >= 0) and np.allclose(proba.sum(axis=1), 1.0)
    assert np.array_equal(head.classes_, np.arange(n_classes))
    assert np.array_equal(head.predict(task.test), head.classes_[proba.argmax(axis=1)])
    assert STATS_KEYS <= set(head.fit_stats_)
    assert head.fit_stats_["wall_time_s"] >= 0 and head.fit_stats_["peak_memory_mb"] >= 0


@pytest.mark.parametrize("name", sorted(HEADS))
def test_fit_returns_self_and_params_round_trip(name, task):
    head = make_head(name, FAST.get(name, {}))
    params = head.get_params()
    assert clone(head).get_params() == params
    assert type(head)(**params).get_params() == params
    assert head.set_params(**params) is head
    if name in ("zeror", "zero_shot"):  # cheap enough to refit here
        assert head.fit(task.train, task.y_train, text=task.text) is head


# -- learning: on the hard task zero-shot is wrong for two classes -------------

@pytest.fixture(scope="module")
def hard():
    return make_task(centres=SWAPPED)


def fit_on(name: str, params: dict, task):
    return make_head(name, params).fit(task.train, task.y_train, text=task.text, X_val=task.val, y_val=task.y_val)


def test_hard_task_defeats_zero_shot(hard):
    """The precondition of the learning tests: without learning from the rows, 0.5 at best."""
    zero_shot = ZeroShotHead().fit(hard.train, hard.y_train, text=hard.text)
    assert accuracy(zero_shot, hard) == 0.5
    assert accuracy(fit_on("zeror", {}, hard), hard) == 0.25


@pytest.mark.parametrize("name", sorted(LEARNING))
def test_training_beats_the_untrained_head(name, hard):
    """Training (not the initialisation, nor Tip-Adapter-F's alpha/beta search) fixes the swap,
    and the validation loss the loop records falls."""
    params = LEARNING[name]
    untrained = fit_on(name, {**params, "epochs": 0}, hard)
    trained = fit_on(name, params, hard)
    assert untrained.epochs_run_ == 0 and untrained.history_ == []
    assert accuracy(untrained, hard) <= 0.5
    assert accuracy(trained, hard) >= 0.9
    assert trained.epochs_run_ == len(trained.history_) == params["epochs"]
    val_loss = [record["val_loss"] for record in trained.history_]
    assert val_loss[-1] < 0.8 * val_loss[0]


def test_training_free_heads_learn_from_the_rows(hard):
    """Linear probe fits the rows; Tip-Adapter's cache overrides the swapped text once its
    alpha grid (search_scale) reaches far enough, and not with the reference's [7, 3]."""
    assert accuracy(fit_on("linear_probe", dict(search_steps=2, c_grid=(1e2, 1.0, 1e-2)), hard), hard) >= 0.9
    narrow = fit_on("tip_adapter", dict(search_step=(20, 20), device="cpu"), hard)
    wide = fit_on("tip_adapter", dict(search_step=(20, 20), search_scale=(7, 30), device="cpu"), hard)
    assert accuracy(narrow, hard) == 0.5 and narrow.alpha_ < 3
    assert accuracy(wide, hard) >= 0.9 and wide.alpha_ > 3


@pytest.mark.parametrize("name", TRAINED)
def test_same_seed_same_predictions(name, task, fitted):
    again = make_head(name, FAST.get(name, {})).fit(
        task.train, task.y_train, text=task.text, X_val=task.val, y_val=task.y_val)
    assert np.array_equal(again.predict_proba(task.test), fitted[name].predict_proba(task.test))


def test_trainable_param_counts(fitted):
    stats = {name: fitted[name].fit_stats_["trainable_params"] for name in HEADS}
    assert stats["zeror"] == stats["zero_shot"] == stats["tip_adapter"] == 0
    assert stats["clip_adapter"] == 2 * 32 * 8          # D x D/4, twice, no bias
    assert stats["tip_adapter_f"] == 32 * 32            # K=32 keys x D
    assert stats["coop"] == 4 * 32                      # n_ctx x text width
    assert stats["linear_probe"] == 4 * 32 + 4


def test_bad_labels_rejected(task):
    with pytest.raises(ValueError):
        ZeroRHead().fit(task.train, task.y_train + 10, text=task.text)
    with pytest.raises(ValueError):
        ZeroRHead().fit(task.train, task.y_train, text=task.text, X_val=task.val)


def test_make_head_rejects_unknown():
    with pytest.raises(ParamsError, match="train.heads: unknown head 'nope'"):
        make_head("nope")
    with pytest.raises(ParamsError, match="'heads.zeror.not_a_param'"):
        make_head("zeror", {"not_a_param": 1})


# -- formulas against independent numpy ----------------------------------------

def ensemble_weights(text) -> np.ndarray:
    return normalise(normalise(text.template_emb.astype(np.float64)).mean(axis=0))


def test_zero_shot_ensemble_then_renormalise(task):
    expected = softmax(LOGIT_SCALE * task.test.cls.astype(np.float64) @ ensemble_weights(task.text).T)
    head = ZeroShotHead().fit(task.train, task.y_train, text=task.text)
    np.testing.assert_allclose(head.predict_proba(task.test), expected, rtol=1e-4, atol=1e-6)
    single = ZeroShotHead(template=1).fit(task.train, task.y_train, text=task.text)
    w1 = normalise(task.text.template_emb[1].astype(np.float64))
    np.testing.assert_allclose(single.predict_proba(task.test),
                               softmax(LOGIT_SCALE * task.test.cls @ w1.T), rtol=1e-4, atol=1e-6)


def test_zeror_prior_and_one_hot(task):
    y = np.array([2, 2, 1, 2, 0])
    X = task.train.take(np.arange(5))
    prior = ZeroRHead().fit(X, y, text=task.text).predict_proba(X)
    np.testing.assert_allclose(prior[0], [0.2, 0.2, 0.6, 0.0])
    one_hot = ZeroRHead(probabilities="one_hot").fit(X, y, text=task.text)
    np.testing.assert_allclose(one_hot.predict_proba(X)[0], [0, 0, 1, 0])
    assert np.all(one_hot.predict(task.test) == 2)


def tip_expected(task, alpha: float, beta: float) -> np.ndarray:
    keys = normalise((task.train.views * task.train.views_norm[..., None]).astype(np.float64).mean(axis=1))
    values = np.eye(4)[task.y_train]
    f = task.test.cls.astype(np.float64)
    affinity = f @ keys.T
    logits = LOGIT_SCALE * f @ ensemble_weights(task.text).T + alpha * np.exp(-beta * (1 - affinity)) @ values
    return softmax(logits)


def test_tip_adapter_logits(task, fitted):
    head = clone(fitted["tip_adapter"]).fit(task.train, task.y_train, text=task.text)
    assert (head.alpha_, head.beta_) == (1.17, 1.0)  # reference init without validation rows
    np.testing.assert_allclose(head.predict_proba(task.test), tip_expected(task, 1.17, 1.0),
                               rtol=1e-4, atol=1e-6)
    head.alpha_, head.beta_ = 2.5, 5.5
    np.testing.assert_allclose(head.predict_proba(task.test), tip_expected(task, 2.5, 5.5),
                               rtol=1e-4, atol=1e-6)


def _corrected(X, rotation: np.ndarray):
    """X with a made-up 'overlap correction': a fixed rotation of cls and views."""
    from dataclasses import replace
    return replace(X, corrected=(X.cls @ rotation).astype(np.float32),
                   corrected_views=None if X.views is None else (X.views @ rotation).astype(np.float32))


def test_tip_adapter_with_correction_uses_it_for_affinities_only(task, fitted):
    """Reference (IMO run.py): clip logits from the original features, affinity from the corrected ones."""
    rotation = np.linalg.qr(np.random.default_rng(5).standard_normal((task.test.cls.shape[1],) * 2))[0]
    train, test = _corrected(task.train, rotation), _corrected(task.test, rotation)
    head = clone(fitted["tip_adapter"]).fit(train, task.y_train, text=task.text)
    keys = normalise(train.corrected_views.astype(np.float64).mean(axis=1))
    f, g = test.cls.astype(np.float64), test.corrected.astype(np.float64)
    logits = LOGIT_SCALE * f @ ensemble_weights(task.text).T + 1.17 * np.exp(-(1 - g @ keys.T)) @ np.eye(4)[task.y_train]
    np.testing.assert_allclose(head.predict_proba(test), softmax(logits), rtol=1e-4, atol=1e-6)
    # zero-shot, the control, scores the corrected embedding itself
    zs = ZeroShotHead().fit(train, task.y_train, text=task.text)
    np.testing.assert_allclose(zs.predict_proba(test), softmax(LOGIT_SCALE * g @ ensemble_weights(task.text).T),
                               rtol=1e-4, atol=1e-6)


def test_tip_adapter_search_follows_reference_grid(task):
    assert search_grid(7, 200)[:3] == pytest.approx([0.1, 0.1345, 0.169])
    assert len(search_grid(7, 200)) == 200 and max(search_grid(3, 20)) < 3
    head = TipAdapterHead(search_step=(12, 6)).fit(
        task.train, task.y_train, text=task.text, X_val=task.val, y_val=task.y_val)
    keys = normalise((task.train.views * task.train.views_norm[..., None]).astype(np.float64).mean(axis=1))
    f = task.val.cls.astype(np.float64)
    clip_logits, affinity = LOGIT_SCALE * f @ ensemble_weights(task.text).T, f @ keys.T
    best = (-1, None)
    for beta in [i * 6.9 / 12 + 0.1 for i in range(12)]:
        for alpha in [i * 2.9 / 6 + 0.1 for i in range(6)]:
            logits = clip_logits + alpha * np.exp(-beta * (1 - affinity)) @ np.eye(4)[task.y_train]
            correct = int(np.sum(logits.argmax(1) == task.y_val))
            if correct > best[0]:
                best = (correct, (alpha, beta))
    assert (head.alpha_, head.beta_) == pytest.approx(best[1])


def test_clip_adapter_blend(task, fitted):
    head: ClipAdapterHead = fitted["clip_adapter"]
    w1 = head.net_.adapter.fc[0].weight.detach().cpu().numpy().astype(np.float64)
    w2 = head.net_.adapter.fc[2].weight.detach().cpu().numpy().astype(np.float64)
    f = task.test.cls.astype(np.float64)
    adapted = np.maximum(np.maximum(f @ w1.T, 0) @ w2.T, 0)
    mixed = normalise(0.2 * adapted + 0.8 * f)
    expected = softmax(LOGIT_SCALE * mixed @ ensemble_weights(task.text).T)
    np.testing.assert_allclose(head.predict_proba(task.test), expected, rtol=1e-4, atol=1e-6)


def reference_c_search(x, y, x_val, y_val, grid, steps):
    """CoOp lpclip/linear_probe.py, transcribed: grid sweep, then the binary search in log10
    space (``acc_left < acc_right`` goes right, else left). Returns (C, moves, ties)."""
    from sklearn.linear_model import LogisticRegression

    def val_acc(c):
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=1000).fit(x, y)  # L2 is the default
        return np.sum(clf.predict(x_val) == y_val) / len(y_val)

    c_peak = grid[int(np.argmax([val_acc(c) for c in grid]))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    moves, ties = "", 0
    for _ in range(steps):
        acc_left, acc_right = val_acc(c_left), val_acc(c_right)
        ties += acc_left == acc_right
        if acc_left < acc_right:
            c_final, moves = c_right, moves + "R"
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final, moves = c_left, moves + "L"
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final, moves, ties


@pytest.mark.parametrize("seed, steps, path", [
    (4, 8, "LRRLLLLL"),  # ties in the refinement; the peak is unique
    (2, 5, "RLLLR"),     # the grid's best accuracy is tied (first one wins); last two moves differ
])
def test_linear_probe_c_search_matches_reference_protocol(task, seed, steps, path):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    (train, y), (val, y_val) = make_probe_task(seed)
    grid = (1e2, 1.0, 1e-2, 1e-4)  # the default grid's large C only cost time here
    head = make_head("linear_probe", {"c_grid": grid, "search_steps": steps}).fit(
        train, y, text=task.text, X_val=val, y_val=y_val)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        c_ref, moves, ties = reference_c_search(train.cls, y, val.cls, y_val, grid, steps)
        ref_model = LogisticRegression(C=c_ref, solver="lbfgs", max_iter=1000).fit(train.cls, y)
    # the draws exercise both directions, ties and an off-grid result
    assert moves == path and ties > 0 and c_ref not in grid
    assert head.C_ == pytest.approx(c_ref, rel=1e-9)
    np.testing.assert_allclose(head.predict_proba(val), ref_model.predict_proba(val.cls), atol=1e-6)


def test_linear_probe_fixed_c_skips_the_search(task):
    fixed = make_head("linear_probe", {"C": 0.5}).fit(
        task.train, task.y_train, text=task.text, X_val=task.val, y_val=task.y_val)
    assert fixed.C_ == 0.5 and fixed.search_log_ == {}
    assert fixed.model_.C == 0.5
