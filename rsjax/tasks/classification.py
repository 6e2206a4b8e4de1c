"""Classification fine-tuning task: encoder + linear head, softmax CE or multi-label BCE.

Batches: ``{"image": [B, S, S, C] float32 normalized, "label": [B] int32 | [B, K] multi-hot}``.
Loss: softmax cross entropy (single label) or the mean sigmoid binary cross entropy over the
``num_outputs`` classes (multi-label). Parameters ``{"encoder", "head"}``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rsjax import optim
from rsjax.models import resnet as resnet_lib
from rsjax.tasks.base import Task


class EncoderClassifier(nn.Module):
    """Encoder + linear head; params ``{'encoder', 'head'}``."""

    encoder: nn.Module
    num_outputs: int
    freeze_encoder: bool = False

    @nn.compact
    def __call__(self, x, *, train: bool):
        feats = self.encoder(x, train=train and not self.freeze_encoder)
        if self.freeze_encoder:
            feats = jax.lax.stop_gradient(feats)
        return nn.Dense(self.num_outputs, name="head")(feats.astype(jnp.float32))


class ClassifierTask(Task):
    name = "classification"

    def __init__(
        self,
        config,
        *,
        num_outputs: int,
        multilabel: bool = False,
        image_size: int | None = None,
        optimizer=None,
        pretrained=None,
    ):
        super().__init__(config, pretrained=pretrained)
        m = config.model
        self.num_outputs, self.multilabel = int(num_outputs), bool(multilabel)
        self.image_size = int(image_size or config.data.image_size)
        self.encoder = resnet_lib.encoder_from_config(m, self.dtype)
        block = optimizer if optimizer is not None else config.optimizer

        self.model = EncoderClassifier(
            resnet_lib.encoder_from_config(m, self.dtype), self.num_outputs, optim.freezes_module(block, "encoder")
        )

    def sample_batch(self, batch_size: int = 2) -> dict:
        s, c = self.image_size, int(self.config.model.in_channels)
        label = np.zeros((batch_size, self.num_outputs) if self.multilabel else (batch_size,), np.int32)
        return {"image": np.zeros((batch_size, s, s, c), np.float32), "label": label}

    def init(self, rng, batch):
        return self._finish_init(self.model.init(rng, batch["image"], train=False))

    def loss(self, params, batch_stats, extra, batch, rngs, step):
        del extra, rngs, step
        logits, upd = self.model.apply(
            {"params": params, "batch_stats": batch_stats}, batch["image"], train=True, mutable=["batch_stats"]
        )
        if self.multilabel:
            loss = optax.sigmoid_binary_cross_entropy(logits, batch["label"].astype(jnp.float32)).mean()
            acc = jnp.mean((logits > 0) == (batch["label"] > 0))
        else:
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, {"batch_stats": upd.get("batch_stats", batch_stats), "metrics": {"train_acc": acc}}

    def predict(self, params, batch_stats, batch):
        """Logits float32 [B, num_outputs] (eval mode)."""
        return self.model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=False)
