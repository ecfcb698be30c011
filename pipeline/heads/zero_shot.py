"""Zero-shot CLIP (Radford et al. 2021, "Learning Transferable Visual Models
From Natural Language Supervision").

``p(c | x) = softmax_c(logit_scale * cos(f(x), w_c))`` with ``f(x)`` the cached,
normalised image embedding and ``w_c`` the class text embedding: the template
ensemble (per-template normalised embeddings averaged, then re-normalised) by
default, or one template by index. Nothing is learned from the training rows.

Given overlap-corrected embeddings (``X.corrected``, stage ``train_oc``) it
scores those instead: the control that shows how far the correction moved the
image embedding away from the text embeddings (Tip-Adapter keeps the original
embedding for its image-text logits).
"""
from __future__ import annotations

import numpy as np

from pipeline.features import FeatureSet, TextContext
from pipeline.heads.base import BaseHead, l2_normalise, text_classifier


class ZeroShotHead(BaseHead):
    """Cosine similarity to the class text embeddings, times logit_scale."""

    selects_on_validation = False  # nothing to choose

    #: reads only image embeddings (and views), so an overlap-correcting feature transform applies
    accepts_feature_correction = True

    def __init__(self, *, template: int | None = None) -> None:
        self.template = template

    def _fit(self, X: FeatureSet, y: np.ndarray, *, text: TextContext,
             X_val: FeatureSet | None, y_val: np.ndarray | None) -> int:
        self.class_weights_ = text_classifier(text, self.template)
        self.logit_scale_ = float(text.logit_scale)
        return 0

    def _logits(self, X: FeatureSet) -> np.ndarray:
        # Re-normalising is a no-op for cached embeddings but keeps the head
        # a cosine classifier for any input.
        feats = l2_normalise(np.asarray(X.cls if X.corrected is None else X.corrected, dtype=np.float32))
        return self.logit_scale_ * feats @ self.class_weights_.T
