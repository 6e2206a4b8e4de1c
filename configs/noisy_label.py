"""Task-specific pretraining with noisy labels (DESIGN §3.4; arXiv 2402.16164): a ResNet UNet
trained with CE + Dice on noisy masks, its encoder checkpointed like any pretraining run, then
transferred to UNet / DeepLabv3+ / PSPNet on a different class set.

Run:
  python -m rsjax.main --config=configs/noisy_label.py --workdir=runs/noisy_label
  python -m rsjax.main --config=configs/noisy_label.py:smoke --workdir=/tmp/smoke
  python -m rsjax.main --config=configs/noisy_label.py:paper --workdir=runs/nl_dw \
      --config.data.data_dir=/path/to/tfds       # dynamic_world built with rsjax.data.build
  python -m rsjax.export --workdir=runs/noisy_label/pretrain --out=encoder.pt --format=smp

Variants:
  demo (default)  `tiny` ResNet UNet on the synthetic 13-band scenes (1536 crops of 32 px, 6
                  classes), noise: 30% of the connected regions flipped to another class + 1 px
                  boundary shift; CromSS's batch CE + Dice; Adam 2e-3 with warm-up + cosine (no
                  plateau rule), batch 32, 300 steps; transfer to the 3 merged classes
                  (water / vegetation / built-or-bare) of held-out scenes, 32 labelled crops, with
                  UNet, DeepLabv3+ and PSPNet (100 steps each), against the same transfer from a
                  random encoder. ~1-2 min on a 2-core CPU; --config.model.name=resnet18 on a GPU.
  smoke           tiny ResNet, 4 + 3 steps on the tiny synthetic dataset (the test suite).
  paper           the authors' setting (CromSS code): ResNet-50 UNet, 13 bands, Dynamic World
                  (9 classes, labels noisy by nature: no added noise), Adam lr 5e-3, batch 128,
                  200 epochs, random flips, CE + Dice pooled over the batch (loss.dice_reduction
                  = "batch": torch CrossEntropyLoss + smp DiceLoss("multiclass")), constant lr
                  with ReduceLROnPlateau (x0.5, patience 30, mode max on the mIoU of 1% held-out
                  training crops with their noisy labels, validated once per epoch); transfer to
                  5 merged classes (water / vegetation / cropland / built / bare-or-snow).

Where :paper still differs from CromSS (py_scripts_SSL4EO/train_SSL4EO_unet_pl_pretrain.py,
models/pl_pretrain.py, README command), rsjax value -- CromSS value:
  optimizer       optax Adam, no weight decay      -- torch Adam, weight_decay 1e-8
  precision       bfloat16 compute, float32 params -- Lightning '16-mixed' (float16 AMP)
  batch / Dice    128 global, Dice pooled over the global batch -- 128 per GPU under DDP, Dice
                  pooled over each GPU's batch
  input           one S2 image (13 bands)           -- the published CromSS weights are the
                  multi-modal S1 + S2 model with cross-modal sample selection and label
                  smoothing (pl_pretrain_mm_sscom.py, plateau mode min on validation loss); rsjax
                  follows the single-modal pl_pretrain.py, mode max on validation mIoU
  validation mIoU pooled confusion matrix of the held-out crops -- the mean over validation
                  batches of smp's batch-wise mIoU (Lightning on_epoch logging)
  validation set  round(1% of the crops), seeded permutation -- torch random_split, 1%
  crops           Dynamic World tiles cut into a fixed grid of 256 px crops -- RandomCrop 256
                  of each SSL4EO-S12 patch per epoch
  augmentation    random flips + 90-degree rotations -- albumentations Flip(p=0.5) + Rotate(p=0.2)
                  (any angle up to 90 degrees)
  CE with every pixel ignored: 0 -- torch: NaN

Outputs (rsjax.jobs.noisy_label): pretrain/ (metrics.jsonl, loss_curve.png, analysis.jsonl with
per-layer weight statistics and Fisher ratios, checkpoints/ in the pretraining layout, tb/),
transfer_<encoder>_<decoder>/ (one fine-tune each, resumable), predictions.png, label_noise.png,
confusion_pretrain.png, transfer_miou.png, eval_report.json. stop_after_steps applies to every
phase; a rerun continues the first unfinished one.
"""

from configs import common

VARIANTS = ("demo", "smoke", "paper")


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = common.noisy_label_base()
    if variant == "smoke":
        return common.noisy_label_smoke(c)
    if variant == "paper":
        c.model.name = "resnet50"
        c.model.num_classes = 9
        c.dtype = "bfloat16"
        c.batch_size = 128
        c.epochs = 200  # total_steps = 200 * ceil(N / 128), set at run time
        c.total_steps = 0
        c.log_every = 50
        c.checkpoint_every = 1000
        c.optimizer.lr = 5e-3
        c.optimizer.warmup_steps = 0
        c.optimizer.schedule = "constant"  # a constant base lr, as CromSS
        c.optimizer.plateau.enabled = True  # x0.5 after 30 epochs without a better validation mIoU
        c.data.name = "dynamic_world"
        c.data.builder_config = "default"
        c.data.image_size = 256
        c.noise.flip_rate = 0.0
        c.noise.erosion = 0
        c.analysis.every = 2000
        c.analysis.max_images = 256
        c.transfer.class_map = (0, 1, 1, 1, 2, 1, 3, 4, 4)
        c.transfer.class_names = ("water", "vegetation", "cropland", "built", "bare_or_snow")
        c.transfer.total_steps = 5000
        c.transfer.batch_size = 32
        c.transfer.max_train_images = 0
        c.transfer.optimizer.lr = 5e-4
        c.transfer.optimizer.warmup_steps = 100
    return c
