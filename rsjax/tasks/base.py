"""What every supervised task shares: dtype, the encoder freeze, the pretrained encoder."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from rsjax import losses, optim
from rsjax.models import decoders
from rsjax.trainable import compute_dtype

PyTree = Any


def freezes_encoder(config) -> bool:
    """Whether ``config.optimizer.freeze`` freezes the whole encoder: the model then also runs
    the encoder in inference mode (BatchNorm running statistics, stopped gradients)."""
    return optim.freezes_module(config.optimizer, "encoder")


def dice_settings(config) -> tuple[float, str]:
    """``(loss.dice_weight, loss.dice_reduction)`` of a dense task, the reduction checked."""
    loss = config.get("loss", {})
    weight, reduction = float(loss.get("dice_weight", 1.0)), loss.get("dice_reduction", "example")
    if reduction not in losses.DICE_REDUCTIONS:
        raise ValueError(f"config.loss.dice_reduction={reduction!r}: expected one of {losses.DICE_REDUCTIONS}")
    return weight, reduction


class Task:
    """Base class of the supervised tasks (implements :class:`rsjax.trainable.Trainable`):
    subclasses set ``self.model`` (a Flax module with an ``encoder`` submodule) and
    ``self.encoder``, and define ``sample_batch``, ``init``, ``loss`` and ``predict``."""

    name = "task"

    def __init__(self, config, *, pretrained=None):  # noqa: D107
        self.config = config
        self.dtype = compute_dtype(config)
        self.pretrained = pretrained

    def update_extra(self, params, batch_stats, extra, aux, step):
        """A task has no state besides its parameters and statistics."""
        del params, batch_stats, aux, step
        return extra

    def _finish_init(self, variables) -> tuple[PyTree, PyTree, PyTree]:
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        if self.pretrained is not None:
            plugged = decoders.plug_encoder(
                {"params": params, "batch_stats": batch_stats}, self.pretrained[0], self.pretrained[1]
            )
            params, batch_stats = plugged["params"], plugged["batch_stats"]
        return params, batch_stats, {}

    def encode(self, params, batch_stats, x):
        """Pooled eval-mode features of the task's encoder (float32 [B, F])."""
        return self.encoder.apply(
            {"params": params["encoder"], "batch_stats": batch_stats["encoder"]}, x, train=False
        ).astype(jnp.float32)

    def predict(self, params, batch_stats, batch):
        raise NotImplementedError

    @staticmethod
    def _masked_accuracy(pred, labels, valid):
        return jnp.sum((pred == labels) & valid) / jnp.maximum(jnp.sum(valid), 1)
