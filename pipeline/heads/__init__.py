"""Classification heads trained and evaluated on cached CLIP features.

``HEADS`` maps the name used in ``params.yaml`` (``heads.<name>``) to the
estimator class; a head's keyword parameters are exactly that block. Adding a
head is one module plus one entry here. See :mod:`pipeline.heads.base` for the
estimator contract.
"""
from __future__ import annotations

from typing import Any, Mapping

from pipeline.heads.base import BaseHead, head_params
from pipeline.heads.clap import CLAPHead
from pipeline.heads.clip_adapter import ClipAdapterHead
from pipeline.heads.coop import CoOpHead
from pipeline.heads.gda import GDAHead
from pipeline.heads.linear_probe import LinearProbeHead
from pipeline.heads.lp_plusplus import LPPlusPlusHead
from pipeline.heads.clip_mhadapter import MHAdapterHead
from pipeline.heads.proker import ProKeRHead
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
    "gda": GDAHead,
    "proker": ProKeRHead,
    "clap": CLAPHead,
    "lp_plusplus": LPPlusPlusHead,
}


def make_head(name: str, params: Mapping[str, Any] | None = None, shots: int | str | None = None,
              task: str | None = None) -> BaseHead:
    """Instantiate head ``name`` with its ``heads.<name>`` params block (for a draw of ``task`` x ``shots``).

    The block is checked and resolved by :func:`pipeline.heads.base.head_params`
    (unknown keys named in full; ``<param>_by_task`` / ``<param>_by_shots`` override).
    """
    from pipeline.params import ParamsError

    if name not in HEADS:
        raise ParamsError(f"train.heads: unknown head '{name}' (registered: {', '.join(sorted(HEADS))})")
    cls = HEADS[name]
    return cls(**head_params(name, cls, params, shots, task))


__all__ = ["HEADS", "BaseHead", "make_head"]
