"""The shared training options of every gradient-trained head, each shown to take effect.

``optimizer``, ``class_weight``, ``focal_gamma``, ``monitor`` (with the best
epoch's weights restored) and the per-epoch view draws (``views``) are read
by :mod:`pipeline.heads.trainable` and applied in :mod:`pipeline.heads.training`;
these tests watch the loop from outside (spies on the optimiser classes, the
loss, the per-epoch evaluation and the networks' ``forward``) for every head
in ``LEARNING``, so a head that drops an option, or a loop that ignores it, fails.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.heads import make_head, training
from pipeline.heads.clip_adapter import ClipAdapterNet
from pipeline.heads.coop import CoOpNet
from pipeline.heads.tip_adapter_f import TipAdapterFNet
from tests.test_heads_support import LEARNING, N_VIEWS, SWAPPED, make_task, one_thread  # noqa: F401

NETS = {"clip_adapter": ClipAdapterNet, "tip_adapter_f": TipAdapterFNet, "coop": CoOpNet}
VIEW_HEADS = sorted(NETS)  # the trainable heads with ``views``
EPOCHS = 3


@pytest.fixture(scope="module")
def task():
    return make_task(centres=SWAPPED)


def short(name: str, **overrides) -> dict:
    return {**LEARNING[name], "epochs": EPOCHS, **overrides}


def fit(name: str, params: dict, X, y, task, val: bool = True):
    head = make_head(name, params)
    if val:
        return head.fit(X, y, text=task.text, X_val=task.val, y_val=task.y_val)
    return head.fit(X, y, text=task.text)


def state(head) -> dict[str, np.ndarray]:
    """What a fitted head predicts with (CoOp keeps text features, the others their network)."""
    if hasattr(head, "net_"):
        return {n: p.detach().cpu().numpy().copy() for n, p in head.net_.named_parameters() if p.requires_grad}
    return {"ctx": head.ctx_, "text_features": head.text_features_}


def states_close(a: dict, b: dict, **tol) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], **tol) for k in a)


# -- optimizer -----------------------------------------------------------------

def spy_optimisers(monkeypatch) -> list:
    made: list = []
    for cls_name in ("SGD", "AdamW"):
        base = getattr(torch.optim, cls_name)

        class Spy(base):  # type: ignore[misc, valid-type]
            kind = cls_name

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.steps = 0
                made.append(self)

            def step(self, closure=None):
                self.steps += 1
                return super().step(closure)

        monkeypatch.setattr(torch.optim, cls_name, Spy)
    return made


@pytest.mark.parametrize("name", sorted(LEARNING))
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizer_is_the_one_asked_for(name, optimizer, task, monkeypatch):
    made = spy_optimisers(monkeypatch)
    head = fit(name, short(name, optimizer=optimizer, lr=0.003, weight_decay=0.02), task.train, task.y_train, task)
    assert [opt.kind for opt in made] == [{"sgd": "SGD", "adamw": "AdamW"}[optimizer]]
    opt = made[0]
    (group,) = opt.param_groups
    assert group["initial_lr"] == 0.003 and group["weight_decay"] == 0.02
    if optimizer == "sgd":
        assert group["momentum"] == 0.9  # Dassl's SGD, as CoOp / CLIP-Adapter use
    else:
        assert group["eps"] == (1e-4 if name == "tip_adapter_f" else 1e-8)  # Tip-Adapter-F's reference eps
    # it steps exactly the trainable parameters, once per mini-batch
    assert sum(p.numel() for p in group["params"]) == head.fit_stats_["trainable_params"] > 0
    assert opt.steps == EPOCHS * math.ceil(len(task.train) / head.batch_size)


# -- class_weight and focal_gamma ----------------------------------------------

COUNTS = (8, 4, 2, 1)  # training rows per class: imbalanced, every class present


def imbalanced(task):
    rows = np.concatenate([np.flatnonzero(task.y_train == c)[:n] for c, n in enumerate(COUNTS)])
    return task.train.take(rows), task.y_train[rows]


def expected_weights(scheme: str) -> np.ndarray:
    """losses.py's documented weights, recomputed: normalised to mean 1 over the classes."""
    n = np.array(COUNTS, dtype=np.float64)
    raw = {"none": np.ones(4), "inverse": 1.0 / n, "effective": (1 - 0.999) / (1 - 0.999 ** n)}[scheme]
    return raw / raw.mean()


def spy_losses(monkeypatch) -> list[tuple[np.ndarray | None, float, bool]]:
    """(weights, gamma, is a training step) of every loss the loop computes."""
    calls: list = []
    original = training.classification_loss

    def spy(logits, target, weights=None, gamma=0.0):
        calls.append((None if weights is None else weights.detach().cpu().numpy().copy(), gamma,
                      torch.is_grad_enabled() and logits.requires_grad))
        return original(logits, target, weights, gamma)

    monkeypatch.setattr(training, "classification_loss", spy)
    return calls


@pytest.mark.parametrize("name", sorted(LEARNING))
def test_class_weight_schemes_weight_the_loss(name, task, monkeypatch):
    X, y = imbalanced(task)
    calls = spy_losses(monkeypatch)
    fitted = {}
    for scheme in ("none", "inverse", "effective"):
        calls.clear()
        head = fit(name, short(name, class_weight=scheme), X, y, task)
        steps = EPOCHS * math.ceil(len(X) / head.batch_size)
        assert sum(train for *_, train in calls) == steps  # plus one validation loss per epoch
        assert len(calls) == steps + EPOCHS
        for weights, gamma, _ in calls:  # training and validation losses alike
            np.testing.assert_allclose(weights, expected_weights(scheme), rtol=1e-5)
        fitted[scheme] = state(head)
    assert not states_close(fitted["none"], fitted["inverse"], rtol=1e-3, atol=1e-5)
    assert not states_close(fitted["inverse"], fitted["effective"], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", sorted(LEARNING))
def test_focal_gamma_changes_training(name, task, monkeypatch):
    calls = spy_losses(monkeypatch)
    plain = fit(name, short(name), task.train, task.y_train, task)
    assert {gamma for _, gamma, _ in calls} == {0.0}
    calls.clear()
    focal = fit(name, short(name, focal_gamma=2.0), task.train, task.y_train, task)
    assert calls and {gamma for _, gamma, _ in calls} == {2.0}
    # same data order and initialisation; only the loss differs
    first_plain, first_focal = plain.history_[0]["train_loss"], focal.history_[0]["train_loss"]
    assert first_focal < first_plain  # (1 - p)^2 < 1 shrinks every term
    assert not states_close(state(plain), state(focal), rtol=1e-3, atol=1e-5)


# -- monitor: which epoch is kept ----------------------------------------------

#: Scripted per-epoch validation results: each monitor has its own best epoch.
SCRIPT = [
    dict(val_loss=1.0, val_accuracy=0.5, val_balanced_accuracy=0.3),
    dict(val_loss=0.5, val_accuracy=0.6, val_balanced_accuracy=0.4),
    dict(val_loss=0.9, val_accuracy=0.9, val_balanced_accuracy=0.6),
    dict(val_loss=0.8, val_accuracy=0.7, val_balanced_accuracy=0.8),
    dict(val_loss=2.0, val_accuracy=0.1, val_balanced_accuracy=0.1),
]
BEST = {"loss": 1, "accuracy": 2, "balanced_accuracy": 3}


@pytest.mark.parametrize("name", sorted(LEARNING))
@pytest.mark.parametrize("monitor", sorted(BEST))
def test_monitor_picks_and_restores_its_best_epoch(name, monitor, task, monkeypatch):
    """With patience 1 the run stops one epoch after the monitored best, and the network
    (CoOp: its context and text features) is the one evaluated at that best epoch."""
    nets, snapshots = [], []

    def scripted_evaluate(net, *args, **kwargs):
        nets.append(net)
        snapshots.append({n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad})
        return dict(SCRIPT[len(snapshots) - 1])

    monkeypatch.setattr(training, "evaluate", scripted_evaluate)
    head = fit(name, short(name, epochs=10, patience=1, monitor=monitor), task.train, task.y_train, task)
    best = BEST[monitor]
    assert head.best_epoch_ == best and head.epochs_run_ == best + 2
    assert [h[f"val_{monitor}"] for h in head.history_] == [s[f"val_{monitor}"] for s in SCRIPT[:best + 2]]
    net = nets[0]
    assert all(n is net for n in nets)
    params = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
    assert all(torch.equal(params[n], snapshots[best][n]) for n in params)
    assert not all(torch.equal(params[n], snapshots[-1][n]) for n in params)  # the restore mattered
    if name == "coop":
        np.testing.assert_array_equal(head.ctx_, snapshots[best]["prompt_learner.ctx"].numpy())
    else:
        assert head.net_ is net


# -- views: one cached view per row and epoch ------------------------------------

def record_training_inputs(monkeypatch, net_cls) -> list[dict[str, np.ndarray]]:
    seen: list = []
    original = net_cls.forward

    def forward(self, batch):
        if self.training:
            seen.append({k: v.detach().cpu().numpy().copy() for k, v in batch.items()})
        return original(self, batch)

    monkeypatch.setattr(net_cls, "forward", forward)
    return seen


def locate(rows: np.ndarray, X) -> np.ndarray:
    """For each input vector, (row, view) it is in X; view -1 is X.cls itself."""
    where = {X.cls[i].tobytes(): (i, -1) for i in range(len(X))}
    if X.views is not None:
        where.update({X.views[i, a].tobytes(): (i, a) for i in range(len(X)) for a in range(X.views.shape[1])})
    return np.array([where[r.tobytes()] for r in rows])


def per_epoch(seen: list[dict[str, np.ndarray]], key: str, n_epochs: int) -> list[np.ndarray]:
    inputs = np.concatenate([batch[key] for batch in seen])
    return np.split(inputs, n_epochs)


@pytest.mark.parametrize("name", VIEW_HEADS)
def test_each_epoch_draws_one_cached_view_per_row(name, task, monkeypatch):
    seen = record_training_inputs(monkeypatch, NETS[name])
    n_epochs = 6
    head = fit(name, short(name, epochs=n_epochs), task.train, task.y_train, task)
    assert head.views
    draws = []
    for epoch_inputs in per_epoch(seen, "cls", n_epochs):
        found = locate(epoch_inputs, task.train)
        assert sorted(found[:, 0]) == list(range(len(task.train)))  # every row once per epoch
        assert np.all(found[:, 1] >= 0)  # always a view, never the un-augmented embedding
        draws.append(found[np.argsort(found[:, 0]), 1])
    draws = np.array(draws)  # [epoch, row] -> view
    assert set(draws.ravel()) == set(range(N_VIEWS))
    assert len({d.tobytes() for d in draws}) == n_epochs  # every epoch draws afresh
    assert np.mean([len(set(d)) > 1 for d in draws.T]) > 0.5  # most rows see several views
    if name == "tip_adapter_f":  # the affinity input is the same view as the CLIP-logit input
        for epoch_inputs, aff in zip(per_epoch(seen, "cls", n_epochs), per_epoch(seen, "affinity", n_epochs)):
            np.testing.assert_array_equal(epoch_inputs, aff)


def with_poisoned_views(X):
    return replace(X, views=np.full_like(X.views, np.nan))


@pytest.mark.parametrize("name", VIEW_HEADS)
def test_views_none_reads_no_view(name, task, monkeypatch):
    """Views full of NaN: any read would poison the loss, the keys or the predictions."""
    seen = record_training_inputs(monkeypatch, NETS[name])
    train = with_poisoned_views(task.train)
    head = fit(name, short(name, views=None), train, task.y_train, task)
    for epoch_inputs in per_epoch(seen, "cls", EPOCHS):
        found = locate(epoch_inputs, train)
        assert sorted(found[:, 0]) == list(range(len(train))) and np.all(found[:, 1] == -1)
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in head.history_)
    assert np.all(np.isfinite(head.predict_proba(task.test)))


def test_heads_without_views_read_no_view(task):
    train = with_poisoned_views(task.train)
    mh = fit("clip_mhadapter", short("clip_mhadapter"), train, task.y_train, task)
    assert np.all(np.isfinite([h["train_loss"] for h in mh.history_]))
    for name, params in (("zero_shot", {}), ("linear_probe", {"search_steps": 1}),
                         ("tip_adapter", {"views": None, "search_step": (5, 5)})):
        head = fit(name, params, train, task.y_train, task)
        assert np.all(np.isfinite(head.predict_proba(task.test))), name


def with_view_tokens(X, seed: int = 0):
    """Per-view tokens [N, A, L, W], each view's own (distinct values, so a draw can be located)."""
    rng = np.random.default_rng(seed)
    tokens = X.tokens["block-2"]
    per_view = tokens[:, None] + 0.05 * rng.standard_normal((len(X), X.views.shape[1], *tokens.shape[1:]))
    return replace(X, view_tokens={"block-2": per_view.astype(np.float32)})


def test_mhadapter_token_views_draw_tokens_embedding_and_norm_of_one_view(task, monkeypatch):
    """views on: each epoch, each row's tokens, embedding and norm all come from the same cached view."""
    from pipeline.heads.clip_mhadapter import MHAdapterNet

    seen = record_training_inputs(monkeypatch, MHAdapterNet)
    train, n_epochs = with_view_tokens(task.train), 4
    head = fit("clip_mhadapter", short("clip_mhadapter", epochs=n_epochs, patience=0, views="tip"),
               train, task.y_train, task)
    assert head.views == "tip"
    tok = train.view_tokens["block-2"]
    by_tokens = {tok[i, a].tobytes(): (i, a) for i in range(len(train)) for a in range(tok.shape[1])}
    draws = []
    for cls, norm, tokens in zip(per_epoch(seen, "cls", n_epochs), per_epoch(seen, "cls_norm", n_epochs),
                                 per_epoch(seen, "tokens", n_epochs)):
        found = locate(cls, train)
        assert np.all(found[:, 1] >= 0)  # always a view, never the fixed embedding
        np.testing.assert_array_equal([by_tokens[t.tobytes()] for t in tokens], found)  # the same view's tokens
        np.testing.assert_array_equal(norm, train.views_norm[found[:, 0], found[:, 1]])  # ... and its norm
        draws.append(found[np.argsort(found[:, 0]), 1])
    assert len({d.tobytes() for d in draws}) == n_epochs  # drawn afresh every epoch


def test_mhadapter_without_token_views_says_which_param(task):
    with pytest.raises(ValueError, match=r"views 'tip': the view set stores no 'block-2' tokens .*token_blocks: \[-2\]"):
        fit("clip_mhadapter", short("clip_mhadapter", views="tip"), task.train, task.y_train, task)
    # views: null (the default) trains on the fixed tokens even where views exist
    fixed = fit("clip_mhadapter", short("clip_mhadapter"), with_view_tokens(task.train), task.y_train, task)
    assert fixed.views is None and np.all(np.isfinite(fixed.predict_proba(task.test)))


def test_tip_adapter_keys_follow_views(task):
    """Cache keys: mean of the views re-normalised, or the embeddings themselves."""
    from tests.test_heads_support import normalise

    mean_views = normalise((task.train.views * task.train.views_norm[..., None]).astype(np.float64).mean(axis=1))
    on = fit("tip_adapter_f", short("tip_adapter_f", epochs=0), task.train, task.y_train, task, val=False)
    off = fit("tip_adapter_f", short("tip_adapter_f", epochs=0, views=None), task.train, task.y_train, task,
              val=False)
    np.testing.assert_allclose(on.net_.adapter.weight.detach().numpy(), mean_views, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(off.net_.adapter.weight.detach().numpy(), task.train.cls)
    free_off = fit("tip_adapter", {"views": None}, task.train, task.y_train, task, val=False)
    np.testing.assert_array_equal(free_off.keys_, task.train.cls)
    free_on = fit("tip_adapter", {}, task.train, task.y_train, task, val=False)
    np.testing.assert_allclose(free_on.keys_, mean_views, rtol=1e-5, atol=1e-6)
