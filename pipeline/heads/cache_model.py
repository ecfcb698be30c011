"""Tip-Adapter's cache model, shared by Tip-Adapter and Tip-Adapter-F (see :mod:`pipeline.heads.tip_adapter`).

Keys, values, the affinity kernel and the two alpha/beta grid searches (Tip-Adapter's
and the overlap correction's). Every train stage depends on this module, so both heads'
stages rerun when the shared math changes.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.features import FeatureSet
from pipeline.heads.base import l2_normalise

REF_SEARCH_SCALE = (7.0, 3.0)  # (beta, alpha), reference configs/imagenet.yaml
REF_SEARCH_STEP = (200, 20)
REF_INIT_ALPHA = 1.17
REF_INIT_BETA = 1.0
ROWS = 1024  # rows per chunk, bounds the [rows, K] affinity matrix


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
