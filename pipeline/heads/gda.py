"""GDA (Wang et al., ICLR 2024, "A Hard-to-Beat Baseline for Training-free
CLIP-based Adaptation"), following the reference ``main_few_shots.py`` of
``mrflogs/ICLR24``.

Gaussian discriminant analysis on the image embeddings, added to zero-shot CLIP:

* support rows ``x_i`` (every augmented view of every training image, as the
  reference stacks its ``augment_epoch = 10`` augmented passes), class means
  ``mu_k``;
* the shared precision from the reference's shrinkage ("KS") estimator: with
  ``Z`` the class-centred rows (n of them, dimension D), ``S = Z^T Z`` and
  ``Sigma_hat = S / (n - 1)``::

      P = D · pinv(S + trace(Sigma_hat) · I)

* ``w_k = P mu_k`` and ``b_k = log pi_k - mu_k^T P mu_k / 2`` with the
  reference's *uniform* prior ``pi_k = 1 / C`` (the code does not use class
  frequencies; few-shot draws are balanced anyway);
* ``logits = s · x T^T + alpha · (x W^T + b)``.

``alpha`` is chosen on the validation rows from the reference's grid
``(1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100)``: first strictly better accuracy wins,
starting from accuracy 0 with ``alpha = 0.1`` (so a grid where every alpha
scores 0 keeps 0.1, as in the reference). Without validation rows ``alpha`` is
``init_alpha`` (0.1, the reference's starting value).

Deviations:
* ``s`` is ``text.logit_scale`` (the reference hard-codes 100; equal for
  OpenAI CLIP).
* The augmented support rows are the cached views ``X.views`` (``n`` of the view set,
  them per image, 10 by default like the reference's ``augment_epoch``), each
  already L2-normalised as in the reference; without views (or with
  ``views=None``) the plain embeddings ``X.cls`` are the support rows.
* Text weights: the template ensemble of the task's cached prompts by default
  (``template=None``), or one template by index. The reference uses each
  dataset's template list from Tip-Adapter (one hand-written template for most
  datasets, an ensemble for ImageNet); our prompts are the task's own.
* A class without training rows (never in a balanced few-shot draw) gets
  ``w_k = 0, b_k = log pi_k``: zero-shot only. The reference would produce NaN.
* Everything is computed in float64 numpy (the reference: float32 torch on GPU).
"""
from __future__ import annotations

import logging

import numpy as np

from pipeline.features import FeatureSet, TextContext
from pipeline.heads.base import BaseHead, text_classifier

logger = logging.getLogger(__name__)

REF_ALPHA_GRID = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
REF_INIT_ALPHA = 0.1


def support_rows(X: FeatureSet, y: np.ndarray, use_views: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows [M, D], labels [M]): every cached view as its own row, else the embeddings."""
    if use_views and X.views is not None:
        views = np.asarray(X.views, dtype=np.float64)
        return views.reshape(-1, views.shape[-1]), np.repeat(y, views.shape[1])
    return np.asarray(X.cls, dtype=np.float64), np.asarray(y)


def shrunk_precision(centred: np.ndarray) -> np.ndarray:
    """The reference's estimator: ``D · pinv(Z^T Z + trace(cov(Z)) · I)`` for centred rows ``Z``.

    ``Z^T Z`` is positive semi-definite, so with a positive trace the matrix is
    positive definite and its pseudo-inverse is its inverse (an SVD-based
    ``pinv`` of a D x D matrix is ~50x slower); with zero trace (every class a
    single row) it is the zero matrix, whose pseudo-inverse is zero.
    """
    n, dim = centred.shape
    scatter = centred.T @ centred
    trace = np.trace(scatter) / max(n - 1, 1)
    if trace <= 0:
        return np.zeros((dim, dim))
    return dim * np.linalg.inv(scatter + trace * np.eye(dim))


def gda_parameters(rows: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(W [C, D], b [C]) of linear discriminant analysis with the shrunk shared precision."""
    dim = rows.shape[1]
    present = np.array([np.any(labels == k) for k in range(n_classes)])
    means = np.zeros((n_classes, dim))
    for k in np.flatnonzero(present):
        means[k] = rows[labels == k].mean(axis=0)
    precision = shrunk_precision(rows - means[labels])
    weights = means @ precision  # precision is symmetric: row k is P mu_k
    log_prior = np.log(np.full(n_classes, 1.0 / n_classes))
    bias = log_prior - 0.5 * np.einsum("kd,kd->k", weights, means)
    return weights, bias


def search_alpha(zs_logits: np.ndarray, gda_logits: np.ndarray, y: np.ndarray,
                 grid: tuple[float, ...], init: float) -> tuple[float, float]:
    """(alpha, val accuracy): first strictly better accuracy over ``grid``, from (0, init)."""
    best_correct, best_alpha = 0, init
    for alpha in grid:
        correct = int(np.sum((zs_logits + alpha * gda_logits).argmax(1) == y))
        if correct > best_correct:
            best_correct, best_alpha = correct, float(alpha)
    return best_alpha, best_correct / max(1, len(y))


class GDAHead(BaseHead):
    """Zero-shot CLIP plus a shrunk-covariance LDA on the image embeddings; alpha on validation."""

    #: alpha is chosen on the validation rows
    selects_on_validation = True

    def __init__(self, *, alpha_grid: tuple[float, ...] = REF_ALPHA_GRID, init_alpha: float = REF_INIT_ALPHA,
                 template: int | None = None, views: str | None = "tip") -> None:
        self.alpha_grid = alpha_grid
        self.init_alpha = init_alpha
        self.template = template
        self.views = views

    def _fit(self, X: FeatureSet, y: np.ndarray, *, text: TextContext,
             X_val: FeatureSet | None, y_val: np.ndarray | None) -> int:
        n_classes = len(text.class_names)
        rows, labels = support_rows(X, y, bool(self.views))
        self.W_, self.b_ = gda_parameters(rows, labels, n_classes)
        self.class_weights_ = text_classifier(text, self.template).astype(np.float64)
        self.logit_scale_ = float(text.logit_scale)
        self.alpha_ = float(self.init_alpha)
        if X_val is not None:
            self.alpha_, acc = search_alpha(self._zero_shot(X_val), self._gda(X_val), y_val,
                                            tuple(self.alpha_grid), float(self.init_alpha))
            logger.info("gda: alpha=%g (val acc %.4f)", self.alpha_, acc)
        return 0

    def _zero_shot(self, X: FeatureSet) -> np.ndarray:
        return self.logit_scale_ * np.asarray(X.cls, dtype=np.float64) @ self.class_weights_.T

    def _gda(self, X: FeatureSet) -> np.ndarray:
        return np.asarray(X.cls, dtype=np.float64) @ self.W_.T + self.b_

    def _logits(self, X: FeatureSet) -> np.ndarray:
        return self._zero_shot(X) + self.alpha_ * self._gda(X)
