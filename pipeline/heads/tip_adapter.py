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
  ``use_views=False``.
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
from pipeline.heads.base import BaseHead, l2_normalise, resolve_device, text_classifier

logger = logging.getLogger(__name__)

REF_SEARCH_SCALE = (7.0, 3.0)  # (beta, alpha), reference configs/imagenet.yaml
REF_SEARCH_STEP = (200, 20)
REF_INIT_ALPHA = 1.17
REF_INIT_BETA = 1.0
_ROWS = 1024  # rows per chunk, bounds the [rows, K] affinity matrix


def cache_keys(X: FeatureSet, use_views: bool) -> np.ndarray:
    """[K, D] keys: mean of the raw augmented views, normalised, else the embeddings (corrected when given)."""
    views = X.views if X.corrected is None else X.corrected_views
    if use_views and views is not None:
        views = np.asarray(views, dtype=np.float32)
        if X.corrected is None and X.views_norm is not None:
            views = views * np.asarray(X.views_norm, dtype=np.float32)[..., None]  # the raw passes
        return l2_normalise(views.mean(axis=1))
    return affinity_features(X)


def affinity_features(X: FeatureSet) -> np.ndarray:
    """The embeddings that image-image affinities use: overlap-corrected when given, else ``X.cls``."""
    return np.asarray(X.cls if X.corrected is None else X.corrected, dtype=np.float32)


def cache_values(y: np.ndarray, n_classes: int) -> np.ndarray:
    """[K, C] one-hot labels over all task classes."""
    return np.eye(n_classes, dtype=np.float32)[y]


def search_grid(scale: float, steps: int) -> list[float]:
    """The reference's grid: ``[i * (scale - 0.1) / steps + 0.1 for i < steps]``."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def tip_logits(clip_logits: torch.Tensor, affinity: torch.Tensor, values: torch.Tensor,
               alpha: float, beta: float) -> torch.Tensor:
    """``clip_logits + alpha * exp(-beta * (1 - affinity)) @ values``."""
    cache_logits = torch.exp(-beta * (1.0 - affinity)) @ values
    return clip_logits + alpha * cache_logits


def search_alpha_beta(clip_logits: torch.Tensor, affinity: torch.Tensor, values: torch.Tensor,
                      y: np.ndarray, scale: tuple[float, float], steps: tuple[int, int],
                      init: tuple[float, float] = (REF_INIT_ALPHA, REF_INIT_BETA)) -> tuple[float, float, float]:
    """(alpha, beta, val accuracy) by the reference's exhaustive grid search; an empty grid
    (a step of 0) keeps ``init``, the head's (alpha, beta), and reports accuracy -1/len(y)."""
    target = torch.as_tensor(y, device=clip_logits.device)
    betas, alphas = search_grid(scale[0], steps[0]), search_grid(scale[1], steps[1])
    best = (-1, *init)
    for beta in betas:
        cache_logits = torch.exp(-beta * (1.0 - affinity)) @ values
        for alpha in alphas:
            correct = int(((clip_logits + alpha * cache_logits).argmax(1) == target).sum())
            if correct > best[0]:  # strict: the first best pair wins, as in the reference
                best = (correct, alpha, beta)
    return best[1], best[2], best[0] / max(1, len(y))


IMO_ALPHAS = (0.0, 20.0, 200)  # np.linspace(0, alpha_max, N_search_alpha) in the correction's run.py
IMO_BETAS = (0.0, 20.0, 20)


def search_alpha_beta_imo(clip_logits: torch.Tensor, affinity: torch.Tensor, values: torch.Tensor,
                          y: np.ndarray, init: tuple[float, float]) -> tuple[float, float, float]:
    """(alpha, beta, val accuracy) on the overlap correction's grid: alpha outer, beta inner."""
    target = torch.as_tensor(y, device=clip_logits.device)
    betas = np.linspace(*IMO_BETAS)
    cache = [torch.exp(-float(beta) * (1.0 - affinity)) @ values for beta in betas]  # one per beta
    best = (0, *init)  # the script starts from 0 correct and keeps strict improvements
    for alpha in np.linspace(*IMO_ALPHAS):
        for beta, cache_logits in zip(betas, cache):
            correct = int(((clip_logits + float(alpha) * cache_logits).argmax(1) == target).sum())
            if correct > best[0]:
                best = (correct, float(alpha), float(beta))
    return best[1], best[2], best[0] / max(1, len(y))


class TipAdapterHead(BaseHead):
    """Training-free cache model; alpha / beta searched on validation rows."""

    #: reads only image embeddings (and views), so an overlap-correcting feature transform applies
    accepts_feature_correction = True

    def __init__(self, *, init_alpha: float = REF_INIT_ALPHA, init_beta: float = REF_INIT_BETA,
                 search_scale: tuple[float, float] = REF_SEARCH_SCALE,
                 search_step: tuple[int, int] = REF_SEARCH_STEP, use_views: bool = True,
                 search: Literal["auto", "tip", "imo"] = "auto",
                 device: Literal["auto", "cpu", "cuda"] = "auto") -> None:
        self.init_alpha = init_alpha
        self.init_beta = init_beta
        self.search_scale = search_scale
        self.search_step = search_step
        self.use_views = use_views
        self.search = search
        self.device = device

    def _fit(self, X: FeatureSet, y: np.ndarray, *, text: TextContext,
             X_val: FeatureSet | None, y_val: np.ndarray | None) -> int:
        self.device_ = resolve_device(self.device)
        self.keys_ = cache_keys(X, self.use_views)
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
        for start in range(0, len(X), _ROWS):
            clip_logits, affinity = self._parts(X.cls[start:start + _ROWS], aff[start:start + _ROWS])
            out.append(tip_logits(clip_logits, affinity, self._t(self.values_),
                                  self.alpha_, self.beta_).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)), np.float32)
