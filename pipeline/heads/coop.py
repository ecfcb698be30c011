"""CoOp (Zhou et al. 2022, "Learning to Prompt for Vision-Language Models"),
following the reference ``trainers/coop.py`` (PromptLearner, TextEncoder).

M learnable context vectors replace the words of a prompt; the frozen open_clip
text transformer encodes ``[SOS] ctx_1..ctx_M [CLASS] . [EOS]`` (class token
at the ``end``, ``middle`` or ``front``), and the logits are
``logit_scale · cos(image, text)`` with the cached image embedding ``X.cls``.
Context is generic (shared, default) or class-specific (``csc``); random
N(0, 0.02) initialisation, or from a phrase such as ``"a photo of a"``
(``ctx_init``; ``n_ctx`` then becomes its token count). Optimisation as in the
reference's ViT-B/16 config: SGD (momentum 0.9, weight decay 5e-4), lr 0.002,
batch 32, 200 epochs, cosine after one epoch of constant warmup at 1e-5. The
epochs follow the shots as in the reference's scripts (COOP.md: ``*_ep50`` at
1 shot, ``*_ep100`` at 2 and 4, the 200-epoch config at 8 and 16): params.yaml's
``epochs_by_shots`` (see :func:`pipeline.heads.make_head`). On ImageNet the
reference uses 50 epochs at every shot count: set ``epochs: 50`` and drop it.

The text encoder mirrors open_clip 3.3 ``CLIP.encode_text`` step by step,
starting from token embeddings instead of ids: cast to the transformer's
dtype, add positional embeddings, transformer (batch-first input; open_clip's
Transformer handles its own layout) with the causal ``attn_mask``, ``ln_final``,
``text_global_pool`` on the token ids (argmax = EOT for CLIP), text projection.

Deviations:
* ``ctx_init``'s length is its BPE token count (the reference counts
  space-separated words, which agree for ordinary words).
* ``csc`` with ``ctx_init`` gives every class its own copy of the phrase
  (the reference silently ignores ``csc`` then).
* Image features are cached: one cached augmented view per row per epoch
  (``X.views``, from the view set named by ``views``: ``dassl``, Dassl's
  ``random_resized_crop`` with scale (0.08, 1) and ``random_flip`` as in the
  reference's configs, 10 views per row) stands in for re-augmenting images.
* With validation rows the best epoch (``monitor``) is restored; the
  reference keeps the last epoch.
* After fitting only the C final text features are kept; prediction never
  runs the text transformer again.
"""
from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.features import FeatureSet, TextContext
from pipeline.heads.base import l2_normalise
from pipeline.heads.losses import ClassWeighting
from pipeline.heads.trainable import TorchHead

POSITIONS = ("end", "middle", "front")


def tokenize(tokenizer: Any, texts: list[str], context_length: int) -> torch.Tensor:
    try:
        ids = tokenizer(texts, context_length=context_length)
    except TypeError:  # tokenizers without the keyword use their own length
        ids = tokenizer(texts)
    if ids.shape[1] != context_length:
        raise ValueError(f"tokenizer gives {ids.shape[1]} tokens, the model expects {context_length}")
    return ids.long()


class FrozenTextEncoder(nn.Module):
    """open_clip ``CLIP.encode_text`` applied to prompt embeddings (frozen copy)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name in ("transformer", "positional_embedding", "ln_final", "text_projection", "attn_mask"):
            if not hasattr(model, name):
                raise ValueError(f"CoOp needs an open_clip CLIP text tower; model lacks '{name}'")
        self.transformer = copy.deepcopy(model.transformer)
        self.ln_final = copy.deepcopy(model.ln_final)
        self.text_projection = copy.deepcopy(model.text_projection)
        self.register_buffer("positional_embedding", model.positional_embedding.detach().clone())
        mask = model.attn_mask
        self.register_buffer("attn_mask", None if mask is None else mask.detach().clone())
        self.pool_type = model.text_pool_type
        self.eos_id = getattr(model, "text_eos_id", None)
        self.requires_grad_(False)

    def forward(self, prompts: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool  # the same pooling as encode_text

        cast_dtype = self.transformer.get_cast_dtype()
        x = prompts.to(cast_dtype) + self.positional_embedding.to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = text_global_pool(x, token_ids, self.pool_type, eos_token_id=self.eos_id)
        if self.text_projection is not None:
            if isinstance(self.text_projection, nn.Linear):
                x = self.text_projection(x)
            else:
                x = x @ self.text_projection
        return x


class PromptLearner(nn.Module):
    """Learnable context + frozen SOS / class-name / EOS token embeddings."""

    def __init__(self, model: nn.Module, tokenizer: Any, class_names: tuple[str, ...],
                 n_ctx: int, ctx_init: str | None, csc: bool, position: str) -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"class_token_position must be one of {POSITIONS}, got {position!r}")
        length = model.positional_embedding.shape[0]
        embed = model.token_embedding
        names = [n.replace("_", " ") for n in class_names]
        with torch.no_grad():
            if ctx_init:
                phrase = ctx_init.replace("_", " ")
                n_ctx = len(tokenizer.encode(phrase))
                ctx = _embed(embed, tokenize(tokenizer, [phrase], length))[0, 1:1 + n_ctx]
                ctx = ctx.unsqueeze(0).repeat(len(names), 1, 1) if csc else ctx
            else:
                phrase = " ".join(["X"] * n_ctx)
                shape = (len(names), n_ctx, embed.weight.shape[1]) if csc else (n_ctx, embed.weight.shape[1])
                ctx = nn.init.normal_(torch.empty(shape), std=0.02)
            token_ids = tokenize(tokenizer, [f"{phrase} {name}." for name in names], length)
            emb = _embed(embed, token_ids)
        self.ctx = nn.Parameter(ctx.clone())
        self.register_buffer("token_prefix", emb[:, :1].clone())          # SOS
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx:].clone())  # CLASS . EOS pad
        self.register_buffer("token_ids", token_ids)
        self.name_lens = [len(tokenizer.encode(name)) for name in names]
        self.n_ctx, self.position = n_ctx, position

    def forward(self) -> torch.Tensor:
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(len(self.name_lens), -1, -1)
        if self.position == "end":
            return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        half = self.n_ctx // 2
        prompts = []
        for i, name_len in enumerate(self.name_lens):
            prefix, suffix = self.token_prefix[i:i + 1], self.token_suffix[i:i + 1]
            name, rest = suffix[:, :name_len], suffix[:, name_len:]
            if self.position == "middle":
                parts = [prefix, ctx[i:i + 1, :half], name, ctx[i:i + 1, half:], rest]
            else:  # front
                parts = [prefix, name, ctx[i:i + 1], rest]
            prompts.append(torch.cat(parts, dim=1))
        return torch.cat(prompts, dim=0)


def _embed(embedding: nn.Embedding, token_ids: torch.Tensor) -> torch.Tensor:
    """float32 CPU token embeddings, wherever the model lives."""
    return embedding(token_ids.to(embedding.weight.device)).float().cpu()


class CoOpNet(nn.Module):
    """Prompt learner + frozen text encoder + cosine classifier."""

    def __init__(self, prompt_learner: PromptLearner, encoder: FrozenTextEncoder,
                 logit_scale: float) -> None:
        super().__init__()
        self.prompt_learner = prompt_learner
        self.encoder = encoder
        self.logit_scale = logit_scale

    def text_features(self) -> torch.Tensor:
        """[C, D] normalised text features of the current prompts."""
        feats = self.encoder(self.prompt_learner(), self.prompt_learner.token_ids)
        return F.normalize(feats.float(), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = F.normalize(batch["cls"], dim=-1)
        return self.logit_scale * image @ self.text_features().T


def build_coop_net(text: TextContext, *, n_ctx: int = 16, ctx_init: str | None = None,
                   csc: bool = False, class_token_position: str = "end") -> CoOpNet:
    """CoOp network for ``text`` (needs ``text.model`` and ``text.tokenizer``)."""
    if text.model is None or text.tokenizer is None:
        raise ValueError("coop needs TextContext.model and TextContext.tokenizer (open_clip)")
    if not ctx_init and n_ctx < 1:
        raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
    learner = PromptLearner(text.model, text.tokenizer, tuple(text.class_names), n_ctx,
                            ctx_init, csc, class_token_position)
    return CoOpNet(learner, FrozenTextEncoder(text.model), float(text.logit_scale))


class CoOpHead(TorchHead):
    """Context Optimisation on cached image embeddings."""

    #: the train stage loads the open_clip model for heads that run the text tower themselves
    needs_text_tower = True

    def __init__(self, *, n_ctx: int = 16, ctx_init: str | None = None, csc: bool = False,
                 class_token_position: Literal["end", "middle", "front"] = "end",
                 epochs: int = 200, batch_size: int = 32, lr: float = 0.002,
                 optimizer: Literal["sgd", "adamw"] = "sgd", weight_decay: float = 5e-4,
                 warmup_epochs: int = 1, warmup: Literal["linear", "constant"] = "constant",
                 warmup_lr: float = 1e-5, patience: int = 0,
                 monitor: Literal["loss", "accuracy", "balanced_accuracy"] = "accuracy",
                 class_weight: ClassWeighting = "none", focal_gamma: float = 0.0,
                 views: str | None = "dassl", seed: int = 0,
                 device: Literal["auto", "cpu", "cuda"] = "auto") -> None:
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.csc = csc
        self.class_token_position = class_token_position
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.warmup = warmup
        self.warmup_lr = warmup_lr
        self.patience = patience
        self.monitor = monitor
        self.class_weight = class_weight
        self.focal_gamma = focal_gamma
        self.views = views
        self.seed = seed
        self.device = device

    def _build_net(self, X: FeatureSet, y: np.ndarray, text: TextContext) -> nn.Module:
        net = build_coop_net(text, n_ctx=self.n_ctx, ctx_init=self.ctx_init, csc=self.csc,
                             class_token_position=self.class_token_position)
        with torch.no_grad():
            dim = net.text_features().shape[1]
        if dim != X.cls.shape[1]:
            raise ValueError(f"text.model embeds to {dim} dims, X.cls has {X.cls.shape[1]}")
        return net

    @torch.no_grad()
    def _finish(self, net: nn.Module, X_val: FeatureSet | None, y_val: np.ndarray | None) -> None:
        self.text_features_ = net.text_features().cpu().numpy()
        self.ctx_ = net.prompt_learner.ctx.detach().cpu().numpy()
        self.logit_scale_ = net.logit_scale

    def _logits(self, X: FeatureSet) -> np.ndarray:
        feats = l2_normalise(np.asarray(X.cls, dtype=np.float32))
        return self.logit_scale_ * feats @ self.text_features_.T
