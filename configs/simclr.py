"""SimCLR baseline (NT-Xent over the global batch of two views).

Run:
  python -m rsjax.main --config=configs/simclr.py --workdir=runs/simclr
  python -m rsjax.main --config=configs/simclr.py:smoke --workdir=/tmp/smoke

(`bench*` variants: the throughput shapes of `python -m rsjax.bench`, see configs.common.bench.)

Variants: demo (default; half-width ResNet-10 on the synthetic scenes, same budget as the SwiMDiff demo),
smoke (tiny, 4 steps), imagenet_style (ResNet-50, batch 256, LARS, tau 0.5 — set data.*).

Projector: Dense -> BN -> ReLU -> Dense -> BN without centring (model.proj_last_bn = True), as the
projection head of the reference implementation (google-research/simclr, ``linear_layer`` with
``center=False`` on the output layer); the output Dense has no bias.

Loss scale (documented difference): rsjax reports the MEAN of NT-Xent over the 2B anchors of
both directions. The reference (google-research/simclr ``add_contrastive_loss``) SUMS the two
directions' batch-mean cross entropies (loss_a + loss_b), i.e. 2x rsjax's value. Gradients
differ by the same factor 2, which with SGD/LARS is a factor 2 on the learning rate (LARS's trust
ratio is scale-invariant in the gradient, so under LARS only weight decay's relative weight
changes); Adam-type optimizers are invariant to it.
"""

from configs import common

VARIANTS = ("demo", "smoke", "imagenet_style", *common.BENCH_VARIANTS)


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = common.pretrain_base()
    c.method = "simclr"
    c.loss.temperature = 0.2
    c.model.proj_last_bn = True  # the reference head's output BN (no centring)
    if variant == "smoke":
        return common.smoke(c)
    if variant in common.BENCH_VARIANTS:
        return common.bench(c, variant)
    if variant == "imagenet_style":
        c.model.name = "resnet50"
        c.model.proj_hidden_dim = 2048
        c.batch_size = 256
        c.dtype = "bfloat16"
        c.loss.temperature = 0.5
        c.optimizer.name = "lars"
        c.optimizer.lr = 0.3 * c.batch_size / 256
        c.optimizer.weight_decay = 1e-6
        c.optimizer.warmup_steps = 1000
        c.total_steps = 100_000
        c.data.image_size = 224
    return c
