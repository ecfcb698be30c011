"""Intra-modal overlap correction (Kravets & Namboodiri, BMVC 2024) on synthetic caches.

The synthetic "CLIP cache" reproduces the failure the paper describes: a weak
class signal in a k-dim semantic subspace, a strong common direction (all
similarities high) and a large nuisance component in the remaining dimensions,
so same-class and different-class cosine similarities overlap heavily. The
generic set (adapter training) and the target set (overlap measured) share the
generator but have *disjoint classes*: the adapter must generalise to classes
it never saw, as Open Images -> target task in the paper.

Views: ``view_nuisance`` is the fraction of nuisance variance redrawn for each
augmented view. At 0 the views are small noise around each image (nuisance is
an image property); at 0.5 half of it changes with augmentation while the class
signal does not, which is what self-distillation (DINO) can exploit.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.overlap_correction import (
    DinoHead,
    FittedAdapter,
    OverlapAdapter,
    OverlapAdapterParams,
    dino_loss,
    fit_adapter,
    ids_digest,
    supcon_loss,
    update_center,
)
from pipeline.overlap_correction.train import teacher_momentum
from pipeline.params import ParamsError, from_dict
from pipeline.report.overlap import task_overlap

DIM, SEMANTIC = 64, 8
GENERIC_CLASSES = range(40)
TARGET_CLASSES = range(1000, 1010)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_cache(classes, per_class: int, seed: int, *, world_seed: int = 0, n_views: int = 4,
                    view_nuisance: float = 0.0, class_scale: float = 0.5, within: float = 0.25,
                    common: float = 2.0, nuisance: float = 0.6, view_noise: float = 0.05,
                    id_prefix: str = "img"):
    """(ids, cls [N, D], views [N, A, D], labels) of normalised synthetic embeddings.

    The subspaces (random orthonormal basis) and the class means depend only on
    ``world_seed`` and the class id, so two calls with different classes share
    the structure but not the classes.
    """
    q, _ = np.linalg.qr(np.random.default_rng(world_seed).standard_normal((DIM, DIM)))
    sem, direction, nuis = q[:, :SEMANTIC], q[:, SEMANTIC], q[:, SEMANTIC + 1:]
    rng = np.random.default_rng(seed)
    means = np.stack([np.random.default_rng([world_seed, c]).standard_normal(SEMANTIC) for c in classes])
    labels = np.repeat(np.asarray(list(classes)), per_class)
    n = len(labels)
    semantic = class_scale * np.repeat(means, per_class, axis=0) + within * rng.standard_normal((n, SEMANTIC))
    base = semantic @ sem.T + common * direction
    fixed = nuisance * rng.standard_normal((n, nuis.shape[1]))

    def draw() -> np.ndarray:
        fresh = nuisance * rng.standard_normal(fixed.shape)
        return base + (np.sqrt(1 - view_nuisance) * fixed + np.sqrt(view_nuisance) * fresh) @ nuis.T

    def normalise(a: np.ndarray) -> np.ndarray:
        return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)

    cls = draw()
    views = np.stack([draw() + view_noise * rng.standard_normal(cls.shape) for _ in range(n_views)], axis=1)
    ids = np.asarray([f"{id_prefix}{i:05d}" for i in range(n)])
    return ids, normalise(cls), normalise(views), labels


def generic_and_target(seed: int, view_nuisance: float):
    generic = synthetic_cache(GENERIC_CLASSES, 40, seed + 1, world_seed=seed, view_nuisance=view_nuisance,
                              id_prefix="generic")
    target = synthetic_cache(TARGET_CLASSES, 30, seed + 2, world_seed=seed, view_nuisance=view_nuisance,
                             id_prefix="target")
    assert not set(generic[3]) & set(target[3])
    return generic, target


SUPERVISED = OverlapAdapterParams(mode="supervised", epochs=25, batch_size=64, lr=5e-3, device="cpu", seed=0)
# A few hundred steps only: DINO's 0.996 teacher momentum would leave the EMA teacher far behind.
UNSUPERVISED = OverlapAdapterParams(mode="unsupervised", epochs=40, batch_size=64, lr=3e-3, out_dim=256,
                                    teacher_momentum=0.99, device="cpu", seed=0)


@pytest.fixture(scope="module")
def supervised_run():
    torch.set_num_threads(1)
    generic, target = generic_and_target(seed=0, view_nuisance=0.0)
    ids, _, views, labels = generic
    return generic, target, fit_adapter(views, labels, ids, SUPERVISED)


def overlap(features: np.ndarray, labels: np.ndarray) -> float:
    return task_overlap("target", features, labels).overlap


# --- the method reduces the overlap on classes it never saw ---------------------------------------

def test_supervised_adapter_reduces_overlap_on_unseen_classes(supervised_run):
    _, (_, cls, _, labels), fitted = supervised_run
    before, after = overlap(cls, labels), overlap(fitted.transform(cls), labels)
    assert before > 0.6, f"the synthetic cache should overlap heavily, got {before:.3f}"
    # measured on seeds 0-3 of this generator: 0.66-0.75 -> 0.12-0.21 (reduction 0.52-0.57)
    assert after < before - 0.3, (before, after)
    assert fitted.history[-1]["loss"] < fitted.history[0]["loss"]


def test_dino_adapter_reduces_overlap_when_augmentation_moves_the_nuisance():
    (ids, _, views, _), (_, cls, _, labels) = generic_and_target(seed=0, view_nuisance=0.5)
    fitted = fit_adapter(views, None, ids, UNSUPERVISED)
    before, after = overlap(cls, labels), overlap(fitted.transform(cls), labels)
    assert before > 0.6, before
    # measured on seeds 0-3: 0.66-0.75 -> 0.20-0.30 (reduction 0.43-0.46), teacher adapter
    assert after < before - 0.25, (before, after)
    assert [r["teacher_momentum"] for r in fitted.history] == sorted(r["teacher_momentum"] for r in fitted.history)


# --- bookkeeping: ids, shapes, identity start, persistence, determinism ------------------------------

def test_trained_on_is_exactly_the_generic_ids(supervised_run):
    (ids, _, _, _), (target_ids, _, _, _), fitted = supervised_run
    assert fitted.trained_on == tuple(sorted(ids))
    assert fitted.trained_on_sha256 == ids_digest(ids[::-1])  # order does not matter
    assert fitted.trained_on_sha256 != ids_digest(np.concatenate([ids, target_ids[:1]]))
    assert not set(fitted.trained_on) & set(target_ids)


def test_transform_keeps_shapes_and_unit_norm(supervised_run):
    _, (_, cls, views, _), fitted = supervised_run
    out2, out3 = fitted.transform(cls.astype(np.float16)), fitted.transform(views)
    assert out2.shape == cls.shape and out3.shape == views.shape
    assert out2.dtype == np.float32 and out3.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out3, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out3[:, 1], fitted.transform(views[:, 1]), atol=1e-6)
    assert not np.allclose(out2, cls, atol=1e-2)  # it did change the features
    with pytest.raises(ValueError, match="64"):
        fitted.transform(cls[:, :10])


def test_adapter_starts_as_the_identity():
    x = torch.nn.functional.normalize(torch.randn(50, DIM), dim=-1)
    torch.testing.assert_close(OverlapAdapter(DIM, reduction=4, ratio=1.0)(x), x)
    ids, _, views, labels = synthetic_cache(range(3), 5, seed=0)
    untrained = fit_adapter(views, labels, ids, dataclasses.replace(SUPERVISED, epochs=0))
    np.testing.assert_allclose(untrained.transform(views), views, atol=1e-6)
    assert untrained.trained_on == () and untrained.history == []


def test_save_load_round_trip_gives_identical_outputs(supervised_run, tmp_path):
    _, (_, cls, _, _), fitted = supervised_run
    path = tmp_path / "adapter.pt"
    fitted.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.pt"]  # no temporary file left behind
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"state_dict", "meta"}
    loaded = FittedAdapter.load(path)
    np.testing.assert_array_equal(loaded.transform(cls), fitted.transform(cls))
    assert loaded.params == fitted.params and loaded.dim == DIM
    assert loaded.trained_on == fitted.trained_on and loaded.trained_on_sha256 == fitted.trained_on_sha256
    assert loaded.history == fitted.history


def test_fit_is_deterministic_for_a_seed():
    ids, _, views, labels = synthetic_cache(range(4), 10, seed=0)
    for params in (dataclasses.replace(SUPERVISED, epochs=2), dataclasses.replace(UNSUPERVISED, epochs=2)):
        a, b = (fit_adapter(views, labels, ids, params).transform(views[:, 0]) for _ in range(2))
        other = fit_adapter(views, labels, ids, dataclasses.replace(params, seed=1)).transform(views[:, 0])
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, other)


# --- input and params validation ---------------------------------------------------------------------

def test_fit_rejects_bad_inputs():
    ids, _, views, labels = synthetic_cache(range(3), 4, seed=0)
    with pytest.raises(ValueError, match="labels"):
        fit_adapter(views, None, ids, SUPERVISED)
    with pytest.raises(ValueError, match="A >= 2"):
        fit_adapter(views[:, :1], None, ids, UNSUPERVISED)
    with pytest.raises(ValueError, match="unique"):
        fit_adapter(views, labels, np.zeros(len(ids)), SUPERVISED)
    with pytest.raises(ValueError, match="ids"):
        fit_adapter(views, labels, ids[:-1], SUPERVISED)


@pytest.mark.parametrize("field, value", [
    ("mode", "selfsup"), ("reduction", 0), ("ratio", 0.0), ("epochs", -1), ("batch_size", 0),
    ("lr", 0.0), ("weight_decay", -1.0), ("temperature", 0.0), ("out_dim", 1), ("head_layers", -1),
    ("teacher_temp", 0.0), ("student_temp", -0.1), ("center_momentum", 1.0), ("teacher_momentum", 1.5),
    ("device", "tpu"),
])
def test_params_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        OverlapAdapterParams(**{field: value})


def test_params_load_as_a_params_yaml_block():
    params = from_dict(OverlapAdapterParams, {"mode": "unsupervised", "epochs": 5, "lr": 0.01}, "overlap.adapter")
    assert params.mode == "unsupervised" and params.epochs == 5 and params.reduction == 4
    with pytest.raises(ParamsError, match="overlap.adapter.ratoi"):
        from_dict(OverlapAdapterParams, {"ratoi": 0.5}, "overlap.adapter")
    with pytest.raises(ParamsError, match="center_momentum"):
        from_dict(OverlapAdapterParams, {"center_momentum": 1.0}, "overlap.adapter")


# --- loss formulas against loops written from the papers ---------------------------------------------

def naive_supcon(z: np.ndarray, labels: np.ndarray, tau: float) -> float:
    """Khosla et al. 2020, Eq. 2 (L_out), one anchor at a time."""
    feats = [z[b, v] for b in range(z.shape[0]) for v in range(z.shape[1])]
    ys = [labels[b] for b in range(z.shape[0]) for _ in range(z.shape[1])]
    total, anchors = 0.0, 0
    for i, zi in enumerate(feats):
        others = [a for a in range(len(feats)) if a != i]
        denom = sum(np.exp(zi @ feats[a] / tau) for a in others)
        positives = [p for p in others if ys[p] == ys[i]]
        if not positives:
            continue
        total += -sum(np.log(np.exp(zi @ feats[p] / tau) / denom) for p in positives) / len(positives)
        anchors += 1
    return total / anchors


@pytest.mark.parametrize("views", [2, 3])
def test_supcon_loss_matches_the_paper_formula(views):
    rng = np.random.default_rng(views)
    z = rng.standard_normal((7, views, 5))
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    labels = np.array([0, 1, 0, 2, 1, 0, 3])  # class 2 and 3: only the sample's own other views are positives
    for tau in (0.07, 0.5):
        got = supcon_loss(torch.tensor(z), torch.tensor(labels), tau).item()
        assert got == pytest.approx(naive_supcon(z, labels, tau), rel=1e-5)


def naive_dino(student: np.ndarray, teacher: np.ndarray, center: np.ndarray, ts: float, tt: float) -> float:
    """Caron et al. 2021, Algorithm 1 / DINOLoss: CE(teacher, student) over pairs of different views."""
    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()
    terms = []
    for t in range(teacher.shape[0]):
        for s in range(student.shape[0]):
            if s == t:
                continue
            per_image = []
            for b in range(student.shape[1]):
                q, p = softmax((teacher[t, b] - center) / tt), softmax(student[s, b] / ts)
                per_image.append(-np.sum(q * np.log(p)))
            terms.append(np.mean(per_image))
    return float(np.mean(terms))


def test_dino_loss_matches_the_paper_formula():
    rng = np.random.default_rng(0)
    student, teacher = rng.standard_normal((4, 6, 9)), rng.standard_normal((2, 6, 9))  # 2 global + 2 local
    center = 0.3 * rng.standard_normal(9)
    got = dino_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(center), 0.1, 0.04).item()
    assert got == pytest.approx(naive_dino(student, teacher, center, 0.1, 0.04), rel=1e-5)


def test_dino_loss_gradient_reaches_only_the_student():
    student = torch.randn(2, 3, 5, requires_grad=True)
    teacher = torch.randn(2, 3, 5, requires_grad=True)
    dino_loss(student, teacher, torch.zeros(5)).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None


def test_update_center_is_an_ema_of_the_teacher_batch_mean():
    rng = np.random.default_rng(1)
    teacher, center = rng.standard_normal((2, 6, 4)), rng.standard_normal(4)
    expected = 0.9 * center + 0.1 * np.mean([teacher[v, b] for v in range(2) for b in range(6)], axis=0)
    got = update_center(torch.tensor(center), torch.tensor(teacher), 0.9)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_teacher_momentum_follows_dinos_cosine_schedule():
    total = 100
    assert teacher_momentum(0.996, 0, total) == pytest.approx(0.996)
    assert teacher_momentum(0.996, total // 2, total) == pytest.approx(0.998)
    values = [teacher_momentum(0.996, i, total) for i in range(total)]
    assert values == sorted(values) and values[-1] < 1.0 and values[-1] > 0.9999


def test_dino_head_outputs_cosines_to_normalised_prototypes():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(4, DIM), dim=-1)
    gelu = torch.nn.functional.gelu
    normalize = torch.nn.functional.normalize
    # n_layers = 3 (DINO's DINOHead): Linear-GELU-Linear-GELU-Linear to the bottleneck, L2-normalised,
    # then cosines to the L2-normalised prototypes; written out with the raw weights.
    head = DinoHead(DIM, out_dim=16, hidden_dim=32, bottleneck_dim=8, n_layers=3)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(32, DIM), (32, 32), (8, 32)]
    with torch.no_grad():  # DINO's init is tiny (std 0.02): give the MLP weights that make every layer count
        for m in linears:
            m.weight.normal_(0, 0.5)
            m.bias.normal_(0, 0.5)
    (w1, b1), (w2, b2), (w3, b3) = [(m.weight, m.bias) for m in linears]
    z = normalize(gelu(gelu(x @ w1.T + b1) @ w2.T + b2) @ w3.T + b3, dim=-1)
    expected = z @ normalize(head.prototypes, dim=-1).T
    torch.testing.assert_close(head(x), expected)
    assert head(x).shape == (4, 16) and expected.std() > 0.1
    # The prototypes' norm does not matter (weight norm fixed to 1).
    with torch.no_grad():
        scaled = head(x).clone()
        head.prototypes.mul_(7.0)
    torch.testing.assert_close(head(x), scaled)
    # n_layers = 0: no MLP, the prototypes act on the (already normalised) input.
    head = DinoHead(DIM, out_dim=16, n_layers=0)
    assert len(head.mlp) == 0
    expected = x @ normalize(head.prototypes, dim=-1).T
    torch.testing.assert_close(head(x), expected)
