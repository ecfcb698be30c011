"""GDA, ProKeR, CLAP and LP++ (issue 15): each formula against an independent numpy
computation written from the paper / reference code, and what each head reads from
the validation rows.

The registry-parametrised tests (tests/test_heads.py, tests/test_heads_selection.py)
cover the estimator contract and "test rows never reach the fit" for these heads too.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.heads import HEADS, make_head
from pipeline.heads.tip_adapter import TipAdapterHead
from tests.test_heads_support import LOGIT_SCALE, SWAPPED, make_task, normalise, one_thread  # noqa: F401

NEW = ("gda", "proker", "clap", "lp_plusplus")


@pytest.fixture(scope="module")
def task():
    return make_task()


@pytest.fixture(scope="module")
def hard():
    return make_task(centres=SWAPPED)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ensemble(text) -> np.ndarray:
    return normalise(normalise(text.template_emb.astype(np.float64)).mean(axis=0))


def stacked_views(X, y):
    """Every augmented view as its own support row (GDA / ProKeR / CLAP), with its label."""
    v = X.views.astype(np.float64)
    return v.reshape(-1, v.shape[-1]), np.repeat(y, v.shape[1])


def fit(name, params, task, with_val=True, y_val=None):
    kwargs = dict(X_val=task.val, y_val=task.y_val if y_val is None else y_val) if with_val else {}
    return make_head(name, params).fit(task.train, task.y_train, text=task.text, **kwargs)


def test_registered_and_marked():
    assert {n: HEADS[n].__name__ for n in NEW} == {
        "gda": "GDAHead", "proker": "ProKeRHead", "clap": "CLAPHead", "lp_plusplus": "LPPlusPlusHead"}
    assert make_head("gda").selects_on_validation is True
    assert make_head("proker").selects_on_validation is True
    assert make_head("clap").selects_on_validation is False
    assert make_head("lp_plusplus").selects_on_validation is True  # the reference picks the epoch on val
    assert make_head("lp_plusplus", {"epoch_selection": "last"}).selects_on_validation is False


# -- GDA ------------------------------------------------------------------------

def reference_lda(rows, labels, n_classes):
    """Paper / mrflogs/ICLR24: class means, KS shrinkage of the pooled covariance, uniform prior."""
    means = np.stack([rows[labels == k].mean(0) for k in range(n_classes)])
    centred = rows - means[labels]
    cov = np.cov(centred, rowvar=False)  # torch.Tensor.cov: divides by n - 1
    n, d = centred.shape
    precision = d * np.linalg.pinv((n - 1) * cov + np.trace(cov) * np.eye(d))
    W = np.stack([precision @ m for m in means])
    b = np.log(np.full(n_classes, 1.0 / n_classes)) - 0.5 * np.array([m @ precision @ m for m in means])
    return W, b


def test_gda_weights_are_the_reference_lda(task):
    # an unbalanced draw: the uniform prior (reference) differs from class frequencies
    keep = np.concatenate([np.flatnonzero(task.y_train == k)[:n] for k, n in enumerate((8, 2, 5, 3))])
    X, y = task.train.take(keep), task.y_train[keep]
    head = make_head("gda").fit(X, y, text=task.text)
    W, b = reference_lda(*stacked_views(X, y), 4)
    np.testing.assert_allclose(head.W_, W, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(head.b_, b, rtol=1e-6, atol=1e-8)
    assert head.alpha_ == 0.1  # no validation rows: the reference's starting alpha
    f = task.test.cls.astype(np.float64)
    expected = softmax(LOGIT_SCALE * f @ ensemble(task.text).T + 0.1 * (f @ W.T + b))
    np.testing.assert_allclose(head.predict_proba(task.test), expected, rtol=1e-4, atol=1e-8)
    # without views the support rows are the embeddings themselves
    plain = make_head("gda", {"views": None}).fit(X, y, text=task.text)
    W1, b1 = reference_lda(X.cls.astype(np.float64), y, 4)
    np.testing.assert_allclose(plain.W_, W1, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(plain.b_, b1, rtol=1e-6, atol=1e-8)


def test_gda_alpha_search_is_the_reference_grid(hard):
    grid = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
    head = fit("gda", {}, hard)
    f = hard.val.cls.astype(np.float64)
    zs, lda = LOGIT_SCALE * f @ ensemble(hard.text).T, f @ head.W_.T + head.b_
    best_acc, best_alpha = 0.0, 0.1
    for alpha in grid:
        acc = np.mean((zs + alpha * lda).argmax(1) == hard.y_val)
        if acc > best_acc:
            best_acc, best_alpha = acc, alpha
    assert head.alpha_ == best_alpha and best_alpha >= 1.0  # the hard task needs the LDA term
    # validation labels that agree with zero-shot choose the smallest alpha
    swapped = fit("gda", {}, hard, y_val=np.array(SWAPPED)[hard.y_val])
    assert swapped.alpha_ == 1e-4


# -- ProKeR ---------------------------------------------------------------------

def proker_explicit(task, beta, lmbda, X, views="tip"):
    """f(x) = f0(x) + K_xS (K_SS / lambda + I)^-1 (Y - f0(S)), f0 = cosines, by an explicit solve."""
    S, labels = stacked_views(task.train, task.y_train) if views else (task.train.cls.astype(np.float64),
                                                                           task.y_train)
    T = ensemble(task.text)
    K = np.exp(-beta * (1 - S @ S.T))
    A = np.linalg.solve(K / lmbda + np.eye(len(S)), np.eye(4)[labels] - S @ T.T)
    f = X.cls.astype(np.float64)
    return f @ T.T + np.exp(-beta * (1 - f @ S.T)) @ A, A


def test_proker_is_the_explicit_kernel_ridge_solve(task):
    head = fit("proker", {"init_beta": 2.5, "init_lmbda": 0.3, "device": "cpu"}, task, with_val=False)
    logits, A = proker_explicit(task, 2.5, 0.3, task.test)
    assert (head.beta_, head.lmbda_) == (2.5, 0.3)
    np.testing.assert_allclose(head.dual_, A, rtol=1e-5, atol=1e-7)  # text weights are float32
    np.testing.assert_allclose(head.predict_proba(task.test), softmax(logits), rtol=1e-5, atol=1e-9)


def test_proker_search_is_the_reference_grid(hard):
    """linspace grids, beta outer / lambda inner, first strictly better val accuracy wins;
    each point an explicit solve (the head diagonalises K once per beta)."""
    params = {"beta_grid": (0.5, 3.0, 6), "lmbda_grid": (0.001, 1.0, 5), "device": "cpu"}
    head = fit("proker", params, hard)
    best = (0, None)
    for beta in torch.linspace(0.5, 3.0, 6).tolist():
        for lmbda in torch.linspace(0.001, 1.0, 5).tolist():
            logits, _ = proker_explicit(hard, beta, lmbda, hard.val)
            correct = int(np.sum(logits.argmax(1) == hard.y_val))
            if correct > best[0]:
                best = (correct, (beta, lmbda))
    assert (head.beta_, head.lmbda_) == pytest.approx(best[1], rel=1e-7)
    assert len(head.search_log_) == 30
    # agreeing with zero-shot, the validation labels ask for the weakest correction (smallest lambda)
    swapped = fit("proker", params, hard, y_val=np.array(SWAPPED)[hard.y_val])
    assert swapped.lmbda_ == pytest.approx(0.001) and head.lmbda_ > 0.001


def test_proker_limits_relate_to_zero_shot_and_tip_adapter(task):
    """lambda -> 0: f -> f0. lambda -> inf: A -> Y - f0(S), so f = f0 + [Tip-Adapter's cache term,
    alpha = 1, same beta and keys] - K_xS f0(S)."""
    beta = 3.0
    T = ensemble(task.text)
    f = task.test.cls.astype(np.float64)
    tiny = fit("proker", {"init_beta": beta, "init_lmbda": 1e-12, "views": None, "device": "cpu"},
               task, with_val=False)
    np.testing.assert_allclose(tiny._logits(task.test), f @ T.T, atol=1e-6)
    huge = fit("proker", {"init_beta": beta, "init_lmbda": 1e12, "views": None, "device": "cpu"},
               task, with_val=False)
    tip = TipAdapterHead(init_alpha=1.0, init_beta=beta, views=None, device="cpu").fit(
        task.train, task.y_train, text=task.text)
    S = task.train.cls.astype(np.float64)
    correction = np.exp(-beta * (1 - f @ S.T)) @ (S @ T.T)
    expected = tip._logits(task.test) - (LOGIT_SCALE - 1.0) * f @ T.T - correction
    np.testing.assert_allclose(huge._logits(task.test), expected, atol=1e-4)


# -- CLAP -----------------------------------------------------------------------

def clap_grad(w, t, x, y, lam, scale):
    """Gradient of CE(scale x w^T/|w|) + mean_k lam_k |w_k - t_k|^2, by hand."""
    norm = np.linalg.norm(w, axis=1, keepdims=True)
    u = w / norm
    p = softmax(scale * x @ u.T)
    g_logits = (p - np.eye(len(w))[y]) / len(x)
    g_u = scale * g_logits.T @ x
    g_w = (g_u - u * np.sum(g_u * u, axis=1, keepdims=True)) / norm
    return g_w + 2 * lam[:, None] * (w - t) / len(w)


def clap_multipliers(task):
    x, y = stacked_views(task.train, task.y_train)
    p = softmax(LOGIT_SCALE * x @ ensemble(task.text).T)
    return np.array([p[y == k, k].mean() for k in range(4)])


def test_clap_initial_multipliers_are_zero_shot_confidence(hard):
    head = fit("clap", {"epochs": 0, "device": "cpu"}, hard, with_val=False)
    lam = clap_multipliers(hard)
    np.testing.assert_allclose(head.initial_multipliers_, lam, rtol=1e-5)
    assert lam[0] < 0.5 and lam[2] > 0.5  # swapped classes: low confidence, loose constraint
    np.testing.assert_allclose(head.prototypes_, ensemble(hard.text), atol=1e-6)  # zero-shot init


@pytest.mark.parametrize("adaptive", [False, True])
def test_clap_two_steps_by_hand(hard, adaptive):
    """Full batch, no warmup, lr 1 then 0.5 (cosine over 2 epochs), SGD momentum 0.9; with
    ``adaptive`` the outer step: lambda <- max(0, lambda + rho h), rho <- h, rho_0 = 0."""
    params = {"epochs": 2, "warmup_epochs": 0, "lr": 1.0, "adaptive": adaptive, "device": "cpu"}
    head = fit("clap", params, hard, with_val=False)
    x, y = stacked_views(hard.train, hard.y_train)
    t, lam0 = ensemble(hard.text), clap_multipliers(hard)
    w1 = t - 1.0 * clap_grad(t, t, x, y, lam0, LOGIT_SCALE)
    buf = 0.9 * clap_grad(t, t, x, y, lam0, LOGIT_SCALE) + clap_grad(w1, t, x, y, lam0, LOGIT_SCALE)
    w2 = w1 - 0.5 * buf
    np.testing.assert_allclose(head.prototypes_, w2, rtol=1e-4, atol=1e-4)
    # the penalty matters at this step: without it the result is measurably different
    no_penalty = w1 - 0.5 * (0.9 * clap_grad(t, t, x, y, 0 * lam0, LOGIT_SCALE)
                             + clap_grad(w1, t, x, y, 0 * lam0, LOGIT_SCALE))
    assert np.abs(no_penalty - w2).max() > 1e-2
    h1, h2 = ((w1 - t) ** 2).sum(1), ((w2 - t) ** 2).sum(1)
    expected = np.maximum(0, lam0 + h1 * h2) if adaptive else lam0
    np.testing.assert_allclose(head.multipliers_, expected, rtol=1e-4)
    assert [r["lr"] for r in head.history_] == pytest.approx([1.0, 0.5])


def test_clap_schedule_and_batches(task, monkeypatch):
    """Dassl: constant warmup epoch at 1e-5, then cosine over all epochs, per epoch; an epoch has
    N // batch_size batches of the augmented rows (N = support images), at least one."""
    steps = []
    original = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: steps.append(1) or original(self, *a, **k))
    head = fit("clap", {"epochs": 4, "batch_size": 8, "lr": 0.1, "device": "cpu"}, task, with_val=False)
    assert [r["lr"] for r in head.history_] == pytest.approx(
        [1e-5] + [0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(3)])
    assert len(steps) == 4 * (32 // 8)
    steps.clear()
    fit("clap", {"epochs": 3, "device": "cpu"}, task, with_val=False)  # 32 images < 256: one batch
    assert len(steps) == 3


def test_clap_reads_no_validation_rows(hard):
    without = fit("clap", {"epochs": 20, "device": "cpu"}, hard, with_val=False)
    with_val = fit("clap", {"epochs": 20, "device": "cpu"}, hard)
    other_val = fit("clap", {"epochs": 20, "device": "cpu"}, hard, y_val=np.array(SWAPPED)[hard.y_val])
    for head in (with_val, other_val):
        np.testing.assert_array_equal(head.prototypes_, without.prototypes_)


# -- LP++ -----------------------------------------------------------------------

def lpp_setup(task):
    x = task.train.views[:, 0].astype(np.float64)  # one augmented pass, as the reference
    t = ensemble(task.text)
    sims = x @ t.T
    return dict(
        x=x, y=task.y_train, t=t,
        W0=np.stack([x[task.y_train == k].sum(0) for k in range(4)]),
        alpha0=250 * np.mean([sims[task.y_train == k, k].mean() for k in range(4)]),
        lr_w=4 * len(x) / np.linalg.eigvalsh(x.T @ x).max(),
        lr_alpha=len(x) / (4 * (sims ** 2).sum(0).max()))


def lpp_grads(W, b, alpha, s):
    text_logits = s["x"] @ s["t"].T
    g = (softmax(s["x"] @ W.T + b + alpha * text_logits) - np.eye(4)[s["y"]]) / len(s["x"])
    return g.T @ s["x"], g.sum(0), (g * text_logits).sum(0)


def test_lpp_initialisation_and_step_sizes(task):
    head = fit("lp_plusplus", {"epochs": 0, "epoch_selection": "last", "device": "cpu"}, task, with_val=False)
    s = lpp_setup(task)
    np.testing.assert_allclose(head.init_state_["W"], s["W0"], rtol=1e-5)
    np.testing.assert_allclose(head.init_state_["alpha"], np.full(4, s["alpha0"]), rtol=1e-5)
    assert np.all(np.abs(head.init_state_["b"]) <= 1 / np.sqrt(32))
    assert head.lr_w_ == pytest.approx(s["lr_w"], rel=1e-5)
    assert head.lr_alpha_ == pytest.approx(s["lr_alpha"], rel=1e-5)


@pytest.mark.parametrize("accumulate", [True, False])
def test_lpp_two_steps_by_hand(hard, accumulate):
    """Epoch = one full-batch SGD(momentum 0.9) step on W, b with lr_W; alpha steps with lr_alpha
    every ``alpha_every`` epochs, on the gradient accumulated since the start (reference) or not."""
    params = {"epochs": 2, "alpha_every": 1, "epoch_selection": "last", "accumulate_alpha_grad": accumulate,
              "alpha_init_scale": 1.0, "device": "cpu"}  # alpha ~1: its steps are visible in float32
    head = fit("lp_plusplus", params, hard, with_val=False)
    s = lpp_setup(hard)
    W0, b0, a0 = s["W0"], head.init_state_["b"].astype(np.float64), np.full(4, s["alpha0"] / 250)
    gW0, gb0, ga0 = lpp_grads(W0, b0, a0, s)
    W1, b1, a1 = W0 - s["lr_w"] * gW0, b0 - s["lr_w"] * gb0, a0 - s["lr_alpha"] * ga0
    gW1, gb1, ga1 = lpp_grads(W1, b1, a1, s)
    W2, b2 = W1 - s["lr_w"] * (0.9 * gW0 + gW1), b1 - s["lr_w"] * (0.9 * gb0 + gb1)
    a2 = a1 - s["lr_alpha"] * (ga0 + ga1 if accumulate else ga1)
    np.testing.assert_allclose(head.W_, W2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(head.b_, b2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(head.alpha_ - a0, a2 - a0, rtol=1e-3, atol=1e-6)
    assert np.abs(s["lr_alpha"] * ga0).max() > 1e-2 * np.abs(a2 - a0).max()  # accumulating is visible


def test_lpp_alpha_steps_only_every_tenth_epoch(task):
    head = fit("lp_plusplus", {"epochs": 9, "epoch_selection": "last", "device": "cpu"}, task, with_val=False)
    np.testing.assert_array_equal(head.alpha_, head.init_state_["alpha"])
    head = fit("lp_plusplus", {"epochs": 10, "epoch_selection": "last", "device": "cpu"}, task, with_val=False)
    assert not np.array_equal(head.alpha_, head.init_state_["alpha"])


def test_lpp_keeps_the_last_best_validation_epoch(hard):
    """Reference: evaluate val after every epoch, keep the last epoch with the best accuracy (>=)."""
    params = {"epochs": 30, "device": "cpu"}
    head = fit("lp_plusplus", params, hard, y_val=np.array(SWAPPED)[hard.y_val])
    accs = [r["val_accuracy"] for r in head.history_]
    best = len(accs) - 1 - int(np.argmax(accs[::-1]))
    assert head.best_epoch_ == best < 29  # the draw makes the choice matter
    replay = fit("lp_plusplus", {**params, "epochs": best + 1, "epoch_selection": "last"}, hard, with_val=False)
    np.testing.assert_allclose(head.predict_proba(hard.test), replay.predict_proba(hard.test), rtol=1e-6)
    last = fit("lp_plusplus", {**params, "epoch_selection": "last"}, hard, y_val=np.array(SWAPPED)[hard.y_val])
    assert last.best_epoch_ == 29 and "val_accuracy" not in last.history_[0]
    assert not np.allclose(last.predict_proba(hard.test), head.predict_proba(hard.test))


# -- validation: the selecting heads choose on val labels -----------------------------

@pytest.mark.parametrize("name, params, chosen", [
    ("gda", {}, ("alpha_",)),
    ("proker", {"device": "cpu"}, ("beta_", "lmbda_")),
])
def test_validation_labels_drive_the_choice(name, params, chosen, hard):
    first = fit(name, params, hard)
    second = fit(name, params, hard, y_val=np.array(SWAPPED)[hard.y_val])
    assert any(getattr(first, k) != getattr(second, k) for k in chosen)
    assert not np.allclose(first.predict_proba(hard.test), second.predict_proba(hard.test))


def test_trainable_parameters_and_determinism(task):
    counts = {}
    for name in NEW:
        params = {} if name == "gda" else {"device": "cpu"}
        first, again = fit(name, params, task), fit(name, params, task)
        np.testing.assert_array_equal(first.predict_proba(task.test), again.predict_proba(task.test))
        counts[name] = first.fit_stats_["trainable_params"]
    assert counts == {"gda": 0, "proker": 0, "clap": 4 * 32, "lp_plusplus": 4 * 32 + 4 + 4}  # W, b, alpha
