"""Where the small trainable modules compute, and from which seed.

Shared by the heads and the overlap-correction adapter; kept apart from
:mod:`pipeline.heads` so that the adapter's stage does not import (and depend
on) the head registry.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one fails."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(device)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[np.random.Generator]:
    """Seed torch inside a forked RNG state (the caller's global state is left
    untouched) and yield a numpy Generator for data order."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield np.random.default_rng(seed)
