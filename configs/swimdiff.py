"""SwiMDiff pretraining: scene-wide matching MoCo v2 + DDPM constraint (DESIGN §3.1-3.2).

Run:
  python -m rsjax.main --config=configs/swimdiff.py --workdir=runs/swimdiff
  python -m rsjax.main --config=configs/swimdiff.py:smoke --workdir=/tmp/smoke
  python -m rsjax.main --config=configs/swimdiff.py:ssl4eo --workdir=runs/ssl4eo \
      --config.data.data_dir=/path/to/tfds

(`bench*` variants: the throughput shapes of `python -m rsjax.bench`, see configs.common.bench.)

Variants:
  demo (default)  a half-width ResNet-10 (`resnet10_w32`; pass --config.model.name=resnet18 on a
                  GPU) on the embedded synthetic 13-band scenes, 32 px crops, scene-aware batches
                  (16 scenes x 4 crops), the denoiser on a 16 px downsample of each view (as the
                  CPU EuroSAT study; at 32 px it costs ~4x), 300 steps: ~2 min on a 2-core CPU;
                  ends with kNN and linear-probe accuracy on the synthetic land-cover labels.
  smoke           tiny ResNet, 4 steps on the tiny synthetic dataset (the test suite).
  ssl4eo          paper scale: ResNet-50, 13 bands, batch 256, MoCo queue 65,536, SSL4EO-S12
                  (scene = location, 4 seasons per scene), bf16 compute; needs the dataset built
                  with `python -m rsjax.data.build ssl4eo_s12 --manual_dir=... --data_dir=...`.
"""

from configs import common

VARIANTS = ("demo", "smoke", "ssl4eo", *common.BENCH_VARIANTS)


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = common.pretrain_base()
    c.method = "swimdiff"
    # batch keys + queue: the scene-aware batch's same-scene keys must be candidates
    common.add_moco(c, queue_size=1024, momentum=0.99, batch_negatives=True)
    common.add_swimdiff(c)
    c.loss.temperature = 0.2
    c.data.scenes_per_batch = 16
    c.data.samples_per_scene = 4
    if variant == "smoke":
        return common.smoke(c)
    if variant == "demo":
        c.swimdiff.diffusion_size = 16  # denoise a 16 px downsample of the 32 px view (4x cheaper)
        c.swimdiff.log_grad_share = False  # its probe program would add ~25 s of compilation
    if variant in common.BENCH_VARIANTS:
        return common.bench(c, variant)
    if variant == "ssl4eo":
        c.model.name = "resnet50"
        c.model.proj_hidden_dim = 2048
        c.batch_size = 256
        c.dtype = "bfloat16"
        c.total_steps = 200_000
        c.log_every = 50
        c.checkpoint_every = 2000
        c.moco.queue_size = 65536
        c.moco.momentum = 0.999
        c.moco.symmetric = False  # one direction, as the MoCo v2 it builds on
        c.optimizer.name = "sgd"
        c.optimizer.lr = 0.03 * c.batch_size / 256
        c.optimizer.weight_decay = 1e-4
        c.optimizer.warmup_steps = 2000
        c.data.name = "ssl4eo_s12"
        c.data.builder_config = None
        c.data.image_size = 224
        c.data.scenes_per_batch = 64
        c.data.samples_per_scene = 4
        c.swimdiff.denoiser_channels = 64
        c.swimdiff.diffusion_size = 56
        c.eval.enabled = False  # SSL4EO has no labels: evaluate downstream jobs instead
    return c
