"""Real-data study on the Dubai aerial tiles: noisy-label pretraining and FALSE against SimCLR,
random init and clean-label pretraining, all fine-tuned the same way with few and all clean labels.

Run:
  python -m rsjax.main --config=configs/study_dubai.py:cpu --workdir=runs/study_dubai \
      --config.data.folder=$DATA/dubai_aerial_seg --config.study.out_dir=results
  python -m rsjax.main --config=configs/study_dubai.py:smoke --workdir=/tmp/smoke \
      --config.data.folder=<a Dubai-like folder>     # tests/test_study_dubai.py writes one
Resumes per arm and seed (rerun the same command); --config.study.time_budget_s=S starts no new
run after S seconds. Then `python -m rsjax.results` renders the table of docs/results.md from
results/dubai_<variant>_<arm>.json.

Protocol (rsjax.jobs.study_dubai). Tiles 3 and 8 are the test split (data.test_scenes; all 5
classes, 34 % of the labelled pixels); nothing of them reaches a pretraining, a fine-tuning or any
choice (no early stopping, no selection: every setting below is fixed in advance); they are only
scored (and hold the clean crops of the per-layer analysis, a measurement). Tiles 1, 2, 4, 5, 7
are the training split: 14,085 crops of 64 px. Every arm gives an encoder (the half-width
ResNet-10 `resnet10_w32`, 3 bands), then the SAME fine-tuning: a UNet (decoder narrowed to
128-64-32-16-16 like the encoder), 5 clean classes, on a clean-label fraction of the training
crops (10 % and 100 %; the 10 % subset is drawn per seed and shared by every arm of that seed),
scored by mIoU and per-class IoU on the test tiles. Arms:

  random_init          no pretraining (the floor)
  clean_supervised     the UNet pretrained on the clean 5-class masks (the upper bound)
  noisy_coarse         the UNet pretrained on coarse noisy masks: majority pooling by 16 px then
                       nearest upsampling (a 10 m product over ~0.6 m pixels), then 20 % of the
                       connected regions of each crop's coarse mask flipped to another class (an
                       automatic classifier's errors): ~74 % pixel agreement with the clean masks
  noisy_coarse_3class  the same noise on a 3-class legend (water / built = road + building /
                       other = land + vegetation) remapped BEFORE the pooling, as a coarser
                       product would label its cells: pretraining on 3 classes, fine-tuning on 5
                       (the paper's "different label classes")
  simclr               configs/false.py with loss.alpha = 0 (FALSE's own code path, exactly NT-Xent)
  false                configs/false.py as configured (tau 0.5, threshold 0.9, alpha 1, the
                       official "vissl" selection)

Every pretraining arm has the same budget (max_steps_per_arm steps of batch_size crops of the
training tiles) and seed; the supervised arms share batches (same crops, order and flips, only the
labels differ), simclr and false share batches and views (same config but alpha). The FALSE arms
log how many anchors the selection calibrates per step (false_calibrated) and the job measures it
at every study.firing_thresholds on study.firing_batches real batches with the trained and the
untrained encoder (rsjax.study.false_firing). The supervised arms record the per-layer analysis
(weight change from init per encoder stage / decoder block, Fisher ratio of the clean classes per
feature level) every analysis.every steps on analysis.max_images test crops.

Decoders: UNet only. DeepLabv3+ and PSPNet would triple the 36 fine-tunes, which the 90 min
budget does not hold (--config.finetune.decoders="('unet','deeplabv3plus','pspnet')" adds them).

Variants:
  cpu    3 seeds, 64 px crops (a 16 px pooling cell leaves 4 x 4 cells per crop), pretraining 400
         steps of 32 (0.9 epoch of the training crops; the supervised arms: Adam 1e-3 cosine, CE +
         Dice as CromSS; the contrastive arms: configs/false.py's AdamW 2e-3), fine-tuning 200 steps
         of 16 (Adam 1e-3, cosine; the same steps for both fractions: 10 % = 1,408 crops, ~2.3
         epochs; 100 % = 14,085 crops, 0.23 epoch), the test score on 2,000 of the 7,731 test crops
         (study.max_test, drawn once by the one subset rule, the same for every arm and seed).
         About 65-75 min on the idle 2-core CPU: see COST below.
  smoke  tiny ResNet at 32 px, 2 pretraining steps, 2 fine-tuning steps, one seed (the tests, on a
         generated Dubai-like folder).

COST of :cpu, measured 2026-12-07 at these settings on the real data, one seed of random_init,
noisy_coarse and false with the 10 % fraction (python -m rsjax.main ... --config.study.arms=random_init,
noisy_coarse,false --config.study.seeds=0 --config.study.label_fractions="(0.1,)"), niced on the
2-core CPU while two other runs used it (this process got ~0.65 of a core: 662 CPU-s in 17 min):
  supervised pretraining, 400 steps of 32   400 s training + 25 s compile (+ 29 s noisy labels, once per arm)
  FALSE pretraining, 400 steps of 32         127 s training + 29 s compile; 217 s with reading the crops and
                                             the firing sweep (SimCLR: the same step, no sweep)
  one fine-tune, 200 steps of 16, + scoring  ~105 s (127 s for the first, compiling; later ones hit
    2,000 test crops                         the compilation cache)
  Whole study = 3 seeds x (3 supervised x (425 + 2 x 105) + 2 contrastive x (~205 + 2 x 105) + random
  init 2 x 105) + ~90 s = ~148 min on the busy machine -> ~74 min idle by the "halve it" rule; by CPU
  seconds (~6,100 CPU-s at ~1.6 effective cores) ~64 min. So <= 90 min on the idle machine, with a margin
  of ~15-25 min; study.max_test=0 (all 7,731 test crops) would add ~9 min.
"""

import json

import ml_collections

from configs import common
from configs import false as false_config
from rsjax import optim

VARIANTS = ("cpu", "smoke")

# Coarse noisy labels (rsjax.data.label_noise): majority pooling by 16 px + nearest upsampling,
# then 20 % of each crop's connected regions flipped to another class.
COARSE_NOISE = {"pool_factor": 16, "flip_rate": 0.2, "flip_mode": "regions", "erosion": 0}
# The 3-class legend of the coarse product: Dubai classes (water, land, road, building, vegetation)
# -> water | built (road, building) | other (land, vegetation).
COARSE_3CLASS_MAP = (0, 2, 1, 1, 2)
COARSE_3CLASS_NAMES = ("water", "built", "other")

# name -> (kind, overrides) of each pretraining arm; random_init has none. "supervised": the UNet
# on (noisy) masks (rsjax.noisy_label.pretrain), its noise block given; "false": configs/false.py.
ARMS = {
    "clean_supervised": ("supervised", {}),
    "noisy_coarse": ("supervised", {f"noise.{k}": v for k, v in COARSE_NOISE.items()}),
    "noisy_coarse_3class": (
        "supervised",
        {
            **{f"noise.{k}": v for k, v in COARSE_NOISE.items()},
            "noise.class_map": COARSE_3CLASS_MAP,
            "noise.class_names": COARSE_3CLASS_NAMES,
        },
    ),
    "simclr": ("false", {"loss.alpha": 0.0}),
    "false": ("false", {}),
}
ARM_ORDER = ("random_init",) + tuple(ARMS)
# Paired differences the table reports (first arm minus second, per label fraction).
COMPARISONS = (
    "noisy_coarse-random_init,noisy_coarse-simclr,false-simclr,noisy_coarse_3class-random_init,"
    "clean_supervised-noisy_coarse,simclr-random_init"
)


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = ml_collections.ConfigDict()
    c.job = "study_dubai"
    c.study = ml_collections.ConfigDict()
    c.study.name = variant  # results file names: dubai_<name>_<arm>.json
    c.study.arms = ",".join(ARM_ORDER)  # comma-separated subset of ARM_ORDER
    c.study.seeds = "0,1,2"  # shared by every arm (paired differences)
    c.study.label_fractions = (0.1, 1.0)  # clean-label fractions of the training crops for fine-tuning
    c.study.max_test = 2000  # test crops scored (the one subset rule; 0 = all)
    c.study.comparisons = COMPARISONS
    c.study.overlay_fraction = 0.1  # the overlay picture shows the fine-tunes of this fraction
    c.study.firing_thresholds = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
    c.study.firing_batches = 4
    c.study.stop_after_arm = ""
    c.study.time_budget_s = 0.0
    c.study.out_dir = ""  # also write each finished arm's JSON here ("" = <workdir>/results)
    c.study.include_random_init = False  # (rsjax.study.STUDY_MUTABLE_KEYS) random_init is an arm of ARM_ORDER

    c.max_steps_per_arm = 400  # pretraining steps of every pretraining arm
    c.epochs = 0  # (rsjax.study.arm_config: max_steps_per_arm wins)
    c.batch_size = 32  # pretraining batch of every arm (crops)
    c.arm_log_every = 1  # every pretraining step in metrics.jsonl (FALSE's firing counts)
    c.dtype = "float32"
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.warmup_fraction = 0.05  # of every pretraining's steps

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet10_w32"
    c.model.stem = "standard"
    c.model.conv = "auto"
    c.model.in_channels = 3
    c.model.decoder_channels = (128, 64, 32, 16, 16)
    c.data = common.data_config(
        name="dubai_aerial_seg",
        image_size=64,
        test_scenes=(3, 8),
        device_resident=True,
        crop_size=0,
        augment="rrc(0.2, 1.0)|flip_rot|jitter(0.5, p=0.8, saturation=0.4)|gray(0.2)",
    )  # the SSL views

    c.analysis = ml_collections.ConfigDict()
    c.analysis.every = 100  # supervised arms: per-layer analysis every N steps
    c.analysis.max_images = 256  # test crops it reads (a measurement; nothing is chosen by it)

    c.finetune = ml_collections.ConfigDict()
    c.finetune.decoders = ("unet",)
    c.finetune.total_steps = 200
    c.finetune.batch_size = 16
    c.finetune.lr = 1e-3
    if variant == "smoke":
        c.study.seeds = "0"
        c.study.max_test = 0
        c.study.firing_batches = 1
        c.max_steps_per_arm = 2
        c.batch_size = 8
        c.model.name = "tiny"
        c.model.decoder_channels = ()
        c.data.image_size = 32
        c.analysis.every = 1
        c.analysis.max_images = 8
        c.finetune.total_steps = 2
        c.finetune.batch_size = 8
    add_runs(c)
    return c


def _supervised(c: ml_collections.ConfigDict, num_classes: int, analysis: bool) -> ml_collections.ConfigDict:
    """A UNet training on masks (the shape of configs/noisy_label.py); with ``analysis`` the
    per-layer analysis of the study's ``analysis`` block (else none)."""
    a = common.noisy_label_base()
    a.model.num_classes = num_classes
    a.optimizer = optim.default_block(name="adam", lr=1e-3, weight_decay=0.0, schedule="cosine")
    if analysis:
        common.link_shared(a, c, ["analysis.every", "analysis.max_images"])
    else:
        a.analysis.every = 0
    a.transfer.enabled = False
    for key in ("pool_factor", "class_map", "class_names"):
        a.noise[key] = {"pool_factor": 1, "class_map": (), "class_names": ()}[key]
    a.noise.flip_rate = 0.0
    a.noise.erosion = 0
    return a


def add_runs(c: ml_collections.ConfigDict) -> None:
    """``c.arms.<name>``: the pretraining config of each arm of :data:`ARMS` (its base, the
    study's shared settings as references, then the arm's overrides); ``c.arm_sources.<name>``
    (JSON, recorded in the arm's result file); ``c.finetune_run``: the one fine-tuning config
    every encoder gets (a UNet on the 5 clean classes; its ``transfer`` block from ``c.finetune``).
    Left to the job: ``seed``, and from ``max_steps_per_arm`` the steps and warm-up
    (rsjax.study.arm_config)."""
    shared = [
        "dtype",
        "batch_size",
        "model.name",
        "model.stem",
        "model.conv",
        "model.in_channels",
        *(f"data.{k}" for k in c.data),
    ]
    c.arms = ml_collections.ConfigDict()
    c.arm_sources = ml_collections.ConfigDict()
    for name, (kind, overrides) in ARMS.items():
        if kind == "supervised":
            a = _supervised(c, len(COARSE_3CLASS_NAMES) if "noise.class_map" in overrides else 5, True)
            keys = shared + ["model.decoder_channels"]
        else:
            a = false_config._config(false_config.VARIANTS[0])
            a.eval.enabled = False
            keys = shared
        common.link_shared(a, c, keys, overrides)
        for dotted, value in overrides.items():
            common.set_key(a, dotted, value)
        a.lock()
        c.arms[name] = a
        c.arm_sources[name] = json.dumps(
            {"config": "noisy_label" if kind == "supervised" else "false", "overrides": overrides}, sort_keys=True
        )
    f = _supervised(c, 5, False)
    common.link_shared(f, c, shared + ["model.decoder_channels"], {})
    f.transfer.enabled = True
    f.transfer.decoders = c.finetune.get_ref("decoders")
    f.transfer.total_steps = c.finetune.get_ref("total_steps")
    f.transfer.batch_size = c.finetune.get_ref("batch_size")
    f.transfer.optimizer = optim.default_block(name="adam", weight_decay=0.0, warmup_steps=10, schedule="cosine")
    f.transfer.optimizer.lr = c.finetune.get_ref("lr")
    f.checkpoint_every = c.finetune.get_ref("total_steps")  # one checkpoint per fine-tune, at its end
    f.lock()
    c.finetune_run = f
