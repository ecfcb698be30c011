"""ZeroR baseline: always predict the majority training class.

``probabilities="prior"`` (default) returns the training class frequencies
for every row (so log-loss and calibration metrics stay finite and
meaningful); ``"one_hot"`` puts all mass on the majority class. Either way
``predict`` is the majority class; ties go to the lowest class index.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from pipeline.features import FeatureSet, TextContext
from pipeline.heads.base import BaseHead


class ZeroRHead(BaseHead):
    """Majority-class baseline (no parameters learned from features)."""

    selects_on_validation = False  # nothing to choose

    def __init__(self, *, probabilities: Literal["prior", "one_hot"] = "prior") -> None:
        self.probabilities = probabilities

    def _fit(self, X: FeatureSet, y: np.ndarray, *, text: TextContext,
             X_val: FeatureSet | None, y_val: np.ndarray | None) -> int:
        if self.probabilities not in ("prior", "one_hot"):
            raise ValueError(f"probabilities must be 'prior' or 'one_hot', got {self.probabilities!r}")
        counts = np.bincount(y, minlength=len(text.class_names)).astype(np.float64)
        self.majority_ = int(np.argmax(counts))
        if self.probabilities == "prior":
            self.proba_ = counts / counts.sum()
        else:
            self.proba_ = np.eye(len(counts))[self.majority_]
        return 0

    def _predict_proba(self, X: FeatureSet) -> np.ndarray:
        return np.tile(self.proba_, (len(X), 1))
