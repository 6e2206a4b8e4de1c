"""LEVIR-CD building change detection: siamese encoder + UNet decoder, BCE + Dice, F1 / IoU.

Run:
  python -m rsjax.main --config=configs/cd_levir.py --workdir=runs/cd_levir \
      --config.data.data_dir=/path/to/tfds --config.pretrained=runs/<RGB pretraining workdir>
  python -m rsjax.main --config=configs/cd_levir.py:smoke --workdir=/tmp/smoke

Variants:
  default    LEVIR-CD (TFDS builder `levir_cd`: features image_a, image_b [256, 256, 3] uint8 and
             change [256, 256] uint8 0/1, the 1024 px tiles cut into 256 px crops), ResNet-18
             (3 bands) + UNet, 256 px crops with flips/rotations, batch 16, AdamW 5e-4 cosine,
             20k steps, BCE + Dice; metrics for the change class on the test split.
  smoke      tiny ResNet on the tiny synthetic dataset (image / image2 / change), 2 steps.
  synthetic  ResNet-18 on the default synthetic dataset (13 bands, 32 px), 300 steps.

`--config.optimizer.freeze=encoder/*` trains only the decoder. The encoder of
`--config.pretrained` must match model.name / model.stem / model.in_channels.
"""

import ml_collections

from configs import common

VARIANTS = ("default", "smoke", "synthetic")


def base(name: str, in_channels: int, crop: int) -> ml_collections.ConfigDict:
    """Shared by configs/cd_levir.py and configs/cd_oscd.py."""
    c = common.eval_base("change_detection")
    c.model.in_channels = in_channels
    c.model.decoder_channels = ()  # () = default widths (256, 128, 64, 32, 16)
    c.data = common.data_config(name=name, builder_config=None, image_size=crop)
    c.data.image_a_key = "image_a"
    c.data.image_b_key = "image_b"
    c.data.change_key = "change"
    common.add_dense_train(c, steps=20_000, batch_size=16, crop_size=crop, lr=5e-4)
    # > 0: the change pixels' BCE weighted by ((1 - f) / f) ** power, f the training maps' change
    # fraction (rsjax.tasks.change_detection.positive_weight; 1 balanced, 0.5 its square root)
    c.loss.pos_weight_power = 0.0
    c.eval.batch_size = 8
    c.eval.num_pictures = 4
    c.eval.save_predictions = False  # True: predictions.npz (the test change maps, uint8) in the workdir
    c.log_every = 50
    return c


def synthetic(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    c.model.in_channels = 13
    c.data.name = "rs_synthetic"
    c.data.builder_config = "default"
    c.data.image_size = 32
    c.data.image_a_key = "image"
    c.data.image_b_key = "image2"
    c.data.crop_size = 32
    c.total_steps = 300
    c.batch_size = 32
    c.optimizer.lr = 1e-3
    c.eval.batch_size = 64
    c.log_every = 10
    if variant == "smoke":
        c.model.name = "tiny"
        c.data.builder_config = "tiny"
        c.total_steps = 2
        c.batch_size = 8
        c.eval.batch_size = 8
        c.log_every = 1
    return c


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = base("levir_cd", 3, 256)
    if variant == "default":
        return c
    return synthetic(c, variant)
