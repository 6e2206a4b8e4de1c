"""FALSE pretraining: NT-Xent with false-negative self-determination + calibration (DESIGN §3.3).

Run:
  python -m rsjax.main --config=configs/false.py --workdir=runs/false
  python -m rsjax.main --config=configs/false.py:smoke --workdir=/tmp/smoke
  python -m rsjax.main --config=configs/false.py:paper --workdir=runs/false_paper
  # the matching SimCLR baseline (plain NT-Xent, same everything else):
  python -m rsjax.main --config=configs/false.py --workdir=runs/false_a0 --config.loss.alpha=0

Variants:
  demo (default)  half-width ResNet-10 (resnet10_w32) on the embedded synthetic 13-band scenes, 32 px, batch 64, 300 steps:
                  the budget and AdamW optimizer of the SimCLR / SwiMDiff demos, so runs compare;
                  FALSE's own loss settings (tau 0.5, T 0.9, alpha 1, fnsd_mode official).
  smoke           tiny ResNet, 4 steps on the tiny synthetic dataset (the test suite).
  paper           the official FALSE (VISSL) settings: ResNet-50, projector 2048-2048-128,
                  tau 0.5, batch 256, LARS (lr 0.3 x B/256, wd 1e-6, no decay / trust ratio on
                  biases and BN), 10 warm-up epochs then cosine with warm restarts, 200 epochs,
                  SimCLR augmentations (random resized crop 0.2-1, flips/rot90, brightness/
                  contrast jitter p 0.8, blur p 0.5; no colour ops on multispectral data).
                  Written for the synthetic `large` build (8192 crops of 64 px -> 32 steps per
                  epoch); for a real dataset of N images set data.name / data.data_dir /
                  data.image_size=224 and total_steps = 200 * N // 256, warmup_steps = 10 * N // 256.

Schedule: optimizer.schedule = "cosine_restarts" (rsjax.schedules.warmup_cosine_restarts,
num_cycles equal cosine cycles after the warm-up). It takes effect once rsjax.train.make_schedule
dispatches on optimizer.schedule (hook requested from the trainer's owner); until then the trainer
runs its single warm-up + cosine decay.
"""

from rsjax import configs_lib

VARIANTS = ("demo", "smoke", "paper")


def get_config(arg=None):
    variant = configs_lib.parse_arg(arg, VARIANTS)
    c = configs_lib.pretrain_base()
    c.method = "false"
    c.loss.temperature = 0.5
    c.loss.threshold = 0.9
    c.loss.alpha = 1.0
    c.loss.fnsd_mode = "official"        # official | per_anchor
    c.model.proj_layers = 3              # 2048-2048-128 at paper scale (hidden, hidden, out)
    c.optimizer.schedule = "cosine_restarts"
    c.optimizer.num_cycles = 2           # restart at half of the post-warm-up steps
    c.optimizer.cycle_decay = 1.0        # peak lr multiplier per restart
    if variant == "smoke":
        return configs_lib.smoke(c)
    if variant == "paper":
        c.model.name = "resnet50"
        c.model.proj_hidden_dim = 2048
        c.model.proj_dim = 128
        c.batch_size = 256
        c.dtype = "bfloat16"
        c.optimizer.name = "lars"
        c.optimizer.lr = 0.3 * c.batch_size / 256
        c.optimizer.weight_decay = 1e-6
        c.optimizer.momentum = 0.9
        steps_per_epoch = 8192 // c.batch_size   # rs_synthetic/large train split
        c.optimizer.warmup_steps = 10 * steps_per_epoch
        c.total_steps = 200 * steps_per_epoch
        c.log_every = 10
        c.checkpoint_every = 500
        c.data.builder_config = "large"
        c.data.image_size = 64
    return c
