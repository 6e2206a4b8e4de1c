"""Semantic segmentation task: ResNet encoder + UNet / DeepLabv3+ / PSPNet, CE + Dice.

Loss: ``rsjax.losses.ce_dice`` (softmax cross entropy + ``loss.dice_weight`` x multiclass soft
Dice) on the batch's ``mask`` (int32 class ids; ``ignore_index`` marks no-data pixels).
``loss.dice_reduction``: ``"example"`` (rsjax's per-crop form, averaged over the batch) or
``"batch"`` (CromSS: torch CE + smp ``DiceLoss`` pooled over the global batch). The same task is
the downstream segmentation job's model and the noisy-label pretraining method
(``config.method = "noisy_label"``, ignore value -1 there).

Batches: ``{"image": [B, S, S, C] float32 normalized, "mask": [B, S, S] int32}``.
Config keys: ``model.{name, stem, in_channels, decoder, num_classes, output_stride,
decoder_channels, dropout_rate}``, ``loss.{dice_weight, dice_reduction}``, ``optimizer.freeze``
(freezing the whole encoder also runs it in inference mode), ``dtype``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import losses
from rsjax.models import conv as conv_lib
from rsjax.models import decoders
from rsjax.models import resnet as resnet_lib
from rsjax.tasks.base import Task, dice_settings, freezes_encoder

# model.output_stride = 0 picks the usual choice of each decoder.
DEFAULT_OUTPUT_STRIDE = {"unet": 32, "deeplabv3plus": 16, "pspnet": 8}


def output_stride(model_config, decoder: str | None = None) -> int:
    os_ = int(model_config.get("output_stride", 0) or 0)
    return os_ or DEFAULT_OUTPUT_STRIDE.get(decoder or model_config.get("decoder", "unet"), 32)


class SegmentationTask(Task):
    name = "segmentation"

    def __init__(
        self,
        config,
        *,
        num_classes: int | None = None,
        ignore_index: int | None = -1,
        image_size: int | None = None,
        decoder: str | None = None,
        pretrained=None,
    ):
        super().__init__(config, pretrained=pretrained)
        m = config.model
        self.num_classes = int(num_classes or m.num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.image_size = int(image_size or config.data.crop_size or config.data.image_size)
        self.decoder_name = decoder or m.get("decoder", "unet")
        self.dice_weight, self.dice_reduction = dice_settings(config)
        if self.num_classes < 2:
            raise ValueError(f"config.model.num_classes={self.num_classes}: need >= 2 classes")
        if self.decoder_name not in DEFAULT_OUTPUT_STRIDE:
            raise ValueError(
                f"config.model.decoder={self.decoder_name!r}: expected one of {sorted(DEFAULT_OUTPUT_STRIDE)}"
            )
        ch = m.get("decoder_channels", ())
        ch = tuple(ch) if isinstance(ch, (list, tuple)) else ch
        self.freeze_encoder = freezes_encoder(config)
        self.model = decoders.SegmentationModel(
            m.name,
            self.decoder_name,
            self.num_classes,
            int(m.in_channels),
            stem=m.get("stem", "standard"),
            output_stride=output_stride(m, self.decoder_name),
            decoder_channels=ch or None,
            dropout_rate=m.get("dropout_rate", None),
            freeze_encoder=self.freeze_encoder,
            dtype=self.dtype,
            conv=conv_lib.from_config(m),
        )
        self.encoder = resnet_lib.encoder_from_config(m, self.dtype)

    def sample_batch(self, batch_size: int = 2) -> dict:
        s, c = self.image_size, int(self.config.model.in_channels)
        return {"image": np.zeros((batch_size, s, s, c), np.float32), "mask": np.zeros((batch_size, s, s), np.int32)}

    def init(self, rng, batch):
        x = batch["image"] if "image" in batch else batch["view1"]
        return self._finish_init(self.model.init({"params": rng, "dropout": rng}, x, train=False))

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
        loss = jnp.mean(
            losses.ce_dice(
                logits,
                labels,
                ignore_index=self.ignore_index,
                dice_weight=self.dice_weight,
                reduction=self.dice_reduction,
            )
        )
        valid = labels != self.ignore_index if self.ignore_index is not None else jnp.ones_like(labels, bool)
        pred = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
        return loss, {
            "batch_stats": upd["batch_stats"],
            "metrics": {"train_pixel_acc": self._masked_accuracy(pred, labels, valid)},
        }

    def predict(self, params, batch_stats, batch):
        """Class ids int32 [B, H, W] of whole images (eval mode)."""
        return jnp.argmax(self.apply(params, batch_stats, batch["image"], train=False), -1).astype(jnp.int32)
