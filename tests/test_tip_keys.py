"""Tip-Adapter's cache keys as its reference builds them: the mean of the raw augmented passes, then normalised."""
from __future__ import annotations

import numpy as np
import pytest

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


def test_corrected_features_search_the_corrections_own_grid():
    """akres001/CLIP_fewshot_imo run.py: alpha in linspace(0, 20, 200) outer, beta in linspace(0, 20, 20),
    original features for the CLIP logits, corrected ones for keys and affinities, first best wins."""
    from dataclasses import replace

    from pipeline.heads import make_head
    from tests.test_heads_support import make_task, normalise

    task = make_task(seed=3)
    rng = np.random.default_rng(3)
    rot = np.linalg.qr(rng.standard_normal((task.train.cls.shape[1],) * 2))[0]  # a stand-in "correction"

    def corrected(X):
        return replace(X, corrected=normalise(X.cls @ rot).astype(np.float32),
                       corrected_views=normalise(X.views @ rot).astype(np.float32))

    train, val = corrected(task.train), corrected(task.val)
    head = make_head("tip_adapter", {"views": "tip", "device": "cpu"}).fit(
        train, task.y_train, text=task.text, X_val=val, y_val=task.y_val)
    # the same search written out from the script
    keys = normalise(train.corrected_views.astype(np.float64).mean(axis=1))
    weights = normalise(task.text.template_emb.astype(np.float64).mean(axis=0))
    clip_logits = task.text.logit_scale * val.cls.astype(np.float64) @ weights.T
    affinity = val.corrected.astype(np.float64) @ keys.T
    values = np.eye(len(task.text.class_names))[task.y_train]
    best, best_ab = 0, None
    for alpha in np.linspace(0, 20, 200):
        for beta in np.linspace(0, 20, 20):
            acc = np.mean((clip_logits + alpha * np.exp(-beta * (1 - affinity)) @ values).argmax(1) == task.y_val)
            if acc > best:
                best, best_ab = acc, (alpha, beta)
    assert (head.alpha_, head.beta_) == pytest.approx(best_ab, abs=1e-9)
    # without correction the head keeps Tip-Adapter's own grid (values of the form i * (s - 0.1) / n + 0.1)
    plain = make_head("tip_adapter", {"device": "cpu"}).fit(task.train, task.y_train, text=task.text,
                                                            X_val=task.val, y_val=task.y_val)
    steps = [i * (3 - 0.1) / 20 + 0.1 for i in range(20)]
    assert min(abs(plain.alpha_ - a) for a in steps) < 1e-9
