"""Supervised segmentation pretraining on (noisy) masks: the method behind
``rsjax.noisy_label`` (task-specific pretraining with noisy labels, DESIGN §3.4).

A :class:`rsjax.models.decoders.SegmentationModel` (ResNet encoder + UNet by default) trained
with ``rsjax.losses.ce_dice`` (softmax CE + multiclass soft Dice, ``loss.dice_weight``;
``loss.dice_reduction = "batch"`` is CromSS's torch CE + smp ``DiceLoss`` pooled over the global
batch, ``"example"`` rsjax's per-crop form) on the batch's ``mask`` (int32 class ids, ``IGNORE_INDEX`` = -1 marks no-data pixels). It implements
the generic :class:`~rsjax.methods.base.Method` interface, so the trainer's jitted step
(``rsjax.train.make_train_step``: named random streams, refused non-finite steps) runs it on
batches ``{"image": [B, S, S, C] float32 normalized, "mask": [B, S, S] int32}``.

Parameter trees are ``{'encoder': <ResNet>, 'decoder': ...}`` (params and batch_stats): the
layout of every pretraining method, so ``rsjax.checkpoint.load_encoder_for_export``, the
downstream jobs and the PyTorch export read the encoder of a noisy-label run like any other.
Registered as method ``noisy_label``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rsjax import losses
from rsjax.methods.base import Method, compute_dtype
from rsjax.models import resnet as resnet_lib

IGNORE_INDEX = -1


class NoisyLabelSegmentation(Method):
    name = "noisy_label"

    def __init__(self, config, *, decoder: str | None = None, num_classes: int | None = None,
                 freeze_encoder: bool = False):
        from rsjax.models import decoders

        self.config = config
        self.dtype = compute_dtype(config)
        m = config.model
        self.num_classes = int(num_classes or m.num_classes)
        self.decoder_name = decoder or m.get("decoder", "unet")
        self.dice_reduction = config.loss.get("dice_reduction", "example")
        if self.dice_reduction not in losses.DICE_REDUCTIONS:
            raise ValueError(f"config.loss.dice_reduction={self.dice_reduction!r}: expected one of "
                             f"{losses.DICE_REDUCTIONS}")
        if self.num_classes < 2:
            raise ValueError(f"config.model.num_classes={self.num_classes}: need >= 2 classes")
        self.model = decoders.SegmentationModel(
            encoder_name=m.name,
            decoder=self.decoder_name,
            num_classes=self.num_classes,
            in_channels=int(m.in_channels),
            stem=m.get("stem", "standard"),
            output_stride=int(m.get("output_stride", 32)),
            decoder_channels=m.get("decoder_channels", None) or None,
            freeze_encoder=freeze_encoder,
            dtype=self.dtype,
        )
        # The bare encoder (same parameter tree as model's 'encoder') for Method.encode.
        self.encoder = resnet_lib.create_encoder(m.name, dtype=self.dtype, stem=m.get("stem", "standard"))
        self.projector = None

    def init(self, rng, batch):
        x = batch["image"] if "image" in batch else batch["view1"]
        variables = self.model.init({"params": rng, "dropout": rng}, x, train=False)
        return variables["params"], variables.get("batch_stats", {}), {}

    def apply(self, params, batch_stats, x, *, train: bool, rng=None):
        """Logits [B, H, W, K] float32 (and the new batch_stats when ``train``)."""
        variables = {"params": params, "batch_stats": batch_stats}
        if not train:
            return self.model.apply(variables, x, train=False)
        return self.model.apply(variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"])

    def loss(self, params, batch_stats, extra, batch, rngs, step):
        del extra, step
        logits, upd = self.apply(params, batch_stats, batch["image"], train=True, rng=rngs["dropout"])
        labels = batch["mask"].astype(jnp.int32)
        # "batch" (default of the noisy-label configs): CromSS's scalar, CE and Dice pooled over
        # the global batch; "example": rsjax's per-crop form, averaged here.
        loss = jnp.mean(losses.ce_dice(logits, labels, ignore_index=IGNORE_INDEX,
                                       dice_weight=float(self.config.loss.get("dice_weight", 1.0)),
                                       reduction=self.dice_reduction))
        valid = labels != IGNORE_INDEX
        pred = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
        acc = jnp.sum((pred == labels) & valid) / jnp.maximum(jnp.sum(valid), 1)
        return loss, {"batch_stats": upd["batch_stats"], "metrics": {"train_pixel_acc": acc}}
