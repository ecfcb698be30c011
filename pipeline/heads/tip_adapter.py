"""Tip-Adapter (Zhang et al. 2022, "Tip-Adapter: Training-free Adaption of CLIP
for Few-shot Classification"), training-free variant, following the reference
``main.py`` / ``utils.py``.

Cache model from the few-shot training rows: keys ``F`` [K, D] (normalised
image embeddings), values ``L`` [K, C] (one-hot labels). For a test embedding
``f``::

    A      = f F^T                                  affinity [N, K]
    logits = s · f W^T + alpha · exp(-beta (1 - A)) L

with ``W`` the class text embeddings (template ensemble). ``alpha`` and ``beta``
are grid-searched on the validation rows exactly as the reference's
``search_hp``: ``beta_i = i (scale_b - 0.1) / step_b + 0.1`` for
``i < step_b`` (outer loop) and likewise ``alpha_j`` (inner loop), with
``search_scale = [scale_b, scale_a] = [7, 3]`` and ``search_step = [200, 20]``;
the first pair reaching the best validation accuracy wins. Before searching
(or without validation rows) the reference's ImageNet config is used:
``init_beta = 1``, ``init_alpha = 1.17``.

Deviations:
* ``s`` is ``text.logit_scale`` (exp of the model's learned temperature) where
  the reference hard-codes 100; they coincide for OpenAI CLIP (100.0).
* Keys: as the reference, the raw embeddings of the augmented passes are
  averaged and then normalised; the raw views are rebuilt exactly from the
  cache (``X.views * X.views_norm``). Without stored norms (an old cache) the
  normalised views are averaged; with corrected views too, since the adapter
  maps normalised embeddings. ``X.cls`` when there are no views or
  ``views=None``.
* The reference also prints test accuracy while searching; only validation
  rows are ever used here.

With overlap-corrected embeddings (``X.corrected`` / ``X.corrected_views``,
stage ``train_oc``) the keys and the query side of the affinity ``A`` are the
corrected ones while the CLIP logits keep the original embedding, as in the
correction's reference code (``akres001/CLIP_fewshot_imo``, ``run.py``:
``clip_logits`` from the original features, ``pred_tipadapter`` with corrected
features and keys). That script also searches its own grid, which
``search: auto`` (the default) follows whenever corrected features are given:
``alpha`` over ``linspace(0, 20, 200)`` (outer loop), ``beta`` over
``linspace(0, 20, 20)`` (inner), the first best pair winning (``search: imo``);
without correction, Tip-Adapter's own grid above (``search: tip``).
"""
from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

from pipeline.features import FeatureSet, TextContext
from pipeline.heads.base import BaseHead, resolve_device, text_classifier
from pipeline.heads.cache_model import (REF_INIT_ALPHA, REF_INIT_BETA,  # noqa: F401 (search_grid: re-exported)
                                        REF_SEARCH_SCALE, REF_SEARCH_STEP, ROWS, affinity_features, cache_keys,
                                        cache_values, search_alpha_beta, search_alpha_beta_imo, search_grid,
                                        tip_logits)

logger = logging.getLogger(__name__)


class TipAdapterHead(BaseHead):
    """Training-free cache model; alpha / beta searched on validation rows."""

    #: reads only image embeddings (and views), so an overlap-correcting feature transform applies
    accepts_feature_correction = True

    def __init__(self, *, init_alpha: float = REF_INIT_ALPHA, init_beta: float = REF_INIT_BETA,
                 search_scale: tuple[float, float] = REF_SEARCH_SCALE,
                 search_step: tuple[int, int] = REF_SEARCH_STEP, views: str | None = "tip",
                 search: Literal["auto", "tip", "imo"] = "auto",
                 device: Literal["auto", "cpu", "cuda"] = "auto") -> None:
        self.init_alpha = init_alpha
        self.init_beta = init_beta
        self.search_scale = search_scale
        self.search_step = search_step
        self.views = views
        self.search = search
        self.device = device

    def _fit(self, X: FeatureSet, y: np.ndarray, *, text: TextContext,
             X_val: FeatureSet | None, y_val: np.ndarray | None) -> int:
        self.device_ = resolve_device(self.device)
        self.keys_ = cache_keys(X, bool(self.views))
        self.values_ = cache_values(y, len(text.class_names))
        self.class_weights_ = text_classifier(text, None)
        self.logit_scale_ = float(text.logit_scale)
        self.alpha_, self.beta_ = float(self.init_alpha), float(self.init_beta)
        if X_val is not None:
            clip_logits, affinity = self._parts(X_val.cls, affinity_features(X_val))
            values = self._t(self.values_)
            if self.search == "imo" or (self.search == "auto" and X.corrected is not None):
                self.alpha_, self.beta_, acc = search_alpha_beta_imo(clip_logits, affinity, values, y_val,
                                                                     init=(self.alpha_, self.beta_))
            else:
                self.alpha_, self.beta_, acc = search_alpha_beta(
                    clip_logits, affinity, values, y_val,
                    tuple(self.search_scale), tuple(self.search_step), init=(self.alpha_, self.beta_))
            logger.info("tip_adapter: alpha=%.3f beta=%.3f (val acc %.4f)", self.alpha_, self.beta_, acc)
        return 0

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.device_)

    def _parts(self, feats: np.ndarray, affinity_feats: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(clip logits of ``feats``, affinity of ``affinity_feats`` to the keys)."""
        clip_logits = self.logit_scale_ * self._t(feats) @ self._t(self.class_weights_).T
        return clip_logits, self._t(affinity_feats) @ self._t(self.keys_).T

    @torch.no_grad()
    def _logits(self, X: FeatureSet) -> np.ndarray:
        out = []
        aff = affinity_features(X)
        for start in range(0, len(X), ROWS):
            clip_logits, affinity = self._parts(X.cls[start:start + ROWS], aff[start:start + ROWS])
            out.append(tip_logits(clip_logits, affinity, self._t(self.values_),
                                  self.alpha_, self.beta_).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)), np.float32)
