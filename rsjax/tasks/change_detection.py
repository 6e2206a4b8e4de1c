"""Change detection task: siamese ResNet encoder, per-scale ``|f_A - f_B|``, UNet, BCE + Dice.

Loss: ``rsjax.losses.bce_dice`` (binary cross entropy + ``loss.dice_weight`` x soft Dice of the
change class; ``loss.dice_reduction`` ``"example"`` or ``"batch"`` as CromSS builds it for one
output channel) with ``ignore_index`` marking no-data pixels; the change pixels' BCE weighted by
``pos_weight`` = ``((1 - f) / f) ** loss.pos_weight_power``, ``f`` the change fraction of the
training change maps (:func:`positive_weight`; power 0 = unweighted). Batches:
``{"a", "b": [B, S, S, C] float32 normalized, "change": [B, S, S] int32 0/1}``.
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


def positive_weight(change, power: float, ignore_index: int | None = None) -> tuple[float, float]:
    """``(w, f)``: ``f`` = the fraction of changed pixels among the valid pixels of the change maps
    ``change`` (labels {0, 1}; ``ignore_index`` skipped), ``w = ((1 - f) / f) ** power``: 1 at
    power 0 (unweighted BCE), the ratio of unchanged to changed pixels at power 1 (the two
    classes' BCE weigh the same), its square root at 0.5. ``w = 1`` when ``f`` is 0 or 1 (nothing
    to balance)."""
    change = np.asarray(change)
    valid = np.ones(change.shape, bool) if ignore_index is None else change != ignore_index
    n = int(valid.sum())
    f = float(np.count_nonzero((change == 1) & valid)) / n if n else 0.0
    w = ((1.0 - f) / f) ** float(power) if 0.0 < f < 1.0 and power else 1.0
    return float(w), f


class ChangeDetectionTask(Task):
    name = "change_detection"

    def __init__(
        self,
        config,
        *,
        ignore_index: int | None = None,
        image_size: int | None = None,
        pretrained=None,
        train_change=None,
    ):
        """``train_change``: the training change maps (int labels, ``ignore_index`` skipped) that
        ``loss.pos_weight_power`` > 0 derives ``pos_weight`` from (None: 1, e.g. while validating)."""
        super().__init__(config, pretrained=pretrained)
        m = config.model
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        power = float(config.get("loss", {}).get("pos_weight_power", 0.0))
        if not power >= 0:
            raise ValueError(f"config.loss.pos_weight_power={power!r}: must be >= 0 (0 = unweighted BCE)")
        self.pos_weight, self.train_change_fraction = 1.0, None
        if train_change is not None:
            self.pos_weight, self.train_change_fraction = positive_weight(train_change, power, self.ignore_index)
        self.image_size = int(image_size or config.data.crop_size or config.data.image_size)
        self.dice_weight, self.dice_reduction = dice_settings(config)
        self.freeze_encoder = freezes_encoder(config)
        self.model = decoders.SiameseCDUNet(
            m.name,
            int(m.in_channels),
            stem=m.get("stem", "standard"),
            decoder_channels=tuple(m.get("decoder_channels", ())) or None,
            freeze_encoder=self.freeze_encoder,
            dtype=self.dtype,
            conv=conv_lib.from_config(m),
        )
        self.encoder = resnet_lib.encoder_from_config(m, self.dtype)

    def sample_batch(self, batch_size: int = 2) -> dict:
        s, c = self.image_size, int(self.config.model.in_channels)
        x = np.zeros((batch_size, s, s, c), np.float32)
        return {"a": x, "b": x, "change": np.zeros((batch_size, s, s), np.int32)}

    def init(self, rng, batch):
        return self._finish_init(self.model.init(rng, batch["a"], batch["b"], train=False))

    def loss(self, params, batch_stats, extra, batch, rngs, step):
        del extra, rngs, step
        logits, upd = self.model.apply(
            {"params": params, "batch_stats": batch_stats}, batch["a"], batch["b"], train=True, mutable=["batch_stats"]
        )
        change = batch["change"].astype(jnp.int32)
        loss = jnp.mean(
            losses.bce_dice(
                logits,
                change,
                ignore_index=self.ignore_index,
                dice_weight=self.dice_weight,
                reduction=self.dice_reduction,
                pos_weight=self.pos_weight,
            )
        )
        valid = change != self.ignore_index if self.ignore_index is not None else jnp.ones_like(change, bool)
        pred = (jax.lax.stop_gradient(logits) > 0).astype(jnp.int32)
        return loss, {
            "batch_stats": upd["batch_stats"],
            "metrics": {"train_pixel_acc": self._masked_accuracy(pred, change, valid)},
        }

    def predict(self, params, batch_stats, batch):
        """Change map uint8 {0, 1} [B, H, W] (logit > 0)."""
        logits = self.model.apply({"params": params, "batch_stats": batch_stats}, batch["a"], batch["b"], train=False)
        return (logits > 0).astype(jnp.uint8)
