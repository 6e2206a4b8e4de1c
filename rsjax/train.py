"""The one training loop of rsjax: every job trains through :func:`fit`.

``fit(trainable, data_iter, phase, wd)``: mesh -> init (or resume) -> jitted train step ->
log / hooks / checkpoint. A *trainable* is an SSL method (``rsjax.methods``) or a supervised
task (``rsjax.tasks``: segmentation, change detection, classification fine-tuning, noisy-label
pretraining); a :class:`Phase` says what one call trains (steps, global batch, the optimizer
block of :mod:`rsjax.optim`, where its files go). Jobs with several trainings (noisy-label
pretraining + transfers, probe + fine-tune) run one phase per training, each in its own
sub-directory of the workdir, each resumable on its own.

The train step is a pure function ``(state, batch) -> (state, metrics)`` jitted once over
the mesh with the state replicated and donated, and the batch sharded on ``data``; the
per-step randomness is ``fold_in(PRNGKey(phase.seed), step)`` split into named streams.
A step whose loss or gradients are not finite is refused: the state keeps its previous
parameters and optimizer state, the step counter advances, and the refusal is counted
(``events.jsonl``); ``max_nonfinite_steps`` refusals in a row stop the run with
:class:`rsjax.errors.NonFiniteError`, leaving the last checkpoint as it was.

Every phase gets: resume from the newest readable checkpoint of its directory (the config
stored in it must match), the same batches after a resume as without one, ``metrics.jsonl`` and
``events.jsonl`` trimmed to the resumed step, TensorBoard, a progress bar, and SIGTERM / SIGINT
handling: finish the current step, write a checkpoint, exit with :data:`PREEMPTED_EXIT_CODE`
(all processes of a multi-process run agree on the step).

Fault-injection hooks for tests and debugging (environment variables, never in configs, so
they change neither ``config.json`` nor the compiled step when unset):

* ``RSJAX_DEBUG_STEP_SLEEP=S``: sleep S seconds after every step (time to send a signal).
* ``RSJAX_DEBUG_NONFINITE_FROM_STEP=N``: from step N on (1-based) the loss of every step is
  NaN, as if the model had diverged; exercises the refusal path end to end for every
  trainable and both input paths (it is applied inside the step).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
import signal
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax._src import config as jax_config  # private: trace_context(), what jit's own caches key on
from tqdm.auto import tqdm

from rsjax import checkpoint as ckpt_lib
from rsjax import errors, optim
from rsjax import sharding as shd
from rsjax import trainable as trainable_lib
from rsjax.errors import NonFiniteError

RNG_STREAMS = ("dropout", "diffusion_t", "diffusion_noise", "augment")
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; the next start resumes.


# --------------------------------------------------------------------------------------
# What one call of the loop trains
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Phase:
    """One training: ``total_steps`` of ``batch_size`` (global) with the ``optimizer`` block.

    ``name`` = ``""`` writes into the workdir itself, else into ``<workdir>/<name>/``;
    ``where`` is the config prefix of the block (``"finetune"``) for error messages.
    """

    name: str
    total_steps: int
    batch_size: int
    optimizer: Any
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    max_nonfinite_steps: int = 5
    stop_after_steps: int = 0
    desc: str = ""
    where: str = ""

    @classmethod
    def from_config(cls, config, block=None, *, name: str = "", desc: str = "", where: str = "") -> "Phase":
        """``total_steps`` / ``batch_size`` / ``optimizer`` from ``block`` (e.g. ``config.finetune``;
        default: ``config`` itself), the loop settings from the top level of ``config``."""
        b = config if block is None else block
        total = int(b.total_steps)
        return cls(
            name=name,
            total_steps=total,
            batch_size=int(b.batch_size),
            optimizer=b.optimizer,
            seed=int(config.get("seed", 0)),
            log_every=int(config.get("log_every", 10)),
            checkpoint_every=int(config.get("checkpoint_every", 0) or 0) or max(1, total),
            keep_checkpoints=int(config.get("keep_checkpoints", 3)),
            max_nonfinite_steps=int(config.get("max_nonfinite_steps", 5)),
            stop_after_steps=int(config.get("stop_after_steps", 0) or 0),
            desc=desc or name or str(config.get("method", config.get("job", ""))),
            where=where,
        )

    def validate(self) -> None:
        """ConfigError naming the key for values out of range (before anything is written)."""
        top = ("log_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite_steps", "stop_after_steps")

        def need(cond, key, value, msg):  # the phase's own keys under config.<where>, the loop's at the top
            errors.require(cond, key if key in top or not self.where else f"{self.where}.{key}", value, msg)

        need(self.total_steps > 0, "total_steps", self.total_steps, "must be > 0")
        need(self.batch_size > 0, "batch_size", self.batch_size, "must be > 0")
        n = jax.device_count()
        need(
            self.batch_size % n == 0,
            "batch_size",
            self.batch_size,
            f"must be divisible by the number of devices ({n}): every device gets the same number of rows",
        )
        need(
            self.stop_after_steps >= 0,
            "stop_after_steps",
            self.stop_after_steps,
            "must be >= 0 (0 = run to total_steps)",
        )
        need(self.log_every > 0, "log_every", self.log_every, "must be > 0")
        need(self.checkpoint_every > 0, "checkpoint_every", self.checkpoint_every, "must be > 0")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, "must be >= 1")
        need(self.max_nonfinite_steps >= 1, "max_nonfinite_steps", self.max_nonfinite_steps, "must be >= 1")
        optim.validate(self.optimizer, f"{self.where}.optimizer" if self.where else "optimizer")

    @property
    def stop_at(self) -> int:
        return min(self.total_steps, self.stop_after_steps) if self.stop_after_steps else self.total_steps


@dataclasses.dataclass
class Hook:
    """``fn(step, state) -> (state, metrics)`` after every step that is a multiple of ``every``
    (before that step's checkpoint, so a resumed run never repeats or skips one); the metrics
    are logged to ``metrics.jsonl`` at that step."""

    every: int
    fn: Callable[[int, Any], tuple[Any, dict]]


@dataclasses.dataclass
class FitResult:
    state: Any  # the train state on the mesh (params, batch_stats, extra, opt_state, ...)
    step: int
    finished: bool  # step == phase.total_steps
    summary: dict


# --------------------------------------------------------------------------------------
# State and step
# --------------------------------------------------------------------------------------
def _seed_key(seed: int) -> np.ndarray:
    """The seed's PRNG key as a host array (a valid input of a multi-process program too)."""
    return np.asarray(jax.random.PRNGKey(seed))


def init_state(trainable, tx, sample_batch, seed: int) -> dict:
    """The train state as a plain dict pytree (checkpointed as is)."""
    params, batch_stats, extra = trainable.init(jax.random.PRNGKey(seed), sample_batch)
    return _state(params, batch_stats, extra, tx.init(params), lambda: jnp.zeros((), jnp.int32))


def _state(params, batch_stats, extra, opt_state, zero) -> dict:
    """The state's layout; ``zero()`` makes each int32 counter (its own buffer: the step donates them)."""
    return {
        "step": zero(),
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": opt_state,
        "extra": extra,
        "nonfinite_run": zero(),  # consecutive refused steps
        "nonfinite_total": zero(),
    }


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_train_step(
    trainable, tx, schedule, *, seed: int, batch_transform=None, nonfinite_from: int = 0, probe: bool = False
):
    """The pure ``(state, batch) -> (state, metrics)`` step (not yet jitted).

    ``batch_transform(batch, key)`` (the GPU-resident input path) turns the raw batch into the
    trainable's batch inside the step, from the ``augment`` random stream. ``nonfinite_from``
    > 0 (debug hook) makes the loss NaN from that 1-based step on. ``probe``: the step also
    takes the gradient of the trainable's probe term (its loss aux ``"probe"``, e.g. SwiMDiff's
    lambda_D * L_D: one more pass of the same pullback) and adds
    ``trainable.probe_metrics(grads, probe_grads)``; the loop runs this variant on logged steps
    only (a second program: inside a ``lax.cond`` XLA:CPU ran that pullback ~13x slower).

    The step's random streams derive from the seed's key: ``root_key`` when given (an argument:
    :func:`jit_train_step` passes ``train_step.root_key``, so the compiled step does not depend
    on the seed and every seed of a study shares one program), else the same key as a constant.
    """
    seed_key = _seed_key(seed)

    def train_step(state, batch, root_key=None):
        train_step.trace_count += 1  # runs only while tracing: counts compilations
        if root_key is None:
            root_key = seed_key
        stop_any = None
        if "stop" in batch:  # multi-process runs: whether any process was signalled (_StopFlag)
            batch = dict(batch)
            stop_any = jnp.any(batch.pop("stop"))
        step = state["step"]
        step_key = jax.random.fold_in(root_key, step)
        rngs = {name: jax.random.fold_in(step_key, i) for i, name in enumerate(RNG_STREAMS)}
        if batch_transform is not None:
            batch = batch_transform(batch, rngs["augment"])

        def loss_fn(params):
            loss, aux = trainable.loss(params, state["batch_stats"], state["extra"], batch, rngs, step)
            if nonfinite_from:
                loss = jnp.where(step + 1 >= nonfinite_from, jnp.nan, loss)
            aux = dict(aux)
            probe = aux.pop("probe", None)
            return (loss, jnp.zeros((), jnp.float32) if probe is None else probe.astype(jnp.float32)), aux

        # value_and_grad spelt out, so that the probe variant can take the probe term's own
        # gradient from the same pullback (no second forward)
        (loss, _), pullback, aux = jax.vjp(loss_fn, state["params"], has_aux=True)
        one, zero = jnp.ones_like(loss), jnp.zeros((), jnp.float32)
        grads = pullback((one, zero))[0]
        probe_metrics = {}
        if probe:
            probe_metrics = trainable.probe_metrics(grads, pullback((jnp.zeros_like(loss), jnp.ones_like(zero)))[0])
        finite = jnp.isfinite(loss) & _all_finite(grads)
        # Zero non-finite grads before the update so the (discarded) update stays finite.
        safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
        updates, opt_state = tx.update(safe_grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        extra = trainable.update_extra(params, aux["batch_stats"], state["extra"], aux, step)
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
            "grad_norm": optax.tree.norm(safe_grads),
            "finite": finite,
            "nonfinite_run": new_state["nonfinite_run"],
            **{k: v.astype(jnp.float32) for k, v in aux["metrics"].items()},
            **probe_metrics,
        }
        if stop_any is not None:
            metrics["stop"] = stop_any
        return new_state, metrics

    train_step.trace_count = 0
    train_step.root_key = seed_key
    return train_step


# --------------------------------------------------------------------------------------
# Compiled programs, once per process
# --------------------------------------------------------------------------------------
# A fit builds its step and init anew (the trainable and optimizer are new objects), so jax's
# own caches, which key on the Python function, miss when the same program comes again in one
# process: a resumed run, a study's seeds and folds, a job's phases. XLA's persistent cache
# then still serves the executable, but lowering and loading it cost more than tracing. These
# executables are kept by what they compute instead: the traced program itself (its jaxpr
# text, constants and argument types), the shardings and placement of its arguments, jax's
# tracing context (matmul precision, x64, ...), the backend and the compiler options.
_PROGRAMS: collections.OrderedDict[str, Any] = collections.OrderedDict()
_PROGRAMS_MAX = 32  # executables (code, no buffers), least recently used dropped first
_PROGRAMS_LOCK = threading.Lock()
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def _describe(v) -> str:
    """repr, with the device ids of shardings (a mesh's repr names its axes, not its devices)."""
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(map(_describe, v)) + ")"
    mesh = getattr(v, "mesh", None)
    if mesh is not None and hasattr(mesh, "devices"):
        return f"{v!r}@{[d.id for d in mesh.devices.flat]}"
    if isinstance(v, jax.sharding.Sharding):
        return f"{v!r}@{sorted(d.id for d in v.device_set)}"
    return repr(v)


def _program_key(traced, args, compiler_options) -> str | None:
    """None when the traced program cannot be told apart from others by its text: it names a
    Python object by address (masked by jax's printer) or calls back into Python (the callback
    is not printed), a constant is not readable here (another process's shards), or this jax
    keeps the jit's parameters elsewhere. A key that cannot be computed never fails a fit: the
    program then compiles as without this cache."""
    try:
        return _program_key_or_none(traced, args, compiler_options)
    except Exception as e:  # noqa: BLE001 (a cache key must never be why a run fails)
        logging.warning("compiling without the per-process program cache: %s", e)
        return None


def _program_key_or_none(traced, args, compiler_options) -> str | None:
    text = str(traced.jaxpr)
    params = getattr(traced, "_params", None)  # the jit's in/out shardings, donation, options
    if "0xXXXX" in text or "callback" in text or not isinstance(params, dict):
        return None
    h = hashlib.sha256()
    for part in (
        text,
        repr(traced.args_info),  # argument types and donation
        *(f"{k}={_describe(v)}" for k, v in sorted(params.items()) if k != "jaxpr"),
        _ADDRESS.sub("", repr(jax_config.trace_context())),
        jax.default_backend(),
        repr(sorted((compiler_options or {}).items())),
        *(_describe(getattr(x, "sharding", None)) for x in jax.tree.leaves(args)),
    ):
        h.update(part.encode())
        h.update(b"\0")
    for c in traced.jaxpr.consts:
        if isinstance(c, jax.Array) and not c.is_fully_addressable:
            return None
        a = np.asarray(c)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def compile_once(jitted, *args, compiler_options=None):
    """``jitted.lower(*args).compile(...)``, or the executable this process already compiled for
    the same program (see above); ``jitted`` is a ``jax.jit`` object."""
    traced = jitted.trace(*args)
    key = _program_key(traced, args, compiler_options)
    if key is None:
        return traced.lower().compile(compiler_options=compiler_options)
    with _PROGRAMS_LOCK:
        compiled = _PROGRAMS.get(key)
        if compiled is not None:
            _PROGRAMS.move_to_end(key)
            return compiled
    compiled = traced.lower().compile(compiler_options=compiler_options)
    with _PROGRAMS_LOCK:
        _PROGRAMS[key] = compiled
        while len(_PROGRAMS) > _PROGRAMS_MAX:
            _PROGRAMS.popitem(last=False)
    return compiled


class _SeededStep:
    """A jitted train step, or its lowered or compiled form, called as ``(state, batch)``: the
    seed's key, its last argument, is bound (``lower`` and ``compile`` keep it bound; anything
    else, e.g. ``as_text``, is the wrapped object's).

    The jitted form compiles through :func:`compile_once` on its first call; a later call with
    other argument types than the first goes through ``jax.jit`` itself.
    """

    def __init__(self, fn, root_key):
        self._fn, self._key = fn, root_key
        self._compiled = self._types = None

    def __call__(self, state, batch):
        if not hasattr(self._fn, "trace"):  # a Lowered / Compiled form
            return self._fn(state, batch, self._key)
        types = jax.tree.structure((state, batch)), [(x.shape, x.dtype) for x in jax.tree.leaves((state, batch))]
        if self._compiled is None:
            self._compiled, self._types = compile_once(self._fn, state, batch, self._key), types
        if types == self._types:
            return self._compiled(state, batch, self._key)
        return self._fn(state, batch, self._key)

    def lower(self, state, batch):
        return _SeededStep(self._fn.lower(state, batch, self._key), self._key)

    def compile(self, *args, **kwargs):
        return _SeededStep(self._fn.compile(*args, **kwargs), self._key)

    def __getattr__(self, name):
        return getattr(self._fn, name)


def jit_train_step(train_step, mesh):
    """``train_step`` (from :func:`make_train_step`) jitted on ``mesh``: state replicated and
    donated, batch sharded over the data axis; one compiled program for every seed, and for
    every fit of the same program in this process (:func:`compile_once`)."""
    rep, dat = shd.replicated(mesh), shd.data_sharded(mesh)
    jitted = jax.jit(train_step, in_shardings=(rep, dat, rep), out_shardings=(rep, rep), donate_argnums=(0,))
    return _SeededStep(jitted, train_step.root_key)


def create_state(trainable, tx, seed: int, mesh, sample_batch=None):
    """Initialises the replicated train state directly on the mesh: the same values as
    :func:`init_state`, from two programs.

    The parameter init is one program whose key is an argument, so it does not depend on the
    seed, the optimizer or the schedule (compiled once per process, :func:`compile_once`, and
    served by XLA's persistent compilation cache to every run of the same model); on CPU it is
    compiled without backend optimisation, since it runs once and XLA:CPU otherwise spends tens
    of seconds optimising the unrolled threefry hashes of the initialisers for no run-time
    benefit. The optimizer state (zeros and counters) is a second, small program.
    """
    batch = trainable.sample_batch(2) if sample_batch is None else sample_batch
    rep = shd.replicated(mesh)
    key = _seed_key(seed)
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    init = jax.jit(lambda b, k: trainable.init(k, b), out_shardings=rep)
    params, batch_stats, extra = compile_once(init, batch, key, compiler_options=options)(batch, key)
    opt_state = jax.jit(tx.init, out_shardings=rep)(params)
    return _state(params, batch_stats, extra, opt_state, jax.jit(lambda: jnp.zeros((), jnp.int32), out_shardings=rep))


# --------------------------------------------------------------------------------------
# Signals and debug hooks
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


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------
def fit(
    trainable, data_iter, phase: Phase, wd, config, *, mesh=None, hooks: Sequence[Hook] = (), batch_transform=None
) -> FitResult:
    """Trains ``trainable`` for ``phase`` with batches of ``data_iter``; resumes when ``wd`` (the
    phase's directory, ``wd.sub(phase.name)``) holds checkpoints.

    Args:
      trainable: an ``rsjax.methods`` method or ``rsjax.tasks`` task.
      data_iter: ``next()`` gives the host batch (numpy, this process's rows) or a global jax
        batch; ``get_state()`` / ``set_state()`` make it resumable.
      phase: what to train (see :class:`Phase`).
      wd: the job's :class:`rsjax.workdir.Workdir` (the phase writes into ``wd.sub(phase.name)``).
      hooks: :class:`Hook` callbacks (validation, analysis) between steps.
      config: the job's config (stored in every checkpoint; a resume compares it).
      batch_transform: in-step transform of the raw batch (GPU-resident input path).

    Returns a :class:`FitResult`; raises ``SystemExit(PREEMPTED_EXIT_CODE)`` after a signal.
    """
    mesh = mesh or shd.make_mesh()
    shd.check_batch_divisible(phase.batch_size, mesh)
    run_dir = wd.sub(phase.name) if phase.name else wd
    is_main = wd.is_main
    tx, schedule = optim.make(
        phase.optimizer, phase.total_steps, where=f"{phase.where}.optimizer" if phase.where else "optimizer"
    )
    state = create_state(trainable, tx, phase.seed, mesh)
    sleep_s, nonfinite_from = _debug_hooks()
    train_step = make_train_step(
        trainable, tx, schedule, seed=phase.seed, batch_transform=batch_transform, nonfinite_from=nonfinite_from
    )
    p_step = jit_train_step(train_step, mesh)
    # logged steps run the probe variant when the trainable asks for one (make_train_step)
    p_probe = (
        jit_train_step(
            make_train_step(
                trainable,
                tx,
                schedule,
                seed=phase.seed,
                batch_transform=batch_transform,
                nonfinite_from=nonfinite_from,
                probe=True,
            ),
            mesh,
        )
        if getattr(trainable, "wants_probe", False)
        else None
    )
    config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)

    manager = ckpt_lib.make_manager(run_dir.path, max_to_keep=phase.keep_checkpoints)
    ckpt_dir = os.path.join(run_dir.path, "checkpoints")
    start_step = 0
    restored = ckpt_lib.restore_latest(manager, state, config_dict)
    if restored is not None:
        start_step, state, data_state = restored
        data_iter.set_state(data_state)
        logging.info("resumed from step %d", start_step)
        if is_main and start_step < phase.total_steps:
            print(f"Resuming {run_dir.path} from step {start_step}", flush=True)
    run_dir.truncate(start_step)

    total, stop_at = phase.total_steps, phase.stop_at
    last_saved = start_step if restored is not None else None

    def save(step):
        nonlocal last_saved
        if step == last_saved:  # e.g. a signal right after a periodic checkpoint
            return
        # Asynchronous on accelerators (the write overlaps the next steps; Orbax copies the
        # arrays to host first, so the donated state is free to change): waited for on exit.
        with ckpt_lib.disk_full_is_one_line(ckpt_dir, lambda: step):
            ckpt_lib.save(manager, step, state, json.loads(data_iter.get_state()), config_dict, block=False)
        last_saved = step

    multi = jax.process_count() > 1
    local_rows = phase.batch_size // jax.process_count()
    stop_seen = False  # multi-process: a step's metrics said some process was signalled
    hooks = [h for h in hooks if h.every > 0]

    bar = tqdm(total=total, initial=start_step, desc=phase.desc, disable=not is_main, dynamic_ncols=True, unit="step")
    pending = None  # metrics of the previous step, read one step late to keep dispatch async
    step = start_step
    t0 = time.time()
    compile_s = 0.0
    throughput = _Throughput(phase.batch_size)
    log = lambda pend, **kw: _handle_metrics(run_dir, bar, *pend, phase, throughput=throughput, **kw)  # noqa: E731
    stop = _StopFlag()
    try:
        with stop:
            while step < stop_at:
                batch = next(data_iter)
                on_device = isinstance(next(iter(batch.values())), jax.Array)
                if multi:
                    flag = np.full((local_rows,), stop.signum is not None)
                    batch = {**batch, "stop": shd.host_to_global(flag, mesh) if on_device else flag}
                if not on_device:
                    batch = shd.host_to_global(batch, mesh)
                logged = trainable_lib.is_logged(step + 1, phase.log_every, (total, stop_at))
                state, metrics = (p_probe if p_probe is not None and logged else p_step)(state, batch)
                step += 1
                if step == start_step + 1:  # the first call compiles: keep it out of train time
                    jax.block_until_ready(metrics)
                    compile_s, t0 = time.time() - t0, time.time()
                    throughput.reset(step)
                if pending is not None:
                    stop_seen |= log(pending)
                pending = (step, metrics)
                due = [h for h in hooks if step % h.every == 0]
                if due or (step % phase.checkpoint_every == 0 and step < stop_at):
                    stop_seen |= log(pending)
                    pending = None
                for h in due:
                    state, hook_metrics = h.fn(step, state)
                    if hook_metrics:
                        run_dir.log_metrics(step, hook_metrics)
                if step % phase.checkpoint_every == 0 and step < stop_at:
                    save(step)
                if sleep_s:
                    time.sleep(sleep_s)
                if stop_seen if multi else stop.signum is not None:
                    break
            if pending is not None:
                log(pending, force_log=True)
            if step > start_step or restored is None:
                save(step)
    finally:
        bar.close()  # also on errors: a progress bar redrawn after the error message hides it
        with ckpt_lib.disk_full_is_one_line(ckpt_dir, lambda: last_saved):
            manager.wait_until_finished()  # every exit (end, signal, error) waits for a pending save
    elapsed = time.time() - t0
    summary = {
        "step": step,
        "start_step": start_step,
        "total_steps": total,
        "train_seconds": elapsed if step > start_step else 0.0,
        "compile_seconds": compile_s,
        "compiles": train_step.trace_count,
        "nonfinite_steps": int(jax.device_get(state["nonfinite_total"])),
    }
    if summary["nonfinite_steps"] and is_main and step > start_step:
        print(
            f"{summary['nonfinite_steps']} step(s) refused for a non-finite loss or gradient "
            f"(listed in {run_dir.events_path})",
            flush=True,
        )
    # also when this invocation trained nothing but the picture is missing (a run killed after its
    # last step, e.g. during the final evaluation, then rerun)
    if is_main and (step > start_step or not os.path.exists(run_dir.file("loss_curve.png"))):
        run_dir.plot_loss_curve()
    if (stop_seen if multi else stop.signum is not None) and step < stop_at:
        if is_main:
            print(
                f"Stopped by signal {stop.signum or 'on another process'} at step {step}; checkpoint written. "
                f"Rerun the same command to resume.",
                flush=True,
            )
        raise SystemExit(PREEMPTED_EXIT_CODE)
    if step < total and is_main:
        print(f"{phase.desc}: stopped after step {step} of {total} (stop_after_steps); rerun to continue.", flush=True)
    return FitResult(state=state, step=step, finished=step >= total, summary=summary)


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


def _handle_metrics(wd, bar, step, metrics, phase: Phase, force_log: bool = False, throughput=None) -> bool:
    """Logs one step's metrics (and refuses it when non-finite); returns its ``stop`` bit."""
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    stop_any = bool(m.pop("stop", 0.0))
    run = int(m.pop("nonfinite_run"))
    if not m.pop("finite"):
        msg = f"step {step}: non-finite loss or gradient (loss={m['loss']}); step refused"
        logging.warning(msg)
        wd.log_event(step, "nonfinite", msg)
    if run >= phase.max_nonfinite_steps:
        raise NonFiniteError(
            f"{run} consecutive steps with a non-finite loss or gradient (last at step {step}); "
            f"stopping. The last good checkpoint in {wd.path}/checkpoints is intact. "
            f"Lower config.{phase.where + '.' if phase.where else ''}optimizer.lr or check the data for NaN/inf."
        )
    bar.update(step - bar.n)
    if force_log or trainable_lib.is_logged(step, phase.log_every, (phase.total_steps,)):
        bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
        wd.log_metrics(step, m)
        if throughput is not None:  # TensorBoard only: metrics.jsonl stays deterministic
            wd.log_scalars(step, throughput.rates(step), prefix="train")
    return stop_any
