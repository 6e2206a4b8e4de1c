"""SimCLR baseline (NT-Xent over the global batch of two views).

Run:
  python -m rsjax.main --config=configs/simclr.py --workdir=runs/simclr
  python -m rsjax.main --config=configs/simclr.py:smoke --workdir=/tmp/smoke

(`bench` / `bench_eurosat`: the throughput shapes of `python -m rsjax.bench`, see configs_lib.bench.)

Variants: demo (default; half-width ResNet-10 on the synthetic scenes, same budget as the SwiMDiff demo),
smoke (tiny, 4 steps), imagenet_style (ResNet-50, batch 256, LARS, tau 0.5 — set data.*).
"""

from rsjax import configs_lib

VARIANTS = ("demo", "smoke", "imagenet_style", "bench", "bench_eurosat")


def get_config(arg=None):
    variant = configs_lib.parse_arg(arg, VARIANTS)
    c = configs_lib.pretrain_base()
    c.method = "simclr"
    c.loss.temperature = 0.2
    if variant == "smoke":
        return configs_lib.smoke(c)
    if variant in ("bench", "bench_eurosat"):
        return configs_lib.bench(c, variant)
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
