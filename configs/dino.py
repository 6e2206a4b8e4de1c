"""DINO baseline (self-distillation with a ResNet backbone, multi-crop, centring + sharpening).

Run:
  python -m rsjax.main --config=configs/dino.py --workdir=runs/dino
  python -m rsjax.main --config=configs/dino.py:smoke --workdir=/tmp/smoke
  python -m rsjax.main --config=configs/dino.py:paper --workdir=runs/dino_rn50

Variants:
  demo (default)  half-width ResNet-10 (resnet10_w32) on the embedded synthetic 13-band scenes: 2 global views of 32 px
                  from the host pipeline + 4 local crops of 16 px made on device, head
                  1024-1024-128 -> K = 1024, batch 64, 300 steps, AdamW (the demo budget of the
                  other methods).
  smoke           tiny ResNet, K = 64, 2 local crops of 16 px, 4 steps (the test suite).
  paper           DINO's ResNet-50 recipe: the README's ResNet-50 command (facebookresearch/dino
                  README "ResNet-50 and other convnets trainings": --arch resnet50 --optimizer sgd
                  --lr 0.03 --weight_decay 1e-4 --weight_decay_end 1e-4 --global_crops_scale 0.14 1
                  --local_crops_scale 0.05 0.14, 8 GPUs) with main_dino.py's defaults for the rest:
                  batch 512 (8 x 64 per GPU), lr 0.03 x 512/256 = 0.06 (main_dino's linear scaling
                  rule) with 10 warm-up epochs then cosine to min_lr 1e-6, wd 1e-4 constant (not on
                  biases / BN), SGD momentum 0.9, gradient clip 3.0, K = 65,536, head 2048-2048-256
                  without BN, norm_last_layer, last layer frozen for 1 epoch, teacher momentum
                  0.996 (cosine to 1), teacher temperature 0.04 with no warm-up, student
                  temperature 0.1, centre momentum 0.9, 8 local crops of 96 px, 224 px globals,
                  100 epochs; on SSL4EO-S12 (13 bands; build it with
                  `python -m rsjax.data.build ssl4eo_s12 ...`), as the noisy-label paper's DINO
                  baseline; total_steps = epochs * N // batch.
                  Remaining differences from the reference (reference value in brackets):
                  - gradient clipping: one global norm over all parameters (optimizer.grad_clip)
                    [main_dino clips EACH parameter tensor's gradient norm to 3.0];
                  - local crops are cut from the augmented global views on device (see
                    rsjax.methods.dino), so local_scale 0.05-0.14 is a fraction of the global
                    view's area [of the original image's], with their global view's photometric
                    augmentation [their own];
                  - compute dtype bfloat16 [fp16 autocast with a loss scaler, --use_fp16 True];
                  - data: 13-band SSL4EO-S12, photometric augmentation of rsjax.data (no colour
                    jitter / grayscale / solarisation on multispectral data) [ImageNet RGB with
                    DINO's colour jitter, grayscale, blur 1.0 / 0.1, solarisation 0.2].
"""

import ml_collections

from configs import common

VARIANTS = ("demo", "smoke", "paper")


def add_dino(c: ml_collections.ConfigDict) -> None:
    c.dino = ml_collections.ConfigDict()
    c.dino.out_dim = 1024  # K, prototypes
    c.dino.hidden_dim = 1024
    c.dino.bottleneck_dim = 128
    c.dino.head_layers = 3
    c.dino.head_bn = False
    c.dino.norm_last_layer = True
    c.dino.freeze_last_layer_steps = 0
    c.dino.student_temp = 0.1
    c.dino.teacher_temp = 0.04
    c.dino.warmup_teacher_temp = 0.04
    c.dino.warmup_teacher_temp_steps = 0
    c.dino.center_momentum = 0.9
    c.dino.momentum_teacher = 0.996
    c.dino.num_local_crops = 4
    c.dino.local_crop_size = 16
    c.dino.local_scale = (0.05, 0.4)  # area fraction of the global view


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = common.pretrain_base()
    c.method = "dino"
    add_dino(c)
    # DINO global crops (0.4, 1) on the synthetic crops; the rest as every method's default recipe
    c.data.augment = "rrc(0.4, 1.0)|flip_rot|jitter(0.4, p=0.8)|blur(0.5, sigma=(0.1, 1.0))"
    c.optimizer.warmup_steps = 30
    if variant == "smoke":
        common.smoke(c)
        c.dino.out_dim = 64
        c.dino.hidden_dim = 32
        c.dino.bottleneck_dim = 16
        c.dino.num_local_crops = 2
        c.dino.local_crop_size = 16
        return c
    if variant == "paper":
        c.model.name = "resnet50"
        c.batch_size = 512  # main_dino: 64 per GPU x 8 GPUs
        c.dtype = "bfloat16"
        c.dino.out_dim = 65536
        c.dino.hidden_dim = 2048
        c.dino.bottleneck_dim = 256
        c.dino.teacher_temp = 0.04  # main_dino defaults: 0.04 -> 0.04, 0 warm-up epochs
        c.dino.warmup_teacher_temp = 0.04
        c.dino.num_local_crops = 8  # --local_crops_number default
        c.dino.local_crop_size = 96
        c.optimizer.grad_clip = 3.0  # --clip_grad default (global norm here, see above)
        c.optimizer.momentum = 0.9
        c.dino.local_scale = (0.05, 0.14)
        c.data.augment = "rrc(0.14, 1.0)|flip_rot|jitter(0.4, p=0.8)|blur(0.5, sigma=(0.1, 1.0))"
        c.data.image_size = 224
        c.optimizer.name = "sgd"
        c.optimizer.lr = 0.03 * c.batch_size / 256
        c.optimizer.weight_decay = 1e-4
        c.optimizer.final_lr_fraction = 1e-6 / c.optimizer.lr  # --min_lr 1e-6
        steps_per_epoch = 250_000 // c.batch_size  # SSL4EO-S12: ~250k locations (one season each)
        c.optimizer.warmup_steps = 10 * steps_per_epoch
        c.dino.warmup_teacher_temp_steps = 0
        c.dino.freeze_last_layer_steps = steps_per_epoch
        c.total_steps = 100 * steps_per_epoch
        c.data.name = "ssl4eo_s12"
        c.data.builder_config = None
        c.eval.enabled = False  # no labels: evaluate with the downstream jobs
        c.log_every = 50
        c.checkpoint_every = 500
    return c
