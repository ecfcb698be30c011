"""Losses that train the overlap-correcting adapter on a generic image collection.

Supervised: SupCon, the "L_out" form of Khosla et al. 2020 ("Supervised
Contrastive Learning", Eq. 2). For the ``2N`` (here ``B * V``) view embeddings
``z`` of a batch, anchor ``i``, its other views ``A(i) = I \\ {i}`` and its
positives ``P(i) = {p in A(i): y_p = y_i}`` (every view of every same-label
sample, including the anchor's own other views)::

    L = mean_i  -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau) )

It pulls same-class image embeddings together and pushes different classes
apart in cosine terms, i.e. it acts directly on the similarity distributions
whose overlap the paper measures. The SupContrast reference additionally
multiplies by ``tau / base_temperature`` (= 1 at its defaults tau = base = 0.07);
that factor is omitted. Anchors without positives (impossible with V >= 2)
would be skipped.

Deviation from the paper's released code: its supervised adapter is trained
with cross-entropy through a linear classifier over the Open Images classes;
issue 6 asks for SupCon, which needs no classifier over the generic classes and
optimises the embedding geometry itself.

Unsupervised: DINO self-distillation (Caron et al. 2021, reference
``DINOLoss``). Teacher outputs are centred and sharpened, student outputs are
softened, and the cross-entropy is averaged over all (teacher view, student
view) pairs of *different* views::

    q_t = softmax((t_t - c) / tau_t)        p_s = log_softmax(s_s / tau_s)
    L   = mean_{t != s} mean_b  sum_k -q_t[b, k] p_s[b, k]

The centre ``c`` is an EMA of the teacher's batch-mean output
(:func:`update_center`); centring and sharpening together avoid collapse.
As in DINO the first ``V_t`` student views are the teacher's views, so
``v == t`` identifies the same view.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SupCon L_out of ``z`` [B, V, D] (L2-normalised views) with ``labels`` [B]."""
    if z.ndim != 3 or labels.shape != (z.shape[0],):
        raise ValueError(f"z must be [B, V, D] and labels [B], got {tuple(z.shape)} and {tuple(labels.shape)}")
    b, v, _ = z.shape
    feats = z.reshape(b * v, -1).float()
    y = labels.repeat_interleave(v)
    logits = feats @ feats.T / temperature
    self_mask = torch.eye(b * v, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # anchor out of its own denominator
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (y[:, None] == y[None, :]) & ~self_mask
    n_pos = positive.sum(dim=1)
    per_anchor = -(log_prob.masked_fill(~positive, 0.0)).sum(dim=1) / n_pos.clamp(min=1)
    return per_anchor[n_pos > 0].mean()


def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor,
              student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """DINO cross-entropy of ``student_out`` [V_s, B, K] against ``teacher_out`` [V_t, B, K]."""
    if student_out.ndim != 3 or teacher_out.ndim != 3 or student_out.shape[1:] != teacher_out.shape[1:]:
        raise ValueError(f"student_out [V_s, B, K] and teacher_out [V_t, B, K] expected, "
                         f"got {tuple(student_out.shape)} and {tuple(teacher_out.shape)}")
    log_p = F.log_softmax(student_out.float() / student_temp, dim=-1)
    q = F.softmax((teacher_out.float() - center) / teacher_temp, dim=-1).detach()
    total, terms = student_out.new_zeros((), dtype=torch.float32), 0
    for t in range(q.shape[0]):
        for s in range(log_p.shape[0]):
            if s == t:
                continue
            total = total + (-q[t] * log_p[s]).sum(dim=-1).mean()
            terms += 1
    if terms == 0:
        raise ValueError("dino_loss needs at least one pair of different views")
    return total / terms


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """New centre: ``momentum * center + (1 - momentum) * mean of teacher_out`` over views and batch."""
    batch_center = teacher_out.reshape(-1, teacher_out.shape[-1]).float().mean(dim=0)
    return center * momentum + batch_center * (1.0 - momentum)


__all__ = ["supcon_loss", "dino_loss", "update_center"]
