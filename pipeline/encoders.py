"""open_clip models: loading, identity, image and text encoding.

A model is named the way open_clip names it. ``pretrained`` is either

* a tag (``openai``, ``laion2b_s34b_b79k``): downloaded by open_clip from its
  hub on first use (needs internet; cached by open_clip afterwards),
* a path to a local checkpoint file (``.pt``/``.bin``/``.safetensors``),
  loaded through open_clip's ``pretrained=<path>`` with ``weights_only=True``,
* ``null``: random initialisation from ``seed`` (useful for timing only).

Small models whose architecture open_clip does not ship (the offline demo
model) are described by JSON configs in ``model.config_dir``, registered with
``open_clip.add_model_config`` before creation.

The identity of a model (name, tag or checkpoint sha256, open_clip version,
preprocessing) is recorded in every cache and checked by every reader.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from pipeline.errors import UserError
from pipeline.files import sha256_file

# open_clip (and torchvision's model zoo it imports) is imported where a model is built:
# most stages only read caches and need no more than the version string.

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz"}


class ModelError(UserError, ValueError):
    """The model params do not describe a loadable model."""


@dataclass(frozen=True)
class ModelParams:
    """The ``model`` section of params.yaml."""

    name: str
    pretrained: str | None
    tag: str
    config_dir: str | None = None
    weights_dep: str | None = None  # only for dvc.yaml: the file DVC watches for the weights
    seed: int = 0


@dataclass(frozen=True)
class RuntimeParams:
    """Where and how a stage runs the encoder (``runtime`` section)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    batch_size: int = 64
    num_workers: int = 2
    fit_jobs: int | Literal["auto"] = "auto"  # train stages: processes fitting draws side by side (CPU)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    identity: dict
    device: torch.device


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("runtime.device is 'cuda' but no CUDA device is available")
    return torch.device(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision where the device supports it; fp32 runs without autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if device.type == "cpu" and dtype is torch.float16:
        raise ModelError("runtime.precision fp16 is not supported on CPU; use bf16 or fp32")
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_checkpoint_path(pretrained: str) -> bool:
    return "/" in pretrained or Path(pretrained).suffix in CHECKPOINT_SUFFIXES


def open_clip_version() -> str:
    """open_clip's version without importing it (importing it takes about a second)."""
    return importlib.metadata.version("open_clip_torch")


def register_configs(config_dir: str | None) -> None:
    import open_clip
    if config_dir is None:
        return
    path = Path(config_dir)
    if not path.is_dir():
        raise ModelError(f"model.config_dir: {path} is not a directory")
    open_clip.add_model_config(path)


def load_model(params: ModelParams, device: torch.device | str = "cpu") -> LoadedModel:
    """Create the model, load its weights and return it in eval mode with its identity."""
    import open_clip

    device = torch.device(device)
    register_configs(params.config_dir)
    if params.name not in open_clip.list_models():
        raise ModelError(f"model.name: '{params.name}' is not an open_clip model (nor in model.config_dir)")
    identity = weights_identity(params)
    pretrained = params.pretrained
    if pretrained is None:
        torch.manual_seed(params.seed)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            params.name, pretrained=pretrained, device=device, weights_only=True)
    except RuntimeError as exc:  # state-dict mismatch: wrong checkpoint for this architecture
        raise ModelError(f"model.pretrained: {pretrained} does not fit '{params.name}': {exc}") from exc
    model.eval()
    identity.update(preprocess_identity(model))
    tokenizer = open_clip.get_tokenizer(params.name)
    return LoadedModel(model, preprocess, tokenizer, identity, device)


def weights_identity(params: ModelParams) -> dict[str, Any]:
    """What a reader expects of a cache made with these model params (no model is built)."""
    identity: dict[str, Any] = {"model": params.name, "open_clip_version": open_clip_version()}
    pretrained = params.pretrained
    if pretrained is None:
        identity["weights"] = f"random-init:seed={params.seed}"
    elif is_checkpoint_path(pretrained):
        if not Path(pretrained).is_file():
            raise ModelError(f"model.pretrained: checkpoint {pretrained} does not exist")
        identity["weights"] = f"sha256:{sha256_file(pretrained)}"
    else:
        identity["weights"] = f"tag:{pretrained}"
    return identity


def preprocess_identity(model: torch.nn.Module) -> dict:
    import open_clip
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size")
    return {
        "image_size": list(size) if isinstance(size, (tuple, list)) else [size, size],
        "mean": list(cfg.get("mean", ())),
        "std": list(cfg.get("std", ())),
        "interpolation": cfg.get("interpolation"),
        "resize_mode": cfg.get("resize_mode"),
    }


def logit_scale(model: torch.nn.Module) -> float:
    """exp(logit_scale): the real temperature CLIP multiplies cosines by (~100)."""
    return float(model.logit_scale.detach().exp().item())


def block_indices(model: torch.nn.Module, blocks: tuple[int, ...]) -> list[int]:
    """Negative block indices (-1 = last) as positive indices of the vision transformer."""
    visual = model.visual
    if not hasattr(visual, "transformer"):
        raise ModelError("extract.token_blocks: patch tokens need a ViT image tower")
    depth = len(visual.transformer.resblocks)
    bad = [b for b in blocks if not -depth <= b < 0]
    if bad:
        raise ModelError(f"extract.token_blocks: {bad} out of range for a {depth}-block tower (use -1..-{depth})")
    return [depth + b for b in blocks]


@torch.no_grad()
def encode_images(model: torch.nn.Module, images: torch.Tensor, blocks: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """Normalised projected embeddings, their norms before normalising, and per block tokens [B, 1+P, W].

    ``cls_norm`` [B] (float32) keeps what normalisation throws away, so a head
    that blends with the raw projected feature (CLIP-MHAdapter's reference) can
    rebuild it exactly as ``cls * cls_norm``. Block -1 is returned after
    ``ln_post`` (the tokens open_clip's own ``output_tokens`` gives); other
    blocks are the raw residual-stream output, which is what CLIP-MHAdapter
    reads from the penultimate block.
    """
    if not blocks:
        return _normalised(model.encode_image(images))
    wanted = block_indices(model, blocks)
    out = model.forward_intermediates(
        image=images, image_indices=wanted, normalize=False,
        image_output_fmt="NLC", image_output_extra_tokens=True)
    result = _normalised(out["image_features"])
    # open_clip returns intermediates in ascending block order, whatever order we asked in.
    ascending = sorted(blocks, key=lambda b: wanted[blocks.index(b)])
    for b, prefix, patches in zip(ascending, out["image_intermediates_prefix"], out["image_intermediates"]):
        tokens = torch.cat([prefix, patches], dim=1)
        result[f"block{b}"] = model.visual.ln_post(tokens) if b == -1 else tokens
    return result


def _normalised(raw: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"cls": F.normalize(raw, dim=-1), "cls_norm": raw.float().norm(dim=-1)}


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenizer: Any, texts: list[str], device: torch.device,
                 batch_size: int = 256) -> torch.Tensor:
    """Normalised text embeddings [len(texts), D] (fp32, on CPU)."""
    parts = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start:start + batch_size]).to(device)
        parts.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(parts)
