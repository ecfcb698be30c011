"""ProKeR (Bendou et al., CVPR 2025, "A Kernel Perspective on Few-Shot
Adaptation of Large Vision-Language Models"), training-free version.

The authors' repository (``ybendou/ProKeR``) is stored here only as its project
page; the code followed is ``trainers/proker.py`` and ``main.py`` of the fork
``omarnust/BReg-Adapter``, whose README is ProKeR's own ("ProKeR (ours)").

Kernel ridge regression in the RKHS of Tip-Adapter's kernel, regularised
towards the zero-shot classifier (a proximal step from ``f0``)::

    K(x, y) = exp(-beta (1 - x^T y))
    f0(x)   = x T^T                      (cosines: *no* logit scale, as the code)
    A       = (K_SS / lambda + I)^-1 (Y - f0(S))
    f(x)    = f0(x) + K_xS A

with ``S`` the support rows (every augmented view of every training image: the
reference stacks ``--augment-epoch 10`` augmented passes) and ``Y`` their
one-hot labels. ``beta`` and ``lambda`` are grid-searched on the validation
rows: ``linspace(*beta_grid)`` outer, ``linspace(*lmbda_grid)`` inner, first
strictly better accuracy wins. The default grids are the reference's
``configs/RN50/configs_proker`` ones shared by Caltech101 and Food101
(``beta: [0.5, 3, 20]``, ``lmbda: [0.001, 1, 10]``; the reference keeps one grid
per dataset, none for a new one). Without validation rows ``init_beta`` /
``init_lmbda`` are used: the reference's ImageNet-transferred 16-shot values
(``hyperparameters.json``: beta 1.7, lambda 0.1).

Each ``beta`` of the search needs one eigendecomposition ``K_SS = U diag(s) U^T``;
then ``A = U diag(lambda / (s + lambda)) U^T (Y - f0(S))`` for every ``lambda``
(the same solution as the reference's ``torch.linalg.solve``, cheaper for a grid);
the chosen pair is solved by Cholesky (``K/lambda + I`` is positive definite).
Cost grows as ``(rows x views)^3`` and memory as its square: a few hundred
support rows are instant, 11k (1100 rows x 10 views) take ~1 GB per matrix
and tens of seconds on one CPU thread.

Relation to Tip-Adapter: as ``lambda -> inf``, ``A -> Y - f0(S)`` and
``f(x) -> f0(x) + K_xS Y - K_xS f0(S)``: Tip-Adapter's cache term with
``alpha = 1`` plus a correction that removes what zero-shot already predicts on
the support set.

Deviations:
* Support rows are the cached (normalised) views ``X.views`` (``n`` of the view set per
  image, 10 by default like the reference); ``X.cls`` without views or with
  ``views=None``.
* Text weights: the task's template ensemble by default (``template=None``);
  the reference uses each dataset's Tip-Adapter template list.
* Outputs are regression scores of order 1 (no temperature in the reference,
  which reports only accuracy); ``predict_proba`` is their softmax, so the
  probabilities rank correctly but are far from confident.
* If no grid point reaches a validation accuracy above 0 the reference fails
  (undefined best); here the first grid point is kept.
* float64 throughout (the reference: float32 on GPU) — ``K/lambda + I`` is
  badly conditioned for small ``lambda``.
"""
from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

from pipeline.features import FeatureSet, TextContext
from pipeline.heads.base import BaseHead, resolve_device, text_classifier

logger = logging.getLogger(__name__)

REF_BETA_GRID = (0.5, 3.0, 20)     # linspace(start, stop, num): configs_proker/{caltech101,food101}.yaml
REF_LMBDA_GRID = (0.001, 1.0, 10)
REF_INIT_BETA = 1.7                # configs_proker/hyperparameters.json, 16 shots (ImageNet transfer)
REF_INIT_LMBDA = 0.1


def linspace(spec: tuple[float, float, int]) -> list[float]:
    """The reference's ``torch.linspace(start, stop, num)`` grid (float32 values, as there)."""
    start, stop, num = spec
    return [float(v) for v in torch.linspace(float(start), float(stop), int(num))]


def kernel(a: torch.Tensor, b: torch.Tensor, beta: float) -> torch.Tensor:
    """Tip-Adapter's kernel ``exp(-beta (1 - a b^T))``."""
    return torch.exp(-beta * (1.0 - a @ b.T))


class ProKeRHead(BaseHead):
    """Kernel ridge regression towards zero-shot; beta and lambda on validation."""

    #: beta and lambda are chosen on the validation rows
    selects_on_validation = True

    def __init__(self, *, beta_grid: tuple[float, float, int] = REF_BETA_GRID,
                 lmbda_grid: tuple[float, float, int] = REF_LMBDA_GRID,
                 init_beta: float = REF_INIT_BETA, init_lmbda: float = REF_INIT_LMBDA,
                 template: int | None = None, views: str | None = "tip",
                 device: Literal["auto", "cpu", "cuda"] = "auto") -> None:
        self.beta_grid = beta_grid
        self.lmbda_grid = lmbda_grid
        self.init_beta = init_beta
        self.init_lmbda = init_lmbda
        self.template = template
        self.views = views
        self.device = device

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float64), device=self.device_)

    def _fit(self, X: FeatureSet, y: np.ndarray, *, text: TextContext,
             X_val: FeatureSet | None, y_val: np.ndarray | None) -> int:
        self.device_ = resolve_device(self.device)
        n_classes = len(text.class_names)
        if self.views and X.views is not None:
            views = np.asarray(X.views, dtype=np.float64)
            support, labels = views.reshape(-1, views.shape[-1]), np.repeat(y, views.shape[1])
        else:
            support, labels = np.asarray(X.cls, dtype=np.float64), y
        self.support_ = support
        self.class_weights_ = text_classifier(text, self.template).astype(np.float64)
        S, T = self._t(support), self._t(self.class_weights_)
        residual = self._t(np.eye(n_classes)[labels]) - S @ T.T  # Y - f0(S)
        self.beta_, self.lmbda_ = float(self.init_beta), float(self.init_lmbda)
        self.search_log_: list[tuple[float, float, float]] = []  # (beta, lambda, val accuracy)
        if X_val is not None:
            self.beta_, self.lmbda_ = self._search(S, T, residual, X_val, y_val)
        # K/lambda + I is symmetric positive definite: a Cholesky solve (half an LU's cost)
        system = kernel(S, S, self.beta_) / self.lmbda_
        system.diagonal().add_(1.0)
        self.dual_ = torch.cholesky_solve(residual, torch.linalg.cholesky(system)).cpu().numpy()
        del system
        return 0

    def _search(self, S: torch.Tensor, T: torch.Tensor, residual: torch.Tensor,
                X_val: FeatureSet, y_val: np.ndarray) -> tuple[float, float]:
        betas, lmbdas = linspace(tuple(self.beta_grid)), linspace(tuple(self.lmbda_grid))
        V = self._t(X_val.cls)
        zs_val, target = V @ T.T, torch.as_tensor(y_val, device=self.device_)
        best = (0, betas[0] if betas else self.beta_, lmbdas[0] if lmbdas else self.lmbda_)
        for beta in betas:
            evals, evecs = torch.linalg.eigh(kernel(S, S, beta))
            projected = evecs.T @ residual
            k_val = kernel(V, S, beta) @ evecs
            for lmbda in lmbdas:
                # (K/lambda + I)^-1 R = U diag(lambda / (s + lambda)) U^T R
                logits = zs_val + k_val @ (projected * (lmbda / (evals + lmbda))[:, None])
                correct = int((logits.argmax(1) == target).sum())
                self.search_log_.append((beta, lmbda, correct / max(1, len(y_val))))
                if correct > best[0]:
                    best = (correct, beta, lmbda)
        logger.info("proker: beta=%.4g lambda=%.4g (val acc %.4f)", best[1], best[2], best[0] / max(1, len(y_val)))
        return best[1], best[2]

    @torch.no_grad()
    def _logits(self, X: FeatureSet) -> np.ndarray:
        F, S = self._t(X.cls), self._t(self.support_)
        out = F @ self._t(self.class_weights_).T + kernel(F, S, self.beta_) @ self._t(self.dual_)
        return out.cpu().numpy()
