"""Tip-Adapter's cache keys as its reference builds them: the mean of the raw augmented passes, then normalised."""
from __future__ import annotations

import numpy as np

from pipeline.features import FeatureSet
from pipeline.heads.tip_adapter import cache_keys


def _views(rng, n=4, a=10, d=6):
    raw = rng.standard_normal((n, a, d)) * rng.uniform(0.5, 20, (n, a, 1))  # passes of very different norms
    norm = np.linalg.norm(raw, axis=-1)
    return raw, (raw / norm[..., None]).astype(np.float32), norm.astype(np.float32)


def test_keys_average_the_raw_passes():
    raw, unit, norm = _views(np.random.default_rng(0))
    X = FeatureSet(ids=np.arange(4), cls=unit[:, 0], views=unit, views_norm=norm)
    mean = raw.mean(axis=1)
    np.testing.assert_allclose(cache_keys(X, True), mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    # averaging the unit views instead (the old way) gives other keys when the norms differ
    unit_mean = unit.mean(axis=1)
    assert not np.allclose(cache_keys(X, True), unit_mean / np.linalg.norm(unit_mean, axis=1, keepdims=True),
                           atol=1e-3)
    np.testing.assert_allclose(cache_keys(X, False), unit[:, 0], atol=1e-6)


def test_corrected_views_are_averaged_as_they_come():
    """The overlap adapter maps unit-norm embeddings: its outputs have no raw counterpart."""
    raw, unit, norm = _views(np.random.default_rng(1))
    corrected = np.flip(unit, axis=-1).copy()
    X = FeatureSet(ids=np.arange(4), cls=unit[:, 0], views=unit, views_norm=norm,
                   corrected=corrected[:, 0], corrected_views=corrected)
    mean = corrected.mean(axis=1)
    np.testing.assert_allclose(cache_keys(X, True), mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)
