"""Training the overlap adapter on cached embeddings of a generic image collection.

Input: ``views`` [N, A, D], the cached normalised embeddings of A augmented
views of each of N generic images (never target-task images: the caller
checks ``FittedAdapter.trained_on``), optional generic ``labels`` [N] and the
row ``ids`` [N]. Every step draws, for each image of the batch, two *different*
views (the same one twice when A == 1), which stands in for augmenting each
image twice per step as the paper does.

* ``supervised``: SupCon (``losses.supcon_loss``) on the adapter outputs of the
  two views, positives = all views of the same generic class.
* ``unsupervised``: DINO (Caron et al. 2021). Student = adapter + ``DinoHead``;
  teacher = an EMA copy of both whose momentum rises from
  ``teacher_momentum`` to 1 on a cosine schedule; teacher outputs are centred
  with an EMA centre. Each view is distilled into the other (2 global views,
  no local crops). The *teacher's* adapter is returned, as DINO evaluates the
  teacher. DINO only learns what changes between views: if augmentation does
  not move the nuisance that causes the overlap, DINO cannot remove it
  (synthetic test data with image-fixed nuisance: overlap 0.69 -> 0.71).

Optimisation: AdamW on all trainable parameters, learning rate cosine-decayed
from ``lr`` to 0 over all steps. As the correction's DINO script
(``akres001/CLIP_fewshot_imo``, ``dino_clip_training.py``): the teacher
temperature warms linearly from ``teacher_temp`` (0.04) to
``teacher_temp_final`` (0.07) over ``teacher_temp_warmup_epochs`` (its 50 of
100 epochs; half of ours) and stays there, and each parameter's gradient is
clipped to norm ``clip_grad`` (0.3; DINO's per-parameter ``clip_gradients``).
SupCon keeps a global gradient-norm clip at 3.0. Deviations from that script:
no learning-rate warm-up, constant weight decay (0.04 -> 0.4 there, excluding
biases), teacher momentum 0.996 (0.9995 there), last layer never frozen
(``freeze_last_layer 1`` there).

On CPU the result is a deterministic function of the inputs and ``seed``
(torch is seeded inside a forked RNG state; data order comes from a seeded
numpy Generator).
"""
from __future__ import annotations

import copy
import logging
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.torch_env import resolve_device, seeded
from pipeline.overlap_correction.fitted import FittedAdapter, ids_digest, sorted_ids
from pipeline.overlap_correction.losses import dino_loss, supcon_loss, update_center
from pipeline.overlap_correction.model import DinoHead, OverlapAdapter

if TYPE_CHECKING:
    from pipeline.overlap_correction import OverlapAdapterParams

logger = logging.getLogger(__name__)

CLIP_GRAD = 3.0  # the SupCon mode's global gradient-norm clip


def teacher_temperature(epoch: int, start: float, final: float, warmup_epochs: int) -> float:
    """DINO's schedule: ``linspace(start, final, warmup_epochs)`` then ``final``."""
    if epoch >= warmup_epochs:
        return final
    return float(np.linspace(start, final, warmup_epochs)[epoch])


def clip_gradients(params: list[nn.Parameter], clip: float) -> None:
    """DINO's ``clip_gradients``: each parameter's gradient scaled down to norm ``clip`` (not a global norm)."""
    for p in params:
        if p.grad is not None:
            coef = clip / (float(p.grad.norm(2)) + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)


def fit_adapter(views: np.ndarray, labels: np.ndarray | None, ids: np.ndarray,
                params: "OverlapAdapterParams") -> FittedAdapter:
    """Train an :class:`OverlapAdapter` on generic ``views`` [N, A, D]; see the module docstring."""
    views, y = _check_inputs(views, labels, ids, params)
    dim = views.shape[2]
    device = resolve_device(params.device)
    logger.info("overlap adapter (%s): %d generic images x %d views, D=%d, %d epochs on %s",
                params.mode, views.shape[0], views.shape[1], dim, params.epochs, device)
    data = F.normalize(torch.as_tensor(views, dtype=torch.float32), dim=-1).to(device)
    with seeded(params.seed, device) as rng:
        adapter = OverlapAdapter(dim, params.reduction, params.ratio).to(device)
        objective: _Objective
        if params.mode == "supervised":
            objective = _SupCon(adapter, torch.as_tensor(y, dtype=torch.long, device=device), params)
        else:
            head = DinoHead(dim, params.out_dim, params.head_hidden, params.head_bottleneck,
                            params.head_layers).to(device)
            objective = _Dino(adapter, head, params)
        history = _train(data, objective, params, rng)
    seen = ids if params.epochs > 0 else np.asarray([], dtype=object)
    return FittedAdapter(adapter=objective.result(), params=params, trained_on=sorted_ids(seen),
                         trained_on_sha256=ids_digest(seen), dim=dim, history=history)


def _check_inputs(views: np.ndarray, labels: np.ndarray | None, ids: np.ndarray,
                  params: "OverlapAdapterParams") -> tuple[np.ndarray, np.ndarray | None]:
    views = np.asarray(views)
    if views.ndim != 3 or min(views.shape) < 1:
        raise ValueError(f"views must be [N, A, D] with N, A, D >= 1, got {views.shape}")
    n, a, dim = views.shape
    if not np.isfinite(views).all():
        raise ValueError("views contain non-finite values")
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise ValueError(f"ids must be [N] = [{n}], got {ids.shape}")
    if len(sorted_ids(ids)) != n:
        raise ValueError("ids must be unique: each row is one generic image")
    if dim // params.reduction < 1:
        raise ValueError(f"reduction {params.reduction} leaves no bottleneck units for D = {dim}")
    if params.mode == "unsupervised":
        if a < 2:
            raise ValueError(f"unsupervised (DINO) mode needs A >= 2 augmented views per image, got A = {a}")
        if labels is not None:
            logger.warning("overlap adapter: labels are ignored in unsupervised mode")
        return views, None
    if labels is None:
        raise ValueError("supervised mode needs labels of the generic images (got labels=None); "
                         "use mode 'unsupervised' for an unlabelled collection")
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must be [N] = [{n}], got {labels.shape}")
    return views, np.unique(labels, return_inverse=True)[1].reshape(n)


class _Objective:
    """What one mode optimises: ``loss`` of a batch of view pairs, a hook after each optimiser step."""

    def parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def loss(self, pair: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``pair`` [B, 2, D] normalised views of rows ``idx`` [B]."""
        raise NotImplementedError

    def after_step(self, it: int, total: int) -> dict[str, float]:
        return {}

    def start_epoch(self, epoch: int) -> dict[str, float]:
        return {}

    def clip(self, trainable: list[nn.Parameter]) -> None:
        torch.nn.utils.clip_grad_norm_(trainable, CLIP_GRAD)

    def result(self) -> OverlapAdapter:
        raise NotImplementedError


class _SupCon(_Objective):
    def __init__(self, adapter: OverlapAdapter, targets: torch.Tensor, params: "OverlapAdapterParams") -> None:
        self.adapter, self.targets, self.temperature = adapter, targets, params.temperature

    def parameters(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters())

    def loss(self, pair: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return supcon_loss(self.adapter(pair), self.targets[idx], self.temperature)

    def result(self) -> OverlapAdapter:
        return self.adapter


class _Dino(_Objective):
    """Student (adapter + head), its EMA teacher and the teacher-output centre."""

    def __init__(self, adapter: OverlapAdapter, head: DinoHead, params: "OverlapAdapterParams") -> None:
        self.student = nn.Sequential(adapter, head)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.center = torch.zeros(params.out_dim, device=head.prototypes.device)
        self.params = params
        self.teacher_temp = params.teacher_temp
        self._teacher_out: torch.Tensor | None = None

    def start_epoch(self, epoch: int) -> dict[str, float]:
        p = self.params
        self.teacher_temp = teacher_temperature(epoch, p.teacher_temp, p.teacher_temp_final,
                                                p.teacher_temp_warmup_epochs)
        return {"teacher_temp": self.teacher_temp}

    def clip(self, trainable: list[nn.Parameter]) -> None:
        clip_gradients(trainable, self.params.clip_grad)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.student.parameters())

    def loss(self, pair: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        views = pair.transpose(0, 1)  # [2, B, D]: view-major, as dino_loss expects
        with torch.no_grad():
            self._teacher_out = self.teacher(views)
        p = self.params
        return dino_loss(self.student(views), self._teacher_out, self.center, p.student_temp, self.teacher_temp)

    @torch.no_grad()
    def after_step(self, it: int, total: int) -> dict[str, float]:
        m = teacher_momentum(self.params.teacher_momentum, it, total)
        for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
            pt.mul_(m).add_(ps.detach(), alpha=1.0 - m)
        self.center = update_center(self.center, self._teacher_out, self.params.center_momentum)
        return {"teacher_momentum": m}

    def result(self) -> OverlapAdapter:
        return self.teacher[0]


def teacher_momentum(base: float, it: int, total: int) -> float:
    """DINO's ``cosine_scheduler(base, 1, ...)``: ``base`` at step 0, rising towards 1."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * it / max(1, total)) + 1.0) / 2.0


def _train(data: torch.Tensor, objective: _Objective, params: "OverlapAdapterParams",
           rng: np.random.Generator) -> list[dict[str, float]]:
    n, a, _ = data.shape
    total = params.epochs * math.ceil(n / params.batch_size)
    trainable = objective.parameters()
    optimiser = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda it: 0.5 * (1.0 + math.cos(math.pi * min(1.0, it / max(1, total)))))
    history: list[dict[str, float]] = []
    it = 0
    for epoch in range(params.epochs):
        order = rng.permutation(n)
        first = rng.integers(a, size=n)  # two different views per image (the same one when A == 1)
        second = (first + rng.integers(1, a, size=n)) % a if a > 1 else first
        pairs = torch.as_tensor(np.stack([first, second], axis=1), device=data.device)
        losses, extra = [], {}
        schedule = objective.start_epoch(epoch)
        for start in range(0, n, params.batch_size):
            idx = torch.as_tensor(order[start:start + params.batch_size], device=data.device)
            loss = objective.loss(data[idx[:, None], pairs[idx]], idx)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            objective.clip(trainable)
            optimiser.step()
            scheduler.step()
            extra = objective.after_step(it, total)
            losses.append(loss.item())
            it += 1
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "loss_std": float(np.std(losses)),
                  "lr": float(scheduler.get_last_lr()[0]), **schedule, **extra}
        history.append(record)
        logger.info("overlap adapter (%s) epoch %d/%d: loss %.4f", params.mode, epoch + 1,
                    params.epochs, record["loss"])
    return history


__all__ = ["fit_adapter"]
