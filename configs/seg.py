"""Semantic segmentation with a (pretrained) ResNet encoder: UNet, DeepLabv3+ or PSPNet.

Run:
  python -m rsjax.main --config=configs/seg.py --workdir=runs/seg_unet \
      --config.data.data_dir=/path/to/tfds --config.pretrained=runs/<pretraining workdir>
  python -m rsjax.main --config=configs/seg.py --workdir=runs/seg_dlv3 \
      --config.model.decoder=deeplabv3plus --config.model.output_stride=8 --config.optimizer.freeze=encoder/*
  python -m rsjax.main --config=configs/seg.py:false_protocol --workdir=runs/seg_false \
      --config.data.data_dir=/path/to/tfds --config.pretrained=runs/false
  python -m rsjax.main --config=configs/seg.py:dubai --workdir=runs/seg_dubai \
      --config.data.folder=$DATA/dubai_aerial_seg --config.pretrained=runs/<pretraining workdir>
  python -m rsjax.main --config=configs/seg.py:smoke --workdir=/tmp/smoke

Variants:
  default         `rs_segmentation` config `potsdam` (TFDS builder: image [256, 256, 3] uint8,
                  mask [256, 256] uint8 with 0 = ignore and 1..6 = the 6 ISPRS classes: the
                  registry's mask convention, mask_ignore_value=0 (mmseg's reduce_zero_label);
                  other configs: --config.data.builder_config=vaihingen |
                  loveda (+ --config.model.num_classes=7) | deepglobe), ResNet-18 + UNet, 256 px
                  crops, batch 16, AdamW 1e-3 cosine, 8k steps, CE + Dice.
                  model.decoder = unet | deeplabv3plus | pspnet; model.output_stride = 8 | 16 | 32
                  (0 = the decoder's usual: UNet 32, DeepLabv3+ 16, PSPNet 8).
  false_protocol  FALSE's fine-tuning protocol (MMSegmentation style): ResNet-50 DeepLabv3+
                  (output stride 8), frozen encoder, 256 px crops, batch 16, SGD lr 0.01
                  momentum 0.9 weight decay 5e-4 with poly decay (power 0.9), 1300 iterations,
                  cross entropy.
  dubai           the Dubai aerial set (`dubai_aerial_seg`, 5 classes; Unlabeled and the black
                  no-data border ignored) read from its folder as it unpacks (data.folder), cut
                  into 128 px crops; tiles 3 and 8 are the test split (data.test_scenes: all 5
                  classes at >= 9 % of their pixels, 34 % of the labelled pixels; docs/datasets.md),
                  the other five train; ResNet-18 + UNet, batch 16, 2000 steps.
  smoke           tiny ResNet + UNet on the tiny synthetic dataset (6-class mask), 2 steps.
  synthetic       ResNet-18 + UNet on the default synthetic dataset (13 bands, 32 px), 300 steps.
"""

import ml_collections

from configs import common

VARIANTS = ("default", "smoke", "synthetic", "false_protocol", "dubai")


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = common.eval_base("segmentation")
    c.model.in_channels = 3
    c.model.decoder = "unet"  # unet | deeplabv3plus | pspnet
    c.model.output_stride = 0  # 0 = decoder default; 8 | 16 | 32
    c.model.num_classes = 6
    c.model.decoder_channels = ()  # () = default widths
    c.model.dropout_rate = ml_collections.config_dict.placeholder(float)  # None = decoder default
    c.data = common.data_config(name="rs_segmentation", builder_config="potsdam", image_size=256)
    c.data.image_key = "image"
    c.data.mask_key = "mask"
    c.data.class_names = ()  # () = the registry's class names
    common.add_dense_train(c, steps=8000, batch_size=16, crop_size=256, lr=1e-3)
    c.eval.batch_size = 8
    c.eval.num_pictures = 4
    c.log_every = 50
    if variant == "default":
        return c
    if variant == "dubai":
        c.model.num_classes = 5
        c.data = common.data_config(name="dubai_aerial_seg", image_size=128, test_scenes=(3, 8))
        c.data.crop_size = 0  # the 128 px crops whole (flipped and rotated)
        c.total_steps = 2000
        return c
    if variant == "false_protocol":
        c.model.name = "resnet50"
        c.model.decoder = "deeplabv3plus"
        c.model.output_stride = 8
        c.optimizer.freeze = "encoder/*"
        c.data.crop_size = 256
        c.batch_size = 16
        c.optimizer.name = "sgd"
        c.optimizer.lr = 0.01
        c.optimizer.momentum = 0.9
        c.optimizer.weight_decay = 5e-4
        c.optimizer.schedule = "poly"
        c.optimizer.poly_power = 0.9
        c.total_steps = 1300
        c.loss.dice_weight = 0.0  # plain cross entropy
        return c
    c.model.in_channels = 13
    c.data.name = "rs_synthetic"
    c.data.builder_config = "default"
    c.data.image_size = 32
    c.data.crop_size = 32
    c.total_steps = 300
    c.batch_size = 32
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
