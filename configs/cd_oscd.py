"""OSCD (Onera Satellite Change Detection, 13 Sentinel-2 bands): siamese encoder + UNet decoder.

Run:
  python -m rsjax.main --config=configs/cd_oscd.py --workdir=runs/cd_oscd \
      --config.data.data_dir=/path/to/tfds --config.pretrained=runs/<13-band pretraining workdir>
  python -m rsjax.main --config=configs/cd_oscd.py:smoke --workdir=/tmp/smoke

Variants:
  default    OSCD (TFDS builder `oscd`, registry entry `oscd`: features image_a, image_b
             [H, W, 13] uint16 reflectance x 1e4 in Sentinel-2 band order, change [H, W] uint8
             0/1; 14 train / 10 test cities, cut into equal-size tiles by the builder),
             ResNet-18 (13 bands) + UNet, 96 px crops, batch 16, AdamW 5e-4 cosine, 5k steps.
  smoke      tiny ResNet on the tiny synthetic dataset (image / image2 / change), 2 steps.
  synthetic  ResNet-18 on the default synthetic 13-band dataset, 300 steps.

13-band encoders pretrained with configs/swimdiff.py (synthetic or ssl4eo) plug in directly.
"""

from configs import cd_levir, common

VARIANTS = ("default", "smoke", "synthetic")


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = cd_levir.base("oscd", 13, 96)
    c.total_steps = 5000
    if variant == "default":
        return c
    return cd_levir.synthetic(c, variant)
