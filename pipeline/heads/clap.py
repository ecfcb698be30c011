"""CLAP, CLass-Adaptive linear Probing (Silva-Rodriguez et al., CVPR 2024, "A
Closer Look at the Few-Shot Adaptation of Large Vision-Language Models"),
following ``trainers/adapters.py`` of ``jusiro/CLAP`` (``INIT ZS``,
``CONSTRAINT l2``, ``configs/trainers/SGD_lr1e-1_B256_ep300.yaml``).

A linear probe whose class prototypes ``w_k`` start at the zero-shot text
embeddings ``t_k`` and are kept near them by a class-adaptive penalty::

    logits = s · (x / |x|) (w_k / |w_k|)^T
    loss   = CE(logits, y) + mean_k lambda_k ||w_k - t_k||^2

* multipliers ``lambda_k`` start from zero-shot CLIP's *confidence* on the
  support set: the mean softmax probability of class k over the support rows
  of class k (``init_lagrangian_multipliers``);
* with ``adaptive=True`` they follow the reference's augmented-Lagrangian
  outer step after every epoch (``outer_step``, the PHR function's gradient)::

      h_k      = ||w_k - t_k||^2
      lambda_k <- max(0, lambda_k + rho_k h_k)   (0 where lambda_k + rho_k h_k < 0)
      rho_k    <- h_k                             (rho starts at 0)

  The published runs (``experiments/experiment_CLAP.txt``, the README's usage:
  ``CONSTRAINT l2``) never call it — the outer step only runs when the
  constraint name contains ``adaptative`` — so the default keeps the initial
  multipliers fixed, as the paper's results were produced (``adaptive: false``).
* optimisation as the reference config: SGD (Dassl's momentum 0.9), lr 0.1,
  no weight decay, 300 epochs, batch 256, one epoch of constant warmup at
  1e-5, then a per-epoch cosine decay over the 300 epochs (Dassl's
  ``ConstantWarmupScheduler`` around ``CosineAnnealingLR``). The training rows
  are all augmented views (the reference extracts 20 augmented passes), shuffled
  every epoch, but an epoch has only as many batches as the *un-augmented*
  support set would give (``len(train_loader_x)``: ``N // 256``, at least one),
  as in the reference's ``run_epoch``.

No validation rows are read at all: nothing is selected, the last epoch is kept
(``selects_on_validation = False``), as the paper's point is adaptation without a
validation set.

Deviations:
* The reference's base text features are the *unnormalised* mean of the raw
  text-tower outputs over its templates (one hand-written template per
  dataset; ImageNet adds 7 more); the cache holds only L2-normalised
  embeddings, so ``t_k`` is the normalised template ensemble of the task's
  prompts (or one template by index). The logits normalise ``w_k`` and are
  unchanged; but if the raw text embeddings had norm ``r``, SGD on ``w`` is SGD
  on ``u = w / r`` with learning rate ``lr / r^2`` and multipliers
  ``lambda · r^2`` — the schedule and penalty act on a different scale than
  in the reference (which is scale-sensitive).
* The augmented rows are the cached views ``X.views`` of the set named by
  ``views`` (``dassl``: the reference config's Dassl ``random_resized_crop``,
  scale (0.08, 1), and ``random_flip``; 10 views by default instead of 20
  passes); ``X.cls`` without views or with ``views=None``.
* A class without support rows (never in a balanced few-shot draw) starts with
  ``lambda_k = 1`` (the reference divides by zero).
* The softmax logit scale is ``text.logit_scale`` (the reference: the CLIP
  model's ``logit_scale.exp()``, the same quantity).
"""
from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.features import FeatureSet, TextContext
from pipeline.heads.base import BaseHead, resolve_device, seeded, text_classifier

logger = logging.getLogger(__name__)


def initial_multipliers(zs_logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean zero-shot softmax probability of the true class, per class (1 for an absent class)."""
    proba = torch.softmax(zs_logits, dim=-1)
    one_hot = F.one_hot(labels, n_classes).to(proba.dtype)
    counts = one_hot.sum(0)
    confidence = torch.diag(proba.T @ one_hot) / counts.clamp(min=1)
    return torch.where(counts > 0, confidence, torch.ones_like(confidence))


def outer_step(distance: torch.Tensor, multipliers: torch.Tensor,
               penalty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's augmented-Lagrangian update: (new multipliers, new penalty parameters)."""
    x = multipliers + penalty * distance
    return torch.where(x >= 0, x, torch.zeros_like(x)), distance.clone()


def clap_loss(prototypes: torch.Tensor, base: torch.Tensor, feats: torch.Tensor, target: torch.Tensor,
              multipliers: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Cross-entropy of the cosine logits plus ``mean_k lambda_k ||w_k - t_k||^2``."""
    logits = logit_scale * feats @ F.normalize(prototypes, dim=-1).T
    constraint = torch.mean(multipliers * (prototypes - base).pow(2).sum(-1))
    return F.cross_entropy(logits, target) + constraint


def epoch_lr(epoch: int, lr: float, epochs: int, warmup_epochs: int, warmup_lr: float) -> float:
    """Dassl's constant warmup then per-epoch cosine over ``epochs``: the lr used in ``epoch``."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


class CLAPHead(BaseHead):
    """Zero-shot-initialised linear probe with a class-adaptive l2 constraint; no validation."""

    #: no hyper-parameter, epoch or checkpoint is chosen on validation rows (none are read)
    selects_on_validation = False

    def __init__(self, *, epochs: int = 300, batch_size: int = 256, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 0.0, warmup_epochs: int = 1, warmup_lr: float = 1e-5,
                 adaptive: bool = False, template: int | None = None, views: str | None = "dassl", seed: int = 0,
                 device: Literal["auto", "cpu", "cuda"] = "auto") -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.adaptive = adaptive
        self.template = template
        self.views = views
        self.seed = seed
        self.device = device

    def _fit(self, X: FeatureSet, y: np.ndarray, *, text: TextContext,
             X_val: FeatureSet | None, y_val: np.ndarray | None) -> int:
        device = self.device_ = resolve_device(self.device)
        n_classes = len(text.class_names)
        if self.views and X.views is not None:
            views = np.asarray(X.views, dtype=np.float32)
            rows, labels = views.reshape(-1, views.shape[-1]), np.repeat(y, views.shape[1])
        else:
            rows, labels = np.asarray(X.cls, dtype=np.float32), y
        feats = F.normalize(torch.as_tensor(rows, device=device), dim=-1)
        target = torch.as_tensor(labels, device=device)
        self.logit_scale_ = float(text.logit_scale)
        self.text_weights_ = text_classifier(text, self.template)
        base = torch.as_tensor(self.text_weights_, device=device)
        with torch.no_grad():
            multipliers = initial_multipliers(self.logit_scale_ * feats @ base.T, target, n_classes)
        self.initial_multipliers_ = multipliers.cpu().numpy()
        penalty = torch.zeros_like(multipliers)
        prototypes = torch.nn.Parameter(base.clone())
        optimiser = torch.optim.SGD([prototypes], lr=self.warmup_lr, momentum=self.momentum,
                                    weight_decay=self.weight_decay)
        n_batches = max(1, len(y) // self.batch_size)  # Dassl: drop_last only when N >= batch size
        self.history_: list[dict] = []
        with seeded(self.seed, device) as rng:
            for epoch in range(self.epochs):
                lr = epoch_lr(epoch, self.lr, self.epochs, self.warmup_epochs, self.warmup_lr)
                for group in optimiser.param_groups:
                    group["lr"] = lr
                order = torch.as_tensor(rng.permutation(len(feats)), device=device)
                for b in range(n_batches):
                    idx = order[b * self.batch_size:(b + 1) * self.batch_size]
                    if len(idx) == 0:
                        break
                    loss = clap_loss(prototypes, base, feats[idx], target[idx], multipliers, self.logit_scale_)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                if self.adaptive:
                    with torch.no_grad():
                        distance = (prototypes - base).pow(2).sum(-1)
                        multipliers, penalty = outer_step(distance, multipliers, penalty)
                self.history_.append({"epoch": epoch, "lr": lr, "loss": float(loss.detach())})
        self.multipliers_ = multipliers.detach().cpu().numpy()
        self.prototypes_ = prototypes.detach().cpu().numpy()
        return int(prototypes.numel())

    def _logits(self, X: FeatureSet) -> np.ndarray:
        feats = np.asarray(X.cls, dtype=np.float64)
        feats = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
        protos = self.prototypes_.astype(np.float64)
        return self.logit_scale_ * feats @ (protos / np.linalg.norm(protos, axis=-1, keepdims=True)).T
