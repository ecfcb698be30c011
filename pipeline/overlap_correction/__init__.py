"""Intra-modal overlap correction (Kravets & Namboodiri, BMVC 2024, "CLIP
Adaptation by Intra-modal Overlap Correction", arXiv 2409.11338), arrays in,
arrays out.

CLIP image-image cosine similarities of same-class and different-class pairs
overlap heavily (``pipeline.report.overlap``), which hurts training-free cache
methods such as Tip-Adapter whose affinities are exactly those similarities.
The paper trains a lightweight bottleneck adapter on a *generic* image
collection disjoint from the target task (Google Open Images), supervised or
with DINO self-distillation, and rebuilds the training-free cache from the
corrected image features.

* :mod:`~pipeline.overlap_correction.model`   -- the residual adapter, DINO head.
* :mod:`~pipeline.overlap_correction.losses`  -- SupCon, DINO loss and centring.
* :mod:`~pipeline.overlap_correction.train`   -- ``fit_adapter`` on cached views.
* :mod:`~pipeline.overlap_correction.fitted`  -- ``FittedAdapter``: transform, save, load.

Deviation: the adapter transforms *cached* L2-normalised embeddings instead of
sitting inside the image encoder, so no image is re-encoded (see ``model``).

``OverlapAdapterParams`` is the ``overlap.adapter`` block of params.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MODES = ("supervised", "unsupervised")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class OverlapAdapterParams:
    """``overlap.adapter`` in params.yaml.

    mode:             ``supervised`` (SupCon with the generic set's labels) or
                      ``unsupervised`` (DINO between augmented views; the paper's two variants).
    reduction:        bottleneck width ``D // reduction``; 4 as CLIP-Adapter (the paper's
                      in-encoder adapters use 64 of 768 units, i.e. 12).
    ratio:            scale of the residual branch, ``f' = norm(f + ratio * h(f))``
                      (AdaptFormer's ``s``). With the zero-initialised up-projection any
                      ``ratio > 0`` starts at the identity; it sets how fast (in Adam steps)
                      the correction can grow. 1.0: a single post-hoc adapter has to make the
                      whole correction that the paper spreads over 12 blocks (0.03 / 0.1 each).
    epochs:           passes over the generic set.
    batch_size:       images per step (each contributes 2 views). 64: a generic collection of a
                      few thousand cached images then gives ~1000+ steps in 30 epochs, which the
                      EMA teacher needs (see ``teacher_momentum``); SupCon still sees many
                      positives per anchor.
    lr:               AdamW peak learning rate, cosine-decayed to 0 over all steps. 5e-3: the
                      paper's supervised run uses 8e-3 with AdamW; 1e-3 barely moves a
                      zero-initialised adapter on unit-norm inputs within a few hundred steps.
    weight_decay:     AdamW weight decay (DINO's is 0.04 -> 0.4 on a schedule; constant here).
    temperature:      SupCon temperature, 0.07 as in the SupContrast reference.
    out_dim:          DINO prototypes (65536 in DINO for ImageNet; small generic sets need far fewer).
    head_hidden:      DINO head MLP width (2048 in DINO); unused when ``head_layers == 0``.
    head_bottleneck:  DINO head L2-normalised bottleneck (256 in DINO); unused when ``head_layers == 0``.
    head_layers:      DINO head MLP depth (DINO: 3). Default 0: the prototypes act directly on
                      the adapter's L2-normalised output. Deviation, because the corrected
                      *adapter output* is what the cache uses: an MLP head ending in its own
                      L2-normalised bottleneck can discard nuisance directions by itself, so
                      the adapter output hardly changes (synthetic tests: overlap 0.70 -> 0.67
                      with 3 layers, 0.67 with 1, 0.27 with 0). In the paper the head sits on
                      a whole adapted encoder, not on one post-hoc residual block.
    teacher_temp:     DINO teacher temperature at the start of its warm-up (0.04).
    teacher_temp_final: after the warm-up (0.07, the correction's DINO script).
    teacher_temp_warmup_epochs: linear warm-up length (the script: 50 of 100 epochs; 15 of 30 here).
    clip_grad:        DINO mode: each parameter's gradient clipped to this norm (0.3, the script's).
    student_temp:     DINO student temperature (0.1).
    center_momentum:  EMA momentum of the DINO centre (0.9).
    teacher_momentum: initial EMA momentum of the teacher, raised to 1 with a cosine
                      schedule over all steps as in DINO (0.996, DINO's default). Its averaging
                      window is ~1 / (1 - m) steps: with only a few hundred steps the returned
                      (teacher) adapter lags the student; lower it (e.g. 0.99) for short runs.
    seed:             seeds adapter initialisation, view draws and batch order.
    device:           ``auto`` picks CUDA when available.
    """

    mode: Literal["supervised", "unsupervised"] = "supervised"
    reduction: int = 4
    ratio: float = 1.0
    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 1e-4
    temperature: float = 0.07
    out_dim: int = 1024
    head_hidden: int = 512
    head_bottleneck: int = 128
    head_layers: int = 0
    teacher_temp: float = 0.04
    teacher_temp_final: float = 0.07
    teacher_temp_warmup_epochs: int = 15
    clip_grad: float = 0.3
    student_temp: float = 0.1
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        for name in ("reduction", "batch_size", "head_hidden", "head_bottleneck"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.out_dim < 2:
            raise ValueError(f"out_dim must be >= 2, got {self.out_dim}")
        if self.head_layers < 0:
            raise ValueError(f"head_layers must be >= 0, got {self.head_layers}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.teacher_temp_warmup_epochs < 0:
            raise ValueError(f"teacher_temp_warmup_epochs must be >= 0, got {self.teacher_temp_warmup_epochs}")
        for name in ("ratio", "lr", "temperature", "teacher_temp", "teacher_temp_final", "student_temp", "clip_grad"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.center_momentum < 1:
            raise ValueError(f"center_momentum must be in [0, 1), got {self.center_momentum}")
        if not 0 <= self.teacher_momentum <= 1:
            raise ValueError(f"teacher_momentum must be in [0, 1], got {self.teacher_momentum}")


# Submodules import OverlapAdapterParams only for type checking or lazily, so
# importing them after the class keeps this package free of import cycles.
from pipeline.overlap_correction.fitted import FittedAdapter, ids_digest  # noqa: E402
from pipeline.overlap_correction.losses import dino_loss, supcon_loss, update_center  # noqa: E402
from pipeline.overlap_correction.model import DinoHead, OverlapAdapter  # noqa: E402
from pipeline.overlap_correction.train import fit_adapter  # noqa: E402

__all__ = [
    "OverlapAdapterParams",
    "OverlapAdapter",
    "DinoHead",
    "FittedAdapter",
    "fit_adapter",
    "ids_digest",
    "supcon_loss",
    "dino_loss",
    "update_center",
]
