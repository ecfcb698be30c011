"""Shared pieces of the heads library: losses, class weights, the training
loop's schedule and early stopping, fit statistics, the MHAdapter size."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.heads.losses import class_weights, classification_loss
from pipeline.heads.clip_mhadapter import MHAdapterHead, MHAdapterNet, mhadapter_param_count
from pipeline.heads import training
from pipeline.heads.training import ArrayData, TrainConfig, _lr_lambda, train_module
from tests.test_heads_support import make_task, one_thread  # noqa: F401 (autouse fixture)


Y = np.array([0, 0, 0, 1, 2, 2])  # class 3 absent


def test_class_weights_inverse_and_effective():
    np.testing.assert_allclose(class_weights(Y, 4, "none"), np.ones(4))
    inv = np.array([1 / 3, 1.0, 1 / 2])
    np.testing.assert_allclose(class_weights(Y, 4, "inverse"), [*(inv / inv.mean()), 0.0], rtol=1e-6)
    beta = 0.999
    eff = np.array([(1 - beta) / (1 - beta ** n) for n in (3, 1, 2)])
    np.testing.assert_allclose(class_weights(Y, 4, "effective"), [*(eff / eff.mean()), 0.0], rtol=1e-5)
    with pytest.raises(ValueError):
        class_weights(Y, 4, "uniform")


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_weighted_focal_loss_matches_numpy(gamma):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 4))
    weights = class_weights(Y, 4, "inverse")
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    p_true = p[np.arange(6), Y]
    expected = np.mean(weights[Y] * (1 - p_true) ** gamma * -np.log(p_true))
    got = classification_loss(torch.tensor(logits), torch.tensor(Y), torch.tensor(weights), gamma)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_schedule_constant_warmup_then_cosine():
    cfg = TrainConfig(epochs=4, batch_size=1, lr=0.002, warmup_epochs=1, warmup="constant", warmup_lr=1e-5)
    factor = _lr_lambda(cfg, steps_per_epoch=2)
    assert factor(0) == factor(1) == pytest.approx(1e-5 / 0.002)
    assert factor(2) == pytest.approx(1.0)
    assert factor(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    linear = _lr_lambda(TrainConfig(epochs=2, batch_size=1, lr=1.0, warmup_epochs=1), 4)
    assert [linear(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, batch):
        return self.fc(batch["x"])


def snapshot_evaluations(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Wrap the loop's per-epoch ``evaluate``: a copy of the trainable parameters at each call."""
    snapshots: list[dict[str, torch.Tensor]] = []
    original = training.evaluate

    def spy(net, *args, **kwargs):
        snapshots.append({n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad})
        return original(net, *args, **kwargs)

    monkeypatch.setattr(training, "evaluate", spy)
    return snapshots


def same_params(net: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    params = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
    return params.keys() == snapshot.keys() and all(torch.equal(params[n], snapshot[n]) for n in params)


def _flipped_run(monkeypatch, **overrides):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    data = ArrayData({"x": x})
    # Validation labels are flipped: improving on train worsens validation loss,
    # so the best epoch is early and patience stops the run.
    cfg = TrainConfig(**{**dict(epochs=50, batch_size=8, lr=0.1, patience=2, monitor="loss"), **overrides})
    snapshots = snapshot_evaluations(monkeypatch)
    net = _Linear()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        result = train_module(net, data, y, 2, cfg, torch.device("cpu"), rng, val=data, y_val=1 - y)
    return net, result, snapshots, cfg, data, y


def test_early_stopping_restores_best_epoch(monkeypatch):
    net, result, snapshots, cfg, data, y = _flipped_run(monkeypatch)
    assert result.epochs_run == result.best_epoch + cfg.patience + 1 < 50
    val_losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(val_losses))
    assert len(snapshots) == result.epochs_run
    # the weights in the net are those evaluated at the best epoch, not the last ones
    assert same_params(net, snapshots[result.best_epoch])
    assert not same_params(net, snapshots[-1])
    again = training.evaluate(net, data, 1 - y, torch.ones(2), 0.0, torch.device("cpu"))
    assert again["val_loss"] == pytest.approx(val_losses[result.best_epoch], rel=1e-6)


def test_restore_best_off_keeps_the_last_epoch(monkeypatch):
    net, result, snapshots, *_ = _flipped_run(monkeypatch, restore_best=False)
    assert result.best_epoch < result.epochs_run - 1
    assert same_params(net, snapshots[-1]) and not same_params(net, snapshots[result.best_epoch])


class _Scripted(nn.Module):
    """Trains a real linear layer; in eval mode returns the next of the scripted validation
    logits and keeps a copy of the weights it was evaluated with."""

    def __init__(self, val_logits: list[np.ndarray]) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.val_logits = val_logits
        self.evaluated: list[torch.Tensor] = []

    def forward(self, batch):
        out = self.fc(batch["x"])
        if self.training:
            return out
        self.evaluated.append(self.fc.weight.detach().clone())
        return torch.as_tensor(self.val_logits[len(self.evaluated) - 1]) + 0 * out


Y_VAL = np.array([0] * 8 + [1] * 2)  # imbalanced: accuracy and balanced accuracy disagree


def _logits(pred: list[int], margin: float) -> np.ndarray:
    return margin * np.eye(2, dtype=np.float32)[pred]


SCRIPT = [
    _logits([0] * 10, 5.0),                      # acc 0.8, balanced 0.5,    loss ~1.0
    _logits([0] * 5 + [1] * 3 + [1] * 2, 5.0),   # acc 0.7, balanced 0.8125, loss ~1.5
    _logits([1] * 10, 0.01),                     # acc 0.2, balanced 0.5,    loss ~0.69
]


@pytest.mark.parametrize("monitor, best", [("accuracy", 0), ("balanced_accuracy", 1), ("loss", 2)])
def test_monitor_selects_and_restores_its_best_epoch(monitor, best):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss

    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 2)).astype(np.float32)
    net = _Scripted(SCRIPT)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.5, monitor=monitor)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        result = train_module(net, ArrayData({"x": x}), Y_VAL, 2, cfg, torch.device("cpu"), rng,
                              val=ArrayData({"x": x}), y_val=Y_VAL)
    preds = [logits.argmax(1) for logits in SCRIPT]
    assert [h["val_accuracy"] for h in result.history] == pytest.approx(
        [accuracy_score(Y_VAL, p) for p in preds])
    assert [h["val_balanced_accuracy"] for h in result.history] == pytest.approx(
        [balanced_accuracy_score(Y_VAL, p) for p in preds])
    assert [h["val_loss"] for h in result.history] == pytest.approx(
        [log_loss(Y_VAL, softmax(logits.astype(np.float64)), labels=[0, 1]) for logits in SCRIPT], rel=1e-5)
    assert result.best_epoch == best
    # training moved the weights every epoch, so restoring the wrong epoch would show
    assert len(net.evaluated) == 3
    assert not any(torch.equal(net.evaluated[i], net.evaluated[j]) for i, j in ((0, 1), (0, 2), (1, 2)))
    torch.testing.assert_close(net.fc.weight.detach(), net.evaluated[best], rtol=0, atol=0)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_fit_stats_recorded():
    task = make_task()
    head = MHAdapterHead(epochs=2, heads=4).fit(task.train, task.y_train, text=task.text,
                                               X_val=task.val, y_val=task.y_val)
    stats = head.fit_stats_
    assert stats["trainable_params"] == mhadapter_param_count(48, 32)
    assert stats["peak_memory_method"] in ("rss_sampled_delta", "ru_maxrss_delta", "cuda_max_memory_allocated")
    assert head.epochs_run_ == 2 and len(head.history_) == 2


@pytest.mark.parametrize("heads", [4, 8, 16])
def test_mhadapter_parameter_count_vit_b16(heads):
    # Independent count for W=768, D=512, bottleneck 256:
    mlp = (768 * 256 + 256) + (256 * 512 + 512)
    layer_norm = 2 * 512
    attention = (3 * 512 * 512 + 3 * 512) + (512 * 512 + 512)
    assert mlp + layer_norm + attention == 1_380_096  # the paper's ~1.38M
    net = MHAdapterNet(768, np.ones((3, 512), np.float32), 100.0, heads=heads)
    n_trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert n_trainable == mhadapter_param_count(768, 512) == 1_380_096


def test_mhadapter_validates_inputs():
    task = make_task()
    with pytest.raises(ValueError, match="tokens"):
        MHAdapterHead(token_block="block-5", epochs=1).fit(task.train, task.y_train, text=task.text)
    with pytest.raises(ValueError, match="heads"):
        MHAdapterHead(heads=3, epochs=1).fit(task.train, task.y_train, text=task.text)


def test_best_epoch_ties_keep_the_later_epoch():
    """A flat val accuracy must not pin the head to its first, nearly untrained epoch."""
    from torch import nn

    from pipeline.heads.training import _BestTracker

    net = nn.Linear(2, 2)
    tracker = _BestTracker("accuracy")
    for epoch, acc in enumerate([0.9, 0.9, 0.8, 0.9]):
        with torch.no_grad():
            net.weight.fill_(epoch)
        tracker.update(acc, epoch, net)
    assert tracker.best_epoch == 3
    tracker.restore(net)
    assert float(net.weight.detach()[0, 0]) == 3.0
    loss_tracker = _BestTracker("loss")
    for epoch, loss in enumerate([0.5, 0.4, 0.6]):
        loss_tracker.update(loss, epoch, net)
    assert loss_tracker.best_epoch == 1
