"""The DINO mode's teacher-temperature warm-up and per-parameter gradient clip, as the correction's script.

akres001/CLIP_fewshot_imo dino_clip_training.py (DINO's utilities): teacher
temperature ``np.concatenate((np.linspace(0.04, 0.07, warmup), np.ones(epochs - warmup) * 0.07))``
indexed by epoch; ``clip_gradients``: each parameter's gradient norm capped at 0.3.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.overlap_correction import OverlapAdapterParams, fit_adapter
from pipeline.overlap_correction.train import clip_gradients, teacher_temperature


def test_teacher_temperature_schedule():
    epochs, warmup = 30, 15
    want = np.concatenate((np.linspace(0.04, 0.07, warmup), np.ones(epochs - warmup) * 0.07))
    got = [teacher_temperature(e, 0.04, 0.07, warmup) for e in range(epochs)]
    np.testing.assert_allclose(got, want)
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07  # no warm-up


def test_clip_gradients_is_per_parameter():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.1, 0.0])
    clip_gradients([a, b], 0.3)
    np.testing.assert_allclose(a.grad.numpy(), np.array([3.0, 4.0, 0.0]) * 0.3 / (5.0 + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(b.grad.numpy(), [0.1, 0.0])  # under the cap: untouched (a global clip would not be)


def test_dino_training_follows_the_schedule():
    rng = np.random.default_rng(0)
    views = rng.standard_normal((24, 2, 8)).astype(np.float32)
    views /= np.linalg.norm(views, axis=-1, keepdims=True)
    params = OverlapAdapterParams(mode="unsupervised", epochs=4, batch_size=8, out_dim=16,
                                  teacher_temp_warmup_epochs=3, device="cpu")
    fitted = fit_adapter(views, None, np.array([f"g{i}" for i in range(24)]), params)
    temps = [h["teacher_temp"] for h in fitted.history]
    np.testing.assert_allclose(temps, [0.04, 0.055, 0.07, 0.07])
