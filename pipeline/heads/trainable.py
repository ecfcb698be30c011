"""Base class of the heads trained with :mod:`pipeline.heads.training`.

A subclass declares its parameters in ``__init__`` (scikit-learn needs them
spelled out; their defaults are each paper's), builds a network whose
``forward(batch)`` returns logits, and says which arrays it reads. Shared
parameters, read here by name:

``epochs, batch_size, lr, optimizer, weight_decay, warmup_epochs, warmup,
warmup_lr, patience, monitor, class_weight, focal_gamma, seed, device`` and,
where the head trains on the image embedding only, ``views`` (a view set name).

Model selection: when ``X_val`` is given, the trainable parameters of the
epoch with the best monitored validation value are restored at the end (and
training stops after ``patience`` epochs without improvement if
``patience > 0``); without ``X_val`` the last epoch is kept.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from pipeline.features import FeatureSet, TextContext
from pipeline.heads.base import BaseHead, resolve_device, seeded
from pipeline.heads.fitstats import count_trainable
from pipeline.heads.training import ArrayData, TrainConfig, predict_logits, train_module


class TorchHead(BaseHead):
    """Fit = build network, run the shared loop, keep the network for predict."""

    #: AdamW epsilon; Tip-Adapter-F's reference uses 1e-4.
    adam_eps: ClassVar[float] = 1e-8

    def _fit(self, X: FeatureSet, y: np.ndarray, *, text: TextContext,
             X_val: FeatureSet | None, y_val: np.ndarray | None) -> int:
        self.device_ = resolve_device(self.device)
        with seeded(self.seed, self.device_) as rng:
            net = self._build_net(X, y, text).to(self.device_)
            result = train_module(
                net, self._train_data(X), y, len(text.class_names), self._train_config(),
                self.device_, rng,
                val=None if X_val is None else ArrayData(self._arrays(X_val)), y_val=y_val)
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.epochs_run_ = result.epochs_run
        trainable = count_trainable(net)
        self._finish(net.eval(), X_val, y_val)
        return trainable

    # -- hooks --------------------------------------------------------------
    def _build_net(self, X: FeatureSet, y: np.ndarray, text: TextContext) -> nn.Module:
        raise NotImplementedError

    def _arrays(self, X: FeatureSet) -> dict[str, np.ndarray]:
        """Named arrays the network reads; the image embedding by default."""
        return {"cls": X.cls}

    def _finish(self, net: nn.Module, X_val: FeatureSet | None, y_val: np.ndarray | None) -> None:
        """Keep what predict needs (default: the trained network)."""
        self.net_ = net

    def _empty_net(self, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
        """The network of this head's params with weights of ``shapes`` (its ``state_dict``), values unset.

        The one hook a head keeping ``net_`` needs to be read back from a model file
        (:mod:`pipeline.modelfile`); the weights and scalar attributes are then loaded into it.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps net_ but does not define _empty_net")

    def _empty_module(self, attr: str, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
        if attr != "net_":
            raise ValueError(f"{type(self).__name__}: no module attribute '{attr}' to rebuild")
        return self._empty_net(shapes)

    # -- shared ---------------------------------------------------------------
    def _view_arrays(self, X: FeatureSet) -> dict[str, np.ndarray]:
        """Augmented versions [N, A, ...] of the arrays of :meth:`_arrays`, by name."""
        return {"cls": X.views} if X.views is not None else {}

    def _train_data(self, X: FeatureSet) -> ArrayData:
        views = self._view_arrays(X) if getattr(self, "views", None) else {}
        return ArrayData(self._arrays(X), views)

    def _train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            optimizer=self.optimizer, weight_decay=self.weight_decay, adam_eps=self.adam_eps,
            warmup_epochs=self.warmup_epochs, warmup=self.warmup, warmup_lr=self.warmup_lr,
            patience=self.patience, monitor=self.monitor, class_weight=self.class_weight,
            focal_gamma=self.focal_gamma)

    def _logits(self, X: FeatureSet) -> np.ndarray:
        logits = predict_logits(self.net_, ArrayData(self._arrays(X)), self.device_)
        return logits.cpu().numpy()


def frozen_buffer(array: np.ndarray) -> torch.Tensor:
    """float32 tensor for ``register_buffer`` (moves with ``.to(device)``)."""
    return torch.as_tensor(np.asarray(array, dtype=np.float32))


__all__ = ["TorchHead", "frozen_buffer"]
