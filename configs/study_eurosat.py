"""Real-data study on EuroSAT RGB: which pretraining helps, and by how much.

Run:
  python -m rsjax.main --config=configs/study_eurosat.py:gpu --workdir=runs/study_gpu \
      --config.data.folder=../shared/data/eurosat_rgb
  python -m rsjax.main --config=configs/study_eurosat.py:cpu --workdir=runs/study_cpu \
      --config.data.folder=../shared/data/eurosat_rgb
  python -m rsjax.main --config=configs/study_eurosat.py:smoke --workdir=/tmp/study_smoke
On a lent GPU: the phases of .ci/device/study_gpu.sh (EuroSAT carried in two halves; each
finished arm's JSON goes to study.out_dir = $OUT at once; time-boxed by study.time_budget_s).

Each method pretrains from scratch, without labels, on the train split only (21,600 images;
split: per class in sorted order, one default_rng(0), first round(20%) of the permutation ->
test), with the same encoder, epochs, batch and batch layout (every arm: each image's 2 x 2
adjacent quarter crops, one scene per image); the random-init encoder is the floor. Each encoder is evaluated with the linear probe and kNN (k = 20, T = 0.07) on the
5,400 test images (never seen in pretraining). Writes study.json, study.md and study.png.

Variants:
  gpu    64 px, batch 512, device-resident data with on-device augmentation, bf16.
  cpu    the factorial on the 2-core CPU (issue 24): random_init, simclr, moco_v2,
         moco_v2_matching, moco_v2_diffusion, swimdiff; half-width ResNet-10
         (resnet10_w32), 32 px, batch 128, 5 epochs (840 steps), SGD lr 0.3, 5 seeds shared by
         the arms; the SwiMDiff denoiser at 16 px with its own Adam.
  smoke  the synthetic tiny dataset, tiny encoder, 2 steps per method (the test suite).
"""

import ml_collections

from configs import common

VARIANTS = ("gpu", "cpu", "smoke")

# name -> (config module, overrides) of each arm of the study; get_config builds each arm's
# pretraining config into config.arms.<name> (the job only sets seed and step counts).
# The factorial around SwiMDiff is built from ONE config module (swimdiff) so that the arms
# differ only in the overridden loss terms: MoCo v2 (scene_mode none, no L_D), + scene matching
# (SwiMDiff with lambda_D = 0), + diffusion only (MoCo v2 + L_D: same-scene keys stay ordinary
# negatives, exactly as in the MoCo v2 arm), full SwiMDiff; swimdiff_maps is SwiMDiff with the
# first conditioning design (stage maps at the denoiser's coarse levels). Every MoCo-family arm
# takes the other keys of the batch AND the queue as candidates (moco.batch_negatives, which
# matching needs), so that is not a difference between them either.
ARMS = {
    "simclr": ("simclr", {}),
    "moco_v2": ("swimdiff", {"loss.scene_mode": "none", "swimdiff.lambda_d": 0.0}),
    "moco_v2_matching": ("swimdiff", {"swimdiff.lambda_d": 0.0}),
    "moco_v2_diffusion": ("swimdiff", {"loss.scene_mode": "none"}),
    "swimdiff": ("swimdiff", {}),
    "swimdiff_maps": ("swimdiff", {"swimdiff.conditioning": "maps"}),
    "false": ("false", {}),
}
# The paired comparisons the study reports (config.study.comparisons; a 95 % t-interval of the
# per-seed difference, first arm minus second): the full method against its base, each factor of
# the factorial, against SimCLR, and the conditioning against the first design.
COMPARISONS = (
    "swimdiff-moco_v2,moco_v2_matching-moco_v2,moco_v2_diffusion-moco_v2,swimdiff-moco_v2_matching,"
    "swimdiff-moco_v2_diffusion,swimdiff-simclr,swimdiff-swimdiff_maps"
)


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = ml_collections.ConfigDict()
    c.job = "study_eurosat"
    c.seed = 0
    c.study = ml_collections.ConfigDict()
    c.study.arms = ",".join(ARMS)  # comma-separated subset of ARMS to run
    c.study.seeds = "0"  # pretraining seeds, comma-separated
    c.study.include_random_init = True
    c.study.comparisons = COMPARISONS  # "a-b,...": paired differences reported (rsjax.results)
    c.study.stop_after_arm = ""  # for time-limited slots: stop after this arm; rerun continues
    c.study.time_budget_s = 0.0  # > 0: start no new run after this many seconds; rerun continues
    c.study.name = variant  # results file names: study_<name>_<arm>.json
    c.study.out_dir = ""  # also write each finished arm's JSON here (e.g. $OUT); "" = only
    # <workdir>/results
    c.epochs = 100
    c.max_steps_per_arm = 0  # > 0 caps every arm's steps (smoke tests)
    c.batch_size = 512
    c.dtype = "bfloat16"
    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    c.model.stem = "standard"
    c.model.conv = "auto"  # convolution formulation (rsjax.models.conv)
    c.model.in_channels = 3
    c.temperature = 0.2
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.6
    c.optimizer.weight_decay = 5e-4
    c.optimizer.warmup_fraction = 0.05
    c.data = common.data_config(
        name="eurosat_rgb",
        builder_config="",
        image_size=64,
        device_resident=True,
        augment="rrc(0.2, 1.0)|flip_rot|jitter(0.5, p=0.8, saturation=0.4)|gray(0.2)",  # no blur
        # ONE batch layout for every arm: each image of a batch brings its 2 x 2 adjacent quarter
        # crops, one scene of 4 units (32 images x 4 crops at batch 128), so every arm sees the
        # same images in the same rows at the same scale; only the loss differs.
        crops_as_scenes=2,
        scenes_per_batch=0,
    )
    c.swimdiff_diffusion_size = 32  # denoise a 32 px downsample of the 64 px view
    c.swimdiff_denoiser_channels = 16
    # The denoiser's own optimizer (optimizer.modules.denoiser): Adam, as DDPM trains its UNet; the
    # encoder keeps the SGD every arm shares (the GroupNorm UNet diverges under SGD at that lr:
    # L_D 1.2 -> 13,265 -> NaN within 10 steps at lr 0.3).
    c.swimdiff_denoiser_lr = 1e-3
    c.eval = ml_collections.ConfigDict()
    c.eval.train_split = "train"  # the linear probe / kNN reference set (the pretraining split)
    c.eval.test_split = "test"
    c.eval.knn_k = 20
    c.eval.knn_temperature = 0.07
    c.eval.linear_epochs = 300
    c.eval.batch_size = 1024
    c.eval.max_train = 0
    c.eval.max_test = 0
    if variant == "gpu":
        # issue 28's order: the floor and the three main methods; the ablation arms do not fit one
        # GPU window (add them with --config.study.arms=... in a later window).
        c.study.arms = "simclr,moco_v2,swimdiff"
    elif variant == "cpu":
        # The factorial on the 2-core CPU: every arm on the one crop layout, 5 seeds shared by the
        # arms (paired differences), the demo's half-width ResNet-10 at 32 px, 5 epochs (840
        # steps of 128), SGD lr 0.3 (untuned, shared), the SwiMDiff denoiser at 16 px. Split it
        # over several calls with --config.study.time_budget_s (it resumes per arm and seed).
        # swimdiff_maps (the first conditioning) is defined but not in the default list: with it the
        # study would not fit 2.5 h (--config.study.arms=...,swimdiff_maps adds it)
        c.study.arms = "simclr,moco_v2,moco_v2_matching,moco_v2_diffusion,swimdiff"
        c.study.seeds = "0,1,2,3,4"
        c.epochs = 5
        c.batch_size = 128
        c.dtype = "float32"
        c.model.name = "resnet10_w32"
        c.optimizer.lr = 0.3
        c.data.image_size = 32
        c.swimdiff_diffusion_size = 16
        c.eval.batch_size = 512
    elif variant == "smoke":
        c.study.arms = "simclr,swimdiff"
        c.epochs = 1
        c.batch_size = 16
        c.dtype = "float32"
        c.model.name = "tiny"
        c.model.in_channels = 13
        c.data.name = "rs_synthetic"
        c.data.builder_config = "tiny"
        c.data.image_size = 32
        c.data.device_resident = True
        c.eval.linear_epochs = 20
        c.eval.batch_size = 64
        c.max_steps_per_arm = 2
    common.add_arms(c, ARMS)
    return c
