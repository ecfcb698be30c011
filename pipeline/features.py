"""In-memory views of cached features, as heads and CDUL see them.

Heads never open files: stages read the zarr caches (``pipeline.cache``),
join rows by sample id and hand these plain containers to ``fit`` /
``predict_proba``. Keeping the containers here (not in ``cache``) lets the
algorithms be tested on synthetic arrays without any zarr at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FeatureSet:
    """Rows of one split (or subset), aligned by position with ``ids``.

    cls:    [N, D] projected image embeddings, L2-normalised, float32.
    cls_norm: optional [N] norms of the projected embeddings before normalising
            (the cache's ``cls_norm``): ``cls * cls_norm[:, None]`` is the raw feature.
    tokens: optional mapping block-name -> [N, L, W] patch tokens (first token
            is the class token), float32; e.g. ``{"block-2": ...}`` for the
            penultimate block that CLIP-MHAdapter reads.
    tiles:  optional [N, 1 + g*g, D] normalised embeddings of the whole image
            followed by its g x g crops (CDUL).
    views:  optional [N, A, D] normalised embeddings of augmented views;
            ``views_norm`` [N, A] their norms before normalising.
    view_tokens: optional mapping block-name -> [N, A, L, W] tokens of the
            same augmented views (a view set with ``token_blocks``).
    corrected, corrected_views: optional overlap-corrected versions of ``cls``
            and ``views`` (:mod:`pipeline.overlap_correction`). Heads that
            compare images with images (Tip-Adapter's affinities) use them
            there and keep ``cls`` for the image-text logits, as the
            correction's reference code does.
    """

    ids: np.ndarray
    cls: np.ndarray
    tokens: dict[str, np.ndarray] = field(default_factory=dict)
    cls_norm: np.ndarray | None = None
    views_norm: np.ndarray | None = None
    tiles: np.ndarray | None = None
    views: np.ndarray | None = None
    corrected: np.ndarray | None = None
    corrected_views: np.ndarray | None = None
    view_tokens: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name, arr in [("cls", self.cls), ("cls_norm", self.cls_norm), ("tiles", self.tiles), ("views", self.views), ("views_norm", self.views_norm),
                          ("corrected", self.corrected), ("corrected_views", self.corrected_views),
                          *[(f"tokens[{k}]", v) for k, v in self.tokens.items()],
                          *[(f"view_tokens[{k}]", v) for k, v in self.view_tokens.items()]]:
            if arr is not None and len(arr) != n:
                raise ValueError(f"FeatureSet.{name} has {len(arr)} rows, ids has {n}")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> "FeatureSet":
        """Rows selected by integer or boolean index, in that order."""
        return FeatureSet(
            ids=self.ids[index],
            cls=self.cls[index],
            tokens={k: v[index] for k, v in self.tokens.items()},
            cls_norm=None if self.cls_norm is None else self.cls_norm[index],
            tiles=None if self.tiles is None else self.tiles[index],
            views=None if self.views is None else self.views[index],
            views_norm=None if self.views_norm is None else self.views_norm[index],
            corrected=None if self.corrected is None else self.corrected[index],
            corrected_views=None if self.corrected_views is None else self.corrected_views[index],
            view_tokens={k: v[index] for k, v in self.view_tokens.items()},
        )


@dataclass(frozen=True)
class TextContext:
    """Frozen text side of one task.

    class_names:  C names in the task's recorded class order.
    class_emb:    [C, D] L2-normalised text embeddings (template ensemble:
                  per-template normalised embeddings averaged, then re-normalised).
    template_emb: [T, C, D] per-template normalised embeddings.
    templates:    the T template strings (with ``{}`` for the class name).
    logit_scale:  exp(model.logit_scale), i.e. ~100 for OpenAI CLIP.
    model:        optional open_clip model (text tower used by CoOp); None when
                  a head needs only the cached embeddings.
    tokenizer:    optional open_clip tokenizer matching ``model``.
    """

    class_names: tuple[str, ...]
    class_emb: np.ndarray
    template_emb: np.ndarray
    templates: tuple[str, ...]
    logit_scale: float
    model: Any = None
    tokenizer: Any = None
