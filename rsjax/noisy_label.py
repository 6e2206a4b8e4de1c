"""Task-specific pretraining with noisy labels (DESIGN §3.4; arXiv 2402.16164) and its study.

Jobs (``config.job``, see ``rsjax.main.JOBS``):

* ``noisy_label`` -> :func:`run`: supervised segmentation pretraining of a ResNet encoder inside
  a UNet (``rsjax.models.decoders.SegmentationModel``) with ``rsjax.losses.ce_dice`` on noisy
  masks, an Orbax checkpoint in the pretraining layout (so ``rsjax.checkpoint.
  load_encoder_for_export``, the downstream jobs and ``python -m rsjax.export`` read it), then
  the transfer of the encoder to UNet / DeepLabv3+ / PSPNet on a *different class set*, with
  the same transfer from a random encoder for comparison.
* ``noisy_label_study`` -> :func:`run_study`: the same pretraining on clean labels and at
  several noise rates (identical initialisation, data order and budget per arm), downstream
  mIoU of every transferred encoder (``study.json``, ``study.md``, ``study_miou.png``), and
  the per-layer view of training (``study_layers.png``): weight norm and relative change from
  the initialisation per encoder stage / decoder level, and feature discriminability (Fisher
  ratio of the clean classes) per encoder stage and decoder level over training.

Data. ``data.name`` is any dataset whose TFDS builder stores ``image`` and ``mask``:
``rs_synthetic`` (the generator's exact masks; noise added here), ``dynamic_world`` (noisy by
nature; ``noise.flip_rate = 0``), ``rs_segmentation``. Masks become int32 labels with
``IGNORE_INDEX = -1`` for no-data: datasets whose builder metadata says ``ignore_value = 0``
store classes as 1..K (labels = mask - 1); other ignore values map to -1; without
``ignore_value`` every pixel is a class. Images larger than ``data.image_size`` are cut into a
grid of ``image_size`` tiles. A split is held in host memory (raw dtype, normalised per batch):
fine for the synthetic and sample datasets; the full SSL4EO-S2DW needs a streaming input path.

Label noise (``config.noise``, pure numpy in ``rsjax.data.label_noise``): ``flip_rate`` /
``flip_mode`` (whole connected regions or random blobs change class), ``erosion`` /
``erosion_class`` (boundary erosion / dilation in pixels), ``seed``. Only the pretraining
labels are noisy; every evaluation uses the clean labels.

Pretraining batches are a pure function of ``(seed, step)`` (epoch permutations, random
flip + 90-degree rotation applied identically to image and mask), so a killed run resumes from
its last checkpoint with the same data order. The trainer's jitted step
(``rsjax.train.make_train_step``) runs method ``noisy_label``
(``rsjax.methods.noisy_label.NoisyLabelSegmentation``).

Learning rate (``config.optimizer.plateau``, on in ``configs/noisy_label.py:paper``): CromSS's
torch ``ReduceLROnPlateau(mode="max", factor=0.5, patience=30)`` on the validation mIoU, once per
epoch (``plateau.every = 0``). ``plateau.val_fraction`` of the pretraining crops are held out
(seeded) and scored with their noisy labels; :func:`plateau_update` is torch's rule, and its
state (lr scale, best, bad-epoch and cooldown counters) is a :class:`PlateauState` leaf of the
optimizer state (:func:`plateau_scale`, last in the optax chain), so it is checkpointed with the
train state and resumes exactly. Off (the default), nothing is held out and the schedule alone
sets the lr.

Transfer (``config.transfer``): downstream data = ``transfer.split`` of the same dataset (by
default the held-out ``test`` split, whose scenes are disjoint from pretraining), divided by
scene into a labelled train part (``train_scene_fraction``, at most ``max_train_images``) and
a test part; labels remapped by ``transfer.class_map`` (pretraining class -> downstream class,
-1 = ignore), e.g. the six synthetic classes merged into water / vegetation / built-or-bare.
For each decoder in ``transfer.decoders`` a fresh model (same initialisation for every
encoder) is fine-tuned for ``transfer.total_steps`` with ``ce_dice`` on clean labels, encoder
included unless ``transfer.freeze_encoder``; reported: mIoU, per-class IoU, overall accuracy on
the downstream test part.

Per-layer analysis (every ``analysis.every`` steps, on ``analysis.max_images`` clean test
images): weight statistics per group (``enc_stem``, ``enc_layer1..4``; UNet ``dec_block0..4``,
``dec_head``): ``||W||`` and ``||W - W_0|| / ||W_0||`` over the conv / dense kernels; Fisher
ratio ``J = tr(S_b) / tr(S_w)`` of the feature maps (encoder stage outputs ``enc_c1..c4``,
UNet block outputs ``dec_block0..4`` from coarse to fine) with pixel labels pooled to each
map's resolution as class fractions (soft assignment):
``S_b = sum_k n_k ||mu_k - mu||^2``, ``S_w = sum_k sum_i w_ik ||x_i - mu_k||^2``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rsjax import checkpoint as ckpt_lib
from rsjax import sharding as shd
from rsjax import train
from rsjax import workdir as workdir_lib
from rsjax.data import label_noise
from rsjax.data import registry
from rsjax.methods.noisy_label import IGNORE_INDEX, NoisyLabelSegmentation

# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
SYNTHETIC_MERGED_CLASSES = ("water", "vegetation", "built_or_bare")
SYNTHETIC_MERGE_MAP = (0, 1, 1, 1, 2, 2)  # water | forest, cropland, grassland | urban, bare soil


@dataclasses.dataclass
class SegData:
    """A segmentation split in host memory: raw images, int32 labels (-1 = ignore), scenes."""

    images: np.ndarray       # [N, S, S, C] stored dtype (uint16 / uint8)
    labels: np.ndarray       # [N, S, S] int32
    scene_id: np.ndarray     # [N] int64
    info: registry.DatasetInfo
    class_names: tuple[str, ...]

    def __len__(self):
        return len(self.images)

    def subset(self, idx) -> "SegData":
        return dataclasses.replace(self, images=self.images[idx], labels=self.labels[idx],
                                   scene_id=self.scene_id[idx])

    def normalized(self, idx=slice(None)) -> np.ndarray:
        return registry.normalize(self.images[idx], self.info)


def _data_cfg(config_data) -> ml_collections.ConfigDict:
    from rsjax.data.defaults import default_data_config

    d = default_data_config()
    with d.unlocked():
        d.update(config_data.to_dict() if hasattr(config_data, "to_dict") else dict(config_data))
    return d


def masks_to_labels(mask: np.ndarray, ignore_value) -> np.ndarray:
    """Stored masks -> int32 labels with -1 = ignore (see module docstring)."""
    mask = np.asarray(mask).astype(np.int32)
    if ignore_value is None:
        return mask
    if int(ignore_value) == 0:
        return mask - 1
    return np.where(mask == int(ignore_value), IGNORE_INDEX, mask).astype(np.int32)


def tile(images: np.ndarray, labels: np.ndarray, scene: np.ndarray, size: int):
    """Cuts every ``S x S`` example into the ``(S // size)**2`` grid of ``size`` tiles."""
    s = images.shape[1]
    if size > s:
        raise ValueError(f"config.data.image_size={size} is larger than the stored images ({s} px)")
    if size == s:
        return images, labels, scene
    g = s // size
    ims, labs, scs = [], [], []
    for i in range(g):
        for j in range(g):
            sl = (slice(None), slice(i * size, (i + 1) * size), slice(j * size, (j + 1) * size))
            ims.append(images[sl])
            labs.append(labels[sl])
            scs.append(scene)
    # example-major order: the tiles of one image stay adjacent
    stack = lambda a: np.stack(a, 1).reshape((-1,) + a[0].shape[1:])  # noqa: E731
    return stack(ims), stack(labs), np.stack(scs, 1).reshape(-1)


def load_split(config_data, split: str, *, image_size: int, max_examples: int | None = None) -> SegData:
    """Reads ``image`` + ``mask`` (+ ``scene_id``) of a split (see module docstring)."""
    from rsjax.data import pipeline
    from rsjax.evaluate import common

    cfg = _data_cfg(config_data)
    source = pipeline.open_source(cfg, split)
    have = source.features()
    fields = {"image": "image", "mask": "mask"}
    if "scene_id" in have:
        fields["scene_id"] = "scene_id"
    arrays = common.load_fields(cfg, split, fields, max_examples=max_examples or None, desc="read")
    meta = source.builder.info.metadata or {}
    ignore_value = meta.get("ignore_value", None)
    info = registry.data_info(cfg)
    labels = masks_to_labels(arrays["mask"], ignore_value)
    bad = (labels < IGNORE_INDEX) | (labels >= info.num_classes)
    if bad.any():
        raise ValueError(f"dataset {cfg.name!r} split {split!r}: mask values {np.unique(arrays['mask'][bad])[:5]} "
                         f"outside the {info.num_classes} classes {info.class_names}")
    scene = arrays.get("scene_id", np.arange(len(labels))).astype(np.int64)
    images, labels, scene = tile(arrays["image"], labels, scene, int(image_size))
    if images.shape[-1] != info.num_bands:
        raise ValueError(f"dataset {cfg.name!r} images have {images.shape[-1]} bands, registry says {info.bands}")
    return SegData(images, labels, scene, info, tuple(info.class_names))


def remap(labels: np.ndarray, class_map) -> np.ndarray:
    """``class_map[label]`` for every valid label (-1 stays -1)."""
    lut = np.asarray(list(class_map) + [IGNORE_INDEX], np.int32)  # index -1 -> last entry
    return lut[labels]


def noisy_labels(config, labels: np.ndarray, num_classes: int) -> np.ndarray:
    n = config.noise
    return label_noise.apply_label_noise(
        labels, num_classes=num_classes, flip_rate=float(n.flip_rate), flip_mode=n.get("flip_mode", "regions"),
        erosion=int(n.get("erosion", 0)), erosion_class=int(n.get("erosion_class", -1)),
        blob_radius=float(n.get("blob_radius", 6.0)), seed=int(n.get("seed", 0)), ignore_index=IGNORE_INDEX)


def downstream_data(config):
    """(train, test, class_names) of the transfer task (see module docstring)."""
    t = config.transfer
    data_block = t.get("data", None) or config.data
    data = load_split(data_block, t.split, image_size=config.data.image_size,
                      max_examples=t.get("max_examples", 0) or None)
    class_map = tuple(t.class_map) if t.get("class_map", None) else tuple(range(data.info.num_classes))
    if len(class_map) != data.info.num_classes:
        raise ValueError(f"config.transfer.class_map has {len(class_map)} entries; dataset "
                         f"{data.info.name!r} has {data.info.num_classes} classes {data.class_names}")
    k = max(class_map) + 1
    names = tuple(t.class_names) if t.get("class_names", None) else tuple(f"class_{i}" for i in range(k))
    if len(names) != k:
        raise ValueError(f"config.transfer.class_names has {len(names)} names for {k} downstream classes")
    data = dataclasses.replace(data, labels=remap(data.labels, class_map), class_names=names)
    scenes = np.unique(data.scene_id)
    n_train = max(1, int(round(len(scenes) * float(t.train_scene_fraction))))
    if n_train >= len(scenes):
        raise ValueError(f"config.transfer.train_scene_fraction={t.train_scene_fraction} leaves no test scene "
                         f"({len(scenes)} scenes in split {t.split!r})")
    is_train = np.isin(data.scene_id, scenes[:n_train])
    train_idx, test_idx = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    if t.get("max_train_images", 0):
        train_idx = train_idx[: int(t.max_train_images)]
    return data.subset(train_idx), data.subset(test_idx), names


# --------------------------------------------------------------------------------------
# Analysis pieces (pure)
# --------------------------------------------------------------------------------------
def fisher_stats(feat, labels, num_classes: int):
    """Per-class sufficient statistics of one feature map for the Fisher ratio.

    ``feat`` [B, h, w, C]; ``labels`` [B, H, W] int (-1 = ignore). Labels become one-hot class
    fractions pooled to (h, w) (antialiased linear resize = area average for integer factors).
    Returns ``(n [K], s [K, C], q [K])``: ``n_k = sum_i w_ik``, ``s_k = sum_i w_ik x_i``,
    ``q_k = sum_i w_ik ||x_i||^2``.
    """
    f = feat.astype(jnp.float32)
    b, h, w, _ = f.shape
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # -1 -> all zeros
    if onehot.shape[1:3] != (h, w):
        onehot = jax.image.resize(onehot, (b, h, w, num_classes), method="linear", antialias=True)
    n = jnp.sum(onehot, axis=(0, 1, 2))
    s = jnp.einsum("bhwk,bhwc->kc", onehot, f)
    q = jnp.einsum("bhwk,bhw->k", onehot, jnp.sum(f * f, axis=-1))
    return n, s, q


def fisher_ratio(n, s, q) -> float:
    """``tr(S_b) / tr(S_w)`` from accumulated :func:`fisher_stats` (classes with n_k = 0 skipped)."""
    n, s, q = (np.asarray(a, np.float64) for a in (n, s, q))
    keep = n > 1e-9
    if keep.sum() < 2:
        return float("nan")
    n, s, q = n[keep], s[keep], q[keep]
    mu_k = s / n[:, None]
    mu = s.sum(0) / n.sum()
    within = float(np.sum(q - n * np.sum(mu_k**2, axis=1)))
    between = float(np.sum(n * np.sum((mu_k - mu) ** 2, axis=1)))
    return between / within if within > 0 else float("inf")


def weight_groups(params) -> dict[str, list[np.ndarray]]:
    """Conv / dense kernels (ndim > 1) grouped per encoder stage and decoder level."""
    groups: dict[str, list] = {}
    for part in ("encoder", "decoder"):
        for top, sub in params.get(part, {}).items():
            if part == "encoder":
                g = "enc_stem" if not top.startswith("layer") else "enc_" + top.split("_")[0]
            else:
                g = "dec_" + (top.split("_")[0] if top.startswith("block") else top)
            leaves = [np.asarray(x) for x in jax.tree.leaves(sub) if np.ndim(x) > 1]
            if leaves:
                groups.setdefault(g, []).extend(leaves)
    return groups


def weight_stats(params, init_params) -> dict[str, dict[str, float]]:
    """Per group: ``norm`` = ||W||, ``rel_change`` = ||W - W_0|| / ||W_0||."""
    now, ref = weight_groups(params), weight_groups(init_params)
    out = {}
    for g, ws in now.items():
        w0 = ref[g]
        norm = math.sqrt(sum(float(np.sum(np.square(w, dtype=np.float64))) for w in ws))
        norm0 = math.sqrt(sum(float(np.sum(np.square(w, dtype=np.float64))) for w in w0))
        diff = math.sqrt(sum(float(np.sum(np.square(a.astype(np.float64) - b))) for a, b in zip(ws, w0)))
        out[g] = {"norm": norm, "rel_change": diff / norm0 if norm0 else float("nan")}
    return out


def feature_modules(encoder_name: str, decoder: str) -> list[tuple[str, str, str]]:
    """(level name, parent module, module name) of the analysed feature maps, shallow to deep
    in the encoder and coarse to fine in the decoder."""
    from rsjax.models import resnet as resnet_lib

    stages = resnet_lib.ARCHS[encoder_name][0]
    out = [(f"enc_c{i + 1}", "encoder", f"layer{i + 1}_{n - 1}") for i, n in enumerate(stages)]
    if decoder == "unet":
        out += [(f"dec_block{i}", "decoder", f"block{i}_conv2") for i in range(5)]
    elif decoder == "deeplabv3plus":
        out += [("dec_aspp", "decoder", "aspp"), ("dec_fuse", "decoder", "fuse2")]
    elif decoder == "pspnet":
        out += [("dec_bottleneck", "decoder", "bottleneck")]
    return out


# --------------------------------------------------------------------------------------
# ReduceLROnPlateau (config.optimizer.plateau; CromSS's LR rule)
# --------------------------------------------------------------------------------------
PLATEAU_MODES = ("max", "min")
PLATEAU_THRESHOLD_MODES = ("rel", "abs")


class PlateauState(NamedTuple):
    """State of :func:`plateau_scale`: a leaf of the optimizer state, so it is checkpointed with
    the train state and a resumed run continues the rule where it stopped."""

    scale: jax.Array             # float32: lr multiplier (1, factor, factor**2, ...)
    best: jax.Array              # float32: best validation metric so far (-inf / +inf at start)
    num_bad: jax.Array           # int32: validations since the last improvement
    cooldown_counter: jax.Array  # int32
    num_evals: jax.Array         # int32: validations so far (torch's last_epoch)


def plateau_scale(mode: str = "max"):
    """Optax transform multiplying the updates by ``PlateauState.scale`` (set on the host by
    :func:`plateau_update`). Chained after Adam / AdamW / SGD it scales the learning rate: their
    updates are ``-lr * direction`` with a direction that does not depend on lr (SGD's momentum
    is accumulated on the gradients, as in torch), so ``scale * update`` is the update with
    ``lr * scale`` -- what torch's ReduceLROnPlateau does to ``param_group["lr"]``."""
    if mode not in PLATEAU_MODES:
        raise ValueError(f"config.optimizer.plateau.mode={mode!r}: expected one of {PLATEAU_MODES}")

    def init(params):
        del params
        return PlateauState(scale=jnp.ones((), jnp.float32),
                            best=jnp.full((), -jnp.inf if mode == "max" else jnp.inf, jnp.float32),
                            num_bad=jnp.zeros((), jnp.int32), cooldown_counter=jnp.zeros((), jnp.int32),
                            num_evals=jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def plateau_update(state: dict, metric: float, *, base_lr: float, mode: str = "max", factor: float = 0.5,
                   patience: int = 30, threshold: float = 1e-4, threshold_mode: str = "rel",
                   cooldown: int = 0, min_lr: float = 0.0, eps: float = 1e-8) -> dict:
    """One ``ReduceLROnPlateau.step(metric)`` of torch, on host numbers (pure).

    ``state``: ``{scale, best, num_bad, cooldown_counter, num_evals}``; the lr is
    ``base_lr * scale``. With ``better(a, best)`` = ``a > best * (1 + threshold)`` (max, rel),
    ``a > best + threshold`` (max, abs), ``a < best * (1 - threshold)`` (min, rel),
    ``a < best - threshold`` (min, abs)::

        if better(metric, best): best = metric; num_bad = 0  else: num_bad += 1
        if cooldown_counter > 0: cooldown_counter -= 1; num_bad = 0
        if num_bad > patience:
            new_lr = max(lr * factor, min_lr); lr = new_lr if lr - new_lr > eps
            cooldown_counter = cooldown; num_bad = 0

    CromSS: ``ReduceLROnPlateau(opt, "max", patience=30, factor=0.5)`` on the validation mIoU,
    stepped once per epoch (Lightning's default), the other arguments torch's defaults.
    """
    if mode not in PLATEAU_MODES:
        raise ValueError(f"config.optimizer.plateau.mode={mode!r}: expected one of {PLATEAU_MODES}")
    if threshold_mode not in PLATEAU_THRESHOLD_MODES:
        raise ValueError(f"config.optimizer.plateau.threshold_mode={threshold_mode!r}: expected one of "
                         f"{PLATEAU_THRESHOLD_MODES}")
    a, best = float(metric), float(state["best"])
    if mode == "max":
        better = a > (best * (1.0 + threshold) if threshold_mode == "rel" else best + threshold)
    else:
        better = a < (best * (1.0 - threshold) if threshold_mode == "rel" else best - threshold)
    scale, num_bad, cool = float(state["scale"]), int(state["num_bad"]), int(state["cooldown_counter"])
    if better:
        best, num_bad = a, 0
    else:
        num_bad += 1
    if cool > 0:
        cool -= 1
        num_bad = 0
    if num_bad > patience:
        old_lr = base_lr * scale
        new_lr = max(old_lr * factor, min_lr)
        if old_lr - new_lr > eps:
            scale = new_lr / base_lr
        cool, num_bad = int(cooldown), 0
    return {"scale": scale, "best": best, "num_bad": num_bad, "cooldown_counter": cool,
            "num_evals": int(state["num_evals"]) + 1}


def plateau_config(config):
    """``config.optimizer.plateau`` when enabled, else None."""
    p = config.optimizer.get("plateau", None)
    return p if p is not None and p.get("enabled", False) else None


def _plateau_kwargs(p, base_lr: float) -> dict:
    return dict(base_lr=float(base_lr), mode=p.get("mode", "max"), factor=float(p.get("factor", 0.5)),
                patience=int(p.get("patience", 30)), threshold=float(p.get("threshold", 1e-4)),
                threshold_mode=p.get("threshold_mode", "rel"), cooldown=int(p.get("cooldown", 0)),
                min_lr=float(p.get("min_lr", 0.0)))


def validation_split(config, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of the pretraining crops: ``optimizer.plateau.val_fraction``
    of them (at least one) held out by a seeded permutation when the plateau rule is on (as
    CromSS's ``--validation 0.01`` random split of the training patches), none otherwise."""
    p = plateau_config(config)
    if p is None:
        return np.arange(n), np.arange(0)
    frac = float(p.get("val_fraction", 0.01))
    n_val = max(1, int(round(n * frac)))
    if not 0.0 < frac < 1.0 or n_val >= n:
        raise ValueError(f"config.optimizer.plateau.val_fraction={frac}: must hold out between 1 and "
                         f"{n - 1} of the {n} training crops")
    perm = np.random.default_rng([int(config.seed), 17]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def plateau_every(config, num_train: int) -> int:
    """Steps between validations: ``optimizer.plateau.every``, 0 = one epoch of the training crops."""
    every = int(plateau_config(config).get("every", 0))
    return every if every > 0 else max(1, math.ceil(num_train / int(config.batch_size)))


# --------------------------------------------------------------------------------------
# A compiled segmentation trainer (one per model shape; reused by every arm)
# --------------------------------------------------------------------------------------
def _sub_config(config, *, total_steps, batch_size, optimizer, seed=None):
    """The keys ``rsjax.train``'s step / optimizer / init read, for a segmentation model."""
    c = ml_collections.ConfigDict()
    c.seed = int(config.seed if seed is None else seed)
    c.total_steps = int(total_steps)
    c.batch_size = int(batch_size)
    c.dtype = config.get("dtype", "float32")
    c.model = ml_collections.ConfigDict(config.model.to_dict())
    c.loss = ml_collections.ConfigDict(config.loss.to_dict())
    c.optimizer = ml_collections.ConfigDict(optimizer.to_dict())
    c.data = ml_collections.ConfigDict({"image_size": int(config.data.image_size), "device_resident": False})
    return c


class SegTrainer:
    """Method + optimizer + jitted step, predict and analysis functions, compiled once.

    ``init_host`` is the initial train state on the host: every run built from it starts from
    the same parameters (a controlled comparison across arms), and it survives the donation of
    device buffers by the jitted step.
    """

    def __init__(self, sub_config, mesh, *, decoder: str, num_classes: int, freeze_encoder: bool = False,
                 analysis: bool = False):
        self.config = sub_config
        self.mesh = mesh
        self.num_classes = num_classes
        self.decoder = decoder
        self.method = NoisyLabelSegmentation(sub_config, decoder=decoder, num_classes=num_classes,
                                             freeze_encoder=freeze_encoder)
        self.tx = train.make_optimizer(sub_config)
        self.plateau = plateau_config(sub_config)
        if self.plateau is not None:
            # last in the chain: opt_state[-1] is the PlateauState the host loop reads and sets
            self.tx = optax.chain(self.tx, plateau_scale(self.plateau.get("mode", "max")))
        if freeze_encoder:
            labels = lambda p: {k: ("frozen" if k == "encoder" else "train") for k in p}  # noqa: E731
            self.tx = optax.multi_transform({"train": self.tx, "frozen": optax.set_to_zero()}, labels)
        self.step_fn = train.make_train_step(self.method, self.tx, sub_config)
        self.p_step = train.jit_train_step(self.step_fn, mesh)
        self.init_host = jax.device_get(train.create_state(self.method, self.tx, sub_config, mesh))
        self.levels = feature_modules(sub_config.model.name, decoder) if analysis else []
        rep, dat = shd.replicated(mesh), shd.data_sharded(mesh)
        self._predict = jax.jit(self._predict_fn, in_shardings=(rep, rep, dat, dat), out_shardings=(dat, rep))
        self.eval_batch = 8 * mesh.devices.size

    def _predict_fn(self, params, batch_stats, x, labels):
        variables = {"params": params, "batch_stats": batch_stats}
        if not self.levels:
            logits = self.method.model.apply(variables, x, train=False)
            return jnp.argmax(logits, -1).astype(jnp.int32), {}
        wanted = {m for _, _, m in self.levels}
        logits, state = self.method.model.apply(
            variables, x, train=False, mutable=["intermediates"],
            capture_intermediates=lambda mdl, name: name == "__call__" and mdl.name in wanted)
        inter = state["intermediates"]
        stats = {}
        for level, parent, mod in self.levels:
            feat = inter[parent][mod]["__call__"][0]
            stats[level] = fisher_stats(feat, labels, self.num_classes)
        return jnp.argmax(logits, -1).astype(jnp.int32), stats

    def get_plateau(self, state) -> dict:
        """The :class:`PlateauState` of ``state`` as host numbers."""
        return {k: np.asarray(v).item() for k, v in jax.device_get(state["opt_state"][-1])._asdict().items()}

    def set_plateau(self, state, values: dict):
        """``state`` with its :class:`PlateauState` replaced by ``values`` (replicated)."""
        old = state["opt_state"][-1]
        new = PlateauState(**{k: np.asarray(values[k], np.asarray(getattr(old, k)).dtype)
                              for k in PlateauState._fields})
        state = dict(state)
        state["opt_state"] = (*state["opt_state"][:-1], jax.device_put(new, shd.replicated(self.mesh)))
        return state

    def state_for(self, encoder=None):
        """The initial state on the mesh, optionally with a pretrained ``(params, batch_stats)``."""
        from rsjax.models import decoders

        state = dict(self.init_host)
        if encoder is not None:
            v = decoders.plug_encoder({"params": state["params"], "batch_stats": state["batch_stats"]}, *encoder)
            state["params"], state["batch_stats"] = v["params"], v["batch_stats"]
        return jax.device_put(state, shd.replicated(self.mesh))

    def evaluate(self, state, data: SegData, *, max_images: int | None = None, keep_pred: int = 0):
        """Confusion matrix on ``data`` (clean labels), Fisher stats per level, first predictions."""
        from rsjax.evaluate import metrics

        n = len(data) if not max_images else min(len(data), int(max_images))
        k = self.num_classes
        # host trees (a restored / fetched state) go to the devices once, not once per batch
        params, batch_stats = jax.device_put((state["params"], state["batch_stats"]), shd.replicated(self.mesh))
        cm = np.zeros((k, k), np.int64)
        acc = None
        preds = []
        bs = self.eval_batch
        for s in range(0, n, bs):
            e = min(n, s + bs)
            x = data.normalized(slice(s, e))
            y = data.labels[s:e]
            if e - s < bs:  # fixed shapes: one compilation
                x = np.concatenate([x, np.zeros((bs - (e - s),) + x.shape[1:], x.dtype)])
                y = np.concatenate([y, np.full((bs - (e - s),) + y.shape[1:], IGNORE_INDEX, y.dtype)])
            pred, stats = self._predict(params, batch_stats, x, y)
            pred = np.asarray(jax.device_get(pred))[: e - s]
            cm += metrics.dense_confusion_matrix(pred, data.labels[s:e], k, IGNORE_INDEX)
            if len(preds) * bs < keep_pred:
                preds.append(pred)
            stats = jax.device_get(stats)
            acc = stats if acc is None else jax.tree.map(np.add, acc, stats)
        fisher = {lvl: fisher_ratio(*acc[lvl]) for lvl, _, _ in self.levels} if acc else {}
        pred_out = np.concatenate(preds)[:keep_pred] if preds else None
        return cm, fisher, pred_out


def _batch(data: SegData, labels: np.ndarray, batch_size: int, seed: int, step: int, augment: bool) -> dict:
    """Global training batch ``step`` (pure function of seed and step), this process's rows."""
    from rsjax.evaluate import common

    raw = common.sample_batch({"image": data.images, "mask": labels}, batch_size, 0, seed, step, augment=augment)
    p, n = jax.process_index(), jax.process_count()
    b = batch_size // n
    rows = slice(p * b, (p + 1) * b)
    return {"image": registry.normalize(raw["image"][rows], data.info),
            "mask": raw["mask"][rows].astype(np.int32)}


# --------------------------------------------------------------------------------------
# Pretraining
# --------------------------------------------------------------------------------------
def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def pretrain(config, workdir: str, trainer: SegTrainer, data: SegData, labels: np.ndarray,
             analysis_data: SegData | None, *, desc: str = "noisy_label", val_data: SegData | None = None) -> dict:
    """Trains ``trainer`` on ``(data.images, labels)``; checkpoints into ``workdir``.

    Resumes from the newest checkpoint. Logs ``metrics.jsonl`` (step, loss, ...) and, when
    ``analysis_data`` is given, ``analysis.jsonl`` rows ``{step, miou, fisher, weights}``.
    With ``optimizer.plateau.enabled`` (the trainer then carries a :class:`PlateauState`),
    every :func:`plateau_every` steps the mIoU on ``val_data`` (held-out crops with their
    noisy labels, as CromSS's ``v_miou``) drives :func:`plateau_update`; its state is written
    into the optimizer state before that step's checkpoint, rows ``{step, val_miou, lr_scale,
    best, num_bad}`` go to ``plateau.jsonl``, and the logged ``lr`` includes the scale.
    Returns ``{"state": host state, "analysis": rows, "step": ...}``.
    """
    from tqdm.auto import tqdm

    from rsjax.evaluate import metrics

    is_main = jax.process_index() == 0
    wd = workdir_lib.Workdir(workdir, config, is_main=is_main)
    manager = ckpt_lib.make_manager(workdir, max_to_keep=config.get("keep_checkpoints", 2))
    state = trainer.state_for()
    init_params = trainer.init_host["params"]
    start = 0
    restored = ckpt_lib.restore_latest(manager, state)
    if restored is not None:
        start, state, _ = restored
        if is_main:
            print(f"Resuming {workdir} from step {start}", flush=True)
    wd.truncate_metrics(start)
    apath = os.path.join(wd.path, "analysis.jsonl")
    rows = [r for r in _read_jsonl(apath) if r["step"] <= start]
    total = int(config.total_steps)
    stop_at = min(total, int(config.stop_after_steps)) if config.get("stop_after_steps", 0) else total
    every = int(config.analysis.every) if analysis_data is not None and config.analysis.get("every", 0) else 0
    plateau = trainer.plateau
    if plateau is not None and not val_data:
        raise ValueError("config.optimizer.plateau.enabled needs validation crops (plateau.val_fraction > 0)")
    plateau_every_n = plateau_every(config, len(data)) if plateau is not None else 0
    plateau_kw = _plateau_kwargs(plateau, config.optimizer.lr) if plateau is not None else {}
    ppath = os.path.join(wd.path, "plateau.jsonl")
    plateau_rows = [r for r in _read_jsonl(ppath) if r["step"] <= start]
    lr_scale = trainer.get_plateau(state)["scale"] if plateau is not None else 1.0
    config_dict = json.loads(config.to_json_best_effort())

    def analyse(step):
        cm, fisher, _ = trainer.evaluate(state, analysis_data, max_images=config.analysis.max_images)
        host_params = jax.device_get(state["params"])
        row = {"step": int(step), "miou": metrics.segmentation_scores(cm)["miou"], "fisher": fisher,
               "weights": weight_stats(host_params, init_params)}
        rows.append(row)
        if is_main:
            _write_jsonl(apath, rows)

    def save(step):
        ckpt_lib.save(manager, step, state, {"next_batch": int(step)}, config_dict)

    def plateau_step(step):
        # the validation of CromSS's Lightning loop (once per epoch by default), then the rule
        cm, _, _ = trainer.evaluate(state, val_data)
        miou = metrics.segmentation_scores(cm)["miou"]
        new_state = trainer.set_plateau(state, plateau_update(trainer.get_plateau(state), miou, **plateau_kw))
        new = trainer.get_plateau(new_state)  # as stored (float32): what the next validation compares with
        plateau_rows.append({"step": int(step), "val_miou": miou, "lr_scale": new["scale"], "best": new["best"],
                             "num_bad": new["num_bad"]})
        if is_main:
            _write_jsonl(ppath, plateau_rows)
        return new_state, new["scale"]

    if every and start == 0 and not rows:
        analyse(0)
    augment = bool(config.data.get("flip_rot", True))
    bar = tqdm(total=stop_at, initial=start, desc=desc, disable=not is_main, unit="step", dynamic_ncols=True)
    t0 = time.time()
    step = start
    while step < stop_at:
        batch = shd.host_to_global(_batch(data, labels, config.batch_size, config.seed, step, augment), trainer.mesh)
        state, m = trainer.p_step(state, batch)
        step += 1
        bar.update(1)
        if step % config.log_every == 0 or step == stop_at:
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            run = int(m.pop("nonfinite_run"))
            m.pop("finite")
            if run >= config.get("max_nonfinite_steps", 5):
                raise train.NonFiniteError(f"{desc}: {run} consecutive non-finite steps at step {step}; "
                                           f"lower config.optimizer.lr")
            bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
            if plateau is not None:
                m["lr"] *= lr_scale  # the step's schedule value times the plateau scale it ran with
            wd.log_metrics(step, m)
        if every and (step % every == 0 or step == total):
            analyse(step)
        if plateau_every_n and step % plateau_every_n == 0:
            state, lr_scale = plateau_step(step)
        if step % config.checkpoint_every == 0 or step == stop_at:
            save(step)
    bar.close()
    if is_main and wd.read_metrics():
        wd.plot_loss_curve()
    wd.close()
    return {"state": jax.device_get(state), "analysis": rows, "step": step, "total_steps": total,
            "train_seconds": time.time() - t0, "compiles": trainer.step_fn.trace_count}


# --------------------------------------------------------------------------------------
# Transfer
# --------------------------------------------------------------------------------------
def transfer_trainers(config, mesh, num_classes: int) -> dict[str, SegTrainer]:
    t = config.transfer
    sub = _sub_config(config, total_steps=t.total_steps, batch_size=t.batch_size, optimizer=t.optimizer,
                      seed=config.seed + 1)
    return {d: SegTrainer(sub, mesh, decoder=d, num_classes=num_classes,
                          freeze_encoder=bool(t.get("freeze_encoder", False))) for d in t.decoders}


def finetune_and_score(config, trainer: SegTrainer, encoder, train_data: SegData, test_data: SegData,
                       *, desc: str, keep_pred: int = 0) -> dict:
    """Fine-tunes ``trainer``'s model from ``encoder`` (None = random) and scores the test part."""
    from tqdm.auto import tqdm

    from rsjax.evaluate import metrics

    t = config.transfer
    state = trainer.state_for(encoder)
    losses = []
    for step in tqdm(range(int(t.total_steps)), desc=desc, unit="step", leave=False, dynamic_ncols=True,
                     disable=jax.process_index() != 0):
        batch = _batch(train_data, train_data.labels, int(t.batch_size), config.seed + 1, step, True)
        state, m = trainer.p_step(state, shd.host_to_global(batch, trainer.mesh))
        if (step + 1) % config.log_every == 0 or step + 1 == t.total_steps:
            losses.append({"step": step + 1, "loss": float(jax.device_get(m["loss"]))})
    cm, _, pred = trainer.evaluate(state, test_data, keep_pred=keep_pred)
    scores = metrics.segmentation_scores(cm)
    scores["loss_curve"] = losses
    scores["confusion"] = cm.tolist()
    if pred is not None:
        scores["_pred"] = pred
    return scores


def transfer_all(config, trainers, encoders: dict[str, Any], train_data, test_data) -> dict:
    """``{encoder tag: {decoder: scores}}`` for every encoder (None = random init)."""
    out = {}
    for tag, enc in encoders.items():
        out[tag] = {}
        for dec, tr in trainers.items():
            s = finetune_and_score(config, tr, enc, train_data, test_data, desc=f"transfer {tag} -> {dec}")
            s.pop("_pred", None)
            out[tag][dec] = s
            print(f"  transfer {tag:>12s} -> {dec:<14s} mIoU {s['miou']:.3f}  OA {s['overall_accuracy']:.3f}",
                  flush=True)
    return out


# --------------------------------------------------------------------------------------
# Checks, pictures
# --------------------------------------------------------------------------------------
def validate(config) -> None:
    def need(cond, key, msg):
        if not cond:
            raise ValueError(f"config.{key}: {msg}")

    need(config.total_steps > 0 or config.get("epochs", 0) > 0, "total_steps", "must be > 0 (or set epochs)")
    need(config.batch_size > 0, "batch_size", "must be > 0")
    need(config.optimizer.lr > 0, "optimizer.lr", "must be > 0")
    need(0.0 <= config.noise.flip_rate <= 1.0, "noise.flip_rate", "must be in [0, 1]")
    need(config.noise.get("flip_mode", "regions") in label_noise.FLIP_MODES, "noise.flip_mode",
         f"must be one of {label_noise.FLIP_MODES}")
    need(config.model.decoder in ("unet", "deeplabv3plus", "pspnet"), "model.decoder",
         "must be unet, deeplabv3plus or pspnet")
    from rsjax.losses import DICE_REDUCTIONS

    need(config.loss.get("dice_reduction", "example") in DICE_REDUCTIONS, "loss.dice_reduction",
         f"must be one of {DICE_REDUCTIONS}")
    p = plateau_config(config)
    if p is not None:
        need(p.get("mode", "max") in PLATEAU_MODES, "optimizer.plateau.mode", f"must be one of {PLATEAU_MODES}")
        need(p.get("threshold_mode", "rel") in PLATEAU_THRESHOLD_MODES, "optimizer.plateau.threshold_mode",
             f"must be one of {PLATEAU_THRESHOLD_MODES}")
        need(0.0 < float(p.get("factor", 0.5)) < 1.0, "optimizer.plateau.factor", "must be in (0, 1)")
        need(int(p.get("patience", 30)) >= 0, "optimizer.plateau.patience", "must be >= 0")
        need(int(p.get("cooldown", 0)) >= 0, "optimizer.plateau.cooldown", "must be >= 0")
        need(int(p.get("every", 0)) >= 0, "optimizer.plateau.every", "must be >= 0 (0 = once per epoch)")
        need(0.0 < float(p.get("val_fraction", 0.01)) < 1.0, "optimizer.plateau.val_fraction", "must be in (0, 1)")
    if config.transfer.get("enabled", True):
        for d in config.transfer.decoders:
            need(d in ("unet", "deeplabv3plus", "pspnet"), "transfer.decoders", f"unknown decoder {d!r}")
        need(config.transfer.total_steps > 0, "transfer.total_steps", "must be > 0")


def _check_data(config, data: SegData) -> None:
    if data.info.num_bands != int(config.model.in_channels):
        raise ValueError(f"config.model.in_channels={config.model.in_channels} does not match dataset "
                         f"{config.data.name!r} with {data.info.num_bands} bands {list(data.info.bands)}")
    if int(config.model.num_classes) != data.info.num_classes:
        raise ValueError(f"config.model.num_classes={config.model.num_classes} but dataset {config.data.name!r} "
                         f"has {data.info.num_classes} classes {data.class_names}")


def _rgb(x_norm: np.ndarray, info) -> np.ndarray:
    from rsjax.evaluate import common

    x = registry.denormalize(x_norm, info)[..., list(common.rgb_indices(info.bands))]
    lo, hi = np.percentile(x, 2), np.percentile(x, 98)
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)


def plot_masks(path, data: SegData, columns: list[tuple[str, np.ndarray]], num_classes: int, n: int = 4,
               class_names=None):
    """Rows = the first ``n`` examples of ``data``: RGB composite, then one class map per column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min([n, len(data)] + [len(m) for _, m in columns])
    cmap = plt.get_cmap("tab10", max(num_classes, 2))
    fig, axes = plt.subplots(n, 1 + len(columns), figsize=(2.2 * (1 + len(columns)), 2.2 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(_rgb(data.normalized(slice(i, i + 1))[0], data.info))
        for j, (_, masks) in enumerate(columns):
            axes[i, j + 1].imshow(np.ma.masked_less(masks[i], 0), cmap=cmap, vmin=-0.5,
                                  vmax=max(num_classes, 2) - 0.5, interpolation="nearest")
        for j, title in enumerate(["image (RGB)"] + [t for t, _ in columns]):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(title, fontsize=8)
    names = list(class_names or data.class_names)[:num_classes]
    if names:
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(color=cmap(c), label=nm) for c, nm in enumerate(names)], loc="lower center",
                   ncol=min(len(names), 6), fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_transfer(path, results: dict, title: str):
    """Grouped bars: downstream mIoU per decoder for each encoder tag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = list(results)
    decs = list(next(iter(results.values())))
    fig, ax = plt.subplots(figsize=(1.5 + 1.4 * len(decs) * max(1, len(tags)) / 2, 3.4))
    w = 0.8 / max(1, len(tags))
    for i, tag in enumerate(tags):
        vals = [results[tag][d]["miou"] for d in decs]
        ax.bar(np.arange(len(decs)) + (i - (len(tags) - 1) / 2) * w, vals, w, label=tag)
    ax.set_xticks(range(len(decs)), decs)
    ax.set_ylabel("downstream mIoU")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------
def resolve_steps(config, num_train: int) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``total_steps = epochs * ceil(num_train / batch_size)`` when
    ``config.epochs > 0`` (the paper's 200 epochs on a dataset of unknown size)."""
    config = ml_collections.ConfigDict(config.to_dict())
    if config.get("epochs", 0):
        config.total_steps = int(config.epochs) * math.ceil(num_train / config.batch_size)
    return config


def _prepare(config):
    validate(config)
    shd.maybe_initialize_distributed()
    mesh = shd.make_mesh()
    shd.check_batch_divisible(config.batch_size, mesh)
    if config.transfer.get("enabled", True):
        shd.check_batch_divisible(config.transfer.batch_size, mesh)
    d = config.data
    pre = load_split(d, d.get("train_split", "train"), image_size=d.image_size,
                     max_examples=d.get("max_train", 0) or None)
    _check_data(config, pre)
    ana = load_split(d, d.get("eval_split", "test"), image_size=d.image_size,
                     max_examples=config.analysis.get("max_images", 0) or None)
    return mesh, pre, ana


def split_pretraining(config, pre: SegData, labels: np.ndarray):
    """``(train crops, their noisy labels, validation crops with noisy labels or None)``:
    :func:`validation_split` applied after the noise, so the training crops keep the labels
    they would have without a validation split."""
    tr_idx, val_idx = validation_split(config, len(pre))
    if not len(val_idx):
        return pre, labels, None
    val = dataclasses.replace(pre.subset(val_idx), labels=labels[val_idx])
    return pre.subset(tr_idx), labels[tr_idx], val


def _pretrain_trainer(config, mesh, num_classes):
    sub = _sub_config(config, total_steps=config.total_steps, batch_size=config.batch_size,
                      optimizer=config.optimizer)
    return SegTrainer(sub, mesh, decoder=config.model.decoder, num_classes=num_classes, analysis=True)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Noisy-label pretraining + transfer (job ``noisy_label``). Returns the report metrics."""
    from rsjax.evaluate import metrics

    mesh, pre, ana = _prepare(config)
    k = pre.info.num_classes
    pre, labels, val = split_pretraining(config, pre, noisy_labels(config, pre.labels, k))
    config = resolve_steps(config, len(pre))
    rate = label_noise.noise_rate(pre.labels, labels, IGNORE_INDEX)
    is_main = jax.process_index() == 0
    if is_main:
        print(f"{config.data.name}: {len(pre)} training crops of {config.data.image_size} px, {k} classes; "
              f"label noise: {rate:.1%} of pixels differ from the clean masks", flush=True)
    trainer = _pretrain_trainer(config, mesh, k)
    out = pretrain(config, workdir, trainer, pre, labels, ana, val_data=val)
    if out["step"] < config.total_steps:
        print(f"Stopped after step {out['step']} of {config.total_steps} (stop_after_steps); rerun to continue.",
              flush=True)
        return {"step": out["step"]}
    state = out["state"]
    cm, fisher, pred = trainer.evaluate(state, ana, keep_pred=4)
    pre_scores = metrics.segmentation_scores(cm)
    report = {
        "pretrain": {"dataset": config.data.name, "num_train": len(pre), "pixel_noise_rate": rate,
                     "noise": config.noise.to_dict(), "clean_test": pre_scores, "fisher": fisher,
                     "class_names": list(pre.class_names), "step": out["step"]},
    }
    wd = workdir_lib.Workdir(workdir, config, is_main=is_main)
    if is_main:
        print(f"pretraining task (clean test labels, {k} classes): mIoU {pre_scores['miou']:.3f}, "
              f"OA {pre_scores['overall_accuracy']:.3f}", flush=True)
        plot_masks(os.path.join(wd.path, "predictions.png"), ana, [("clean label", ana.labels),
                                                                     ("prediction (pretraining task)", pred)], k)
        plot_masks(os.path.join(wd.path, "label_noise.png"), pre, [("clean mask", pre.labels),
                                                                    ("noisy training mask", labels)], k)
        wd.plot_confusion(cm, "confusion_pretrain.png", class_names=list(pre.class_names))
    if config.transfer.get("enabled", True):
        tr_train, tr_test, names = downstream_data(config)
        trainers = transfer_trainers(config, mesh, len(names))
        encoder = (state["params"]["encoder"], state["batch_stats"]["encoder"])
        encoders = {"pretrained": encoder}
        if config.transfer.get("compare_random_init", True):
            encoders = {"random_init": None, **encoders}
        res = transfer_all(config, trainers, encoders, tr_train, tr_test)
        report["transfer"] = {"class_names": list(names), "num_train": len(tr_train), "num_test": len(tr_test),
                              "results": res}
        if is_main:
            plot_transfer(os.path.join(wd.path, "transfer_miou.png"), res,
                          f"{config.data.name}: encoder transferred to {len(names)} classes")
    if is_main:
        wd.write_eval_report("noisy_label_pretraining", report, config)
    wd.close()
    return report


# --------------------------------------------------------------------------------------
# Study
# --------------------------------------------------------------------------------------
def study_arms(config) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, arm config) per noise rate: 0 = the clean arm (no noise of any kind)."""
    arms = []
    for r in config.study.noise_rates:
        c = ml_collections.ConfigDict(config.to_dict())
        c.job = "noisy_label"
        c.noise.flip_rate = float(r)
        if float(r) == 0.0:
            c.noise.erosion = 0
            name = "clean"
        else:
            name = f"noise_{float(r):.2f}"
        arms.append((name, c))
    if len({n for n, _ in arms}) != len(arms):
        raise ValueError(f"config.study.noise_rates={tuple(config.study.noise_rates)} has duplicates")
    return arms


def _markdown(table, decoders) -> str:
    head = "| arm | flip rate | pixel noise | pretrain mIoU (clean test) | " + " | ".join(
        f"{d} mIoU" for d in decoders) + " |"
    sep = "|" + "---|" * (4 + len(decoders))
    lines = [head, sep]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in table:
        lines.append(f"| {r['arm']} | {fmt(r['flip_rate'])} | {fmt(r['pixel_noise_rate'])} | "
                     f"{fmt(r['pretrain_miou'])} | " + " | ".join(fmt(r['downstream_miou'][d]) for d in decoders)
                     + " |")
    return "\n".join(lines) + "\n"


def plot_study_miou(path, table, decoders):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [r for r in table if r["arm"] != "random_init"]
    rnd = next((r for r in table if r["arm"] == "random_init"), None)
    x = [r["pixel_noise_rate"] for r in arms]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, d in enumerate(decoders):
        color = plt.get_cmap("tab10")(i)
        ax.plot(x, [r["downstream_miou"][d] for r in arms], "o-", color=color, label=f"{d} (pretrained)")
        if rnd is not None:
            ax.axhline(rnd["downstream_miou"][d], color=color, ls="--", lw=1, label=f"{d} (random init)")
    ax.set_xlabel("pixel label-noise rate of the pretraining masks")
    ax.set_ylabel("downstream mIoU (clean test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_study_layers(path, analysis: dict[str, list[dict]]):
    """2 x 2: final relative weight change and Fisher ratio per layer (all arms), and both over
    training for the clean and the noisiest arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(analysis)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    last = {a: analysis[a][-1] for a in arms if analysis[a]}
    if not last:
        plt.close(fig)
        return None
    groups = list(next(iter(last.values()))["weights"])
    levels = list(next(iter(last.values()))["fisher"])
    for i, a in enumerate(last):
        color = plt.get_cmap("viridis")(i / max(1, len(last) - 1))
        axes[0, 0].plot(groups, [last[a]["weights"][g]["rel_change"] for g in groups], "o-", color=color, label=a)
        axes[0, 1].plot(levels, [last[a]["fisher"][lv] for lv in levels], "o-", color=color, label=a)
    axes[0, 0].set_title("weight change from init ||W - W0|| / ||W0|| (end of pretraining)", fontsize=9)
    axes[0, 1].set_title("Fisher ratio of clean classes per feature level (end)", fontsize=9)
    axes[0, 1].set_yscale("log")
    pair = [arms[0], arms[-1]] if len(arms) > 1 else arms
    styles = ["-", "--"]
    for j, a in enumerate(pair):
        rows = analysis[a]
        steps = [r["step"] for r in rows]
        for i, g in enumerate(groups):
            axes[1, 0].plot(steps, [r["weights"][g]["rel_change"] for r in rows], styles[j],
                            color=plt.get_cmap("tab20")(i % 20), label=g if j == 0 else None)
        for i, lv in enumerate(levels):
            axes[1, 1].plot(steps, [r["fisher"][lv] for r in rows], styles[j],
                            color=plt.get_cmap("tab20")(i % 20), label=f"{lv} ({a})")
    axes[1, 0].set_title(f"weight change over training: {pair[0]} (solid) vs {pair[-1]} (dashed)", fontsize=9)
    axes[1, 1].set_title(f"Fisher ratio over training: {pair[0]} (solid) vs {pair[-1]} (dashed)", fontsize=9)
    axes[1, 1].set_yscale("log")
    for ax in axes[1]:
        ax.set_xlabel("step")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=5, ncol=2)
    axes[1, 1].legend(fontsize=5, ncol=2)
    for ax in axes[0]:
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Clean vs noisy pretraining -> downstream mIoU and per-layer analysis (job
    ``noisy_label_study``). Arm workdirs: ``<workdir>/arms/<arm>`` (resumable, exportable)."""
    from rsjax.evaluate import metrics

    t_start = time.time()
    is_main = jax.process_index() == 0
    mesh, pre_all, ana = _prepare(config)
    config = resolve_steps(config, len(validation_split(config, len(pre_all))[0]))
    pre = split_pretraining(config, pre_all, pre_all.labels)[0]  # clean labels; the arms add noise
    wd = workdir_lib.Workdir(workdir, config, is_main=is_main)
    k = pre.info.num_classes
    trainer = _pretrain_trainer(config, mesh, k)
    tr_train, tr_test, names = downstream_data(config)
    trainers = transfer_trainers(config, mesh, len(names))
    decoders = list(config.transfer.decoders)

    table, analysis, transfer = [], {}, {}
    if config.study.get("include_random_init", True):
        res = transfer_all(config, trainers, {"random_init": None}, tr_train, tr_test)["random_init"]
        transfer["random_init"] = res
        table.append({"arm": "random_init", "flip_rate": None, "pixel_noise_rate": None, "pretrain_miou": None,
                      "downstream_miou": {d: res[d]["miou"] for d in decoders}})
    for name, arm_cfg in study_arms(config):
        _, labels, val = split_pretraining(arm_cfg, pre_all, noisy_labels(arm_cfg, pre_all.labels, k))
        rate = label_noise.noise_rate(pre.labels, labels, IGNORE_INDEX)
        if is_main:
            print(f"arm {name}: flip rate {arm_cfg.noise.flip_rate:.2f}, erosion {arm_cfg.noise.erosion} px -> "
                  f"{rate:.1%} noisy pixels", flush=True)
        out = pretrain(arm_cfg, os.path.join(wd.path, "arms", name), trainer, pre, labels, ana, desc=name,
                       val_data=val)
        if out["step"] < arm_cfg.total_steps:
            raise RuntimeError(f"arm {name} stopped at step {out['step']} (stop_after_steps); rerun to continue")
        state = out["state"]
        cm, _, _ = trainer.evaluate(state, ana)
        pre_miou = metrics.segmentation_scores(cm)["miou"]
        analysis[name] = out["analysis"]
        enc = (state["params"]["encoder"], state["batch_stats"]["encoder"])
        res = transfer_all(config, trainers, {name: enc}, tr_train, tr_test)[name]
        transfer[name] = res
        table.append({"arm": name, "flip_rate": float(arm_cfg.noise.flip_rate), "pixel_noise_rate": rate,
                      "pretrain_miou": pre_miou, "downstream_miou": {d: res[d]["miou"] for d in decoders}})

    summary = {
        "table": table,
        "decoders": decoders,
        "downstream_classes": list(names),
        "pretrain_classes": list(pre.class_names),
        "num_pretrain_images": len(pre),
        "num_downstream_train": len(tr_train),
        "num_downstream_test": len(tr_test),
        "transfer": transfer,
        "analysis": analysis,
        "seconds": time.time() - t_start,
    }
    if is_main:
        with open(os.path.join(wd.path, "study.json"), "w") as f:
            json.dump({"config": json.loads(config.to_json_best_effort()), **summary}, f, indent=1)
        md = (f"# Noisy-label pretraining study ({config.data.name})\n\n"
              f"Pretraining: {len(pre)} crops, {k} classes ({', '.join(pre.class_names)}), "
              f"{config.model.name} + {config.model.decoder}, {config.total_steps} steps per arm.\n"
              f"Downstream: {len(tr_train)} train / {len(tr_test)} test crops, classes "
              f"{', '.join(names)}; {config.transfer.total_steps} fine-tuning steps.\n\n"
              + _markdown(table, decoders))
        with open(os.path.join(wd.path, "study.md"), "w") as f:
            f.write(md)
        print(md, flush=True)
        plot_study_miou(os.path.join(wd.path, "study_miou.png"), table, decoders)
        plot_study_layers(os.path.join(wd.path, "study_layers.png"), analysis)
        wd.write_eval_report("noisy_label_study", {"table": table, "decoders": decoders}, config)
    wd.close()
    return summary
