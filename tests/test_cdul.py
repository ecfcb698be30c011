"""CDUL: similarity aggregation (by hand), exp-scale softmax, classifier behaviour."""
from __future__ import annotations

import inspect
import logging
import math

import numpy as np
import pytest
import torch

from pipeline.cdul import CdulParams
from pipeline.cdul.classifier import CdulClassifier, gaussian_psi, gradient_alignment_step
from pipeline.cdul.similarity import (
    CdulSimilarityParams,
    aggregate_local,
    cdul_scores,
    cdul_scores_from_embeddings,
    pseudo_label_quality,
)
from pipeline.features import FeatureSet, TextContext
from pipeline.metrics import mean_average_precision
from pipeline.params import ParamsError, from_dict

SCALE = 100.0  # exp(logit_scale) of OpenAI CLIP
CLASS_EMB_2 = np.eye(3)[:2]  # two classes along the first two axes of R^3


def emb(delta: float, base: float = 0.2) -> np.ndarray:
    """Unit vector whose class-0 vs class-1 logit gap is ``delta`` at scale 100.

    cos to class 0 = base + delta/100, cos to class 1 = base, so the 2-class
    softmax gives p(class 0) = 1 / (1 + exp(-delta)): ln 4 -> 0.8, ln 3 -> 0.75,
    0 -> 0.5, ln 1.5 -> 0.6.
    """
    a, b = base + delta / SCALE, base
    return np.array([a, b, math.sqrt(1 - a * a - b * b)])


LN4, LN3, LN15 = math.log(4), math.log(3), math.log(1.5)
# Image 0: whole image 0.8/0.2; crops p0 = 0.8, 0.25, 0.5, 0.2 (2x2 grid, row-major).
# Image 1: whole image 0.75/0.25; crops p0 = 0.8, 0.75, 0.8, 0.6 (class 1 never >= 0.5).
# Image 2: crops p0 = 0.5, 0.2, 0.25, 0.2 (class-0 max exactly at the threshold).
TILES = np.stack([
    [emb(LN4), emb(LN4), emb(-LN3), emb(0.0), emb(-LN4)],
    [emb(LN3), emb(LN4), emb(LN3), emb(LN4), emb(LN15)],
    [emb(0.0), emb(0.0), emb(-LN4), emb(-LN3), emb(-LN4)],
])


def test_aggregate_local_formula_on_hand_vectors():
    # [N=1, T=4 crops, C=2]; class 0 crops 0.7, 0.55, 0.95, 0.6: max 0.95 >= 0.5
    # keeps the max; class 1 crops 0.3, 0.45, 0.05, 0.4: max 0.45 < 0.5 drops
    # to its min 0.05.
    local = np.array([[[0.7, 0.3], [0.55, 0.45], [0.95, 0.05], [0.6, 0.4]]])
    np.testing.assert_allclose(aggregate_local(local, 0.5), [[0.95, 0.05]])
    # Raising the threshold above 0.95 sends class 0 to its min as well.
    np.testing.assert_allclose(aggregate_local(local, 0.96), [[0.55, 0.05]])
    # Lowering it below 0.45 keeps both maxima.
    np.testing.assert_allclose(aggregate_local(local, 0.4), [[0.95, 0.45]])


def test_scores_2x2_grid_by_hand():
    s = cdul_scores_from_embeddings(TILES, CLASS_EMB_2, SCALE)
    np.testing.assert_allclose(s.global_, [[0.8, 0.2], [0.75, 0.25], [0.5, 0.5]], atol=1e-6)
    # Image 0: alpha = (0.8, 0.8), both >= 0.5 -> (0.8, 0.8).
    # Image 1: class 1 crops 0.2, 0.25, 0.2, 0.4 -> alpha 0.4 < 0.5 -> beta 0.2.
    # Image 2: class 0 alpha = 0.5 >= 0.5 (inclusive) -> 0.5; class 1 alpha 0.8.
    np.testing.assert_allclose(s.local_agg, [[0.8, 0.8], [0.8, 0.2], [0.5, 0.8]], atol=1e-6)
    # Final = plain mean of global and aggregated local.
    np.testing.assert_allclose(s.final, [[0.8, 0.5], [0.775, 0.225], [0.5, 0.65]], atol=1e-6)


def test_threshold_switches_between_max_and_min():
    s = cdul_scores_from_embeddings(TILES, CLASS_EMB_2, SCALE, CdulSimilarityParams(threshold=0.85))
    # No crop reaches 0.85 anywhere, so every class takes its minimum crop score.
    np.testing.assert_allclose(s.local_agg, [[0.2, 0.2], [0.6, 0.2], [0.2, 0.5]], atol=1e-6)


def test_global_weight_and_temperature_override():
    p = CdulSimilarityParams(global_weight=1.0, temperature=1 / SCALE)
    s = cdul_scores_from_embeddings(TILES, CLASS_EMB_2, logit_scale=1.0, params=p)
    np.testing.assert_allclose(s.final, s.global_, atol=1e-7)
    np.testing.assert_allclose(s.global_[0], [0.8, 0.2], atol=1e-6)


def _peaked_setup(n_classes: int = 10, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal class embeddings; image and crops have cos 0.30 to class 0, 0.20 to the rest."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, dim)))
    class_emb = q[:n_classes]
    v = 0.3 * class_emb[0] + 0.2 * class_emb[1:].sum(axis=0)
    v = v + math.sqrt(1 - v @ v) * q[n_classes]  # unit norm, cosines unchanged
    return np.tile(v, (1, 5, 1)), class_emb


def test_softmax_uses_exp_scale_not_raw_parameter(caplog):
    tiles, class_emb = _peaked_setup()
    text = TextContext(class_names=tuple("abcdefghij"), class_emb=class_emb,
                       template_emb=class_emb[None], templates=("{}",), logit_scale=SCALE)
    peaked = cdul_scores(tiles, text)
    # 1 / (1 + 9 exp(-10)) ~ 0.9996 with the real scale.
    assert peaked.global_[0, 0] > 0.99
    assert peaked.local_agg[0, 0] > 0.99
    # The reproduction bug (raw logit_scale = ln 100): 1 / (1 + 9 exp(-0.46)) ~ 0.15, near 1/10.
    with caplog.at_level(logging.WARNING, logger="pipeline.cdul.similarity"):
        flat = cdul_scores_from_embeddings(tiles, class_emb, logit_scale=math.log(SCALE))
    assert flat.global_[0].max() < 0.2
    assert "raw log-parameter" in caplog.text


def test_pseudo_label_quality_keys():
    s = cdul_scores_from_embeddings(TILES, CLASS_EMB_2, SCALE)
    y = np.array([[1, 0], [1, 0], [0, 1]])
    q = pseudo_label_quality(s, y)
    assert set(q) == {"global", "local", "final"}
    assert q["final"] == pytest.approx(mean_average_precision(y, s.final))


def test_params_from_yaml_mapping():
    p = from_dict(CdulParams, {"similarity": {"threshold": 0.4, "temperature": None},
                               "classifier": {"loss": "kl", "update_every": 0}}, "cdul")
    assert p.similarity.threshold == 0.4 and p.classifier.loss == "kl"
    with pytest.raises(ParamsError, match="cdul.classifier.loss"):
        from_dict(CdulParams, {"classifier": {"loss": "mse"}}, "cdul")


# ----------------------------------------------------------------------------- classifier


def make_set(n: int, seed: int, n_classes: int = 6, dim: int = 48):
    """Features from class prototypes; pseudo-labels = truth blurred by strong per-label noise."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(123).normal(size=(n_classes, dim))
    y = (rng.random((n, n_classes)) < 0.3).astype(np.int64)
    x = y @ protos + rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    noisy = 1 / (1 + np.exp(-(2.0 * (2 * y - 1) + rng.normal(scale=2.5, size=y.shape))))
    return FeatureSet(ids=np.arange(n), cls=x.astype(np.float32)), y, noisy.astype(np.float32)


FAST = dict(epochs=20, batch_size=64, device="cpu")


def test_fit_signature_takes_no_ground_truth():
    params = inspect.signature(CdulClassifier.fit).parameters
    assert list(params) == ["self", "X", "pseudo_labels", "X_val", "Y_val"]
    assert params["X_val"].kind is params["Y_val"].kind is inspect.Parameter.KEYWORD_ONLY


def test_classifier_beats_its_noisy_pseudo_labels():
    x, y, pseudo = make_set(800, 0)
    x_test, y_test, _ = make_set(300, 1)
    clf = CdulClassifier(**FAST).fit(x, pseudo)
    pseudo_map = mean_average_precision(y, pseudo)
    train_map = mean_average_precision(y, clf.predict_proba(x))
    assert 0.6 < pseudo_map < 0.85  # the noise is real; chance is ~0.3 (prevalence)
    assert train_map > pseudo_map + 0.1
    assert mean_average_precision(y_test, clf.predict_proba(x_test)) > 0.85
    # Gradient alignment pulled the labels towards the (better) classifier.
    assert mean_average_precision(y, clf.pseudo_labels_) > pseudo_map + 0.05
    assert ((clf.pseudo_labels_ > 0) & (clf.pseudo_labels_ < 1)).all()
    assert clf.predict(x_test).shape == y_test.shape and set(np.unique(clf.predict(x_test))) <= {0, 1}
    np.testing.assert_array_equal(clf.classes_, np.arange(6))
    assert set(clf.fit_stats_) == {"wall_time_s", "trainable_params", "peak_memory_mb"}
    assert clf.fit_stats_["trainable_params"] == 48 * 6 + 6


def test_no_label_update_when_disabled():
    x, _, pseudo = make_set(200, 2)
    clf = CdulClassifier(update_every=0, **FAST).fit(x, pseudo)
    np.testing.assert_allclose(clf.pseudo_labels_, np.clip(pseudo, 1e-4, 1 - 1e-4), atol=1e-6)
    assert all("label_change" not in h for h in clf.history_)


def test_deterministic_given_seed():
    x, _, pseudo = make_set(300, 3)
    a = CdulClassifier(seed=7, hidden_dim=16, **FAST).fit(x, pseudo)
    b = CdulClassifier(seed=7, hidden_dim=16, **FAST).fit(x, pseudo)
    c = CdulClassifier(seed=8, hidden_dim=16, **FAST).fit(x, pseudo)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    np.testing.assert_array_equal(a.pseudo_labels_, b.pseudo_labels_)
    assert not np.array_equal(a.predict_proba(x), c.predict_proba(x))


def test_validation_truth_only_selects_the_epoch():
    x, _, pseudo = make_set(300, 4)
    x_val, y_val, _ = make_set(150, 5)
    clf = CdulClassifier(**FAST).fit(x, pseudo, X_val=x_val, Y_val=y_val)
    shuffled = np.random.default_rng(0).permutation(y_val)
    other = CdulClassifier(**FAST).fit(x, pseudo, X_val=x_val, Y_val=shuffled)
    # Training (losses, label updates) is identical whatever the validation truth is.
    assert [h["loss"] for h in clf.history_] == [h["loss"] for h in other.history_]
    np.testing.assert_array_equal(clf.pseudo_labels_, other.pseudo_labels_)
    val_maps = [h["val_map"] for h in clf.history_]
    assert clf.best_epoch_ == int(np.argmax(val_maps)) + 1
    assert mean_average_precision(y_val, clf.predict_proba(x_val)) == pytest.approx(max(val_maps))


def reference_psi(y: np.ndarray, sigma: float) -> np.ndarray:
    """CDUL Eq. 8 (as in cs-mshah/CDUL's train.py): Gaussian density at y, mean 0.5, std sigma."""
    return np.exp(-0.5 * ((y - 0.5) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))


def reference_dloss_dy(y: np.ndarray, f: np.ndarray, kind: str) -> np.ndarray:
    """Per-element derivative of the pseudo-label loss w.r.t. the labels y, worked out by hand.

    bce: BCEWithLogits(f, y) = softplus(f) - y f, so dL/dy = -f.
    kl:  t = y / sum(y), L = sum_j t_j (log t_j - log softmax(f)_j); with the quotient rule
         dL/dy_k = (log t_k - log softmax(f)_k - L) / sum(y).
    """
    if kind == "bce":
        return -f
    s = y.sum(axis=1, keepdims=True)
    t = y / s
    log_p = f - np.log(np.exp(f).sum(axis=1, keepdims=True))
    loss = (t * (np.log(t) - log_p)).sum(axis=1, keepdims=True)
    return (np.log(t) - log_p - loss) / s


def reference_alignment(z: np.ndarray, f: np.ndarray, kind: str, step: float, sigma: float) -> np.ndarray:
    """Eq. 7: z <- z - step * psi(y) * dL/dy with y = sigmoid(z) (float64, numpy only)."""
    y = 1 / (1 + np.exp(-z))
    return z - step * reference_psi(y, sigma) * reference_dloss_dy(y, f, kind)


@pytest.mark.parametrize("kind", ["bce", "kl"])
@pytest.mark.parametrize("sigma, step", [(0.3, 0.5), (1.0, 1.0), (2.5, 3.0)])
def test_gradient_alignment_step_matches_the_reference_formula(kind, sigma, step):
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (5, 4))
    f = rng.normal(0, 2, (5, 4))
    got = gradient_alignment_step(torch.tensor(z), torch.tensor(f), kind, step=step, sigma=sigma)
    want = reference_alignment(z, f, kind, step, sigma)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-9)
    assert np.abs(want - z).max() > 1e-2  # the step is not negligible, so a wrong psi or gradient shows
    np.testing.assert_allclose(gaussian_psi(torch.tensor(z), sigma).numpy(), reference_psi(z, sigma), rtol=1e-6)


def test_gradient_alignment_bce_closed_form_moves_towards_the_head():
    # d BCEWithLogits(f, y) / dy = -f, so Eq. 7 is z + step * psi(y) * f: labels follow the head's sign.
    z = torch.zeros(1, 2, dtype=torch.float64)
    new = gradient_alignment_step(z, torch.tensor([[3.0, -3.0]], dtype=torch.float64), "bce", step=1.0, sigma=0.5)
    assert new[0, 0] > 0 > new[0, 1]
    assert gaussian_psi(torch.tensor(0.5), 0.5) == pytest.approx(1 / (0.5 * math.sqrt(2 * math.pi)))


@pytest.mark.parametrize("loss, sigma, step", [("bce", 0.4, 2.0), ("kl", 2.0, 3.0)])
def test_fit_updates_labels_with_its_sigma_step_and_loss(loss, sigma, step):
    """One update after epoch 1 of 2 equals Eq. 7 applied with the head as it was after epoch 1."""
    x, _, pseudo = make_set(200, 7)
    common = dict(loss=loss, label_sigma=sigma, label_step=step, seed=3, **FAST)
    after_one = CdulClassifier(**{**common, "epochs": 1, "update_every": 0}).fit(x, pseudo)
    two = CdulClassifier(**{**common, "epochs": 2, "update_every": 1}).fit(x, pseudo)
    y0 = np.clip(pseudo.astype(np.float64), 1e-4, 1 - 1e-4)  # initial labels kept off 0/1 (documented)
    z0 = np.log(y0 / (1 - y0))
    want = 1 / (1 + np.exp(-reference_alignment(z0, after_one.decision_function(x).astype(np.float64),
                                                loss, step, sigma)))
    np.testing.assert_allclose(two.pseudo_labels_, want, atol=1e-5)
    assert np.abs(two.pseudo_labels_ - y0).max() > 0.05  # the update is visible
    assert two.history_[0]["label_change"] == pytest.approx(np.abs(want - y0).mean(), abs=1e-5)


def test_kl_variant_runs_and_returns_distributions():
    x, y, pseudo = make_set(200, 6)
    clf = CdulClassifier(loss="kl", **FAST).fit(x, pseudo)
    proba = clf.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert mean_average_precision(y, proba) > 0.5


def test_kl_training_loss_is_kl_of_prediction_to_pseudo_labels():
    """cs-mshah/CDUL src/train.py: ``KLDivergence()(preds, pseudo_labels)`` with preds = softmax(logits);
    torchmetrics normalises both rows: sum_c p_c log(p_c / q_c), q = labels / sum(labels)."""
    from pipeline.cdul.classifier import pseudo_label_loss

    rng = np.random.default_rng(2)
    logits, labels = rng.normal(0, 2, (6, 5)), rng.uniform(0.05, 0.95, (6, 5))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = labels / labels.sum(1, keepdims=True)
    want = (p * np.log(p / q)).sum(1)
    got = pseudo_label_loss(torch.tensor(logits), torch.tensor(labels), "kl").numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    reverse = (q * np.log(q / p)).sum(1)
    assert np.abs(want - reverse).max() > 1e-3  # the two directions differ on these inputs


def test_single_template_uses_that_templates_embeddings():
    """cdul.similarity.template: the reproduction's one prompt instead of the ensemble."""
    from pipeline.cdul.similarity import CdulSimilarityParams, cdul_scores, cdul_scores_from_embeddings
    from pipeline.features import TextContext

    rng = np.random.default_rng(5)
    per_template = rng.normal(size=(2, 4, 8))
    per_template /= np.linalg.norm(per_template, axis=-1, keepdims=True)
    ensemble = per_template.mean(0) / np.linalg.norm(per_template.mean(0), axis=-1, keepdims=True)
    text = TextContext(tuple("abcd"), ensemble, per_template, ("a photo of a {}.", "x {}"), 100.0)
    tiles = rng.normal(size=(3, 5, 8))
    tiles /= np.linalg.norm(tiles, axis=-1, keepdims=True)
    one = cdul_scores(tiles, text, CdulSimilarityParams(template=1))
    want = cdul_scores_from_embeddings(tiles, per_template[1], 100.0, CdulSimilarityParams())
    np.testing.assert_allclose(one.final, want.final)
    assert not np.allclose(one.final, cdul_scores(tiles, text, CdulSimilarityParams()).final)
    with pytest.raises(ValueError, match="cdul.similarity.template: 2"):
        cdul_scores(tiles, text, CdulSimilarityParams(template=2))
