"""The one generic pretraining loop.

mesh -> data -> init -> jitted train_step -> log / checkpoint -> evaluate.

The train step is a pure function ``(state, batch) -> (state, metrics)`` jitted once over
the mesh with the state replicated and donated, and the batch sharded on ``data``; the
per-step randomness is ``fold_in(PRNGKey(config.seed), step)`` split into named streams.
A step whose loss or gradients are not finite is refused: the state keeps its previous
parameters and optimizer state, the step counter advances, and the refusal is counted
(``events.jsonl``); ``max_nonfinite_steps`` refusals in a row stop the run with
:class:`NonFiniteError`, leaving the last checkpoint as it was.

SIGTERM / SIGINT finish the current step, write a checkpoint and exit with
:data:`PREEMPTED_EXIT_CODE` (all processes of a multi-process run agree on the step).

Fault-injection hooks for tests and debugging (environment variables, never in configs,
so they change neither ``config.json`` nor the compiled step):

* ``RSJAX_DEBUG_STEP_SLEEP=S``: sleep S seconds after every step (time to send a signal).
* ``RSJAX_DEBUG_NONFINITE_FROM_STEP=N``: from step N on (1-based), one pixel of every host
  batch is NaN, as if the model had diverged; exercises the refusal path end to end.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from tqdm.auto import tqdm

from rsjax import checkpoint as ckpt_lib
from rsjax import methods
from rsjax import sharding as shd
from rsjax import workdir as workdir_lib

RNG_STREAMS = ("dropout", "diffusion_t", "diffusion_noise", "augment")
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; the next start resumes.


class NonFiniteError(RuntimeError):
    """Too many consecutive train steps with a non-finite loss or gradient."""


# --------------------------------------------------------------------------------------
# Config checks
# --------------------------------------------------------------------------------------
def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the offending key for values out of range."""
    def need(cond, key, msg):
        if not cond:
            raise ValueError(f"config.{key}={_get(config, key)!r}: {msg}")

    need(config.total_steps > 0, "total_steps", "must be > 0")
    need(config.batch_size > 0, "batch_size", "must be > 0")
    need(config.stop_after_steps >= 0, "stop_after_steps", "must be >= 0 (0 = run to total_steps)")
    need(config.optimizer.lr > 0, "optimizer.lr", "must be > 0")
    need(config.log_every > 0, "log_every", "must be > 0")
    need(config.checkpoint_every > 0, "checkpoint_every", "must be > 0")
    need(config.get("keep_checkpoints", 3) >= 1, "keep_checkpoints", "must be >= 1")
    need(config.get("max_nonfinite_steps", 5) >= 1, "max_nonfinite_steps", "must be >= 1")
    if "loss" in config and "temperature" in config.loss:
        need(config.loss.temperature > 0, "loss.temperature", "must be > 0")
    need(config.model.in_channels > 0, "model.in_channels", "must be > 0")
    _validate_data_config(config)


# Keys of config.data besides the input-path keys of rsjax.data.defaults.default_data_config.
_EXTRA_DATA_KEYS = ("image_size",)


def _validate_data_config(config) -> None:
    """The ``config.data`` checks: every key is read by the input path the config selects, the
    batch layout fits ``batch_size``, and augmentation parameters are in range. Runs before the
    workdir is written. Both paths honour the same augmentation and batching keys (see
    rsjax.data.pipeline / device_data); refused are keys no path reads, and combinations one
    path cannot serve, naming both keys."""
    from rsjax.data.defaults import default_data_config

    known = set(default_data_config().keys()) | set(_EXTRA_DATA_KEYS)
    given = config.data.to_dict() if hasattr(config.data, "to_dict") else dict(config.data)
    for key in given:
        if key not in known:
            raise ValueError(f"config.data.{key}: no input path reads this key (host pipeline nor "
                             f"data.device_resident=True); known keys: {sorted(known)}")
    d = _data_config_with_defaults(config)

    def need(cond, key, msg):
        if not cond:
            raise ValueError(f"config.data.{key}={d[key]!r}: {msg}")

    def number(key):
        need(isinstance(d[key], (int, float)) and not isinstance(d[key], bool), key, "must be a number")
        return float(d[key])

    spb, sps, g = d.scenes_per_batch or 0, d.samples_per_scene, d.crops_as_scenes or 0
    need(spb >= 0, "scenes_per_batch", "must be >= 0 (0 = no scene-aware batching)")
    need(sps >= 1, "samples_per_scene", "must be >= 1")
    need(g >= 0, "crops_as_scenes", "must be >= 0 (0 = whole images)")
    if spb:
        need(spb * sps == config.batch_size, "scenes_per_batch",
             f"scenes_per_batch x samples_per_scene ({spb} x {sps}) must equal batch_size {config.batch_size}")
    elif g:
        need(config.batch_size % (g * g) == 0, "crops_as_scenes",
             f"with data.scenes_per_batch=0 every image brings all its {g * g} crops, so batch_size "
             f"{config.batch_size} must be a multiple of {g * g} (or set data.scenes_per_batch)")
    for key in ("jitter_prob", "gray_prob", "blur_prob", "saturation"):
        need(0.0 <= number(key) <= 1.0, key, "must be in [0, 1]")
    need(0.0 <= number("band_jitter") < 1.0, "band_jitter", "must be in [0, 1): the per-band gain is U(1 - b, 1 + b)")
    need(number("jitter_strength") >= 0.0, "jitter_strength", "must be >= 0")
    need(0.0 < number("crop_scale_min") <= number("crop_scale_max") <= 1.0, "crop_scale_min",
         f"need 0 < crop_scale_min <= crop_scale_max <= 1 (crop_scale_max={d.crop_scale_max!r})")
    need(0.0 < number("blur_sigma_min") <= number("blur_sigma_max"), "blur_sigma_min",
         f"need 0 < blur_sigma_min <= blur_sigma_max (blur_sigma_max={d.blur_sigma_max!r})")
    if d.device_resident:
        need(not d.num_workers, "num_workers",
             "grain worker processes belong to the host pipeline; data.device_resident=True has none "
             "(set data.num_workers=0)")
    else:
        need(not d.manual_dir, "manual_dir",
             "the class folder is read by the GPU-resident path only; with data.device_resident=False "
             "the host pipeline reads the TFDS dataset data.name (set data.device_resident=True, or "
             "build the dataset and clear data.manual_dir)")


def _get(config, dotted):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


# --------------------------------------------------------------------------------------
# Optimizer
# --------------------------------------------------------------------------------------
def make_schedule(config) -> optax.Schedule:
    """Learning-rate schedule named by ``optimizer.schedule`` (warm-up + cosine by default)."""
    from rsjax import schedules

    return schedules.from_config(config)


def _decay_mask(params):
    # No weight decay on biases and normalisation parameters (rank <= 1).
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _not_norm_mask(params):
    # Every parameter except those of normalisation layers (modules named bn*, *_bn, *norm*).
    def keep(path, p):
        names = [str(getattr(k, "key", k)) for k in path[:-1]]
        return not any("bn" in n or "norm" in n for n in names)

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(config) -> optax.GradientTransformation:
    o = config.optimizer
    lr = make_schedule(config)
    name = o.name
    if name == "adamw":
        tx = optax.adamw(lr, b1=o.get("b1", 0.9), b2=o.get("b2", 0.999), weight_decay=o.weight_decay, mask=_decay_mask)
    elif name == "adam":
        tx = optax.adam(lr)
    elif name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(o.weight_decay, mask=_decay_mask),
            optax.sgd(lr, momentum=o.get("momentum", 0.9), nesterov=o.get("nesterov", False)),
        )
    elif name == "lars":
        # decay_bias / trust_ratio_all: VISSL's regularize_bias (BN never decayed) / apex LARC,
        # which adapts every parameter (FALSE's official config); defaults: matrices only.
        wd_mask = _not_norm_mask if o.get("decay_bias", False) else _decay_mask
        tr_mask = (lambda p: jax.tree.map(lambda _: True, p)) if o.get("trust_ratio_all", False) else _decay_mask
        tx = optax.lars(lr, weight_decay=o.weight_decay, weight_decay_mask=wd_mask, trust_ratio_mask=tr_mask,
                        trust_coefficient=o.get("trust_coefficient", 0.001), eps=o.get("lars_eps", 0.0),
                        momentum=o.get("momentum", 0.9))
    else:
        raise ValueError(f"config.optimizer.name={name!r}: expected adamw, adam, sgd or lars")
    if o.get("grad_clip", 0.0):
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    scales = o.get("module_lr_scale", None)
    if scales:
        tx = optax.chain(tx, scale_modules(scales if isinstance(scales, str) else dict(scales)))
    return tx


def scale_modules(scales: dict) -> optax.GradientTransformation:
    """Multiplies the updates of top-level parameter modules by a constant (``optimizer.module_lr_scale``).

    ``{"denoiser": 0.1}`` trains SwiMDiff's denoiser at a tenth of the schedule's learning rate
    while the encoder keeps the rate every arm of a study shares. Scaling the final update is
    exactly a per-module learning rate for SGD, AdamW and LARS (their updates are linear in lr).
    An unknown module name is refused when the optimizer state is created.
    """
    if isinstance(scales, str):  # the command-line spelling "denoiser=0.1,projector=0.5"
        try:
            scales = dict(item.split("=") for item in scales.replace(" ", "").split(",") if item)
        except ValueError:
            raise ValueError(f"config.optimizer.module_lr_scale={scales!r}: expected 'module=factor,...'") from None
    scales = {str(k): float(v) for k, v in scales.items()}

    def init_fn(params):
        unknown = sorted(set(scales) - set(params))
        if unknown:
            raise ValueError(f"config.optimizer.module_lr_scale names {unknown}, which are not parameter "
                             f"modules of this method; modules: {sorted(params)}")
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return {k: (jax.tree.map(lambda u, f=scales[k]: u * f, v) if k in scales else v)
                for k, v in updates.items()}, state

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------
# State and step
# --------------------------------------------------------------------------------------
def init_state(method, tx, sample_batch, seed: int) -> dict:
    """The train state as a plain dict pytree (checkpointed as is)."""
    params, batch_stats, extra = method.init(jax.random.PRNGKey(seed), sample_batch)
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": tx.init(params),
        "extra": extra,
        "nonfinite_run": jnp.zeros((), jnp.int32),    # consecutive refused steps
        "nonfinite_total": jnp.zeros((), jnp.int32),
    }


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_batch_transform(config):
    """For device-resident data: raw ``image`` batch -> standardized ``view1``/``view2``,
    augmented on device with the ``augment`` stream (see rsjax.data.device_augment)."""
    from rsjax.data import device_augment, registry

    info = registry.with_normalization(registry.get_dataset_info(config.data.name),
                                       config.data.get("normalization", None))
    aug = device_augment.DeviceAugmentConfig.from_data_config(config.data, config.data.image_size)

    def transform(batch, key):
        if "view1" in batch:
            return batch
        v1, v2 = device_augment.two_views(key, batch["image"], aug, scale=info.scale, mean=info.mean,
                                          std=info.std, regions=batch.get("region"))
        out = {k: v for k, v in batch.items() if k not in ("image", "region")}
        return {**out, "view1": v1, "view2": v2}

    return transform


def make_train_step(method, tx, config):
    """Returns the pure ``(state, batch) -> (state, metrics)`` step (not yet jitted).

    A batch with raw ``image`` instead of ``view1``/``view2`` (the device-resident input
    path) is augmented inside the step from the ``augment`` random stream.
    """
    root_key = jax.random.PRNGKey(config.seed)
    schedule = make_schedule(config)
    transform = make_batch_transform(config) if config.data.get("device_resident", False) else None

    def train_step(state, batch):
        train_step.trace_count += 1  # runs only while tracing: counts compilations
        stop_any = None
        if "stop" in batch:  # multi-process runs: whether any process was signalled (_StopFlag)
            batch = dict(batch)
            stop_any = jnp.any(batch.pop("stop"))
        step = state["step"]
        step_key = jax.random.fold_in(root_key, step)
        rngs = {name: jax.random.fold_in(step_key, i) for i, name in enumerate(RNG_STREAMS)}
        if transform is not None:
            batch = transform(batch, rngs["augment"])

        def loss_fn(params):
            return method.loss(params, state["batch_stats"], state["extra"], batch, rngs, step)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        finite = jnp.isfinite(loss) & _all_finite(grads)
        # Zero non-finite grads before the update so the (discarded) update stays finite.
        safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
        updates, opt_state = tx.update(safe_grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        extra = method.update_extra(params, aux["batch_stats"], state["extra"], aux, step)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = {
            "step": step + 1,
            "params": keep(params, state["params"]),
            "batch_stats": keep(aux["batch_stats"], state["batch_stats"]),
            "opt_state": keep(opt_state, state["opt_state"]),
            "extra": keep(extra, state["extra"]),
            "nonfinite_run": jnp.where(finite, 0, state["nonfinite_run"] + 1),
            "nonfinite_total": state["nonfinite_total"] + (~finite).astype(jnp.int32),
        }
        metrics = {
            "loss": loss.astype(jnp.float32),
            "lr": schedule(step),
            "grad_norm": optax.global_norm(safe_grads),
            "finite": finite,
            "nonfinite_run": new_state["nonfinite_run"],
            **{k: v.astype(jnp.float32) for k, v in aux["metrics"].items()},
        }
        if stop_any is not None:
            metrics["stop"] = stop_any
        return new_state, metrics

    train_step.trace_count = 0
    return train_step


def jit_train_step(train_step, mesh):
    rep, dat = shd.replicated(mesh), shd.data_sharded(mesh)
    return jax.jit(train_step, in_shardings=(rep, dat), out_shardings=(rep, rep), donate_argnums=(0,))


def sample_batch(config, batch_size: int = 2) -> dict:
    s, c = config.data.image_size, config.model.in_channels
    return {
        "view1": np.zeros((batch_size, s, s, c), np.float32),
        "view2": np.zeros((batch_size, s, s, c), np.float32),
        "scene_id": np.arange(batch_size, dtype=np.int32),
        "label": np.zeros((batch_size,), np.int32),
    }


def create_state(method, tx, config, mesh):
    """Initialises the replicated train state directly on the mesh.

    The init program runs once, so on CPU it is compiled without backend optimisation:
    XLA:CPU otherwise spends tens of seconds optimising the unrolled threefry hashes of
    the parameter initialisers for no run-time benefit.
    """
    batch = sample_batch(config)
    lowered = jax.jit(lambda b: init_state(method, tx, b, config.seed),
                      out_shardings=shd.replicated(mesh)).lower(batch)
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=options)(batch)


# --------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------
class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop finishes the step, checkpoints and exits.

    Processes of a multi-process run must stop after the same step (the last checkpoint is
    written collectively) although a scheduler's signals reach them at different moments:
    each process adds its flag to the batch (``stop``, one bool per local row) and the step
    reports ``any`` over the global batch in its metrics, which every process reads at the
    same point of the loop. No extra host synchronisation, one or two extra steps.
    """

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread (e.g. a notebook worker)
                pass
        return self

    def _handle(self, signum, frame):
        del frame
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _debug_hooks() -> tuple[float, int]:
    """``(sleep seconds per step, first non-finite step or 0)`` from the RSJAX_DEBUG_* variables."""
    def read(name, kind):
        value = os.environ.get(name, "")
        try:
            return kind(value) if value else kind(0)
        except ValueError:
            raise ValueError(f"environment variable {name}={value!r} is not a {kind.__name__}") from None

    return read("RSJAX_DEBUG_STEP_SLEEP", float), read("RSJAX_DEBUG_NONFINITE_FROM_STEP", int)


def _poison(batch: dict) -> dict:
    """A copy of the host batch with one NaN pixel in ``view1`` (debug hook)."""
    batch = dict(batch)
    v = np.array(batch["view1"], copy=True)
    v.reshape(-1)[0] = np.nan
    batch["view1"] = v
    return batch


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------
def _data_config_with_defaults(config):
    from rsjax.data.defaults import default_data_config

    d = default_data_config()
    d.update(config.data.to_dict() if hasattr(config.data, "to_dict") else dict(config.data))
    return d


def make_data_iterator(config, workdir: str, mesh=None):
    data_cfg = _data_config_with_defaults(config)
    if data_cfg.device_resident:
        from rsjax.data import device_data, pipeline, registry

        images, labels, scenes = device_data.load_raw_with_scenes(data_cfg, data_cfg.train_split)
        pipeline.check_images(images, registry.get_dataset_info(data_cfg.name),
                              where=f"split {data_cfg.train_split!r}", stacked=True)
        return device_data.DeviceIterator(
            images, labels, global_batch_size=config.batch_size, seed=config.seed,
            mesh=mesh or shd.make_mesh(), crops_as_scenes=data_cfg.crops_as_scenes,
            scene_ids=scenes, scenes_per_batch=data_cfg.scenes_per_batch,
            samples_per_scene=data_cfg.samples_per_scene, dataset=data_cfg.name)
    from rsjax.data import build, pipeline

    build.ensure_built(data_cfg.name, data_cfg.data_dir or None, config=data_cfg.get("builder_config"))
    return pipeline.make_pretrain_iterator(
        data_cfg,
        global_batch_size=config.batch_size,
        seed=config.seed,
        image_size=config.data.image_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def check_bands(config) -> None:
    from rsjax.data import registry

    info = registry.get_dataset_info(config.data.name)
    if len(info.bands) != config.model.in_channels:
        raise ValueError(
            f"config.model.in_channels={config.model.in_channels} does not match dataset "
            f"{config.data.name!r} with {len(info.bands)} bands {list(info.bands)}"
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Pretrains ``config.method`` and evaluates the encoder; returns the final summary."""
    shd.maybe_initialize_distributed()
    validate_config(config)
    check_bands(config)
    mesh = shd.make_mesh()
    shd.check_batch_divisible(config.batch_size, mesh)
    is_main = jax.process_index() == 0
    wd = workdir_lib.Workdir(workdir, config, is_main=is_main)

    method = methods.get_method(config)
    tx = make_optimizer(config)
    state = create_state(method, tx, config, mesh)
    train_step = make_train_step(method, tx, config)
    p_step = jit_train_step(train_step, mesh)

    data_iter = make_data_iterator(config, workdir, mesh)
    manager = ckpt_lib.make_manager(workdir, max_to_keep=config.get("keep_checkpoints", 3))
    start_step = 0
    restored = ckpt_lib.restore_latest(manager, state)
    if restored is not None:
        start_step, state, data_state = restored
        data_iter.set_state(data_state)
        logging.info("resumed from step %d", start_step)
        if is_main:
            print(f"Resuming {workdir} from step {start_step}", flush=True)
    wd.truncate_metrics(start_step)

    total = config.total_steps
    stop_at = min(total, config.stop_after_steps) if config.stop_after_steps else total
    config_dict = config.to_dict()

    last_saved = start_step if restored is not None else None

    def save(step):
        nonlocal last_saved
        if step == last_saved:  # e.g. a signal right after a periodic checkpoint
            return
        # Asynchronous on accelerators (the write overlaps the next steps; Orbax copies the
        # arrays to host first, so the donated state is free to change): waited for on exit.
        ckpt_lib.save(manager, step, state, json.loads(data_iter.get_state()), config_dict, block=False)
        last_saved = step

    sleep_s, nonfinite_from = _debug_hooks()
    multi = jax.process_count() > 1
    local_rows = config.batch_size // jax.process_count()
    stop_seen = False  # multi-process: a step's metrics said some process was signalled

    bar = tqdm(total=total, initial=start_step, desc=f"{config.method}", disable=not is_main,
               dynamic_ncols=True, unit="step")
    pending = None  # metrics of the previous step, read one step late to keep dispatch async
    step = start_step
    t0 = time.time()
    compile_s = 0.0
    throughput = _Throughput(config.batch_size)
    try:
        with _StopFlag() as stop:
            while step < stop_at:
                batch = next(data_iter)
                if multi:
                    flag = np.full((local_rows,), stop.signum is not None)
                    batch = {**batch, "stop": flag if not isinstance(batch["label"], jax.Array)
                             else shd.host_to_global(flag, mesh)}
                if not isinstance(batch["label"], jax.Array):
                    if nonfinite_from and step + 1 >= nonfinite_from:
                        batch = _poison(batch)
                    batch = shd.host_to_global(batch, mesh)
                state, metrics = p_step(state, batch)
                step += 1
                if step == start_step + 1:  # the first call compiles: keep it out of train time
                    jax.block_until_ready(metrics)
                    compile_s, t0 = time.time() - t0, time.time()
                    throughput.reset(step)
                if pending is not None:
                    stop_seen |= _handle_metrics(wd, bar, *pending, config, throughput=throughput)
                pending = (step, metrics)
                if step % config.checkpoint_every == 0 and step < stop_at:
                    stop_seen |= _handle_metrics(wd, bar, *pending, config, throughput=throughput)
                    pending = None
                    save(step)
                if sleep_s:
                    time.sleep(sleep_s)
                if stop_seen if multi else stop.signum is not None:
                    break
            if pending is not None:
                _handle_metrics(wd, bar, *pending, config, force_log=True, throughput=throughput)
            if step > start_step or restored is None:
                save(step)
    finally:
        bar.close()  # also on errors: a progress bar redrawn after the error message hides it
        manager.wait_until_finished()  # every exit (end, signal, error) waits for a pending save
    elapsed = time.time() - t0
    summary = {"step": step, "total_steps": total, "train_seconds": elapsed, "compile_seconds": compile_s,
               "compiles": train_step.trace_count, "nonfinite_steps": int(jax.device_get(state["nonfinite_total"]))}
    if summary["nonfinite_steps"] and is_main:
        print(f"{summary['nonfinite_steps']} step(s) refused for a non-finite loss or gradient "
              f"(listed in {wd.events_path})", flush=True)
    if is_main:
        wd.plot_loss_curve()
    if (stop_seen if multi else stop.signum is not None) and step < stop_at:
        if is_main:
            print(f"Stopped by signal {stop.signum or 'on another process'} at step {step}; checkpoint written. "
                  f"Rerun the same command to resume.", flush=True)
        wd.close()
        sys.exit(PREEMPTED_EXIT_CODE)
    if step >= total and config.get("eval", {}).get("enabled", True):
        summary["eval"] = evaluate_pretrained(method, state, config, wd)
    elif step < total and is_main:
        print(f"Stopped after step {step} of {total} (stop_after_steps); rerun to continue.", flush=True)
    wd.close()
    return summary


class _Throughput:
    """Images (global batch rows) per second between two logged steps, for TensorBoard.

    Measured when a step's metrics reach the host (they are read one step late, so the step
    has finished); :meth:`reset` after the first, compiling step keeps compilation out.
    """

    def __init__(self, batch_size: int):
        self.batch_size = int(batch_size)
        self.step, self.t = None, None

    def reset(self, step: int) -> None:
        self.step, self.t = int(step), time.perf_counter()

    def rates(self, step: int) -> dict:
        now = time.perf_counter()
        out = {}
        if self.step is not None and step > self.step and now > self.t:
            steps_per_s = (step - self.step) / (now - self.t)
            out = {"img_per_s": steps_per_s * self.batch_size, "steps_per_s": steps_per_s}
        self.step, self.t = int(step), now
        return out


def _handle_metrics(wd, bar, step, metrics, config, force_log: bool = False, throughput=None) -> bool:
    """Logs one step's metrics (and refuses it when non-finite); returns its ``stop`` bit."""
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    stop_any = bool(m.pop("stop", 0.0))
    run = int(m.pop("nonfinite_run"))
    if not m.pop("finite"):
        msg = f"step {step}: non-finite loss or gradient (loss={m['loss']}); step refused"
        logging.warning(msg)
        wd.log_event(step, "nonfinite", msg)
    if run >= config.max_nonfinite_steps:
        raise NonFiniteError(
            f"{run} consecutive steps with a non-finite loss or gradient (last at step {step}); "
            f"stopping. The last good checkpoint in {wd.path}/checkpoints is intact. "
            f"Lower config.optimizer.lr or check the data for NaN/inf."
        )
    bar.update(step - bar.n)
    if step % config.log_every == 0 or force_log or step == config.total_steps:
        bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
        wd.log_metrics(step, m)
        if throughput is not None:  # TensorBoard only: metrics.jsonl stays deterministic
            wd.log_scalars(step, throughput.rates(step), prefix="train")
    return stop_any


# --------------------------------------------------------------------------------------
# Evaluation of the pretrained encoder on the dataset's labels
# --------------------------------------------------------------------------------------
def load_eval_arrays(data_cfg, split: str, max_examples=None):
    """Standardized images + labels of ``split`` (original folder when data.manual_dir is set)."""
    if data_cfg.get("manual_dir"):
        from rsjax.data import device_data

        return device_data.normalized_eval_arrays(data_cfg, split, max_examples=max_examples)
    from rsjax.data import pipeline

    return pipeline.load_arrays(data_cfg, split, max_examples=max_examples)


def evaluate_pretrained(method, state, config, wd) -> dict:
    from rsjax.evaluate import classification as cls

    ecfg = config.eval
    data_cfg = _data_config_with_defaults(config)
    x_tr, y_tr = load_eval_arrays(data_cfg, ecfg.train_split, ecfg.get("max_train", None) or None)
    x_te, y_te = load_eval_arrays(data_cfg, ecfg.test_split, ecfg.get("max_test", None) or None)
    for split, y in ((ecfg.train_split, y_tr), (ecfg.test_split, y_te)):
        if y.ndim != 1 or (y < 0).any():
            raise ValueError(
                f"dataset {config.data.name!r} split {split!r} has no single-class labels (missing = -1, or "
                f"multi-hot); the kNN / linear-probe evaluation needs them: set config.eval.enabled=False")
    host_state = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
    encode = jax.jit(lambda x: method.encode(host_state["params"], host_state["batch_stats"], x))
    f_tr = cls.extract_features(encode, x_tr, batch_size=ecfg.batch_size, desc="features train")
    f_te = cls.extract_features(encode, x_te, batch_size=ecfg.batch_size, desc="features test")
    num_classes = int(max(y_tr.max(), y_te.max()) + 1)
    knn = cls.knn_predict(f_tr, y_tr, f_te, num_classes=num_classes, k=ecfg.knn_k, temperature=ecfg.knn_temperature)
    lin = cls.linear_probe(f_tr, y_tr, f_te, num_classes=num_classes, epochs=ecfg.linear_epochs, seed=config.seed)
    metrics = {
        "knn_top1": cls.accuracy(knn, y_te),
        "linear_top1": cls.accuracy(lin, y_te),
        "linear_per_class": cls.per_class_accuracy(lin, y_te, num_classes),
        "num_train": int(len(y_tr)),
        "num_test": int(len(y_te)),
        "chance": float(np.bincount(y_te).max() / len(y_te)),
    }
    if wd.is_main:
        print(f"kNN top-1 (k={ecfg.knn_k}): {metrics['knn_top1']:.2%} | linear probe top-1: "
              f"{metrics['linear_top1']:.2%} | majority-class baseline {metrics['chance']:.2%} "
              f"({metrics['num_test']} test crops)", flush=True)
        wd.write_eval_report("pretrain_knn_linear", metrics, config)
        wd.plot_confusion(cls.confusion_matrix(lin, y_te, num_classes), "confusion_linear.png")
    return metrics
