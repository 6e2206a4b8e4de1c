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
  paper           DINO's ResNet-50 recipe (SGD lr 0.03 x B/256, wd 1e-4, global crop scale
                  0.14-1, local 0.05-0.14 of the image -> here of the global view, K = 65,536,
                  head 2048-2048-256, teacher momentum 0.996, teacher temp 0.04 -> 0.07 over 30
                  epochs, 6 local crops of 96 px, 224 px globals, 100 epochs) on SSL4EO-S12
                  (13 bands; build it with `python -m rsjax.data.build ssl4eo_s12 ...`), as the
                  noisy-label paper's DINO baseline; total_steps = epochs * N // batch.
"""

import ml_collections

from rsjax import configs_lib

VARIANTS = ("demo", "smoke", "paper")


def add_dino(c: ml_collections.ConfigDict) -> None:
    c.dino = ml_collections.ConfigDict()
    c.dino.out_dim = 1024                # K, prototypes
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
    c.dino.local_scale = (0.05, 0.4)     # area fraction of the global view


def get_config(arg=None):
    variant = configs_lib.parse_arg(arg, VARIANTS)
    c = configs_lib.pretrain_base()
    c.method = "dino"
    add_dino(c)
    c.data.crop_scale_min = 0.4          # DINO global crops (0.4, 1) on the synthetic crops
    c.optimizer.warmup_steps = 30
    if variant == "smoke":
        configs_lib.smoke(c)
        c.dino.out_dim = 64
        c.dino.hidden_dim = 32
        c.dino.bottleneck_dim = 16
        c.dino.num_local_crops = 2
        c.dino.local_crop_size = 16
        return c
    if variant == "paper":
        c.model.name = "resnet50"
        c.batch_size = 256
        c.dtype = "bfloat16"
        c.dino.out_dim = 65536
        c.dino.hidden_dim = 2048
        c.dino.bottleneck_dim = 256
        c.dino.teacher_temp = 0.07
        c.dino.num_local_crops = 6
        c.dino.local_crop_size = 96
        c.dino.local_scale = (0.05, 0.14)
        c.data.crop_scale_min = 0.14
        c.data.image_size = 224
        c.optimizer.name = "sgd"
        c.optimizer.lr = 0.03 * c.batch_size / 256
        c.optimizer.weight_decay = 1e-4
        steps_per_epoch = 250_000 // c.batch_size   # SSL4EO-S12: ~250k locations (one season each)
        c.optimizer.warmup_steps = 10 * steps_per_epoch
        c.dino.warmup_teacher_temp_steps = 30 * steps_per_epoch
        c.dino.freeze_last_layer_steps = steps_per_epoch
        c.total_steps = 100 * steps_per_epoch
        c.data.name = "ssl4eo_s12"
        c.data.builder_config = None
        c.eval.enabled = False               # no labels: evaluate with the downstream jobs
        c.log_every = 50
        c.checkpoint_every = 500
    return c
