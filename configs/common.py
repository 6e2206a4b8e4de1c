"""Building blocks shared by the experiment configs in ``configs/`` (as big_vision's
``configs/common.py``).

Each ``configs/<experiment>.py`` has ``get_config(arg=None)``. ``arg`` is the text after the
colon of ``--config=configs/<experiment>.py:<arg>``, parsed by :func:`parse_arg`: a variant
name (``smoke``, the demo default, ``paper``, ...) and/or typed ``key=value`` pairs, e.g.
``:smoke``, ``:smoke,total_steps=3`` or ``:variant=smoke,seed=1``. Every block comes complete
from one constructor (``config.data`` from :func:`data_config`, optimizer blocks from
:func:`rsjax.optim.default_block`), and :func:`finish` locks the config, so that
``--config.data.typo=1`` is refused instead of silently adding a key nobody reads.

Keys every pretraining config has: ``total_steps`` (fixes the schedule), ``stop_after_steps``
(end early with a checkpoint; rerun continues), ``batch_size`` (global), ``seed``,
``model.name``, ``method``, ``data.name``, ``data.data_dir``.

The configs are a package (installed with rsjax by ``pip install -e .``): import them as
modules, ``importlib.import_module("configs.swimdiff").get_config("smoke")``, or with
:func:`load`; a variant imports its base (``from configs import cd_levir``).
"""

from __future__ import annotations

import importlib
import json
from typing import Any, Callable

import ml_collections

from rsjax.errors import ConfigError

# get_config arguments every training config accepts besides its variants (None = the
# variant's value): ``:smoke,total_steps=3,seed=1``.
RUN_ARGS = dict(seed=(None, int), total_steps=(None, int), batch_size=(None, int))


# --------------------------------------------------------------------------------------
# get_config's argument
# --------------------------------------------------------------------------------------
def _to_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1", "yes", "on"):
        return True
    if t in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (true / false)")


def _spec_entry(default: Any) -> tuple[Any, Callable[[str], Any]]:
    """``name=default`` or ``name=(default, type)`` -> ``(default, converter)``; the type of a
    plain default is its own (bool is parsed strictly, not by ``bool("False") == True``)."""
    if isinstance(default, tuple) and len(default) == 2 and callable(default[1]):
        default, kind = default
    else:
        kind = type(default)
    return default, (_to_bool if kind is bool else kind)


def parse_arg(arg: str | None, *, variants: tuple[str, ...], **spec) -> ml_collections.ConfigDict:
    """``get_config``'s single string argument -> ``ConfigDict(variant=..., **values)``.

    As big_vision's ``parse_arg``: ``arg`` is comma-separated; ``key=value`` sets a key of
    ``spec`` (``name=default`` or ``name=(default, type)``; the value is converted with the
    default's type, booleans strictly); a bare word is the variant (one of ``variants``; the
    first is the default) or, for a boolean key of ``spec``, that key set to True;
    ``variant=NAME`` names the variant explicitly. Examples: ``"smoke"``,
    ``"smoke,total_steps=3"``, ``"variant=smoke,seed=1"``, ``None`` (the default variant).

    Raises ConfigError naming the known variants and keys for an unknown variant or key, and the
    key and its type for a value that does not convert.
    """
    if not variants:
        raise ValueError("parse_arg: variants must name at least the default variant")
    entries = {k: _spec_entry(v) for k, v in spec.items()}
    known = f"variants: {', '.join(variants)}; keys: {', '.join(['variant', *entries])}"
    out = {"variant": None, **{k: d for k, (d, _) in entries.items()}}
    for token in (t.strip() for t in (arg or "").split(",")):
        if not token:
            continue
        key, eq, value = token.partition("=")
        key = key.strip()
        if not eq:  # a bare word: the variant, or a boolean key
            if key in variants:
                key, value = "variant", key
            elif key in entries and entries[key][1] is _to_bool:
                value = "true"
            else:
                raise ConfigError(f"unknown config variant {token!r} (nor a boolean key); known {known}")
        if key == "variant":
            value = value.strip()
            if value not in variants:
                raise ConfigError(f"unknown config variant {value!r}; known {known}")
            if out["variant"] not in (None, value):
                raise ConfigError(f"config argument {arg!r} names two variants ({out['variant']!r}, {value!r})")
            out["variant"] = value
            continue
        if key not in entries:
            raise ConfigError(f"config argument {key!r} is not a known key; known {known}")
        try:
            out[key] = entries[key][1](value.strip())
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config argument {key}={value!r}: expected {entries[key][1].__name__} ({e})") from None
    out["variant"] = out["variant"] or variants[0]
    return ml_collections.ConfigDict(out, type_safe=False)


def finish(c: ml_collections.ConfigDict, arg: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """The end of every ``get_config``: applies the :data:`RUN_ARGS` of ``arg`` that are set
    (``:smoke,total_steps=3``) and locks ``c``, so that an override of a key that does not
    exist (``--config.data.typo=1``) is refused."""
    for key in RUN_ARGS:
        value = arg.get(key, None) if arg is not None else None
        if value is not None:
            if key not in c:
                raise ConfigError(f"config argument {key}={value!r}: this config has no key {key!r}")
            c[key] = value
    c.lock()
    return c


def load(name: str, arg: str | None = None, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """``configs/<name>.py:<arg>`` imported as the module ``configs.<name>`` (``name`` may end
    in ``.py`` or carry a ``configs/`` prefix), with dotted-key ``overrides`` applied as
    ``--config.<key>=<value>`` would be (an unknown key raises ConfigError naming it)."""
    stem = name.rsplit("/", 1)[-1].removesuffix(".py")
    try:
        module = importlib.import_module(f"configs.{stem}")
    except ModuleNotFoundError as e:
        if e.name not in (f"configs.{stem}", "configs"):
            raise
        raise ConfigError(
            f"no config configs/{stem}.py (module configs.{stem}); is rsjax installed with "
            f"`pip install -e .` from a checkout?"
        ) from None
    config = module.get_config(arg)
    for key, value in (overrides or {}).items():
        set_key(config, key, value)
    return config


def set_key(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """``config.<dotted> = value`` for a dotted key such as ``data.data_dir``; an unknown key
    raises ConfigError naming it (as ``--config.<key>=...`` on the command line does)."""
    node = config
    *parents, last = dotted.split(".")
    for i, p in enumerate(parents):
        if p not in node:
            raise ConfigError(f"config key {'.'.join(parents[: i + 1])!r} does not exist")
        node = node[p]
    if last not in node:
        raise ConfigError(f"config key {dotted!r} does not exist")
    node[last] = value


def link_shared(arm: ml_collections.ConfigDict, study: ml_collections.ConfigDict, keys, overrides=()) -> None:
    """``arm.<key> = study.<key>`` as a FieldReference for every dotted key of ``keys`` that the
    arm does not override itself (a study's shared settings: an override given after get_config,
    ``--config.data.folder=...``, reaches every arm). An arm's own override is never linked:
    assigning to a field that holds a shared reference would re-point that reference, i.e. change
    every arm (and the study)."""
    for dotted in keys:
        if dotted in overrides:
            continue
        *parents, last = dotted.split(".")
        src, dst = study, arm
        for p in parents:
            src, dst = src[p], dst[p]
        dst[last] = src.get_ref(last)


# --------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------
def data_config(**overrides) -> ml_collections.ConfigDict:
    """The complete ``config.data`` block: every key of
    :func:`rsjax.data.defaults.default_data_config` (input path, augmentation and the keys the
    evaluation, dense and noisy-label jobs read) with ``overrides`` applied. Locked: an
    unknown key raises ConfigError naming the known ones."""
    from rsjax.data.defaults import default_data_config

    d = default_data_config()
    d.lock()
    for k, v in overrides.items():
        if k not in d:
            raise ConfigError(f"data_config: unknown key data.{k}; keys: {', '.join(sorted(d.keys()))}")
        d[k] = v
    return d


def pretrain_base() -> ml_collections.ConfigDict:
    from rsjax import optim

    c = ml_collections.ConfigDict()
    c.method = "simclr"
    c.seed = 0
    c.total_steps = 300
    c.stop_after_steps = 0
    c.batch_size = 64
    c.dtype = "float32"  # compute dtype; params, loss and optimizer stay float32
    c.log_every = 10
    c.checkpoint_every = 100
    c.keep_checkpoints = 3
    c.max_nonfinite_steps = 5  # consecutive refused steps before the run stops

    c.model = ml_collections.ConfigDict()
    # resnet18 | resnet50 | resnet10_w32 (the CPU demo default) | tiny (smoke tests)
    c.model.name = "resnet10_w32"
    c.model.stem = "standard"  # standard (7x7/2 + maxpool) | cifar (3x3/1, no maxpool)
    c.model.conv = "auto"  # convolution formulation: auto | lax | taps | im2col (rsjax.models.conv)
    c.model.in_channels = 13
    c.model.proj_hidden_dim = 256
    c.model.proj_dim = 128
    c.model.proj_layers = 2
    c.model.proj_bn = True

    c.loss = ml_collections.ConfigDict()
    c.loss.temperature = 0.2

    # module_lr_scale, e.g. "denoiser=0.1": per-module lr factor (rsjax.optim)
    c.optimizer = optim.default_block(
        name="adamw",
        lr=2e-3,
        weight_decay=1e-4,
        warmup_steps=10,
        final_lr_fraction=0.0,
        grad_clip=0.0,
        module_lr_scale="",
    )

    c.data = data_config(name="rs_synthetic", builder_config="default", image_size=32)

    c.eval = ml_collections.ConfigDict()
    c.eval.enabled = True
    c.eval.evaluators = ("knn", "linear")  # frozen-feature evaluators (rsjax.evaluate)
    c.eval.train_split = "train"
    c.eval.test_split = "test"
    c.eval.knn_k = 20
    c.eval.knn_temperature = 0.07
    c.eval.linear_epochs = 300
    c.eval.batch_size = 256
    c.eval.max_train = 0  # 0 = all
    c.eval.max_test = 0
    return c


def add_moco(
    c: ml_collections.ConfigDict,
    *,
    queue_size: int,
    momentum: float = 0.99,
    batch_negatives: bool = False,
    symmetric: bool = True,
) -> None:
    c.moco = ml_collections.ConfigDict()
    c.moco.queue_size = queue_size
    c.moco.momentum = momentum
    c.moco.cosine_momentum = False
    # False = MoCo v2's candidates: the positive and the queue only (logits [q.k+, q.queue]);
    # True also scores the other keys of the batch (SwiMDiff's scene-wide matching).
    c.moco.batch_negatives = batch_negatives
    # True = q1.k2 and q2.k1 averaged (MoCo v3 style); False = MoCo v2's q1.k2 only.
    c.moco.symmetric = symmetric
    c.model.proj_bn = False  # MoCo v2's MLP head has no BatchNorm
    c.loss.scene_mode = "none"


def add_swimdiff(c: ml_collections.ConfigDict) -> None:
    c.swimdiff = ml_collections.ConfigDict()
    c.swimdiff.lambda_c = 1.0
    c.swimdiff.lambda_d = 1.0
    c.swimdiff.denoiser_channels = 16
    c.swimdiff.denoiser_mults = (1, 2, 4)
    c.swimdiff.time_dim = 128
    c.swimdiff.num_timesteps = 1000
    c.swimdiff.beta_start = 1e-4
    c.swimdiff.beta_end = 0.02
    c.swimdiff.x0_scale = 3.0  # standardized view / 3 -> clip to [-1, 1]
    c.swimdiff.diffusion_size = 0  # denoise at this side in px (antialiased downsample); 0 = view size
    c.swimdiff.log_nocond = True  # log L_D with the conditioning zeroed / shuffled, and the conditioning gain
    c.swimdiff.conditioning = "both"  # maps | film | both (rsjax.models.heads.Denoiser)
    c.swimdiff.log_grad_share = True  # log grad_share_diffusion (L_D's share of the encoder's gradient):
    # logged steps run a second program (compile time)
    c.loss.scene_mode = "soft"


def _tiny_run(c: ml_collections.ConfigDict) -> None:
    """The shape of every pretraining :smoke run: tiny model, 4 steps of 16 on the tiny
    synthetic dataset, every step logged, checkpoints at 2 and 4."""
    c.model.name = "tiny"
    c.total_steps = 4
    c.batch_size = 16
    c.log_every = 1
    c.checkpoint_every = 2
    c.optimizer.warmup_steps = 1
    c.data.builder_config = "tiny"


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few steps of a tiny model on the tiny synthetic dataset (used by the test suite)."""
    _tiny_run(c)
    c.model.proj_hidden_dim = 32
    c.model.proj_dim = 16
    c.data.image_size = 32
    if c.data.scenes_per_batch:
        c.data.scenes_per_batch = 4
        c.data.samples_per_scene = 4
    if "moco" in c:
        c.moco.queue_size = 64
    if "swimdiff" in c:
        c.swimdiff.denoiser_channels = 8
        c.swimdiff.time_dim = 16
        c.swimdiff.log_grad_share = False  # a second gradient program: compile time (tests enable it)
        # two denoiser levels and no zeroed / shuffled conditioning passes: ~20 % less compile
        # time for every SwiMDiff smoke step in the suite (the tests that check them enable them)
        c.swimdiff.denoiser_mults = (1, 2)
        c.swimdiff.log_nocond = False
    c.eval.linear_epochs = 20
    c.eval.batch_size = 64
    return c


# Throughput shapes of ``python -m rsjax.bench`` (every pretraining config has these variants).
BENCH_VARIANTS = ("bench", "bench_eurosat", "bench_cpu", "bench_cpu_study", "bench_cpu_r50")


def bench(c: ml_collections.ConfigDict, kind: str) -> ml_collections.ConfigDict:
    """Throughput-benchmark shapes (``python -m rsjax.bench``), matching the PyTorch peer's.

    GPU (bf16): ``bench``: ResNet-50, 224 px, batch 256 (x2 views), 3 bands;
    ``bench_eurosat``: ResNet-18, 64 px, batch 512, 3 bands (the EuroSAT SimCLR peer).
    CPU (float32, 3 bands): ``bench_cpu``: ResNet-18, 32 px, batch 64; ``bench_cpu_study``: the
    CPU EuroSAT study's shape (``resnet10_w32``, 32 px, batch 128, SwiMDiff's denoiser at 16 px);
    ``bench_cpu_r50``: ResNet-50, 64 px, batch 32.
    """
    if kind not in BENCH_VARIANTS:
        raise ConfigError(f"unknown bench shape {kind!r}; known: {', '.join(BENCH_VARIANTS)}")
    c.model.in_channels = 3
    c.data.name = "eurosat_rgb"
    c.data.builder_config = ""
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.1
    if kind in ("bench", "bench_eurosat"):
        c.dtype = "bfloat16"
        c.model.proj_hidden_dim = 2048 if kind == "bench" else 512
        c.model.name, c.batch_size, c.data.image_size = (
            ("resnet50", 256, 224) if kind == "bench" else ("resnet18", 512, 64)
        )
    else:
        c.dtype = "float32"
        c.model.name, c.batch_size, c.data.image_size = {
            "bench_cpu": ("resnet18", 64, 32),
            "bench_cpu_study": ("resnet10_w32", 128, 32),
            "bench_cpu_r50": ("resnet50", 32, 64),
        }[kind]
        c.model.proj_hidden_dim = 512
    if "moco" in c:
        c.moco.queue_size = 16 * c.batch_size
    if "swimdiff" in c:
        c.swimdiff.diffusion_size = {"bench": 56, "bench_eurosat": 32, "bench_cpu_study": 16}.get(kind, 0)
        c.swimdiff.denoiser_channels = 16
    if c.data.scenes_per_batch:
        c.data.scenes_per_batch = c.batch_size // c.data.samples_per_scene
    return c


# --------------------------------------------------------------------------------------
# Downstream evaluation jobs (rsjax.evaluate.*)
# --------------------------------------------------------------------------------------
def add_finetune(c: ml_collections.ConfigDict) -> None:
    """The classification jobs' fine-tune on the one training loop (phase dir
    ``<workdir>/finetune``; resumable): ``finetune.{total_steps (0 = none), batch_size, optimizer}``
    and the loop's top-level keys."""
    from rsjax import optim

    c.finetune = ml_collections.ConfigDict()
    c.finetune.total_steps = 0  # 0 = no fine-tuning
    c.finetune.batch_size = 64
    c.finetune.optimizer = optim.default_block(name="adamw", lr=1e-3, weight_decay=1e-4, schedule="cosine")
    c.stop_after_steps = 0  # > 0: stop the fine-tune after this step (checkpoint); rerun continues
    c.checkpoint_every = 1000
    c.keep_checkpoints = 2
    c.max_nonfinite_steps = 5


def eval_base(job: str) -> ml_collections.ConfigDict:
    """Keys shared by the evaluation configs (``configs/eval_*.py``, ``cd_*.py``, ``seg.py``).

    ``pretrained``: workdir of a pretraining run whose encoder is evaluated ('' = random init);
    ``pretrained_step``: its checkpoint step (0 = latest). The checkpoint's architecture, stem
    and band count must equal ``model.name``, ``model.stem`` and ``model.in_channels``.
    """
    c = ml_collections.ConfigDict()
    c.job = job
    c.seed = 0
    c.dtype = "float32"
    c.log_every = 10
    c.pretrained = ""
    c.pretrained_step = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    c.model.stem = "standard"
    c.model.conv = "auto"  # convolution formulation (rsjax.models.conv); never changes the parameters
    c.model.in_channels = 13

    c.data = data_config(name="rs_synthetic", builder_config="default", image_size=32)

    c.eval = ml_collections.ConfigDict()
    c.eval.train_split = "train"
    c.eval.test_split = "test"
    c.eval.batch_size = 256  # feature extraction / inference batch (a multiple of the device count)
    c.eval.max_train = 0  # 0 = all records
    c.eval.max_test = 0
    return c


def add_dense_train(
    c: ml_collections.ConfigDict,
    *,
    steps: int,
    batch_size: int,
    crop_size: int,
    lr: float,
    optimizer: str = "adamw",
    schedule: str = "cosine",
) -> None:
    """Training keys of the dense-prediction jobs (segmentation, change detection), spelt as
    every training job spells them: ``total_steps``, ``batch_size`` (global), ``optimizer`` (an
    ``rsjax.optim`` block; ``optimizer.freeze = "encoder/*"`` trains only the decoder),
    ``stop_after_steps`` / ``checkpoint_every`` / ``keep_checkpoints`` / ``max_nonfinite_steps``
    (the loop's), ``loss.dice_weight`` / ``loss.dice_reduction`` (``example``: rsjax, per crop |
    ``batch``: torch CE/BCE + smp DiceLoss, as CromSS) and ``data.crop_size`` (random training
    crop side; 0 = whole images)."""
    from rsjax import optim

    c.total_steps = steps
    c.stop_after_steps = 0
    c.batch_size = batch_size
    c.checkpoint_every = 1000
    c.keep_checkpoints = 2
    c.max_nonfinite_steps = 5
    c.optimizer = optim.default_block(
        name=optimizer, lr=lr, weight_decay=1e-4, momentum=0.9, schedule=schedule, poly_power=0.9
    )
    c.loss = ml_collections.ConfigDict()
    c.loss.dice_weight = 1.0
    c.loss.dice_reduction = "example"
    c.data.crop_size = crop_size


def noisy_label_base() -> ml_collections.ConfigDict:
    """Task-specific pretraining with noisy labels (``rsjax.jobs.noisy_label``; DESIGN §3.4): the demo
    scale shared by ``configs/noisy_label.py`` and ``configs/noisy_label_study.py``: the narrow
    4-stage ``tiny`` ResNet in a UNet on the synthetic 13-band scenes (32 px), sized to run in a
    few minutes on a laptop CPU (ResNet-18 is ~17x slower per step there; use
    ``--config.model.name=resnet18`` on a GPU). Keys are documented in ``rsjax.jobs.noisy_label``."""
    c = ml_collections.ConfigDict()
    c.job = "noisy_label"
    c.method = "noisy_label"
    c.seed = 0
    c.epochs = 0  # > 0: total_steps = epochs * ceil(num_train / batch_size)
    c.total_steps = 300
    c.stop_after_steps = 0
    c.batch_size = 32
    c.dtype = "float32"
    c.log_every = 10
    c.checkpoint_every = 100
    c.keep_checkpoints = 2
    c.max_nonfinite_steps = 5

    c.model = ml_collections.ConfigDict()
    c.model.name = "tiny"  # resnet18 | resnet50 | tiny
    c.model.stem = "standard"
    c.model.conv = "auto"  # convolution formulation (rsjax.models.conv); never changes the parameters
    c.model.in_channels = 13
    c.model.num_classes = 6  # classes of the pretraining masks
    c.model.decoder = "unet"  # pretraining decoder (the paper: UNet)
    c.model.output_stride = 32
    c.model.decoder_channels = ()  # () = the decoder's default widths

    c.loss = ml_collections.ConfigDict()
    c.loss.dice_weight = 1.0  # CE + dice_weight * Dice
    c.loss.dice_reduction = "batch"  # CromSS: torch CE + smp DiceLoss over the batch | example (rsjax, per crop)

    from rsjax import optim

    # warm-up + cosine. optimizer.plateau = ReduceLROnPlateau as CromSS (torch semantics,
    # rsjax.optim.plateau_update): lr x factor after `patience` validations without improvement
    # of the held-out crops' mIoU (noisy labels); off here (the schedule alone, no held-out crops).
    c.optimizer = optim.default_block(
        name="adam",
        lr=2e-3,
        weight_decay=0.0,
        warmup_steps=10,
        final_lr_fraction=0.0,
        grad_clip=0.0,
        plateau=dict(enabled=False, mode="max", factor=0.5, patience=30, every=0, val_fraction=0.01),
    )

    # max_train: 0 = the whole pretraining split. (Random flips + 90-degree rotations of image
    # and mask alike: rsjax.jobs.noisy_label.)
    c.data = data_config(name="rs_synthetic", builder_config="default", image_size=32, max_train=0)

    c.noise = ml_collections.ConfigDict()
    c.noise.flip_rate = 0.3  # probability that a connected region changes class
    c.noise.flip_mode = "regions"  # regions | blobs (then flip_rate = pixel fraction)
    c.noise.blob_radius = 6.0
    c.noise.erosion = 1  # boundary noise in px (see rsjax.data.label_noise)
    c.noise.erosion_class = -1  # -1: all classes, random order; c: erode (>0) / dilate (<0) class c
    c.noise.seed = 0

    c.analysis = ml_collections.ConfigDict()
    c.analysis.every = 50  # per-layer weight statistics + Fisher ratios every N steps (0 = off)
    c.analysis.max_images = 128  # clean test crops used for it
    c.analysis.split = "test"  # ... read from this split

    c.transfer = ml_collections.ConfigDict()
    c.transfer.enabled = True
    c.transfer.decoders = ("unet", "deeplabv3plus", "pspnet")
    c.transfer.split = "test"  # scenes disjoint from pretraining
    c.transfer.train_scene_fraction = 0.5
    c.transfer.max_train_images = 32  # a small labelled set: where pretraining matters (0 = all)
    c.transfer.max_examples = 0
    # synthetic classes merged: water | forest, cropland, grassland | urban, bare soil
    c.transfer.class_map = (0, 1, 1, 1, 2, 2)
    c.transfer.class_names = ("water", "vegetation", "built_or_bare")
    c.transfer.total_steps = 100
    c.transfer.batch_size = 32
    c.transfer.compare_random_init = True
    # freeze="encoder/*": fine-tune the decoder only (the encoder then runs in inference mode)
    c.transfer.optimizer = optim.default_block(
        name="adam", lr=1e-3, weight_decay=0.0, warmup_steps=10, final_lr_fraction=0.0, grad_clip=0.0
    )
    return c


def noisy_label_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Tiny UNet, a few steps on the tiny synthetic dataset, UNet transfer only."""
    _tiny_run(c)
    c.analysis.every = 2
    c.analysis.max_images = 16
    c.transfer.decoders = ("unet",)
    c.transfer.total_steps = 3
    c.transfer.batch_size = 16
    c.transfer.optimizer.warmup_steps = 1
    return c


# --------------------------------------------------------------------------------------
# Studies (configs/study_*.py)
# --------------------------------------------------------------------------------------
def add_arms(c: ml_collections.ConfigDict, arms: dict[str, tuple[str, dict]]) -> None:
    """``c.arms.<name>``: the pretraining config of every arm of ``arms`` (``name -> (config module,
    overrides)``: the module's default variant, then the study's shared settings, then the arm's
    overrides), and ``c.arm_sources.<name>``: ``{"config": module, "overrides": {...}}`` as JSON
    (recorded in the arm's result file). So the arms of a study differ only in what their module
    and overrides say: the loss.

    The shared settings are FieldReferences to the study's own keys (``dtype``, ``batch_size``,
    ``model.{name,stem,conv,in_channels}``, ``temperature``, ``optimizer.{name,lr,weight_decay}``,
    every ``data`` key, ``swimdiff_diffusion_size`` / ``swimdiff_denoiser_channels`` /
    ``swimdiff_denoiser_lr``), so an override given after get_config (``--config.data.folder=...``,
    ``--config.batch_size=...``) reaches every arm. Left to the job (rsjax.study.arm_config),
    because they need the split size or the seed: ``seed``, ``total_steps``,
    ``optimizer.warmup_steps``, ``log_every`` and ``checkpoint_every``.
    """
    c.arms = ml_collections.ConfigDict()
    c.arm_sources = ml_collections.ConfigDict()
    for name, (module, overrides) in arms.items():
        # configs.<module> imports this module: imported here, when a study builds its arms.
        mod = importlib.import_module(f"configs.{module}")
        a = mod._config(mod.VARIANTS[0])

        def link(block, key, ref, dotted):
            # An arm's own override is never linked (see link_shared).
            if dotted not in overrides:
                block[key] = ref

        link_shared(
            a,
            c,
            [
                "dtype",
                "batch_size",
                *(f"model.{k}" for k in ("name", "stem", "conv", "in_channels")),
                *(f"optimizer.{k}" for k in ("name", "lr", "weight_decay")),
                *(f"data.{k}" for k in c.data),
            ],
            overrides,
        )
        a.model.proj_hidden_dim = 512
        a.model.proj_dim = 128
        link(a.loss, "temperature", c.get_ref("temperature"), "loss.temperature")
        if a.method == "swimdiff":
            a.swimdiff.log_grad_share = True  # the run record reports L_D's share of the encoder's gradient
            link(a.swimdiff, "diffusion_size", c.get_ref("swimdiff_diffusion_size"), "swimdiff.diffusion_size")
            link(a.swimdiff, "denoiser_channels", c.get_ref("swimdiff_denoiser_channels"), "swimdiff.denoiser_channels")
        if "moco" in a:
            link(a.moco, "queue_size", c.get_ref("batch_size") * 16, "moco.queue_size")
        a.eval.enabled = False
        for dotted, value in overrides.items():
            set_key(a, dotted, value)
        if a.method == "swimdiff" and float(a.swimdiff.lambda_d):
            a.optimizer.modules = ml_collections.ConfigDict(
                {"denoiser": {"name": "adam", "lr": c.get_ref("swimdiff_denoiser_lr"), "weight_decay": 0.0}}
            )
        a.lock()
        c.arms[name] = a
        c.arm_sources[name] = json.dumps({"config": module, "overrides": overrides}, sort_keys=True)
