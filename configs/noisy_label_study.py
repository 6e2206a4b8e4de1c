"""Study: clean vs noisy labels for task-specific segmentation pretraining (DESIGN §3.4).

Every arm pretrains the same ResNet UNet (same initialisation, data order and budget) on the
synthetic scenes' masks with a different label-noise rate (0 = clean), transfers its encoder
to UNet / DeepLabv3+ / PSPNet on held-out scenes with merged classes, and records per-layer
weight statistics and feature discriminability (Fisher ratio) over pretraining.

Run:
  python -m rsjax.main --config=configs/noisy_label_study.py --workdir=runs/nl_study
  python -m rsjax.main --config=configs/noisy_label_study.py:smoke --workdir=/tmp/smoke

Variants:
  demo (default)  `tiny` ResNet UNet, flip rates 0 / 0.25 / 0.5 / 0.75 of the connected regions
                  (+ 1 px boundary shift on the noisy arms), 300 pretraining steps per arm, 100
                  transfer steps on 32 labelled crops per (encoder, decoder), plus the random-init
                  encoder: ~3.5 min on a 2-core CPU (--config.model.name=resnet18 on a GPU).
  smoke           tiny ResNet, clean + one noisy arm, 4 + 3 steps, UNet transfer (< 60 s on CPU).

Outputs (rsjax.jobs.noisy_label_study): study.json (table, transfer scores, per-layer analysis),
study.md, study_miou.png, study_layers.png, eval_report.json; each arm's phases in <arm>/:
pretrain/ (resumable, exportable with python -m rsjax.export --workdir=.../<arm>/pretrain) and
transfer_<decoder>/; the random-init transfers in random_init/.
"""

import ml_collections

from configs import common

VARIANTS = ("demo", "smoke")


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = common.noisy_label_base()
    c.job = "noisy_label_study"
    c.checkpoint_every = 300
    c.analysis.every = 25
    c.study = ml_collections.ConfigDict()
    c.study.noise_rates = (0.0, 0.25, 0.5, 0.75)
    c.study.include_random_init = True
    if variant == "smoke":
        common.noisy_label_smoke(c)
        c.study.noise_rates = (0.0, 0.5)
        c.checkpoint_every = c.total_steps  # one Orbax save per arm: the smoke stays < 60 s on CPU
    return c
