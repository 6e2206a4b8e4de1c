"""BigEarthNet-S2 19-class multi-label evaluation: linear probe (+ optional fine-tuning), mAP.

Run:
  python -m rsjax.main --config=configs/eval_bigearthnet.py --workdir=runs/eval_ben_10pct \
      --config.data.data_dir=/path/to/tfds --config.pretrained=runs/<pretraining workdir> \
      --config.eval.label_fraction=0.1
  python -m rsjax.main --config=configs/eval_bigearthnet.py:smoke --workdir=/tmp/smoke

Variants:
  default    BigEarthNet-S2 (TFDS builder `bigearthnet`, 12 L2A bands resampled to 120 px,
             19-class multi-hot `label`), ResNet-50, linear probe on frozen features (300
             full-batch AdamW epochs), `eval.label_fraction` in {0.01, 0.1, 1.0} of the training
             set, micro and macro mAP; `--config.finetune.total_steps=N` adds fine-tuning.
  smoke      tiny ResNet on the tiny synthetic dataset; targets = classes present in the crop's
             land-cover mask (data.multilabel_from_mask), 2 fine-tune steps.
  synthetic  ResNet-18 on the default synthetic dataset with mask-derived multi-label targets.

The encoder of `--config.pretrained` must have `model.in_channels` (12) input bands and the
architecture `model.name`; a 13-band (L1C) checkpoint is refused with an error naming both.
"""

from configs import common

VARIANTS = ("default", "smoke", "synthetic")


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = common.eval_base("eval_multilabel")
    c.model.name = "resnet50"
    c.model.in_channels = 12
    c.data = common.data_config(name="bigearthnet", builder_config=None, image_size=120)
    c.data.multilabel_from_mask = False  # True: targets = classes present in data.mask_key
    c.data.image_key = "image"
    c.data.mask_key = "mask"
    c.eval.batch_size = 128
    c.eval.evaluators = ("linear_multilabel",)  # frozen-feature evaluators (rsjax.evaluate)
    c.eval.linear_epochs = 300
    c.eval.linear_lr = 1e-2
    c.eval.linear_weight_decay = 1e-4
    c.eval.label_fraction = 1.0  # 0.01 | 0.1 | 1.0
    common.add_finetune(c)
    if variant == "default":
        return c
    c.model.name = "resnet18"
    c.model.in_channels = 13
    c.data.name = "rs_synthetic"
    c.data.builder_config = "default"
    c.data.image_size = 32
    c.data.multilabel_from_mask = True
    if variant == "smoke":
        c.model.name = "tiny"
        c.data.builder_config = "tiny"
        c.eval.batch_size = 16
        c.eval.linear_epochs = 20
        c.eval.label_fraction = 0.5
        c.finetune.total_steps = 2
        c.finetune.batch_size = 16
        c.log_every = 1
    return c
