"""The one training loop every trainable head uses.

Mini-batches are drawn from in-memory arrays (cached features, never images),
in an order fixed by a seeded numpy Generator. Optimisers: AdamW or SGD
(momentum 0.9, Dassl's default used by CoOp / CLIP-Adapter). The learning rate
follows a warmup (linear ramp, or Dassl's "constant" warmup at a small fixed
lr) and then a cosine decay to 0, updated every step. Deviation: Dassl steps
its cosine per epoch and over all ``max_epoch`` epochs; stepping per iteration
over the epochs after warmup is what Tip-Adapter-F does and differs only in
the shape of the last fractions of an epoch.

With a validation set the loop evaluates after every epoch, can stop early
after ``patience`` epochs without improvement of the monitored quantity, and
can restore the trainable parameters of the best epoch.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np
import torch
from torch import nn

from pipeline.heads.losses import class_weights, classification_loss

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
EVAL_BATCH = 512
MONITORS = ("loss", "accuracy", "balanced_accuracy")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; heads build one from their own parameters."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.9
    adam_eps: float = 1e-8
    warmup_epochs: int = 0
    warmup: Literal["linear", "constant"] = "linear"
    warmup_lr: float = 1e-5
    patience: int = 0
    monitor: Literal["loss", "accuracy", "balanced_accuracy"] = "loss"
    restore_best: bool = True
    class_weight: str = "none"
    focal_gamma: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs >= 0, batch_size >= 1 and lr > 0 are required")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.warmup not in ("linear", "constant"):
            raise ValueError(f"warmup must be 'linear' or 'constant', got {self.warmup!r}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}, got {self.monitor!r}")
        if self.patience < 0 or self.focal_gamma < 0:
            raise ValueError("patience and focal_gamma must be >= 0")


@dataclass(frozen=True)
class ArrayData:
    """Row-aligned arrays a network reads by name (``cls``, ``tokens``...).

    ``views`` optionally maps a name to ``[N, A, ...]`` augmented versions of
    that array; during training one view per row is drawn each epoch in place
    of the array (the cached stand-in for re-augmenting images every epoch).
    """

    arrays: Mapping[str, np.ndarray]
    views: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def n_views(self) -> int:
        return min((v.shape[1] for v in self.views.values()), default=0)

    def batch(self, idx: np.ndarray, device: torch.device,
              view_idx: np.ndarray | None = None) -> Batch:
        out = {}
        for name, arr in self.arrays.items():
            if view_idx is not None and name in self.views:
                rows = self.views[name][idx, view_idx]
            else:
                rows = arr[idx]
            out[name] = torch.as_tensor(np.ascontiguousarray(rows), dtype=torch.float32, device=device)
        return out


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    best_epoch: int | None
    epochs_run: int


@dataclass
class Optimisation:
    """What one training run steps: optimiser, per-step LR schedule, class weights and targets."""

    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    weights: torch.Tensor
    targets: torch.Tensor
    steps_per_epoch: int


def optimisation(net: nn.Module, y: np.ndarray, n_classes: int, n_rows: int, cfg: TrainConfig,
                 device: torch.device) -> Optimisation:
    """The set-up of :func:`train_module` for ``n_rows`` training rows (shared with the re-encode benchmark)."""
    steps_per_epoch = max(1, math.ceil(n_rows / cfg.batch_size))
    optimiser = _make_optimiser([p for p in net.parameters() if p.requires_grad], cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _lr_lambda(cfg, steps_per_epoch))
    weights = torch.as_tensor(class_weights(y, n_classes, cfg.class_weight), device=device)
    targets = torch.as_tensor(y, dtype=torch.long, device=device)
    return Optimisation(optimiser, scheduler, weights, targets, steps_per_epoch)


def train_module(net: nn.Module, train: ArrayData, y: np.ndarray, n_classes: int,
                 cfg: TrainConfig, device: torch.device, rng: np.random.Generator,
                 val: ArrayData | None = None, y_val: np.ndarray | None = None) -> TrainResult:
    """Optimise the parameters of ``net`` that require grad; ``net(batch)``
    must return logits ``[B, C]``."""
    opt = optimisation(net, y, n_classes, len(train), cfg, device)
    optimiser, scheduler, weights, targets = opt.optimiser, opt.scheduler, opt.weights, opt.targets
    tracker = _BestTracker(cfg.monitor)
    history: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        train_loss = _train_epoch(net, train, targets, weights, cfg, optimiser, scheduler, device, rng)
        record = {"epoch": epoch, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0]}
        if val is not None and y_val is not None:
            record.update(evaluate(net, val, y_val, weights, cfg.focal_gamma, device))
            if tracker.update(record[f"val_{cfg.monitor}"], epoch, net):
                logger.debug("epoch %d: new best val_%s %.4f", epoch, cfg.monitor, tracker.best)
        history.append(record)
        logger.debug("epoch %d: %s", epoch, record)
        if cfg.patience and tracker.epochs_since_best(epoch) >= cfg.patience:
            logger.info("early stop after epoch %d (best epoch %d)", epoch, tracker.best_epoch)
            break
    if cfg.restore_best and tracker.best_epoch is not None:
        tracker.restore(net)
    return TrainResult(history, tracker.best_epoch, len(history))


def _train_epoch(net: nn.Module, data: ArrayData, targets: torch.Tensor, weights: torch.Tensor,
                 cfg: TrainConfig, optimiser: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device,
                 rng: np.random.Generator) -> float:
    net.train()
    n = len(data)
    order = rng.permutation(n)
    view_idx = rng.integers(data.n_views(), size=n) if data.n_views() else None
    total = 0.0
    for start in range(0, n, cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        batch = data.batch(idx, device, None if view_idx is None else view_idx[idx])
        loss = classification_loss(net(batch), targets[idx], weights, cfg.focal_gamma)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        total += loss.item() * len(idx)
    return total / n


@torch.no_grad()
def predict_logits(net: nn.Module, data: ArrayData, device: torch.device) -> torch.Tensor:
    """Logits ``[N, C]`` in eval mode, batched, in row order."""
    net.eval()
    chunks = [net(data.batch(np.arange(s, min(s + EVAL_BATCH, len(data))), device))
              for s in range(0, len(data), EVAL_BATCH)]
    return torch.cat(chunks).float()


def evaluate(net: nn.Module, data: ArrayData, y: np.ndarray, weights: torch.Tensor | None,
             gamma: float, device: torch.device) -> dict[str, float]:
    logits = predict_logits(net, data, device)
    target = torch.as_tensor(y, dtype=torch.long, device=device)
    pred = logits.argmax(dim=1).cpu().numpy()
    return {
        "val_loss": classification_loss(logits, target, weights, gamma).item(),
        "val_accuracy": float(np.mean(pred == y)),
        "val_balanced_accuracy": float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)])),
    }


class _BestTracker:
    """Best monitored value so far and a copy of the trainable parameters then."""

    def __init__(self, monitor: str) -> None:
        self.sign = 1.0 if monitor == "loss" else -1.0  # minimise sign * value
        self.best = math.inf
        self.best_epoch: int | None = None
        self._state: dict[str, torch.Tensor] = {}

    def update(self, value: float, epoch: int, net: nn.Module) -> bool:
        # Ties go to the later epoch: a few-shot val draw often gives the same accuracy for
        # many epochs, and keeping the first of them would keep an almost untrained head
        # (the references keep the last epoch; this only departs from it on real gains).
        if not self.sign * value <= self.best:
            return False
        self.best, self.best_epoch = self.sign * value, epoch
        self._state = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
        return True

    def epochs_since_best(self, epoch: int) -> int:
        return 0 if self.best_epoch is None else epoch - self.best_epoch

    def restore(self, net: nn.Module) -> None:
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name in self._state:
                    p.copy_(self._state[name])


def _make_optimiser(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if not params:
        raise ValueError("network has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    warm = min(cfg.warmup_epochs * steps_per_epoch, total)

    def factor(step: int) -> float:
        if step < warm:
            if cfg.warmup == "constant":
                return cfg.warmup_lr / cfg.lr
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


__all__ = ["TrainConfig", "ArrayData", "TrainResult", "train_module", "predict_logits", "evaluate"]
