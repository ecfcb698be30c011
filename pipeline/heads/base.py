"""Estimator contract shared by every head.

A head follows scikit-learn's estimator contract: ``__init__`` only stores its
keyword parameters (the head's ``params.yaml`` block), ``get_params`` /
``set_params`` / ``clone`` come from :class:`sklearn.base.BaseEstimator`, learned
state ends in ``_``. Unlike scikit-learn, ``fit`` takes cached
:class:`~pipeline.features.FeatureSet` rows and the task's frozen
:class:`~pipeline.features.TextContext`::

    head.fit(X, y, text=text, X_val=X_val, y_val=y_val)

``y`` are integer indices into ``text.class_names``; ``classes_`` is always
``arange(C)`` so ``predict_proba`` has one column per task class, including
classes absent from the (few-shot) training rows. Validation rows are the only
data any head uses for model selection (hyper-parameter search, early stopping).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from pipeline.features import FeatureSet, TextContext
from pipeline.heads.fitstats import FitMonitor
from pipeline.torch_env import resolve_device, seeded  # noqa: F401  (the heads import them from here)

logger = logging.getLogger(__name__)


class BaseHead(ClassifierMixin, BaseEstimator):
    """Common ``fit`` / ``predict_proba`` / ``predict`` plumbing.

    Subclasses implement ``_fit`` (returning the trainable-parameter count)
    and ``_logits`` (unnormalised scores ``[N, C]``); heads that produce
    probabilities directly override ``_predict_proba`` instead.
    """

    #: whether the fit chooses anything (hyperparameters, an epoch) on the validation draw;
    #: heads that need no validation set say False, and the report marks them
    selects_on_validation = True

    def fit(self, X: FeatureSet, y: np.ndarray, *, text: TextContext,
            X_val: FeatureSet | None = None, y_val: np.ndarray | None = None) -> "BaseHead":
        n_classes = len(text.class_names)
        y = check_labels(y, len(X), n_classes, "y")
        check_features(X, text, "X")
        if (X_val is None) != (y_val is None):
            raise ValueError("X_val and y_val must be given together")
        if X_val is not None:
            y_val = check_labels(y_val, len(X_val), n_classes, "y_val")
            check_features(X_val, text, "X_val")
        device = self._fit_device()
        with FitMonitor(device) as monitor:
            trainable = self._fit(X, y, text=text, X_val=X_val, y_val=y_val)
        self.classes_ = np.arange(n_classes)
        self.class_names_ = tuple(text.class_names)
        self.fit_stats_ = monitor.stats(trainable)
        logger.info("%s fitted on %d rows: %s", type(self).__name__, len(X), self.fit_stats_)
        return self

    def predict_proba(self, X: FeatureSet) -> np.ndarray:
        check_is_fitted(self, "classes_")
        proba = self._predict_proba(X)
        if proba.shape != (len(X), len(self.classes_)):
            raise AssertionError(f"{type(self).__name__} returned {proba.shape}")
        return proba

    def predict(self, X: FeatureSet) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    # -- to implement -------------------------------------------------------
    def _fit(self, X: FeatureSet, y: np.ndarray, *, text: TextContext,
             X_val: FeatureSet | None, y_val: np.ndarray | None) -> int:
        raise NotImplementedError

    def _logits(self, X: FeatureSet) -> np.ndarray:
        raise NotImplementedError

    def _predict_proba(self, X: FeatureSet) -> np.ndarray:
        return softmax(self._logits(X))

    def _fit_device(self) -> torch.device | None:
        """Device whose memory ``fit_stats_`` measures (None: host RSS)."""
        device = getattr(self, "device", None)
        return None if device is None else resolve_device(device)


def check_labels(y: np.ndarray, n_rows: int, n_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n_rows:
        raise ValueError(f"{name} must be 1-d with {n_rows} entries, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} has indices outside [0, {n_classes})")
    return y.astype(np.int64)


def check_features(X: FeatureSet, text: TextContext, name: str) -> None:
    dim = text.class_emb.shape[1]
    if X.cls.ndim != 2 or X.cls.shape[1] != dim:
        raise ValueError(f"{name}.cls must be [N, {dim}] to match text.class_emb, got {X.cls.shape}")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float64 so rows sum to 1 within 1e-12."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def l2_normalise(a: np.ndarray, axis: int = -1) -> np.ndarray:
    return a / np.linalg.norm(a, axis=axis, keepdims=True)


def text_classifier(text: TextContext, template: int | None) -> np.ndarray:
    """[C, D] normalised class embeddings used as a frozen classifier.

    ``template=None`` is the template ensemble: the per-template normalised
    embeddings averaged over templates, then re-normalised (CLIP's prompt
    ensembling). It is recomputed from ``text.template_emb`` so the head owns
    the formula; by TextContext's contract it equals ``text.class_emb``, which
    is used when no per-template embeddings were cached. An integer selects one
    template (CLIP-Adapter uses a single hand-written template per dataset).
    """
    per_template = np.asarray(text.template_emb, dtype=np.float32)
    if template is not None:
        if not 0 <= template < len(per_template):
            raise ValueError(f"template index {template} outside the {len(per_template)} templates")
        return l2_normalise(per_template[template])
    if per_template.ndim == 3 and len(per_template):
        return l2_normalise(l2_normalise(per_template).mean(axis=0))
    return l2_normalise(np.asarray(text.class_emb, dtype=np.float32))


__all__ = ["BaseHead", "resolve_device", "seeded", "softmax", "l2_normalise", "text_classifier",
           "check_labels", "check_features"]


BY_SHOTS, BY_TASK = "_by_shots", "_by_task"
FINAL_KEY = "final"


def final_fit_wanted(name: str, params: Mapping[str, Any] | None) -> bool:
    """``heads.<name>.final`` (default true): whether the train stage refits the head on all labelled rows."""
    from pipeline.params import ParamsError

    value = (params or {}).get(FINAL_KEY, True)
    if not isinstance(value, bool):
        raise ParamsError(f"'heads.{name}.{FINAL_KEY}' must be true or false, got {value!r}")
    return value


def head_params(name: str, cls: type[BaseHead], params: Mapping[str, Any] | None,
                shots: int | str | None = None, task: str | None = None) -> dict[str, Any]:
    """The constructor kwargs of head ``name`` from its ``heads.<name>`` block, for one draw.

    Unknown keys are refused by full name. Two kinds of override (tables in the block):

    * ``<param>_by_task``: a mapping task -> value, e.g. CLIP-MHAdapter's per-task
      ``blend_by_task: {glare: 0.8}``;
    * ``<param>_by_shots``: a mapping shots -> value, e.g. CoOp's scripts:
      ``epochs: 200, epochs_by_shots: {1: 50, 2: 100, 4: 100}`` (applied after the task's).

    Without ``task``/``shots`` (or for ones a table does not list) ``<param>`` applies.
    (Here, not in the registry module, because every train stage depends on this file.)
    """
    from pipeline.params import ParamsError

    values = dict(params or {})
    values.pop(FINAL_KEY, None)  # read by the train stage (final_fit_wanted), not a constructor param
    allowed = set(cls().get_params())
    for suffix, at in ((BY_TASK, task), (BY_SHOTS, shots)):
        for key in [k for k in values if k.endswith(suffix)]:
            table, base = values.pop(key), key.removesuffix(suffix)
            if base not in allowed:
                raise ParamsError(f"'heads.{name}.{key}': '{base}' is not a param of head '{name}'")
            shot_like = suffix == BY_TASK or all(str(k) == "all" or str(k).isdigit() for k in table or {})
            if not isinstance(table, Mapping) or not shot_like:
                what = "tasks" if suffix == BY_TASK else "shot counts (or 'all')"
                raise ParamsError(f"'heads.{name}.{key}' must map {what} to values, got {table!r}")
            by = {str(k): v for k, v in table.items()}
            if at is not None and str(at) in by:
                values[base] = by[str(at)]
    unknown = sorted(set(values) - allowed)
    if unknown:
        keys = ", ".join(f"'heads.{name}.{k}'" for k in unknown)
        raise ParamsError(f"unknown params key {keys} (allowed: {', '.join(sorted(allowed))})")
    # params.yaml lists arrive as lists; heads take tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
