"""The independent fits of a train stage, spread over CPU processes.

A train stage fits one head per (task, shots, seed); the fits share nothing but
read-only features. On a CPU each fit runs on one thread (the heads' tensors
are small, and OpenMP's synchronisation cost more than it saved), so a stage
used one core. ``runtime.fit_jobs`` forked workers run the fits side by side.

A fit's result does not depend on the process that runs it: every fit is
seeded by its own seed and computed on one thread wherever it runs (tests
compare one and two workers, with a float tolerance since BLAS may round
differently on differently aligned memory). So ``fit_jobs`` is a runtime knob,
not a dependency of the train stages, like ``runtime.batch_size`` for extraction.

Workers are forked: they share the parent's features instead of receiving
pickled copies, and only an index goes to them. With CUDA the fits run in the
stage's own process, since a CUDA context does not survive a fork.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Literal, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_WORK: tuple[Callable[[Any], Any], Sequence[Any]] | None = None  # set before forking, read in workers


def resolve_jobs(jobs: int | Literal["auto"], n_fits: int, device_type: str) -> int:
    """Worker count: ``auto`` = the CPU cores this process may use; 1 on CUDA; at most ``n_fits``."""
    if device_type == "cuda":
        return 1
    wanted = len(os.sched_getaffinity(0)) if jobs == "auto" else int(jobs)
    return max(1, min(wanted, n_fits))


def one_thread_per_fit() -> None:
    """Run this process's fits on one thread: torch's and the BLAS under numpy / scikit-learn.

    The heads' tensors are small, so threads cost more in synchronisation than they
    save; and a fit must compute the same in the stage's process and in a worker.
    Two workers each running OpenBLAS's two threads made the linear probe's stage
    slower than one process (threads spinning on 2 cores).
    """
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1)  # stays in force for the process (nothing restores it)


def _run(index: int) -> Any:
    assert _WORK is not None
    fn, items = _WORK
    return fn(items[index])


def map_fits(fn: Callable[[T], R], items: Sequence[T], jobs: int) -> list[R]:
    """``[fn(x) for x in items]`` in order, over ``jobs`` forked processes (in-process for 1).

    ``fn`` may close over large arrays: the workers inherit them. Its results
    travel back pickled, so keep them small (prediction tables, statistics).
    """
    global _WORK
    if jobs <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    _WORK = (fn, items)
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=one_thread_per_fit) as pool:
            return list(pool.map(_run, range(len(items))))
    finally:
        _WORK = None
