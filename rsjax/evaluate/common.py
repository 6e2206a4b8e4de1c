"""Pieces shared by the downstream evaluation jobs (classification, multi-label, change
detection, segmentation): pretrained-encoder loading with compatibility checks, reading
feature columns of a TFDS split, batch sampling with paired augmentation, and the jitted
data-parallel training loop of the dense-prediction jobs.

Pretrained encoders: ``config.pretrained`` is the workdir of any pretraining run (SimCLR,
MoCo, SwiMDiff, FALSE, noisy-label, ...) or ``''`` for random initialisation;
``config.pretrained_step`` picks a checkpoint step (0 = latest). The encoder trees come from
``rsjax.checkpoint.load_encoder``; a checkpoint whose architecture, stem or band
count differs from the job's ``config.model`` is refused with a ValueError naming both
(never silently broadcast or re-initialised).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from rsjax import sharding as shd
from rsjax.data import registry

PyTree = Any


# --------------------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------------------
def compute_dtype(config) -> Any:
    name = config.get("dtype", "float32")
    table = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
    if name not in table:
        raise ValueError(f"config.dtype={name!r}: expected float32, bfloat16 or float16")
    return table[name]


def data_config(config) -> ml_collections.ConfigDict:
    """``config.data`` on top of the pipeline defaults (configs may omit fields)."""
    from rsjax.data.defaults import default_data_config  # not pipeline: no grain import needed

    d = default_data_config()
    extra = config.data.to_dict() if hasattr(config.data, "to_dict") else dict(config.data)
    with d.unlocked():
        d.update(extra)
    return d


def dataset_info(config) -> registry.DatasetInfo:
    """Registry entry of ``config.data.name`` for its ``builder_config`` (per-config bands/stats),
    with ``config.data.normalization`` applied (``registry.data_info``)."""
    return registry.data_info(config.data)


def check_bands(config, num_bands: int, what: str) -> None:
    """ValueError when the data's band count differs from ``config.model.in_channels``."""
    if int(num_bands) != int(config.model.in_channels):
        raise ValueError(f"config.model.in_channels={config.model.in_channels} does not match {what} "
                         f"with {num_bands} bands")


# --------------------------------------------------------------------------------------
# Pretrained encoders
# --------------------------------------------------------------------------------------
def check_pretrained_meta(meta: Mapping, config, source: str) -> None:
    """Raises ValueError naming both sides when the checkpoint's encoder does not fit the job."""
    problems = []
    if meta["arch"] != config.model.name:
        problems.append(f"architecture {meta['arch']!r} (checkpoint) vs config.model.name={config.model.name!r}")
    if int(meta["in_channels"]) != int(config.model.in_channels):
        problems.append(f"{meta['in_channels']} input bands {list(meta.get('bands', []))} (checkpoint) vs "
                        f"config.model.in_channels={config.model.in_channels}")
    stem = config.model.get("stem", "standard")
    if meta.get("stem", "standard") != stem:
        problems.append(f"stem {meta.get('stem')!r} (checkpoint) vs config.model.stem={stem!r}")
    # The input the encoder was trained on (imported weights record e.g. "scale:10000").
    norm_ckpt = registry.normalization_name(meta.get("normalization"))
    norm_job = registry.normalization_name(config.data.get("normalization", None))
    if norm_ckpt != norm_job:
        problems.append(f"input normalization {norm_ckpt!r} (checkpoint) vs config.data.normalization={norm_job!r} "
                        f"(pass --config.data.normalization={norm_ckpt})")
    if problems:
        raise ValueError(f"pretrained encoder {source} does not match the job config: " + "; ".join(problems))


def load_pretrained(config) -> tuple[PyTree, PyTree, dict] | None:
    """``(encoder_params, encoder_batch_stats, meta)`` of ``config.pretrained``, or None for ''."""
    path = config.get("pretrained", "") or ""
    if not path:
        return None
    from rsjax import checkpoint as ckpt_lib

    if not os.path.isdir(path):
        raise FileNotFoundError(f"config.pretrained={path!r} is not a directory (a pretraining workdir)")
    step = int(config.get("pretrained_step", 0) or 0) or None
    params, batch_stats, meta = ckpt_lib.load_encoder(path, step)
    check_pretrained_meta(meta, config, f"{path} (step {meta.get('step')})")
    try:
        data_bands = tuple(dataset_info(config).bands)
    except ValueError:
        data_bands = ()
    if data_bands and tuple(meta.get("bands", ())) and tuple(meta["bands"]) != data_bands:
        print(f"WARNING: pretrained encoder was trained on bands {meta['bands']} ({meta.get('dataset')}); "
              f"{config.data.name} has bands {list(data_bands)} (same count, used in that order)", flush=True)
    return params, batch_stats, meta


def run_job(config, workdir: str, load_data: Callable, evaluate: Callable) -> dict:
    """The shared shape of every evaluation job's ``run``.

    The pretrained checkpoint is checked first (a mismatch fails before anything is written),
    then the workdir is opened (a different config already there is refused), the data read,
    and ``evaluate(wd, data, loaded)`` run; the workdir's writers are closed on any exit.
    """
    from rsjax import workdir as workdir_lib

    loaded = load_pretrained(config)
    wd = workdir_lib.Workdir(workdir, config)
    data = load_data(config)
    try:
        return evaluate(wd, data, loaded)
    finally:
        wd.close()


def pretrained_summary(loaded) -> dict:
    if loaded is None:
        return {"init": "random"}
    meta = loaded[2]
    return {"init": "pretrained", **{k: meta[k] for k in ("method", "dataset", "step", "arch") if k in meta}}


# --------------------------------------------------------------------------------------
# Reading TFDS feature columns
# --------------------------------------------------------------------------------------
def load_fields(cfg_data, split: str, fields: Mapping[str, str], *, max_examples: int | None = None,
                desc: str = "read") -> dict[str, np.ndarray]:
    """Reads the features ``fields`` (``role -> feature name``) of a split into stacked raw arrays.

    Values are kept in their stored dtype (uint8 / uint16): normalisation happens per batch, so
    large datasets (LEVIR-CD 1024 px tiles) stay compact in memory. Raises ValueError naming
    the missing feature and the features the dataset has.
    """
    from rsjax.data import pipeline

    source = pipeline.open_source(cfg_data, split)
    have = source.features()
    for role, key in fields.items():
        if key not in have:
            raise ValueError(f"dataset {source.name!r} has no feature {key!r} (for {role}; config key "
                             f"data.{role}_key); its features are {list(have)}")
    n = len(source)
    if max_examples:
        n = min(n, int(max_examples))
    out: dict[str, list] = {role: [] for role in fields}
    for s in tqdm(range(0, n, 256), desc=f"{desc} {split}", leave=False):
        for ex in source.read(range(s, min(n, s + 256))):
            for role, key in fields.items():
                out[role].append(np.asarray(ex[key]))
    if n == 0:
        raise ValueError(f"split {split!r} of dataset {source.name!r} is empty")
    return {role: np.stack(v) for role, v in out.items()}


# --------------------------------------------------------------------------------------
# Batches of dense data
# --------------------------------------------------------------------------------------
def paired_crop_flip(arrays: Mapping[str, np.ndarray], index: int, crop: int, rng: np.random.Generator,
                     augment: bool = True) -> dict[str, np.ndarray]:
    """One example: the same random ``crop`` window, flip and 90-degree rotation for every
    spatial array (images [N, H, W, C] and masks [N, H, W] alike; arrays with fewer than two
    per-example axes, e.g. class labels, are passed through). ``crop`` >= the image keeps
    the full image; ``crop`` <= 0 means no crop."""
    spatial = [a for a in arrays.values() if a.ndim >= 3]
    h, w = spatial[0].shape[1:3]
    crop = crop if crop > 0 else max(h, w)
    ch, cw = min(crop, h), min(crop, w)
    y0 = int(rng.integers(0, h - ch + 1)) if augment else (h - ch) // 2
    x0 = int(rng.integers(0, w - cw + 1)) if augment else (w - cw) // 2
    k, flip = (int(rng.integers(0, 4)), bool(rng.integers(0, 2))) if augment else (0, False)
    out = {}
    for name, arr in arrays.items():
        if arr.ndim < 3:
            out[name] = arr[index]
            continue
        a = arr[index, y0:y0 + ch, x0:x0 + cw]
        if flip:
            a = a[:, ::-1]
        if k:
            a = np.rot90(a, k, axes=(0, 1))
        out[name] = np.ascontiguousarray(a)
    return out


def sample_batch(arrays: Mapping[str, np.ndarray], batch_size: int, crop: int, seed: int, step: int,
                 augment: bool = True) -> dict[str, np.ndarray]:
    """Training batch ``step``: a pure function of ``(seed, step)`` (epoch-wise permutations)."""
    n = len(next(iter(arrays.values())))
    per_epoch = max(1, math.ceil(n / batch_size))
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch, 11]).permutation(n)
    idx = np.resize(perm, per_epoch * batch_size)[pos * batch_size:(pos + 1) * batch_size]
    rng = np.random.default_rng([seed, step, 12])
    items = [paired_crop_flip(arrays, int(i), crop, rng, augment) for i in idx]
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


def rgb_indices(bands) -> tuple[int, ...]:
    """Band indices to show as RGB: R/G/B, else Sentinel-2 B04/B03/B02, else the first band."""
    bands = list(bands)
    for triple in (("R", "G", "B"), ("B04", "B03", "B02")):
        if all(b in bands for b in triple):
            return tuple(bands.index(b) for b in triple)
    return (0, 1, 2) if len(bands) >= 3 else (0, 0, 0)


def eval_batches(n: int, batch_size: int, desc: str):
    """(start, stop) windows covering ``n`` with a tqdm bar."""
    for s in tqdm(range(0, n, batch_size), desc=desc, leave=False, total=math.ceil(n / batch_size)):
        yield s, min(n, s + batch_size)


def pad_to(x: np.ndarray, size: int) -> np.ndarray:
    """Pads the leading axis to ``size`` with zeros (fixed shapes: one compilation)."""
    if x.shape[0] == size:
        return x
    return np.concatenate([x, np.zeros((size - x.shape[0],) + x.shape[1:], x.dtype)])


# --------------------------------------------------------------------------------------
# Optimizer and the dense training loop
# --------------------------------------------------------------------------------------
def make_schedule(tc, total_steps: int) -> optax.Schedule:
    """``tc = config.train``: cosine (with warmup) or poly ``lr * (1 - t / T) ** power``."""
    lr, warmup = float(tc.lr), int(tc.get("warmup_steps", 0))
    kind = tc.get("schedule", "cosine")
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(total_steps, warmup + 1))
    if kind == "poly":
        body = optax.polynomial_schedule(lr, 0.0, tc.get("poly_power", 0.9), max(1, total_steps - warmup))
        if not warmup:
            return body
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), body], [warmup])
    if kind == "constant":
        return optax.constant_schedule(lr)
    raise ValueError(f"config.train.schedule={kind!r}: expected cosine, poly or constant")


def make_optimizer(tc, total_steps: int, params: PyTree, *, freeze_encoder: bool) -> optax.GradientTransformation:
    """Optimizer of ``config.train``; with ``freeze_encoder`` the ``encoder`` subtree is never
    updated (``optax.set_to_zero``: no gradient step and no weight decay)."""
    lr = make_schedule(tc, total_steps)
    name = tc.get("optimizer", "adamw")
    mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731  no decay on biases / norms
    if name == "adamw":
        tx = optax.adamw(lr, weight_decay=tc.get("weight_decay", 1e-4), mask=mask)
    elif name == "adam":
        tx = optax.adam(lr)
    elif name == "sgd":
        tx = optax.chain(optax.add_decayed_weights(tc.get("weight_decay", 1e-4), mask=mask),
                         optax.sgd(lr, momentum=tc.get("momentum", 0.9)))
    else:
        raise ValueError(f"config.train.optimizer={name!r}: expected adamw, adam or sgd")
    if not freeze_encoder:
        return tx
    labels = {k: ("frozen" if k == "encoder" else "train") for k in params}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def train_loop(*, loss_fn: Callable, variables: dict, tx: optax.GradientTransformation, batch_fn: Callable[[int], dict],
               steps: int, seed: int, wd, desc: str, log_every: int = 10) -> tuple[dict, list[dict]]:
    """Jitted data-parallel training: state replicated, batch sharded on ``data``.

    ``loss_fn(params, batch_stats, batch, rng) -> (per_example_loss [B], new_batch_stats)``;
    ``batch_fn(step)`` gives the host batch (numpy, global). Logs ``{"step", "loss", "lr"}``
    rows to ``wd.log_metrics`` (metrics.jsonl) and returns the final variables and the rows.
    """
    mesh = shd.make_mesh()
    rep, dat = shd.replicated(mesh), shd.data_sharded(mesh)
    root = jax.random.PRNGKey(seed)

    def step_fn(state, batch):
        rng = jax.random.fold_in(root, state["step"])

        def objective(params):
            per_ex, new_bs = loss_fn(params, state["batch_stats"], batch, rng)
            return jnp.mean(per_ex), new_bs

        (loss, new_bs), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                     "batch_stats": new_bs, "opt_state": opt_state}
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    p_step = jax.jit(step_fn, in_shardings=(rep, dat), out_shardings=(rep, rep), donate_argnums=(0,))
    state = jax.device_put({"step": jnp.zeros((), jnp.int32), "params": variables["params"],
                            "batch_stats": variables.get("batch_stats", {}),
                            "opt_state": tx.init(variables["params"])}, rep)
    rows = []
    for step in tqdm(range(steps), desc=desc, unit="step", dynamic_ncols=True):
        batch = batch_fn(step)
        shd.check_batch_divisible(len(next(iter(batch.values()))), mesh)
        state, m = p_step(state, jax.device_put(batch, dat))
        if (step + 1) % log_every == 0 or step + 1 == steps:  # reading m syncs; only on log steps
            rows.append(_log(wd, step + 1, m))
            if not np.isfinite(rows[-1]["loss"]):
                raise FloatingPointError(f"{desc}: non-finite loss at step {step + 1}; lower config.train.lr")
    out = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
    return out, rows


def _log(wd, step, m):
    row = {k: float(v) for k, v in jax.device_get(m).items()}
    if wd is not None:
        wd.log_metrics(step, row)
    return {"step": step, **row}
