"""LP++ (Huang, Shakeri, Dolz, Boudiaf, Bouchard, Ben Ayed, CVPR 2024, "LP++:
A Surprisingly Strong Linear Probe for Few-Shot CLIP"), following
``methods/linear_probe_p2.py`` and ``configs/base.yaml`` of
``FereshteShakeri/FewShot-CLIP-Strong-Baseline``.

A linear probe whose class weights blend visual prototypes with the text
embeddings through learned class-wise multipliers::

    logits = x W^T + b + alpha ⊙ (x T^T)        (no logit scale on either term)

* initialisation (data-driven, no search): ``W`` row k = the *sum* of the
  class-k training embeddings (the reference's ``compute_centroids`` leaves the
  division commented out); ``b`` as ``nn.Linear``'s default,
  ``U(-1/sqrt(D), 1/sqrt(D))`` (seeded); every ``alpha_k`` = the class average of
  ``alpha_init_scale · mean_{x in k} x^T t_k`` (scale 250);
* step sizes from the Lipschitz bounds of the paper (block majorize-minimize),
  as computed by the code: ``lr_W = 4N / lambda_max(X^T X)`` and
  ``lr_alpha = N / (4 max_k sum_i (x_i^T t_k)^2)``;
* full-batch training for 300 epochs: every epoch one SGD step (momentum 0.9)
  on ``W, b`` with ``lr_W``; every 10th epoch a plain gradient step on
  ``alpha`` with ``lr_alpha``. The reference never zeroes ``alpha``'s gradient
  (only the optimiser's parameters are zeroed), so the step uses the gradient
  *accumulated over all epochs so far*; ``accumulate_alpha_grad: true`` keeps
  that, ``false`` steps with the current epoch's gradient only.
* the reference evaluates the few-shot validation draw after every epoch and
  reports the test accuracy of the last epoch with the best validation accuracy
  (``acc_val >= best``). ``epoch_selection: val`` (default) keeps that epoch's
  ``W, b, alpha``; ``last`` keeps the final epoch and reads no validation rows.
  So with the default LP++ *does* select on validation (the epoch, not a
  hyper-parameter): ``selects_on_validation`` follows ``epoch_selection``.

Deviations:
* Training rows: the reference encodes one augmented pass of the support
  images (``train_tranform``: random resized crop + flip); here the first cached
  augmented view of each image (``X.views[:, 0]``, already L2-normalised as in
  the reference), or ``X.cls`` without views / with ``views=None``.
* Text weights: the task's template ensemble (``template=None``) or one
  template; the reference uses each dataset's Tip-Adapter template list.
* float32 (the reference runs the probe in the CLIP model's dtype, fp16 on GPU).
* ``alpha`` init averages per-class means; the reference divides class sums by
  the nominal shot count — identical for balanced draws. Classes without
  training rows are left out of that average and keep ``W_k = 0``.
"""
from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.features import FeatureSet, TextContext
from pipeline.heads.base import BaseHead, resolve_device, text_classifier

logger = logging.getLogger(__name__)

EPOCH_SELECTION = ("val", "last")


def lr_weights(feats: np.ndarray) -> float:
    """``4N / lambda_max(X^T X)`` (reference ``calculate_lr_w``)."""
    feats = np.asarray(feats, dtype=np.float64)
    return float(4 * len(feats) / np.linalg.eigvalsh(feats.T @ feats)[-1])


def lr_alpha(feats: np.ndarray, text_weights: np.ndarray) -> float:
    """``N / (4 max_k sum_i (x_i^T t_k)^2)`` (reference ``calculate_lr_alpha``)."""
    sims = np.asarray(feats, dtype=np.float64) @ np.asarray(text_weights, dtype=np.float64).T
    return float(len(feats) / (4 * np.max(np.sum(sims ** 2, axis=0))))


def init_alpha(feats: np.ndarray, y: np.ndarray, text_weights: np.ndarray, scale: float) -> float:
    """``scale`` x the class average of the mean own-class cosine (reference ``calculate_init_alpha``)."""
    sims = np.asarray(feats, dtype=np.float64) @ np.asarray(text_weights, dtype=np.float64).T
    own = [sims[y == k, k].mean() for k in np.unique(y)]
    return float(scale * np.mean(own))


def class_sums(feats: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """[C, D] per-class sums of the training rows (reference ``compute_centroids``)."""
    sums = np.zeros((n_classes, feats.shape[1]), dtype=np.float64)
    np.add.at(sums, y, np.asarray(feats, dtype=np.float64))
    return sums


class LPPlusPlusHead(BaseHead):
    """Linear probe plus learned class-wise text blending, Lipschitz step sizes."""

    def __init__(self, *, epochs: int = 300, alpha_every: int = 10, alpha_init_scale: float = 250.0,
                 momentum: float = 0.9, accumulate_alpha_grad: bool = True,
                 epoch_selection: Literal["val", "last"] = "val", template: int | None = None,
                 views: str | None = "tip", seed: int = 0, device: Literal["auto", "cpu", "cuda"] = "auto") -> None:
        self.epochs = epochs
        self.alpha_every = alpha_every
        self.alpha_init_scale = alpha_init_scale
        self.momentum = momentum
        self.accumulate_alpha_grad = accumulate_alpha_grad
        self.epoch_selection = epoch_selection
        self.template = template
        self.views = views
        self.seed = seed
        self.device = device

    @property
    def selects_on_validation(self) -> bool:
        """True with ``epoch_selection: val`` (the epoch is chosen on the validation rows)."""
        return self.epoch_selection == "val"

    def _fit(self, X: FeatureSet, y: np.ndarray, *, text: TextContext,
             X_val: FeatureSet | None, y_val: np.ndarray | None) -> int:
        if self.epoch_selection not in EPOCH_SELECTION:
            raise ValueError(f"epoch_selection must be one of {EPOCH_SELECTION}, got {self.epoch_selection!r}")
        device = self.device_ = resolve_device(self.device)
        n_classes = len(text.class_names)
        feats = np.asarray(X.views[:, 0] if self.views and X.views is not None else X.cls, dtype=np.float32)
        dim = feats.shape[1]
        self.text_weights_ = text_classifier(text, self.template)
        self.lr_w_ = lr_weights(feats)
        self.lr_alpha_ = lr_alpha(feats, self.text_weights_)
        self.alpha_init_ = init_alpha(feats, y, self.text_weights_, self.alpha_init_scale)

        def t(a):
            return torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)

        generator = torch.Generator().manual_seed(int(self.seed))
        bound = 1.0 / np.sqrt(dim)
        weight = torch.nn.Parameter(t(class_sums(feats, y, n_classes)))
        bias = torch.nn.Parameter(((torch.rand(n_classes, generator=generator) * 2 - 1) * bound).to(device))
        alpha = torch.full((n_classes,), self.alpha_init_, device=device, requires_grad=True)
        self.init_state_ = {"W": weight.detach().cpu().numpy().copy(), "b": bias.detach().cpu().numpy().copy(),
                            "alpha": alpha.detach().cpu().numpy().copy()}
        optimiser = torch.optim.SGD([weight, bias], lr=self.lr_w_, momentum=self.momentum)
        x, target = t(feats), torch.as_tensor(y, device=device)
        text_logits = x @ t(self.text_weights_).T
        use_val = self.epoch_selection == "val" and X_val is not None
        if use_val:
            xv = t(X_val.cls)
            text_val, target_val = xv @ t(self.text_weights_).T, torch.as_tensor(y_val, device=device)
        best_acc, self.best_epoch_ = 0.0, self.epochs - 1
        self.history_: list[dict] = []
        state = None
        for epoch in range(self.epochs):
            logits = x @ weight.T + bias + alpha * text_logits
            loss = F.cross_entropy(logits, target)
            optimiser.zero_grad()
            if not self.accumulate_alpha_grad:
                alpha.grad = None
            loss.backward()
            optimiser.step()
            if (epoch + 1) % self.alpha_every == 0:
                with torch.no_grad():
                    alpha -= self.lr_alpha_ * alpha.grad
            record = {"epoch": epoch, "loss": float(loss.detach())}
            if use_val:
                with torch.no_grad():
                    val_logits = xv @ weight.T + bias + alpha * text_val
                    acc = float((val_logits.argmax(1) == target_val).float().mean())
                record["val_accuracy"] = acc
                if acc >= best_acc:  # ties go to the later epoch, as in the reference
                    best_acc, self.best_epoch_ = acc, epoch
                    state = [p.detach().clone() for p in (weight, bias, alpha)]
            self.history_.append(record)
        if state is None:
            state = [p.detach().clone() for p in (weight, bias, alpha)]
        self.W_, self.b_, self.alpha_ = (p.cpu().numpy() for p in state)
        if use_val:
            logger.info("lp_plusplus: epoch %d of %d (val acc %.4f)", self.best_epoch_ + 1, self.epochs, best_acc)
        return int(weight.numel() + bias.numel() + alpha.numel())

    def _logits(self, X: FeatureSet) -> np.ndarray:
        x = np.asarray(X.cls, dtype=np.float64)
        return x @ self.W_.T.astype(np.float64) + self.b_ + self.alpha_ * (x @ self.text_weights_.T.astype(np.float64))
