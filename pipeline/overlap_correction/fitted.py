"""A trained overlap adapter: apply it to cached embeddings, save it, load it.

The caller (the stage that rebuilds Tip-Adapter's cache) must be able to show
that the adapter never saw target-task images: ``trained_on`` lists the ids of
every generic row used for training and ``trained_on_sha256`` fingerprints that
list (:func:`ids_digest`), so a stage can assert disjointness from the target
splits and record the digest in its metrics without storing the ids twice.

The file is one ``torch.save`` dict of plain tensors and JSON-able metadata, so
``torch.load(path, weights_only=True)`` can read it (no pickled classes), and it
is written atomically (temporary sibling, then ``os.replace``).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.files import atomic_path
from pipeline.overlap_correction.model import OverlapAdapter

if TYPE_CHECKING:
    from pipeline.overlap_correction import OverlapAdapterParams

FORMAT = "overlap_adapter/v1"
TRANSFORM_ROWS = 8192  # rows per forward pass in ``transform``


def sorted_ids(ids: np.ndarray | tuple[str, ...]) -> tuple[str, ...]:
    """Unique ids as strings, sorted as strings (so ints and their str form agree)."""
    return tuple(sorted({str(i) for i in np.asarray(ids).ravel().tolist()}))


def ids_digest(ids: np.ndarray | tuple[str, ...]) -> str:
    """sha256 of :func:`sorted_ids`, one per line (UTF-8); order and duplicates don't matter."""
    return hashlib.sha256("\n".join(sorted_ids(ids)).encode("utf-8")).hexdigest()


@dataclass
class FittedAdapter:
    """Adapter in eval mode plus what is needed to trust and reproduce it.

    trained_on:        :func:`sorted_ids` of the generic rows it trained on.
    trained_on_sha256: :func:`ids_digest` of ``trained_on``.
    dim:               embedding dimension D it maps.
    history:           one record per epoch: ``epoch``, ``loss`` (mean over steps),
                       ``loss_std``, ``lr`` (at the epoch's end) and, for DINO,
                       ``teacher_momentum``.
    """

    adapter: OverlapAdapter
    params: "OverlapAdapterParams"
    trained_on: tuple[str, ...]
    trained_on_sha256: str
    dim: int
    history: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.adapter.eval()
        for p in self.adapter.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def transform(self, x: np.ndarray) -> np.ndarray:
        """Corrected embeddings of ``x`` [N, D] or [N, A, D]: same shape, float32, unit norm.

        Inputs are re-normalised first (fp16 caches are only nearly unit norm),
        matching what the adapter saw in training.
        """
        x = np.asarray(x)
        if x.ndim not in (2, 3) or x.shape[-1] != self.dim:
            raise ValueError(f"expected [N, {self.dim}] or [N, A, {self.dim}] embeddings, got {x.shape}")
        flat = x.reshape(-1, self.dim)
        device = next(self.adapter.parameters()).device
        out = np.empty(flat.shape, dtype=np.float32)
        for start in range(0, len(flat), TRANSFORM_ROWS):
            rows = torch.as_tensor(np.ascontiguousarray(flat[start:start + TRANSFORM_ROWS]),
                                   dtype=torch.float32, device=device)
            rows = torch.nn.functional.normalize(rows, dim=-1)
            out[start:start + len(rows)] = self.adapter(rows).cpu().numpy()
        return out.reshape(x.shape)

    def meta(self) -> dict[str, Any]:
        """JSON-able description (everything but the weights)."""
        return {"format": FORMAT, "params": dataclasses.asdict(self.params), "dim": self.dim,
                "trained_on": list(self.trained_on), "trained_on_sha256": self.trained_on_sha256,
                "history": [dict(r) for r in self.history]}

    def save(self, path: Path | str, extra_meta: dict[str, Any] | None = None) -> None:
        """Write weights (CPU tensors) and :meth:`meta` (plus JSON-able ``extra_meta``) to ``path``, atomically."""
        state = {k: v.detach().cpu().clone() for k, v in self.adapter.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save({"state_dict": state, "meta": {**self.meta(), **(extra_meta or {})}}, tmp)

    @classmethod
    def load(cls, path: Path | str, device: str | torch.device = "cpu") -> "FittedAdapter":
        """Read a file written by :meth:`save` (``weights_only=True``: no code is unpickled)."""
        from pipeline.overlap_correction import OverlapAdapterParams

        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = blob["meta"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not an overlap adapter file (format {meta.get('format')!r})")
        params = OverlapAdapterParams(**meta["params"])
        adapter = OverlapAdapter(int(meta["dim"]), params.reduction, params.ratio)
        adapter.load_state_dict(blob["state_dict"])
        trained_on = tuple(meta["trained_on"])
        if ids_digest(trained_on) != meta["trained_on_sha256"]:
            raise ValueError(f"{path}: trained_on does not match its sha256")
        return cls(adapter=adapter.to(device), params=params, trained_on=trained_on,
                   trained_on_sha256=meta["trained_on_sha256"], dim=int(meta["dim"]),
                   history=[dict(r) for r in meta["history"]])


__all__ = ["FittedAdapter", "ids_digest", "sorted_ids"]
