"""CDUL training stage: a classifier trained on pseudo-labels with gradient alignment.

Abdelfattah et al., "CDUL: CLIP-Driven Unsupervised Learning for Multi-Label
Image Classification", ICCV 2023, Sec. 3.2. The paper alternates two updates
on the unlabeled training set, starting from the initial pseudo-labels of
Sec. 3.1 (:mod:`pipeline.cdul.similarity`):

1. labels fixed, train the classifier ``f(x; theta)`` against them;
2. classifier fixed, move the pseudo-labels along the gradient of the *same*
   loss with respect to the labels ("gradient alignment", Eq. 7). Labels are
   held as latent logits ``z`` with ``y = sigmoid(z)`` so they stay in
   [0, 1], and the step is scaled by a Gaussian ``psi(y)`` centred at 0.5
   (Eq. 8), so uncertain labels (near 0.5) move most:

       z <- z - label_step * psi(y) * dL/dy,
       psi(y) = exp(-(y - 0.5)^2 / (2 sigma^2)) / (sigma * sqrt(2 pi)).

   The gradient is taken w.r.t. ``y`` (not ``z``), as Eq. 7 is written, and
   per element (the derivative of each sample's own loss), so the step does
   not shrink with N. With the default BCE loss it has a closed form: the
   derivative of ``BCEWithLogits(f, y)`` w.r.t. ``y`` is ``-f`` (the head's
   logit), so the update is ``z <- z + label_step * psi(y) * f`` -- each label
   moves towards the classifier's opinion, most where it is least certain.
   The paper leaves sigma unspecified; 1.0 follows the reproduction study.

Deviations, all deliberate:

* The paper fine-tunes a whole network end to end on images; here the
  classifier is a linear head (``hidden_dim=0``) or a one-hidden-layer MLP on
  cached CLIP image embeddings (``FeatureSet.cls``), standardised with the
  training-set mean / std. On frozen features this is the part that learns.
* Loss: sigmoid + BCE-with-logits per class (multi-label). The reproduction
  study (Shah & Bhalgat, 2024; ``cs-mshah/CDUL`` ``src/train.py``) trained
  softmax + KL divergence, which treats the labels as one distribution over
  classes -- a mistake for multi-label targets. ``loss="kl"`` keeps that
  variant for comparison, with its directions: training minimises
  KL(prediction || pseudo-labels) and the label update follows the gradient of
  KL(pseudo-labels || prediction) (labels normalised per image, as torchmetrics
  does; ``predict_proba`` returns the softmax, because the sigmoid of
  shift-invariant softmax logits means nothing).
* Labels are updated every ``update_every`` epochs over the whole training
  set with the classifier in eval mode, rather than per mini-batch;
  ``update_every=0`` switches gradient alignment off (ablation).
* Validation ground truth (optional) is used only to pick the epoch with
  the best validation mAP; it never enters a loss or a label update.
"""
from __future__ import annotations

import copy
import logging
import math
import resource
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from torch import nn

from pipeline.features import FeatureSet
from pipeline.metrics import mean_average_precision

log = logging.getLogger(__name__)

_EPS = 1e-4  # keeps initial labels off 0/1 so their logits are finite


@dataclass(frozen=True)
class CdulClassifierParams:
    """``cdul.classifier`` in params.yaml (see the module docstring for the method).

    hidden_dim:   0 -> linear head; > 0 -> Linear-ReLU-Linear MLP of that width.
    epochs, batch_size, lr, weight_decay: Adam training of the head.
    loss:         "bce" (sigmoid + BCE-with-logits, default) or "kl" (softmax + KL).
    update_every: epochs between gradient-alignment label updates; 0 = never.
    label_step:   multiplier on psi(y) in the latent label update.
    label_sigma:  sigma of the Gaussian psi (Eq. 8).
    standardize:  standardise features with the training mean / std.
    seed:         seeds head initialisation and batch order.
    device:       "cpu", "cuda" or "auto".
    """

    hidden_dim: int = 0
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: Literal["bce", "kl"] = "bce"
    update_every: int = 5
    label_step: float = 1.0
    label_sigma: float = 1.0
    standardize: bool = True
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.hidden_dim < 0 or self.update_every < 0:
            raise ValueError("epochs, batch_size >= 1 and hidden_dim, update_every >= 0 required")
        if self.lr <= 0 or self.label_sigma <= 0 or self.label_step < 0:
            raise ValueError("lr, label_sigma > 0 and label_step >= 0 required")
        if self.loss not in ("bce", "kl"):
            raise ValueError(f"loss must be 'bce' or 'kl', got {self.loss!r}")


# --------------------------------------------------------------------------- pieces


def gaussian_psi(y: torch.Tensor, sigma: float) -> torch.Tensor:
    """Eq. 8: Gaussian density centred at 0.5, the per-label step size of Eq. 7."""
    return torch.exp(-0.5 * ((y - 0.5) / sigma) ** 2) / (sigma * math.sqrt(2.0 * math.pi))


def pseudo_label_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image training loss [B] between head logits and soft labels in [0, 1].

    ``kl`` is the reproduction's ``KLDivergence()(preds, pseudo_labels)`` (torchmetrics:
    both rows normalised to sum 1): KL(softmax(logits) || labels / sum(labels)).
    """
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(dim=1)
    target = (labels / labels.sum(dim=1, keepdim=True).clamp_min(1e-12)).clamp_min(1e-12)
    log_p = F.log_softmax(logits, dim=1)
    return (log_p.exp() * (log_p - torch.log(target))).sum(dim=1)


def label_update_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image loss [B] whose gradient w.r.t. the labels drives Eq. 7.

    ``kl``: the reproduction's update uses ``kl_divergence(pseudo_labels, preds)``,
    i.e. KL(labels / sum(labels) || softmax(logits)), the reverse of its training loss.
    """
    if kind == "bce":
        return pseudo_label_loss(logits, labels, kind)
    target = labels / labels.sum(dim=1, keepdim=True).clamp_min(1e-12)
    log_p = F.log_softmax(logits, dim=1)
    return (target * (torch.log(target.clamp_min(1e-12)) - log_p)).sum(dim=1)


def gradient_alignment_step(
    latent: torch.Tensor, logits: torch.Tensor, kind: str, step: float, sigma: float
) -> torch.Tensor:
    """One Eq. 7 update of latent labels ``z`` given fixed head logits; returns new ``z``.

    ``z - step * psi(y) * dL/dy`` with ``y = sigmoid(z)`` and the per-element
    derivative of the summed loss (for BCE this equals ``-logits``).
    """
    y = torch.sigmoid(latent.detach()).requires_grad_(True)
    loss = label_update_loss(logits.detach(), y, kind).sum()
    (grad,) = torch.autograd.grad(loss, y)
    return latent.detach() - step * gaussian_psi(y.detach(), sigma) * grad


def _build_head(in_dim: int, n_classes: int, hidden_dim: int) -> nn.Module:
    if hidden_dim == 0:
        return nn.Linear(in_dim, n_classes)
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, n_classes))


def _features(X: FeatureSet | np.ndarray) -> np.ndarray:
    arr = X.cls if isinstance(X, FeatureSet) else X
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected [N, D] features, got {arr.shape}")
    return arr


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # Linux reports ru_maxrss in KiB: the process peak, an upper bound for fit.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- estimator


class CdulClassifier(BaseEstimator):
    """CDUL classifier head with gradient-alignment pseudo-label refinement.

    scikit-learn contract: ``__init__`` only stores the parameters (those of
    :class:`CdulClassifierParams`), ``fit`` sets the ``*_`` attributes:
    ``head_`` (torch module, on CPU), ``classes_`` (``arange(C)``),
    ``pseudo_labels_`` ([N, C] refined labels the last epoch trained on; no
    update follows the last epoch, and with validation selection they are
    still the end-of-training labels), ``best_epoch_`` (1-based),
    ``history_`` (per-epoch loss / val mAP / label change), ``fit_stats_``
    ({wall_time_s, trainable_params, peak_memory_mb}), ``mean_`` / ``scale_``.
    """

    def __init__(
        self,
        hidden_dim: int = 0,
        epochs: int = 30,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        loss: str = "bce",
        update_every: int = 5,
        label_step: float = 1.0,
        label_sigma: float = 1.0,
        standardize: bool = True,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self.hidden_dim = hidden_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.loss = loss
        self.update_every = update_every
        self.label_step = label_step
        self.label_sigma = label_sigma
        self.standardize = standardize
        self.seed = seed
        self.device = device

    @classmethod
    def from_params(cls, params: CdulClassifierParams) -> "CdulClassifier":
        return cls(**asdict(params))

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        X: FeatureSet,
        pseudo_labels: np.ndarray,
        *,
        X_val: FeatureSet | None = None,
        Y_val: np.ndarray | None = None,
    ) -> "CdulClassifier":
        """Train on ``X.cls`` against soft ``pseudo_labels`` [N, C] in [0, 1] (no ground truth).

        ``X_val`` / ``Y_val`` (multi-hot), when both given, only select the
        epoch with the best validation mAP; otherwise the last epoch is kept.
        """
        params = CdulClassifierParams(**self.get_params())  # validates
        feats, labels = self._check_inputs(X, pseudo_labels)
        if (X_val is None) != (Y_val is None):
            raise ValueError("give both X_val and Y_val, or neither")
        device = self._device()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()

        self.mean_, self.scale_ = self._standardizer(feats)
        x = torch.from_numpy((feats - self.mean_) / self.scale_).to(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)  # head init only; global RNG left untouched
            head = _build_head(x.shape[1], labels.shape[1], params.hidden_dim).to(device)
        latent = torch.logit(torch.from_numpy(labels).clamp(_EPS, 1 - _EPS)).to(device)
        gen = torch.Generator().manual_seed(params.seed)
        opt = torch.optim.Adam(head.parameters(), lr=params.lr, weight_decay=params.weight_decay)

        self.classes_ = np.arange(labels.shape[1])
        self.history_: list[dict[str, Any]] = []
        best = (-math.inf, 0, None)  # (val mAP, epoch, state)
        for epoch in range(1, params.epochs + 1):
            train_loss = self._train_epoch(head, opt, x, torch.sigmoid(latent), gen, params)
            record: dict[str, Any] = {"epoch": epoch, "loss": train_loss}
            if params.update_every and epoch % params.update_every == 0 and epoch < params.epochs:
                new_latent = self._update_labels(head, x, latent, params)
                record["label_change"] = float((torch.sigmoid(new_latent) - torch.sigmoid(latent)).abs().mean())
                latent = new_latent
            if X_val is not None:
                self.head_ = head
                record["val_map"] = mean_average_precision(Y_val, self.predict_proba(X_val))
                if record["val_map"] > best[0]:
                    best = (record["val_map"], epoch, copy.deepcopy(head.state_dict()))
            self.history_.append(record)
            log.debug("CDUL epoch %s", record)

        if best[2] is not None:
            head.load_state_dict(best[2])
        self.best_epoch_ = best[1] if best[2] is not None else params.epochs
        self.head_ = head.cpu().eval()
        self.pseudo_labels_ = torch.sigmoid(latent).cpu().numpy().astype(np.float32)
        self.fit_stats_ = {
            "wall_time_s": time.perf_counter() - start,
            "trainable_params": int(sum(p.numel() for p in head.parameters() if p.requires_grad)),
            "peak_memory_mb": _peak_memory_mb(device),
        }
        log.info("CDUL classifier: best epoch %d/%d, %s", self.best_epoch_, params.epochs, self.fit_stats_)
        return self

    def _check_inputs(self, X: FeatureSet, pseudo_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats = _features(X)
        labels = np.asarray(pseudo_labels, dtype=np.float32)
        if labels.ndim != 2 or len(labels) != len(feats):
            raise ValueError(f"pseudo_labels must be [N={len(feats)}, C], got {labels.shape}")
        if not np.isfinite(labels).all() or labels.min() < 0 or labels.max() > 1:
            raise ValueError("pseudo_labels must be finite and in [0, 1]")
        return feats, labels

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _standardizer(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.standardize:
            return np.zeros(feats.shape[1], np.float32), np.ones(feats.shape[1], np.float32)
        std = feats.std(axis=0)
        return feats.mean(axis=0), np.where(std > 1e-8, std, 1.0).astype(np.float32)

    @staticmethod
    def _train_epoch(
        head: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
        gen: torch.Generator, params: CdulClassifierParams,
    ) -> float:
        """One pass over shuffled mini-batches with the labels fixed (step 1)."""
        head.train()
        order = torch.randperm(len(x), generator=gen).to(x.device)
        total = 0.0
        for idx in order.split(params.batch_size):
            loss = pseudo_label_loss(head(x[idx]), y[idx], params.loss).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        return total / len(x)

    @staticmethod
    def _update_labels(
        head: nn.Module, x: torch.Tensor, latent: torch.Tensor, params: CdulClassifierParams
    ) -> torch.Tensor:
        """Gradient alignment (step 2) over the whole training set, head fixed."""
        head.eval()
        out = []
        for xb, zb in zip(x.split(4096), latent.split(4096)):
            with torch.no_grad():
                logits = head(xb)
            out.append(gradient_alignment_step(zb, logits, params.loss, params.label_step, params.label_sigma))
        return torch.cat(out)

    # ------------------------------------------------------------------ predict

    def _empty_module(self, attr: str, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
        """``head_`` with weights of ``shapes``, values unset (read back from a model file: pipeline.modelfile)."""
        if attr != "head_":
            raise ValueError(f"CdulClassifier: no module attribute '{attr}' to rebuild")
        last = shapes["weight"] if "weight" in shapes else shapes["2.weight"]
        first = shapes["weight"] if "weight" in shapes else shapes["0.weight"]
        return _build_head(first[1], last[0], self.hidden_dim)

    def decision_function(self, X: FeatureSet) -> np.ndarray:
        """[N, C] head logits."""
        if not hasattr(self, "head_"):
            raise RuntimeError("CdulClassifier is not fitted")
        feats = (_features(X) - self.mean_) / self.scale_
        head = self.head_
        device = next(head.parameters()).device
        was_training = head.training
        head.eval()
        with torch.no_grad():
            out = torch.cat([head(torch.from_numpy(b).to(device)).cpu() for b in np.array_split(
                feats.astype(np.float32), max(1, math.ceil(len(feats) / 4096)))])
        head.train(was_training)
        return out.numpy()

    def predict_proba(self, X: FeatureSet) -> np.ndarray:
        """[N, C] per-class sigmoid scores (softmax when trained with ``loss="kl"``)."""
        logits = torch.from_numpy(self.decision_function(X))
        probs = torch.softmax(logits, dim=1) if self.loss == "kl" else torch.sigmoid(logits)
        return probs.numpy()

    def predict(self, X: FeatureSet) -> np.ndarray:
        """[N, C] multi-hot predictions at threshold 0.5."""
        return (self.predict_proba(X) >= 0.5).astype(np.int64)


__all__ = [
    "CdulClassifierParams",
    "CdulClassifier",
    "gaussian_psi",
    "pseudo_label_loss",
    "label_update_loss",
    "gradient_alignment_step",
]
