"""FALSE pretraining: NT-Xent with false-negative self-determination + calibration (DESIGN §3.3).

Run:
  python -m rsjax.main --config=configs/false.py --workdir=runs/false
  python -m rsjax.main --config=configs/false.py:smoke --workdir=/tmp/smoke
  python -m rsjax.main --config=configs/false.py:paper --workdir=runs/false_paper
  # the matching SimCLR baseline (plain NT-Xent, same everything else):
  python -m rsjax.main --config=configs/false.py --workdir=runs/false_a0 --config.loss.alpha=0

Variants:
  paper           the official FALSE config, GeoX-Lab/FALSE
                  configs/config/pretrain/FALSE/false_1gpu_resnet.yaml (VISSL, 1 GPU):
                  - loss: false_loss, temperature 0.5, positive_threshold 0.9, confidence_weight 1,
                    the VISSL selection (loss.fnsd_mode = "vissl", see rsjax.losses.false_nt_xent);
                  - model: ResNet-50; head ["mlp", dims 2048-2048, use_relu] + ["mlp", dims
                    2048-128]: VISSL's mlp skips ReLU/BN after an MLP's last layer
                    (skip_last_layer_relu_bn), so two biased Linear layers 2048 -> 2048 -> 128
                    with no BN and no ReLU between them (proj_layers 2, proj_bn False,
                    proj_hidden_act "none");
                  - optimizer: SGD + LARC (trust 0.001, eps 1e-8, no clip), momentum 0.9, wd 1e-6,
                    regularize_bn False, regularize_bias True; LR without auto-scaling: linear
                    0.6 -> 4.8 over the first 10% of training, then VISSL's cosine_warm_restart
                    from 4.8 to 0.0048 with full waves, restart_interval_length 0.334 of the
                    remaining 90%, is_adaptive (peaks ~3.6, ~1.2, ending ~0.005; see
                    rsjax.optim "vissl_cosine_warm_restart");
                  - batch 256 images (512 views), 200 epochs, float32 (USE_AMP False).
                  Written for the synthetic `large` build (8192 crops of 64 px -> 32 steps per
                  epoch); for a real dataset of N images set data.name / data.data_dir /
                  data.image_size=224 and total_steps = 200 * N // 256, warmup_steps = total_steps // 10.
                  Remaining differences from the official config (official value in brackets):
                  - data: 13-band synthetic scenes, 64 px [Potsdam RGB, 224 px]; augmentations of
                    rsjax.data: random resized crop 0.2-1, flips / rot90, brightness / contrast
                    jitter p 0.8, blur p 0.5 [RandomResizedCrop 224 (0.08-1), horizontal flip,
                    ImgPilColorDistortion strength 1 incl. saturation / hue / grayscale, blur p 0.5]:
                    colour operations have no meaning on 13 bands;
                  - LARS is optax's: trust ratio ||w|| / ||g + wd w|| and momentum on lr-scaled
                    updates [apex LARC: ||w|| / (||g|| + wd ||w|| + eps), PyTorch SGD momentum on
                    raw gradients, lr applied after]; see optimizer.* below;
                  - BN statistics over the global batch of both views in one pass [SyncBN, the
                    same on 1 GPU].
  demo (default)  half-width ResNet-10 (resnet10_w32) on the embedded synthetic 13-band scenes, 32 px,
                  batch 64, 300 steps: the budget and AdamW optimizer of the SimCLR / SwiMDiff demos, so
                  runs compare; FALSE's own loss settings (tau 0.5, T 0.9, alpha 1, fnsd_mode vissl).
                  It keeps rsjax's earlier 3-layer projector with BN + ReLU (hidden 256) and a 2-cycle
                  half-wave cosine_restarts schedule: at demo scale (AdamW, 300 steps) the official
                  linear head and LARS 4.8 schedule are not the point; the loss is.
  smoke           tiny ResNet, 4 steps on the tiny synthetic dataset (the test suite), demo settings.

With fnsd_mode "vissl" FNCC rarely fires unless most pairs pass the gate (the global arg-min
of D must fall in a gated row; see rsjax.losses.false_nt_xent). "gate_then_pick" and
"per_anchor" are rsjax's alternative readings of the paper.
"""

from configs import common

VARIANTS = ("demo", "smoke", "paper")


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = common.pretrain_base()
    c.method = "false"
    c.loss.temperature = 0.5
    c.loss.threshold = 0.9
    c.loss.alpha = 1.0
    c.loss.fnsd_mode = "vissl"  # vissl | gate_then_pick | per_anchor
    c.model.proj_layers = 3  # demo / smoke: rsjax's earlier head (paper: see below)
    c.optimizer.schedule = "cosine_restarts"
    c.optimizer.num_cycles = 2  # restart at half of the post-warm-up steps
    c.optimizer.cycle_decay = 1.0  # peak lr multiplier per restart
    if variant == "smoke":
        return common.smoke(c)
    if variant == "paper":
        c.model.name = "resnet50"
        c.model.proj_layers = 2  # Linear 2048 -> 2048, Linear 2048 -> 128
        c.model.proj_hidden_dim = 2048
        c.model.proj_dim = 128
        c.model.proj_bn = False
        c.model.proj_hidden_act = "none"
        c.batch_size = 256
        c.dtype = "float32"
        c.optimizer.name = "lars"
        c.optimizer.lr = 4.8  # cosine start_value; auto_scale false
        c.optimizer.weight_decay = 1e-6
        c.optimizer.momentum = 0.9
        c.optimizer.trust_coefficient = 0.001
        c.optimizer.lars_eps = 1e-8
        c.optimizer.decay_bias = True  # regularize_bias True (BN: regularize_bn False)
        c.optimizer.trust_ratio_all = True  # LARC adapts every parameter, BN and biases too
        c.optimizer.schedule = "vissl_cosine_warm_restart"
        c.optimizer.warmup_start_lr = 0.6
        c.optimizer.final_lr_fraction = 0.0048 / 4.8
        c.optimizer.restart_interval = 0.334
        c.optimizer.wave = "full"
        c.optimizer.adaptive_restarts = True
        steps_per_epoch = 8192 // c.batch_size  # rs_synthetic/large train split
        c.total_steps = 200 * steps_per_epoch
        c.optimizer.warmup_steps = c.total_steps // 10  # composite lengths [0.1, 0.9]
        c.log_every = 10
        c.checkpoint_every = 500
        c.data.builder_config = "large"
        c.data.image_size = 64
    return c
