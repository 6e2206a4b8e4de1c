"""Real-data study on OSCD: does pretraining on the unlabelled crops of a few cities help change
detection in others? City folds, every method pretrained alike, every encoder transferred alike.

Run (the dataset built once: python -m rsjax.data.build oscd --manual_dir=$DATA/oscd_s2_subset
--data_dir=$TFDS):
  python -m rsjax.main --config=configs/study_oscd.py:cpu --workdir=runs/study_oscd \
      --config.data.data_dir=$TFDS --config.study.out_dir=results
  python -m rsjax.main --config=configs/study_oscd.py:smoke --workdir=/tmp/study_oscd_smoke
(set JAX_COMPILATION_CACHE_DIR=/tmp/rsjax_jax_cache: the runs of one arm compile the same programs.)

Protocol (rsjax.jobs.study_oscd): the 6 labelled cities at hand form 3 folds of 2 test cities
(``study.folds``), every city tested once; for each fold, seed and arm: pretrain on the unlabelled
crops of the fold's 4 training cities (``data.test_scenes`` holds the test cities out of every
read), then train the siamese change detector (``cd``) on the same 4 cities with the encoder
(a) frozen and (b) fine-tuned, and score the 2 test cities: F1 / IoU / precision / recall of the
change class, per fold and pooled over the folds (every test pixel once).

Folds (``FOLDS``): bercy + paris (the two Paris scenes share their first date, 2016-11-30, and lie
a few km apart: held out together, neither is tested against a neighbour seen in training; 0.5 %
changed pixels), bordeaux + hongkong (2.6 %), aguasclaras + saclay_e (1.2 %): hongkong, the city
with the most change (3.6 %), paired so that the two folds without Paris train on the same number
of crops (78 of the 128 crops of 128 px; the Paris fold trains on 100).

Pretraining input: every 128 px crop of a training city at BOTH dates (``data.pretrain_images =
(image_a, image_b)``), cut into 4 x 4 adjacent 32 px patches (``data.crops_as_scenes=4``): views
at the native 10 m, the scale the change detector works at. Scene = one crop's place (1.28 km,
16 adjacent patches x 2 dates), neither the city nor city x date: with 4 training cities a
city-wide scene would make a quarter of every query's candidates "false negatives" (and an
eighth with city x date), turning SwiMDiff's matching into city classification, while a place
is what its premise means (adjacent patches; SSL4EO's scene is one location at several dates),
and its two dates show the same ground, which a change detector's ``|f_A - f_B|`` should map
alike where nothing changed. Every arm sees the same batches (8 places x 16 patches at batch 128:
the same device-resident plan, the same augmentation keys); only the loss differs.

Arms (``ARMS``, built by configs.common.add_arms from their config modules so only the loss
differs): random_init (the floor: no pretraining), simclr, moco_v2 (configs/swimdiff.py with
scene matching and L_D off), swimdiff. The EuroSAT-pretrained RGB encoders on OSCD's B04/B03/B02
(a transfer row) are not an arm: rsjax has no band selection on read, and their input
normalisation (8-bit EuroSAT JPEGs) does not carry to L1C reflectance; left for later.

Variants:
  cpu    the study on the 2-core CPU: resnet10_w32 (half-width ResNet-10, 13 bands), 32 px views,
         batch 128 (8 places x 16 patches), 300 pretraining steps per run (12-15 epochs), SGD lr
         0.3 as the EuroSAT CPU study, the SwiMDiff denoiser at 16 px with its own Adam; change
         detection: a narrow UNet (128, 64, 32, 16, 16), 64 px random crops with flips, batch 16,
         200 steps, AdamW lr 1e-2 for the decoder and 1e-3 for a fine-tuned encoder, BCE + one
         Dice over the batch, scored on the whole 128 px test crops; 3 seeds x 3 folds x 4 arms.
  smoke  the tiny synthetic dataset (scene = tile; 3 folds of its 8 train tiles), tiny encoder,
         2 pretraining and 2 change-detection steps per run (the test suite).

COST of :cpu on the 2-core CPU (AMD EPYC, 2026-12-07, niced; the machine was shared, so times
under load are divided by the contention factor of the same minutes: the EuroSAT-shape SwiMDiff
bench step, 572-593 ms against its idle 282 ms, i.e. x2.07):
  pretraining, s per step (views from the 32 px patches): SimCLR 0.15, MoCo v2 0.17 (idle,
  measured), SwiMDiff 0.36 (0.74 under load / 2.07); compilation once per program (the job turns
  the persistent cache on: a change-detection run's 25 s compile drops to 3 s afterwards).
  change detection (idle, measured): frozen 0.074 s/step + 8 s per run, fine-tuned 0.24 s/step
  + 4 s per run -> 45 s (500 steps) and 52 s (200 steps).
  one (fold, seed) unit of all 4 arms: 8 pretraining + change-detection runs, 1,048 s under load
  = 506 s idle with its first compilations; by the per-step figures 550 s.
  Projection for 9 units (3 folds x 3 seeds): 76-84 min idle (the issue's budget: 90 min).
"""

import ml_collections

from configs import cd_levir, common

VARIANTS = ("cpu", "smoke")

# name -> (config module, overrides): the pretraining arms (random_init is added by the job).
ARMS = {
    "simclr": ("simclr", {}),
    "moco_v2": ("swimdiff", {"loss.scene_mode": "none", "swimdiff.lambda_d": 0.0}),
    # L_D's share of the encoder's gradient costs a second gradient program on every logged step
    # (+40 % of a SwiMDiff run here): off; L_D with its conditioning zeroed / shuffled and the
    # conditioning gain are still logged (swimdiff.log_nocond). Not a loss term: the arms still
    # differ only in the loss.
    "swimdiff": ("swimdiff", {"swimdiff.log_grad_share": False}),
}
# The test cities of each fold, "+" between the cities of a fold (see the module docstring).
FOLDS = "bercy+paris,bordeaux+hongkong,aguasclaras+saclay_e"
# Paired differences reported (first arm minus second, over the fold x seed pairs).
COMPARISONS = (
    "simclr-random_init,moco_v2-random_init,swimdiff-random_init,moco_v2-simclr,swimdiff-simclr,swimdiff-moco_v2"
)


def get_config(arg=None):
    """``arg``: a variant of VARIANTS and/or ``seed=`` / ``total_steps=`` / ``batch_size=`` (configs.common.parse_arg)."""
    a = common.parse_arg(arg, variants=VARIANTS, **common.RUN_ARGS)
    return common.finish(_config(a.variant), a)


def _config(variant: str):
    c = ml_collections.ConfigDict()
    c.job = "study_oscd"
    c.seed = 0
    c.study = ml_collections.ConfigDict()
    c.study.arms = ",".join(ARMS)  # comma-separated subset of ARMS to run
    c.study.seeds = "0,1,2"  # pretraining and change-detection seeds, shared by the arms
    c.study.include_random_init = True
    c.study.folds = FOLDS  # test cities per fold (scene names: the records' `city`)
    c.study.scene_name_key = "city"  # the feature naming a scene (scene_id -> name)
    c.study.comparisons = COMPARISONS
    c.study.stop_after_arm = ""  # stop after this arm; rerun continues
    c.study.time_budget_s = 0.0  # > 0: start no new run after this many seconds; rerun continues
    c.study.name = variant  # results file names: oscd_<name>_<arm>.json
    c.study.out_dir = ""  # also write each finished arm's JSON here (e.g. results)
    c.study.picture_city = "hongkong"  # the test city of the prediction picture
    c.epochs = 0  # > 0 (and max_steps_per_arm 0): epochs over the fold's patches
    # Every pretraining run takes this many steps, whatever the fold (8 epochs of the Paris fold's
    # 3,200 patches, 10 of the others' 2,496): equal budgets, and one program per arm for every
    # fold and seed (the schedule's length is compiled in; the compilation cache reuses it).
    c.max_steps_per_arm = 200
    c.batch_size = 128
    c.dtype = "float32"
    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet10_w32"
    c.model.stem = "standard"
    c.model.conv = "auto"
    c.model.in_channels = 13
    c.temperature = 0.2
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.3
    c.optimizer.weight_decay = 5e-4
    c.optimizer.warmup_fraction = 0.05
    # The pretraining data (shared by every arm); the job sets data.test_scenes per fold.
    c.data = common.data_config(
        name="oscd",
        builder_config=None,
        image_size=32,
        device_resident=True,
        pretrain_images=("image_a", "image_b"),
        crops_as_scenes=4,
        scenes_per_batch=0,
        augment="rrc(0.2, 1.0)|flip_rot|jitter(0.4, p=0.8)",
    )
    c.swimdiff_diffusion_size = 16
    c.swimdiff_denoiser_channels = 16
    c.swimdiff_denoiser_lr = 1e-3
    # The change detector of every arm (rsjax.jobs.change_detection): its model, data source and
    # normalisation follow the study's (references), the job sets seed, pretrained encoder,
    # optimizer.freeze and data.test_scenes per run.
    cd = cd_levir.base("oscd", 13, 64)
    for key in ("name", "stem", "conv", "in_channels"):
        cd.model[key] = c.model.get_ref(key)
    for key in ("name", "builder_config", "data_dir", "normalization"):
        cd.data[key] = c.data.get_ref(key)
    cd.dtype = c.get_ref("dtype")
    cd.model.decoder_channels = (128, 64, 32, 16, 16)
    cd.total_steps = 0  # per mode: cd_steps
    cd.batch_size = 16
    cd.optimizer.lr = 1e-2  # the decoder's; a fine-tuned encoder takes a tenth
    cd.optimizer.module_lr_scale = "encoder=0.1"
    cd.loss.dice_reduction = "batch"  # one Dice over the batch: crops without change do not pull it to "none"
    # Unweighted BCE. 0.5 (the change pixels weighted by sqrt((1 - f) / f), ~10 here) was probed once
    # (docs/results.md): frozen F1 0.17 -> 0.28, fine-tuned 0.15 -> 0.00; not adopted on one probe.
    cd.loss.pos_weight_power = 0.0
    cd.optimizer.warmup_steps = 15
    cd.log_every = 25
    cd.checkpoint_every = 100_000  # one checkpoint, at the end
    cd.keep_checkpoints = 1
    cd.eval.batch_size = 32
    cd.eval.num_pictures = 4
    cd.eval.save_predictions = True  # the study's picture of a test city reads them
    c.cd = cd
    # Change-detection steps per mode. A fine-tuning step costs ~3x a frozen one (the encoder's
    # backward pass). At 200 frozen steps the decoder often had not left "no change" yet (F1 0.0
    # in 2 of 4 probes, 0.28-0.34 in the others); at 500 every probe scored (0.15-0.19).
    c.cd_steps = ml_collections.ConfigDict({"frozen": 500, "finetuned": 200})
    if variant == "smoke":
        c.study.arms = "simclr,swimdiff"
        c.study.seeds = "0"
        c.study.folds = "0+1,2+3,4+5+6+7"  # rs_synthetic has no names: scene ids
        c.study.scene_name_key = ""
        c.study.picture_city = "2"
        c.study.comparisons = "swimdiff-random_init,swimdiff-simclr"
        c.max_steps_per_arm = 2
        c.batch_size = 16
        c.model.name = "tiny"
        c.data.name = "rs_synthetic"
        c.data.builder_config = "tiny"
        c.data.pretrain_images = ("image", "image2")
        c.data.crops_as_scenes = 2
        c.swimdiff_denoiser_channels = 8
        cd.data.image_a_key = "image"
        cd.data.image_b_key = "image2"
        cd.data.image_size = 32
        cd.data.crop_size = 16
        cd.model.decoder_channels = ()
        c.cd_steps.frozen = c.cd_steps.finetuned = 2
        cd.batch_size = 8
        cd.eval.batch_size = 16
        cd.log_every = 1
    common.add_arms(c, ARMS)
    return c
