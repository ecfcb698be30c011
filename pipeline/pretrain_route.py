"""The demo CLIP's training step, computed faster than open_clip's own forward.

:class:`TrainingRoute` swaps in the same math with fewer copies; it is tested
against the plain open_clip loop in tests/test_pretrain.py.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _block_forward(self: Any, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                   attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """open_clip's ``ResidualAttentionBlock.forward`` (self-attention) with the same
    linear maps, scaled dot-product attention and residuals, minus the transposes
    and copies nn.MultiheadAttention makes around them (14% of the image tower)."""
    h = self.ln_1(q_x)
    b, n, d = h.shape
    heads = self.attn.num_heads
    qkv = F.linear(h, self.attn.in_proj_weight, self.attn.in_proj_bias).view(b, n, 3, heads, d // heads)
    qkv = qkv.permute(2, 0, 3, 1, 4)
    mask = attn_mask.to(q_x.dtype) if attn_mask is not None else None
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
    x = q_x + self.ls_1(self.attn.out_proj(out.transpose(1, 2).reshape(b, n, d)))
    return x + self.ls_2(self.mlp(self.ln_2(x)))


class TrainingRoute:
    """Context for :func:`fit`: the same model and math, computed faster.

    * every residual attention block runs :func:`_block_forward`;
    * the fixed caption batch is cut after its last end-of-text token: with the
      causal mask, later (padding) positions never reach the pooled token, so
      their gradients were exact zeros anyway;
    * the token embedding (49408 x 128, 6.3M of the 8.3M parameters) is swapped
      for the rows the captions use. The other rows get no gradient, so AdamW's
      moments stay 0 and its update of them is the decoupled weight decay alone,
      ``p *= 1 - lr * wd``, which :meth:`decay_unused_rows` applies to them (the
      same float operation torch's AdamW does). On exit the trained rows are
      written back and open_clip's modules and forwards are restored.
    """

    def __init__(self, model: torch.nn.Module, tokens: torch.Tensor) -> None:
        self.model, self.tokens = model, tokens
        self.blocks = [b for tower in (model.visual.transformer, model.transformer) for b in tower.resblocks]
        for b in self.blocks:
            if hasattr(b, "ln_1_kv") or not b.attn.batch_first or b.attn.dropout:
                raise ValueError("the fast training route expects batch-first self-attention without dropout")
        if model.text_pool_type != "argmax" or not isinstance(model.text_projection, torch.nn.Parameter):
            raise ValueError("the fast training route expects argmax (eot) pooling and a projection matrix")
        self.length = int(tokens.argmax(dim=-1).max()) + 1  # eot is the highest token id
        self.used = torch.unique(tokens[:, : self.length])
        self.full = model.token_embedding
        local = torch.zeros(self.full.num_embeddings, dtype=torch.long)
        local[self.used] = torch.arange(len(self.used))
        self.local_tokens = local[tokens[:, : self.length]]

    def __enter__(self) -> "TrainingRoute":
        for b in self.blocks:
            b.forward = _block_forward.__get__(b)
        self.model.token_embedding = torch.nn.Embedding.from_pretrained(
            self.full.weight.detach()[self.used].clone(), freeze=not self.full.weight.requires_grad)
        return self

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            self.full.weight[self.used] = self.model.token_embedding.weight
        self.model.token_embedding = self.full
        for b in self.blocks:
            del b.forward

    def decay_unused_rows(self, factor: float) -> None:
        """AdamW's step on rows without gradient (the used rows are overwritten on exit)."""
        with torch.no_grad():
            self.full.weight.mul_(1 - factor)

    def encode_text(self) -> torch.Tensor:
        """``model.encode_text(tokens, normalize=True)`` for the fixed captions."""
        m, n = self.model, self.length
        x = m.token_embedding(self.local_tokens) + m.positional_embedding[:n]
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:n, :n]))
        x = x[torch.arange(x.shape[0]), self.tokens[:, :n].argmax(dim=-1)] @ m.text_projection
        return F.normalize(x, dim=-1)
