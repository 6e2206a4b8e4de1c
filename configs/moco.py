"""MoCo v2 baseline: momentum key encoder + queue, plain InfoNCE (scene_mode=none).

As facebookresearch/moco builds it, the negatives are the queue only
(moco.batch_negatives=False: logits [q.k+, q.queue] / T, label 0). The demo and smoke
symmetrize the loss over the two views (moco.symmetric=True, documented in
rsjax/methods/moco.py); :paper computes MoCo v2's one direction (q from view 1, k from view 2).

Run:
  python -m rsjax.main --config=configs/moco.py --workdir=runs/moco
  python -m rsjax.main --config=configs/moco.py:smoke --workdir=/tmp/smoke

(`bench*` variants: the throughput shapes of `python -m rsjax.bench`, see configs.common.bench.)

Variants: demo (default; half-width ResNet-10 on the synthetic scenes), smoke (tiny, 4 steps),
paper (ResNet-50, batch 256, queue 65,536, m 0.999, SGD lr 0.03, tau 0.2, bf16, one direction).
"""

from configs import common

VARIANTS = ("demo", "smoke", "paper", *common.BENCH_VARIANTS)


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = common.pretrain_base()
    c.method = "moco"
    common.add_moco(c, queue_size=1024, momentum=0.99, batch_negatives=False)
    c.loss.temperature = 0.2
    if variant == "smoke":
        return common.smoke(c)
    if variant in common.BENCH_VARIANTS:
        return common.bench(c, variant)
    if variant == "paper":
        c.model.name = "resnet50"
        c.model.proj_hidden_dim = 2048
        c.batch_size = 256
        c.dtype = "bfloat16"
        c.moco.queue_size = 65536
        c.moco.momentum = 0.999
        c.moco.symmetric = False  # MoCo v2: q1 . k2 only
        c.optimizer.name = "sgd"
        c.optimizer.lr = 0.03
        c.optimizer.warmup_steps = 0
        c.total_steps = 200_000
        c.data.image_size = 224
    return c
