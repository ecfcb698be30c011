"""pipeline.fit_pool: the train stages' fits over forked processes."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.fit_pool import map_fits, resolve_jobs

FEATURES = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)


def _fit(job: tuple[int, int]) -> tuple[int, np.ndarray, int]:
    """A seeded miniature fit on shared features: a few SGD steps of a linear map."""
    seed, steps = job
    torch.manual_seed(seed)
    w = torch.zeros(16, 3, requires_grad=True)
    x, y = torch.from_numpy(FEATURES), torch.randint(0, 3, (64,))
    opt = torch.optim.SGD([w], lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(x @ w, y).backward()
        opt.step()
    return seed, w.detach().numpy().copy(), os.getpid()


def test_workers_give_the_fits_of_one_process_in_order():
    jobs = [(seed, 5 + seed) for seed in range(6)]
    alone = map_fits(_fit, jobs, 1)
    spread = map_fits(_fit, jobs, 2)
    assert [r[0] for r in spread] == [seed for seed, _ in jobs]
    for (_, w1, pid1), (_, w2, pid2) in zip(alone, spread):
        np.testing.assert_allclose(w2, w1, rtol=1e-6, atol=1e-7)  # same math; BLAS may round per alignment
        assert pid1 == os.getpid()
    assert {pid for *_, pid in spread} - {os.getpid()}, "two jobs ran in this process, not in workers"


def _fail(job: int) -> int:
    if job == 3:
        raise UserError("heads.x.lr: must be > 0")
    return job


def test_a_failing_fit_raises_its_error_in_the_stage():
    with pytest.raises(UserError, match="heads.x.lr"):
        map_fits(_fail, list(range(5)), 2)


def test_jobs_resolution():
    cores = len(os.sched_getaffinity(0))
    assert resolve_jobs("auto", 100, "cpu") == cores
    assert resolve_jobs(4, 2, "cpu") == 2          # never more workers than fits
    assert resolve_jobs("auto", 100, "cuda") == 1  # a CUDA context does not survive a fork
    assert resolve_jobs(0, 5, "cpu") == 1
