"""Classification heads trained and evaluated on cached CLIP features.

``HEADS`` maps the name used in ``params.yaml`` (``heads.<name>``) to the
estimator class; a head's keyword parameters are exactly that block. Adding a
head is one module plus one entry here. See :mod:`pipeline.heads.base` for the
estimator contract.
"""
from __future__ import annotations

from typing import Any, Mapping

from pipeline.heads.base import BaseHead
from pipeline.heads.clip_adapter import ClipAdapterHead
from pipeline.heads.coop import CoOpHead
from pipeline.heads.linear_probe import LinearProbeHead
from pipeline.heads.clip_mhadapter import MHAdapterHead
from pipeline.heads.tip_adapter import TipAdapterHead
from pipeline.heads.tip_adapter_f import TipAdapterFHead
from pipeline.heads.zero_shot import ZeroShotHead
from pipeline.heads.zeror import ZeroRHead

HEADS: dict[str, type[BaseHead]] = {
    "zeror": ZeroRHead,
    "zero_shot": ZeroShotHead,
    "linear_probe": LinearProbeHead,
    "clip_adapter": ClipAdapterHead,
    "tip_adapter": TipAdapterHead,
    "tip_adapter_f": TipAdapterFHead,
    "coop": CoOpHead,
    "clip_mhadapter": MHAdapterHead,
}


BY_SHOTS = "_by_shots"


def make_head(name: str, params: Mapping[str, Any] | None = None, shots: int | str | None = None) -> BaseHead:
    """Instantiate head ``name`` with its ``heads.<name>`` params block; unknown keys are named in full.

    A key ``<param>_by_shots`` (a mapping shots -> value) overrides ``<param>`` for the
    draws of those shots, e.g. CoOp's scripts: ``epochs: 200, epochs_by_shots: {1: 50, 2: 100,
    4: 100}``. Without ``shots`` (or for shots it does not list) ``<param>`` applies.
    """
    from pipeline.params import ParamsError

    if name not in HEADS:
        raise ParamsError(f"train.heads: unknown head '{name}' (registered: {', '.join(sorted(HEADS))})")
    cls = HEADS[name]
    allowed = set(cls().get_params())
    values = _resolve_by_shots(name, dict(params or {}), allowed, shots)
    unknown = sorted(set(values) - allowed)
    if unknown:
        keys = ", ".join(f"'heads.{name}.{k}'" for k in unknown)
        raise ParamsError(f"unknown params key {keys} (allowed: {', '.join(sorted(allowed))})")
    # params.yaml lists arrive as lists; heads take tuples.
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _resolve_by_shots(name: str, values: dict[str, Any], allowed: set[str], shots: int | str | None) -> dict:
    from pipeline.params import ParamsError

    for key in [k for k in values if k.endswith(BY_SHOTS)]:
        table, base = values.pop(key), key.removesuffix(BY_SHOTS)
        if base not in allowed:
            raise ParamsError(f"'heads.{name}.{key}': '{base}' is not a param of head '{name}'")
        if not isinstance(table, Mapping) or not all(str(k) == "all" or str(k).isdigit() for k in table):
            raise ParamsError(f"'heads.{name}.{key}' must map shot counts (or 'all') to values, got {table!r}")
        by_shots = {str(k): v for k, v in table.items()}
        if shots is not None and str(shots) in by_shots:
            values[base] = by_shots[str(shots)]
    return values


__all__ = ["HEADS", "BaseHead", "make_head"]
