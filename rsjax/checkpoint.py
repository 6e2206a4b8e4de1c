"""Orbax checkpoints: train state + data-iterator state + config, with automatic resume.

Layout: ``<workdir>/checkpoints/<step>/{state,data,config}``. Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-write never leaves a
partial step that looks complete (a leftover ``<step>.orbax-checkpoint-tmp-*`` folder is
ignored). Resuming (:func:`restore_latest`) tells a checkpoint that does not fit the config
(stored config or parameter shapes differ: refused, nothing renamed) from one that cannot be
read (truncated or edited files, a step folder copied incompletely: warned about naming it,
set aside as ``<step>.unreadable``, and the previous step used). Readers (:func:`read_state`,
:func:`load_encoder`) skip an unreadable newest step with a warning and change nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import logging as py_logging
import os
import re
import shutil
import sys
import warnings
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.experimental import multihost_utils

from rsjax import trainables
from rsjax import workdir as workdir_lib
from rsjax.data import registry
from rsjax.errors import CheckpointError, first_line

log = logging.getLogger(__name__)


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def async_default() -> bool:
    """Whether writable managers save asynchronously: on accelerators (GPU / TPU backends) a
    save then blocks only while Orbax copies the state to host memory, and the files are written
    while training goes on. CPU stays synchronous (nothing to overlap; the resume tests read
    checkpoints right after each save)."""
    return jax.default_backend() != "cpu"


def make_manager(
    workdir: str, *, max_to_keep: int = 3, read_only: bool = False, async_save: bool | None = None
) -> ocp.CheckpointManager:
    """The run's CheckpointManager; ``async_save=None`` means :func:`async_default`.

    Asynchronous saves are as atomic as synchronous ones (Orbax finalizes a step by renaming
    its temporary folder once every file is written); whoever saves with ``block=False`` must
    call ``manager.wait_until_finished()`` on every exit path (``rsjax.train`` does).
    """
    if async_save is None:
        async_save = async_default() and not read_only
    _save_replicated_from_one_device()
    _install_noise_filter()  # before any read: even item_metadata of a damaged step leaves some
    # Handlers named up front (not only item names) so that a read-only manager can read a
    # step's array metadata before restoring anything (see read_state).
    handlers = {
        "state": ocp.StandardCheckpointHandler(),
        "data": ocp.JsonCheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
    }

    # A reader: Orbax warns three times that a read-only manager saves nothing ("read_only=True,
    # setting max_to_keep=None", ...), which is what the caller asked for.
    verbosity = absl_logging.get_verbosity()
    if read_only:
        absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=bool(async_save),
        )
        return ocp.CheckpointManager(checkpoint_dir(workdir), item_handlers=handlers, options=options)
    finally:
        absl_logging.set_verbosity(verbosity)


def _save_replicated_from_one_device() -> None:
    """On CPU, writes each replicated array from its first replica.

    Orbax's default "replica-parallel" save cuts every replicated array into one slice per
    device with eager JAX ops, which on XLA:CPU is one compilation per distinct shape: about
    15 s for the first save of even the smoke model and seconds for every later one, with
    nothing gained (the same host writes all slices). Accelerators keep Orbax's default.
    """
    if getattr(_save_replicated_from_one_device, "done", False):
        return
    if jax.default_backend() == "cpu":  # backends are up: called after distributed init
        verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns about the override
        try:
            # Keep the default handler's array-metadata store: the PyTree handlers read it back.
            store = getattr(ocp.type_handlers.get_type_handler(jax.Array), "_array_metadata_store", None)
            ocp.type_handlers.register_type_handler(
                jax.Array,
                ocp.type_handlers.ArrayHandler(use_replica_parallel=False, array_metadata_store=store),
                override=True,
            )
        finally:
            absl_logging.set_verbosity(verbosity)
    _save_replicated_from_one_device.done = True  # type: ignore[attr-defined]


def _host_io() -> bool:
    """Whether checkpoints are written from and read into host (numpy) arrays: one process on
    CPU (see :func:`save`). Multi-process runs and accelerators use Orbax's jax.Array handler,
    which writes each process's shards and restores straight onto the devices."""
    return jax.process_count() == 1 and jax.default_backend() == "cpu"


def _host_template(tree):
    """Numpy stand-ins (shape and dtype) of ``tree``'s leaves: Orbax then restores host arrays."""
    return jax.tree.map(lambda x: np.zeros(tuple(getattr(x, "shape", ())), x.dtype), tree)


def save(
    manager: ocp.CheckpointManager, step: int, state: Any, data_state: Any, config_dict: dict, *, block: bool = True
) -> None:
    """Saves ``step``; with ``block=False`` an asynchronous manager returns once the arrays are
    on the host (the caller waits with ``manager.wait_until_finished()`` before exiting).

    A single process on CPU writes the state as host (numpy) arrays: the same files and values,
    without the per-array device bookkeeping of Orbax's jax.Array handler (sharding metadata,
    replica slices), an overhead paid for every array of the state. :func:`restore_latest`
    reads host arrays back and places them as its template's are. Copies, not views: the train
    step donates the device buffers while an asynchronous save may still read.
    """
    if _host_io():
        state = jax.tree.map(lambda x: np.array(x, copy=True) if isinstance(x, jax.Array) else x, state)
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"iterator": data_state}),
            config=ocp.args.JsonSave(config_dict),
        ),
        force=True,
    )
    if block:
        manager.wait_until_finished()


def _disk_full(e: BaseException | None) -> bool:
    """Whether ``e`` or an exception it came from is "no space left on device" (ENOSPC), however
    Orbax / TensorStore wrap it."""
    seen = 0
    while e is not None and seen < 10:
        if getattr(e, "errno", None) == errno.ENOSPC or "no space left on device" in str(e).lower():
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


@contextlib.contextmanager
def disk_full_is_one_line(checkpoint_dir: str, step_of: Any = None):
    """Turns a full disk during a checkpoint write into a :class:`CheckpointError` of one line,
    after removing the half-written ``<step>.orbax-checkpoint-tmp*`` folders (they hold the space;
    the complete steps are untouched, so nothing is lost and a rerun resumes from the last one)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a full disk
        if not _disk_full(e):
            raise
        partial = sorted(
            n
            for n in (os.listdir(checkpoint_dir) if os.path.isdir(checkpoint_dir) else [])
            if ".orbax-checkpoint-tmp" in n
        )
        for name in partial:
            shutil.rmtree(os.path.join(checkpoint_dir, name), ignore_errors=True)
        complete = (
            sorted(int(n) for n in os.listdir(checkpoint_dir) if n.isdigit()) if os.path.isdir(checkpoint_dir) else []
        )
        last = f"step {complete[-1]}" if complete else "none yet"
        raise CheckpointError(
            f"no space left on device while writing a checkpoint in {checkpoint_dir}"
            f"{f' (step {step_of()})' if callable(step_of) else ''}: the partial write was removed "
            f"({', '.join(partial) or 'none left'}); last complete checkpoint: {last}. Free space and rerun "
            f"the same command to resume"
        ) from None


def _path_str(path) -> str:
    """``"opt_state/1/0/mu/encoder/conv/kernel"`` of a jax key path."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _shapes(tree) -> dict[str, tuple]:
    return {
        _path_str(p): tuple(getattr(leaf, "shape", ())) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def fit_problems(stored_tree, template) -> list[str]:
    """Why a checkpoint's state (tree of array metadata) does not fit ``template``: parameter
    paths missing on either side and shapes that differ (empty list: it fits)."""
    a, b = _shapes(stored_tree), _shapes(template)
    out = [f"{k}: shape {a[k]} in the checkpoint, {b[k]} here" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    out += [f"{k}: only in this config" for k in sorted(set(b) - set(a))]
    out += [f"{k}: only in the checkpoint" for k in sorted(set(a) - set(b))]
    return out


# Orbax formats a TensorStore error's method object instead of its text ("See full TensorStore
# details: <bound method pybind11_detail_function_record_...>"): cut there, read the cause instead.
_ORBAX_DETAILS = re.compile(r"\s*See full TensorStore details:.*$")


def _first_line(e: BaseException, limit: int) -> str:
    return _ORBAX_DETAILS.sub("", first_line(e, 10_000))[:limit]


def _short(e: BaseException) -> str:
    """``Type: first line`` of an error, plus the first line of its cause (e.g. TensorStore's
    "DATA_LOSS: ..." behind Orbax's generic message)."""
    text = _first_line(e, 200)
    out = f"{type(e).__name__}: {text}" if text else type(e).__name__
    cause = e.__cause__ or e.__context__
    if cause is not None and _first_line(cause, 160) and _first_line(cause, 160) not in text:
        out += f" <- {type(cause).__name__}: {_first_line(cause, 160)}"
    return out


def _warn(msg: str) -> None:
    """A warning printed once (process 0, stdout, next to the progress messages). Not also
    logged at WARNING: absl would print it a second time on stderr."""
    log.info(msg)
    if jax.process_index() == 0:
        print(f"WARNING: {msg}", flush=True)


def _is_closed_loop_callback(exc_type, exc, tb) -> bool:
    """Whether an exception is tensorstore calling back into the event loop of a restore that
    has already failed and closed (``RuntimeError: Event loop is closed`` raised in
    ``call_soon_threadsafe``): harmless noise, printed from its threads after Orbax gave up."""
    if exc_type is not RuntimeError or str(exc) != "Event loop is closed":
        return False
    while tb is not None and tb.tb_next is not None:
        if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
            return True
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name in ("call_soon_threadsafe", "_check_closed")


def _install_noise_filter() -> None:
    """Drops :func:`_is_closed_loop_callback` exceptions from ``sys.excepthook`` (how
    tensorstore's threads print them: hundreds of tracebacks after one corrupt step) and
    ``sys.unraisablehook`` (the same, as "Exception ignored in: <bound method ...>"); every
    other exception reaches the previous hooks unchanged. Installed once, on first use."""
    if getattr(_install_noise_filter, "done", False):
        return
    prev_except, prev_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(exc_type, exc, tb):
        if not _is_closed_loop_callback(exc_type, exc, tb):
            prev_except(exc_type, exc, tb)

    def unraisablehook(u):
        if not _is_closed_loop_callback(u.exc_type, u.exc_value, u.exc_traceback):
            prev_unraisable(u)

    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    _install_noise_filter.done = True  # type: ignore[attr-defined]


def _quiet_failed_restore():
    """Silences the leftovers of a failed Orbax restore: the other reads of that step keep
    running, fail in turn, and surface as hundreds of lines of "Task exception was never
    retrieved" / "Event loop is closed" asyncio tracebacks although the failure was handled."""
    _install_noise_filter()

    @contextlib.contextmanager
    def ctx():
        asyncio_log = py_logging.getLogger("asyncio")
        level = asyncio_log.level
        asyncio_log.setLevel(py_logging.CRITICAL)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
                yield
        finally:
            asyncio_log.setLevel(level)

    return ctx()


def stored_config(manager: ocp.CheckpointManager, step: int) -> dict | None:
    """The config saved with ``step`` (None when the step holds none, e.g. old layouts)."""
    try:
        return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    except (KeyError, FileNotFoundError, ValueError):
        return None


def restore_latest(
    manager: ocp.CheckpointManager, state_template: Any, config_dict: dict | None = None, *, mutable=None
):
    """Restores the newest readable step. Returns ``(step, state, data_state)`` or None.

    For each step, newest first, three different outcomes are told apart:

    * **does not fit**: the config stored in the step differs from ``config_dict`` (keys in
      ``workdir.MUTABLE_KEYS``, or ``mutable``, ignored), or its state's parameter paths or shapes
      differ from ``state_template``: :class:`rsjax.errors.CheckpointError` naming the step
      folder and the keys / paths. Nothing is renamed: the checkpoint is good, the config is not
      the one it was written with (use the original config or another workdir).
    * **cannot be read** (truncated or edited files, a step folder copied incompletely): a
      warning naming the folder, printed once; the folder is set aside as ``<step>.unreadable``
      (see :func:`_set_aside`) and the previous step is tried. The warning says "falling back"
      only when an earlier step exists, else that training starts from step 0.
    * readable and fitting: restored.
    """
    mutable = workdir_lib.MUTABLE_KEYS if mutable is None else mutable
    steps = sorted(manager.all_steps(), reverse=True)
    unreadable = []
    found = None
    host = _host_io()  # read host arrays, then place them as the template's are (see save)
    for i, step in enumerate(steps):
        path = os.path.join(str(manager.directory), str(step))
        try:
            stored = stored_config(manager, step) if config_dict is not None else None
            metadata = manager.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001 - the step's own metadata is unreadable
            error = e
        else:
            error = None
            if stored is not None:
                diffs = workdir_lib.config_diff(
                    stored, json.loads(json.dumps(workdir_lib.strict_json(config_dict))), mutable
                )
                if diffs:
                    raise CheckpointError(
                        f"checkpoint {path} was written with another config ({'; '.join(diffs[:5])}"
                        f"{' ...' if len(diffs) > 5 else ''}); resume with the config it was written with, "
                        f"or use a new --workdir (nothing was changed)"
                    )
            problems = fit_problems(metadata, state_template) if metadata is not None else []
            if problems:
                raise CheckpointError(
                    f"checkpoint {path} does not fit this config ({len(problems)} parameter(s) differ: "
                    f"{'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}); resume with the config it "
                    f"was written with, or use a new --workdir (nothing was changed)"
                )
            try:
                with _quiet_failed_restore():
                    restored = manager.restore(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(_host_template(state_template) if host else state_template),
                            data=ocp.args.JsonRestore(),
                        ),
                    )
            except Exception as e:  # noqa: BLE001 - it fits, so a failed read means damaged files
                error = e
        if error is not None:
            unreadable.append(step)
            earlier = i + 1 < len(steps)
            _warn(
                f"checkpoint {path} is unreadable ({_short(error)}); "
                + (
                    "falling back to an earlier step"
                    if earlier
                    else "no earlier checkpoint: training starts from step 0"
                )
            )
            continue
        state = restored["state"]
        if host:
            state = jax.device_put(state, jax.tree.map(lambda x: x.sharding, state_template))
        found = step, state, restored["data"]["iterator"]
        break
    _set_aside(manager, unreadable)
    return found


def _set_aside(manager: ocp.CheckpointManager, steps) -> None:
    """Renames unreadable step folders ``<step>`` to ``<step>.unreadable``.

    Orbax lists every integer-named folder as a step, complete or not, and refuses to save
    a step that exists: left in place, a corrupt step would make the resumed run crash when
    it reaches that step again. Only the newest set-aside copy of a step is kept (an earlier
    ``<step>.unreadable`` is deleted), so repeated failures do not accumulate folders.
    Process 0 renames; all processes then re-list the steps.
    """
    if not steps:
        return
    if jax.process_index() == 0:
        for step in steps:
            src = os.path.join(str(manager.directory), str(step))
            dst = f"{src}.unreadable"
            if os.path.exists(dst):
                shutil.rmtree(dst, ignore_errors=True)
            os.rename(src, dst)
            print(f"WARNING: moved the unreadable checkpoint {src} to {dst}", flush=True)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("rsjax_checkpoint_set_aside")
    manager.reload()


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The ``config.json`` of a run; :class:`rsjax.errors.CheckpointError` when missing or not JSON.

    A phase folder (``Workdir.sub``: ``<workdir>/pretrain``, ``<study>/<arm>/pretrain``) holds no
    config.json: the nearest enclosing folder's (at most 3 levels up) is the run's config."""
    if not os.path.isdir(workdir):
        raise CheckpointError(f"workdir {workdir} does not exist or is not a folder")
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path) and os.path.isdir(os.path.join(workdir, "checkpoints")):
        up = os.path.abspath(workdir)
        for _ in range(3):
            up = os.path.dirname(up)
            if os.path.exists(os.path.join(up, "config.json")):
                path = os.path.join(up, "config.json")
                break
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist: is {workdir} an rsjax workdir?")
    with open(path) as f:
        try:
            stored = json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON ({e})") from None

    # completed once, here: keys added in later rsjax versions at their defaults
    return ml_collections.ConfigDict(workdir_lib.complete_config(stored))


def _read_state_at(manager: ocp.CheckpointManager, step: int):
    metadata = manager.item_metadata(step)["state"]
    if _host_io():
        target = _host_template(metadata)
    else:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(getattr(m, "shape", ())), m.dtype, sharding=device), metadata
        )
    with _quiet_failed_restore():
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return jax.tree.map(np.asarray, restored["state"])


def read_state(workdir: str, step: int | None = None) -> tuple[int, Any]:
    """``(step, train state as numpy arrays)`` of checkpoint ``step`` of a run.

    ``step=None``: the newest READABLE step; an unreadable newer one is skipped with one
    warning naming its folder (nothing is renamed: readers never change a workdir).
    :class:`rsjax.errors.CheckpointError` when there is no checkpoint, ``step`` does not exist
    or cannot be read, or none is readable.

    Restores onto this process's first device whatever mesh wrote the checkpoint: without a
    target Orbax would rebuild the saved sharding and refuse a run trained on other devices
    (8 GPUs, 2 hosts) when exporting or evaluating on this machine ("Topology mismatch").
    """
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise CheckpointError(f"no checkpoint in {workdir} ({checkpoint_dir(workdir)} does not exist)")
    manager = make_manager(workdir, read_only=True)
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir(workdir)}")
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"--step={step} not found in {checkpoint_dir(workdir)}; available: {sorted(steps)}")
        try:
            return int(step), _read_state_at(manager, step)
        except Exception as e:  # noqa: BLE001 - damaged files of the one step asked for
            raise CheckpointError(
                f"checkpoint {os.path.join(checkpoint_dir(workdir), str(step))} is unreadable ({_short(e)})"
            ) from e
    errors = []
    for s in steps:
        try:
            state = _read_state_at(manager, s)
        except Exception as e:  # noqa: BLE001 - unreadable: try the previous step
            path = os.path.join(checkpoint_dir(workdir), str(s))
            errors.append(f"{path}: {_short(e)}")
            _warn(f"checkpoint {path} is unreadable ({_short(e)}); skipped")
            continue
        return int(s), state
    raise CheckpointError(f"no readable checkpoint in {checkpoint_dir(workdir)} ({'; '.join(errors[:3])})")


IMPORTED_JOB = "import_weights"  # config.job of a workdir written by rsjax.import_weights


def load_encoder(workdir: str, step: int | None = None):
    """Returns (encoder_params, encoder_batch_stats, meta) of a pretraining run as numpy trees.

    The one loader of an encoder from a workdir (every job's ``config.pretrained``, the study,
    the notebooks and ``rsjax.export``). ``step=None`` reads the newest readable checkpoint: an
    unreadable newer step is skipped with one warning naming its folder. Raises
    :class:`rsjax.errors.CheckpointError` (missing workdir or config.json, no readable step,
    a step that does not exist) with the path in the message.

    Also reads workdirs written by ``python -m rsjax.import_weights`` (``config.job ==
    "import_weights"``: no method; ``data.name`` may be '' when the source's bands are not
    declared, then ``bands`` is empty). ``meta["normalization"]`` is the input the encoder
    expects (``config.data.normalization``; ``"registry"`` for runs that predate the key), and
    ``mean`` / ``std`` / ``scale`` are the values that mode applies.
    """
    config = read_config(workdir)
    step, state = read_state(workdir, step)
    imported = config.get("job", None) == IMPORTED_JOB
    if "encoder" not in state.get("params", {}):
        raise CheckpointError(
            f"checkpoint {step} of {workdir} holds no encoder (parameter modules: {sorted(state.get('params', {}))})"
        )
    if not imported:
        if "method" not in config:  # e.g. a segmentation or change-detection run's workdir
            raise CheckpointError(
                f"{workdir} holds a {config.get('job', '?')!r} run, not a pretraining run: an encoder is read from "
                f"the workdir of a pretraining job (one with config.method, e.g. configs/swimdiff.py) or of "
                f"python -m rsjax.import_weights"
            )
        trainables.from_config(config)  # validates the config names an existing method
    normalization = registry.normalization_name(config.data.normalization)  # config completed when read
    n = int(config.model.in_channels)
    if config.data.name:
        info = registry.data_info(config.data)
        bands, mean, std = list(info.bands), list(map(float, info.mean)), list(map(float, info.std))
        scale = float(info.scale)
    else:  # imported without --data: the band order is the source's, not known here
        kind, s = registry.parse_normalization(normalization)
        bands, mean, std, scale = ([], [0.0] * n, [1.0] * n, s) if kind == "scale" else ([], [], [], None)
    meta = {
        "arch": config.model.name,
        "stem": config.model.get("stem", "standard"),
        "in_channels": n,
        "bands": bands,
        "mean": mean,
        "std": std,
        "scale": scale,
        "normalization": normalization,
        "step": int(step),
        "method": config.method,
        "dataset": config.data.name or None,
    }
    if imported:
        meta["imported_from"] = config.imported.to_dict()
    return state["params"]["encoder"], state["batch_stats"]["encoder"], meta
