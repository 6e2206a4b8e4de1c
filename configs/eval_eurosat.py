"""EuroSAT scene classification: linear probe, kNN and optional fine-tuning of an encoder.

Run:
  python -m rsjax.main --config=configs/eval_eurosat.py --workdir=runs/eval_eurosat \
      --config.data.data_dir=/path/to/tfds --config.pretrained=runs/<pretraining workdir>
  python -m rsjax.main --config=configs/eval_eurosat.py --workdir=runs/eval_eurosat_random \
      --config.data.folder=../shared/data/eurosat_rgb        # read the jpg folders directly
  python -m rsjax.main --config=configs/eval_eurosat.py:smoke --workdir=/tmp/smoke

Variants:
  default    EuroSAT RGB (`data.name=eurosat_rgb`, TFDS builder `eurosat_rgb`, or the class
             folders with `--config.data.folder=DIR`: seeded 80/20 split per class, 21,600 /
             5,400), 64 px, ResNet-18 (3 bands), kNN k=20 T=0.07, linear probe 300 epochs,
             no fine-tuning (`--config.finetune.total_steps=N` turns it on).
             `--config.pretrained=''` (default) evaluates a random-init encoder.
  smoke      tiny ResNet on the tiny synthetic dataset (13 bands, 32 px), 2 fine-tune steps.
  synthetic  ResNet-18 on the default synthetic dataset (land-cover labels of 32 px crops).

A pretrained encoder must match `model.name`, `model.stem` and `model.in_channels`
(EuroSAT RGB: 3 bands); a mismatch is refused with an error naming both.
"""

from configs import common

VARIANTS = ("default", "smoke", "synthetic")


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = common.eval_base("eval_classification")
    c.model.in_channels = 3
    c.data = common.data_config(name="eurosat_rgb", builder_config=None, image_size=64)
    c.data.folder = ""  # EuroSAT-style class folders; '' = read the TFDS dataset
    c.data.folder_seed = 0
    c.eval.evaluators = ("knn", "linear")  # frozen-feature evaluators (rsjax.evaluate); fine-tune: finetune.*
    c.eval.knn_k = 20
    c.eval.knn_temperature = 0.07
    c.eval.linear_epochs = 300
    c.eval.linear_lr = 1e-2
    c.eval.linear_weight_decay = 1e-4
    c.eval.label_fraction = 1.0
    common.add_finetune(c)
    if variant == "default":
        return c
    c.model.in_channels = 13
    c.data.name = "rs_synthetic"
    c.data.builder_config = "default"
    c.data.image_size = 32
    if variant == "smoke":
        c.model.name = "tiny"
        c.data.builder_config = "tiny"
        c.eval.batch_size = 16
        c.eval.linear_epochs = 20
        c.finetune.total_steps = 2
        c.finetune.batch_size = 16
        c.log_every = 1
    return c
