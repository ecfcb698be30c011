"""Tip-Adapter-F (Zhang et al. 2022), the fine-tuned variant, following the
reference ``run_tip_adapter_F``.

The cache keys become the weight of a learnable ``Linear(D, K, bias=False)``
initialised from the cache (:mod:`pipeline.heads.tip_adapter`); values and
text embeddings stay frozen. Training uses the initial ``alpha`` / ``beta``,
cross-entropy, AdamW (lr 0.001, eps 1e-4, PyTorch's default weight decay 0.01
as in the reference), a cosine schedule over all iterations, batch 256,
20 epochs; the epoch with the best accuracy is kept. Then ``alpha`` / ``beta``
are grid-searched on the validation rows with the fine-tuned affinities, as in
the reference's ``search_hp(..., adapter=adapter)``.

Deviations:
* The reference picks the best epoch by *test* accuracy; here it is
  validation accuracy (``monitor``), and without validation rows the last
  epoch and the initial ``alpha`` / ``beta`` are kept.
* Augmentation: one cached augmented view per row per epoch (``X.views``)
  stands in for re-augmenting the images every epoch; ``X.cls`` without views.
* ``logit_scale`` replaces the hard-coded 100 (see :mod:`tip_adapter`).

With overlap-corrected embeddings the keys and the affinity inputs are the
corrected ones and the CLIP logits keep the original embedding, as in
:mod:`tip_adapter`.
"""
from __future__ import annotations

import logging
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from pipeline.features import FeatureSet, TextContext
from pipeline.heads.base import text_classifier
from pipeline.heads.losses import ClassWeighting
from pipeline.heads.cache_model import (REF_INIT_ALPHA, REF_INIT_BETA, REF_SEARCH_SCALE,
                                        REF_SEARCH_STEP, affinity_features, cache_keys, cache_values,
                                        search_alpha_beta, tip_logits)
from pipeline.heads.trainable import TorchHead, frozen_buffer

logger = logging.getLogger(__name__)


class TipAdapterFNet(nn.Module):
    """Learnable keys (``adapter.weight`` [K, D]) + frozen values and text."""

    def __init__(self, keys: np.ndarray, values: np.ndarray, class_weights: np.ndarray,
                 logit_scale: float, alpha: float, beta: float) -> None:
        super().__init__()
        self.adapter = nn.Linear(keys.shape[1], keys.shape[0], bias=False)
        with torch.no_grad():
            self.adapter.weight.copy_(frozen_buffer(keys))
        self.register_buffer("values", frozen_buffer(values))
        self.register_buffer("class_weights", frozen_buffer(class_weights))
        self.logit_scale = logit_scale
        self.alpha, self.beta = alpha, beta

    def parts(self, feats: torch.Tensor, affinity_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clip logits of ``feats``, fine-tuned affinity of ``affinity_feats``)."""
        return self.logit_scale * feats @ self.class_weights.T, self.adapter(affinity_feats)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        clip_logits, affinity = self.parts(batch["cls"], batch["affinity"])
        return tip_logits(clip_logits, affinity, self.values, self.alpha, self.beta)


class TipAdapterFHead(TorchHead):
    """Tip-Adapter with fine-tuned cache keys."""

    adam_eps: ClassVar[float] = 1e-4
    #: reads only image embeddings (and views), so an overlap-correcting feature transform applies
    accepts_feature_correction: ClassVar[bool] = True

    def __init__(self, *, init_alpha: float = REF_INIT_ALPHA, init_beta: float = REF_INIT_BETA,
                 search_scale: tuple[float, float] = REF_SEARCH_SCALE,
                 search_step: tuple[int, int] = REF_SEARCH_STEP,
                 epochs: int = 20, batch_size: int = 256, lr: float = 0.001,
                 optimizer: Literal["sgd", "adamw"] = "adamw", weight_decay: float = 0.01,
                 warmup_epochs: int = 0, warmup: Literal["linear", "constant"] = "linear",
                 warmup_lr: float = 1e-5, patience: int = 0,
                 monitor: Literal["loss", "accuracy", "balanced_accuracy"] = "accuracy",
                 class_weight: ClassWeighting = "none", focal_gamma: float = 0.0,
                 views: str | None = "tip", seed: int = 0,
                 device: Literal["auto", "cpu", "cuda"] = "auto") -> None:
        self.init_alpha = init_alpha
        self.init_beta = init_beta
        self.search_scale = search_scale
        self.search_step = search_step
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.warmup = warmup
        self.warmup_lr = warmup_lr
        self.patience = patience
        self.monitor = monitor
        self.class_weight = class_weight
        self.focal_gamma = focal_gamma
        self.views = views
        self.seed = seed
        self.device = device

    def _arrays(self, X: FeatureSet) -> dict[str, np.ndarray]:
        return {"cls": np.asarray(X.cls, np.float32), "affinity": affinity_features(X)}

    def _view_arrays(self, X: FeatureSet) -> dict[str, np.ndarray]:
        if X.views is None:
            return {}
        if X.corrected is None:
            return {"cls": X.views, "affinity": X.views}
        # corrected rows without corrected views: train on the rows themselves, never on a mix
        return {} if X.corrected_views is None else {"cls": X.views, "affinity": X.corrected_views}

    def _build_net(self, X: FeatureSet, y: np.ndarray, text: TextContext) -> nn.Module:
        return TipAdapterFNet(cache_keys(X, bool(self.views)), cache_values(y, len(text.class_names)),
                              text_classifier(text, None), float(text.logit_scale),
                              float(self.init_alpha), float(self.init_beta))

    def _empty_net(self, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
        return TipAdapterFNet(*(np.zeros(shapes[k]) for k in ("adapter.weight", "values", "class_weights")),
                              0.0, 0.0, 0.0)

    @torch.no_grad()
    def _finish(self, net: nn.Module, X_val: FeatureSet | None, y_val: np.ndarray | None) -> None:
        self.net_ = net
        if X_val is not None:
            feats, aff = (torch.as_tensor(a, device=self.device_) for a in self._arrays(X_val).values())
            clip_logits, affinity = net.parts(feats, aff)
            net.alpha, net.beta, acc = search_alpha_beta(
                clip_logits, affinity, net.values, y_val,
                tuple(self.search_scale), tuple(self.search_step), init=(net.alpha, net.beta))
            logger.info("tip_adapter_f: alpha=%.3f beta=%.3f (val acc %.4f)", net.alpha, net.beta, acc)
        self.alpha_, self.beta_ = net.alpha, net.beta
