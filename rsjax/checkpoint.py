"""Orbax checkpoints: train state + data-iterator state + config, with automatic resume.

Layout: ``<workdir>/checkpoints/<step>/{state,data,config}``. Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-write never leaves a
partial step that looks complete (a leftover ``<step>.orbax-checkpoint-tmp-*`` folder is
ignored). When the newest step cannot be read (truncated or edited files, or a step folder
copied incompletely) :func:`restore_latest` warns naming it, renames it to
``<step>.unreadable`` and falls back to the previous one.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def async_default() -> bool:
    """Whether writable managers save asynchronously: on accelerators (GPU / TPU backends) a
    save then blocks only while Orbax copies the state to host memory, and the files are written
    while training goes on. CPU stays synchronous (nothing to overlap; the resume tests read
    checkpoints right after each save)."""
    return jax.default_backend() != "cpu"


def make_manager(workdir: str, *, max_to_keep: int = 3, read_only: bool = False,
                 async_save: bool | None = None) -> ocp.CheckpointManager:
    """The run's CheckpointManager; ``async_save=None`` means :func:`async_default`.

    Asynchronous saves are as atomic as synchronous ones (Orbax finalizes a step by renaming
    its temporary folder once every file is written); whoever saves with ``block=False`` must
    call ``manager.wait_until_finished()`` on every exit path (``rsjax.train`` does).
    """
    if async_save is None:
        async_save = async_default() and not read_only
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=bool(async_save),
    )
    _save_replicated_from_one_device()
    # Handlers named up front (not only item names) so that a read-only manager can read a
    # step's array metadata before restoring anything (see load_encoder_for_export).
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(checkpoint_dir(workdir), item_handlers=handlers, options=options)


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
        from absl import logging as absl_logging

        verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns about the override
        try:
            # Keep the default handler's array-metadata store: the PyTree handlers read it back.
            store = getattr(ocp.type_handlers.get_type_handler(jax.Array), "_array_metadata_store", None)
            ocp.type_handlers.register_type_handler(
                jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False, array_metadata_store=store),
                override=True)
        finally:
            absl_logging.set_verbosity(verbosity)
    _save_replicated_from_one_device.done = True  # type: ignore[attr-defined]


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: Any, config_dict: dict,
         *, block: bool = True) -> None:
    """Saves ``step``; with ``block=False`` an asynchronous manager returns once the arrays are
    on the host (the caller waits with ``manager.wait_until_finished()`` before exiting)."""
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


def restore_latest(manager: ocp.CheckpointManager, state_template: Any):
    """Restores the newest readable step. Returns (step, state, data_state) or None.

    A step that fails to restore (truncated or edited files) is reported with a warning
    naming its path and skipped in favour of the previous one. It is kept for inspection
    but renamed to ``<step>.unreadable`` (see :func:`_set_aside`), so it no longer counts as
    a checkpoint and the resumed run can write that step again.
    """
    unreadable = []
    found = None
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(state_template),
                    data=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means: fall back
            unreadable.append(step)
            path = os.path.join(str(manager.directory), str(step))
            msg = (f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                   f"falling back to an earlier step")
            log.warning(msg)
            if jax.process_index() == 0:
                print(f"WARNING: {msg}", flush=True)
            continue
        found = step, restored["state"], restored["data"]["iterator"]
        break
    _set_aside(manager, unreadable)
    return found


def _set_aside(manager: ocp.CheckpointManager, steps) -> None:
    """Renames unreadable step folders ``<step>`` to ``<step>.unreadable[N]``.

    Orbax lists every integer-named folder as a step, complete or not, and refuses to save
    a step that exists: left in place, a corrupt step would make the resumed run crash when
    it reaches that step again. Process 0 renames; all processes then re-list the steps.
    """
    if not steps:
        return
    if jax.process_index() == 0:
        for step in steps:
            src = os.path.join(str(manager.directory), str(step))
            dst, n = f"{src}.unreadable", 1
            while os.path.exists(dst):
                dst, n = f"{src}.unreadable{n}", n + 1
            os.rename(src, dst)
            print(f"WARNING: moved the unreadable checkpoint {src} to {dst}", flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("rsjax_checkpoint_set_aside")
    manager.reload()


def read_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {workdir} an rsjax workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def read_state(workdir: str, step: int | None = None) -> tuple[int, Any]:
    """``(step, train state as numpy arrays)`` of checkpoint ``step`` (None = latest) of a run.

    Restores onto this process's first device whatever mesh wrote the checkpoint: without a
    target Orbax would rebuild the saved sharding and refuse a run trained on other devices
    (8 GPUs, 2 hosts) when exporting or evaluating on this machine ("Topology mismatch").
    """
    import numpy as np

    manager = make_manager(workdir, read_only=True)
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise ValueError(f"--step={step} not found in {checkpoint_dir(workdir)}; available: {sorted(steps)}")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(getattr(m, "shape", ())), m.dtype, sharding=device),
                          manager.item_metadata(step)["state"])
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return int(step), jax.tree.map(np.asarray, restored["state"])


IMPORTED_JOB = "import_weights"  # config.job of a workdir written by rsjax.import_weights


def load_encoder_for_export(workdir: str, step: int | None = None):
    """Returns (encoder_params, encoder_batch_stats, meta) of a pretraining run as numpy trees.

    Also reads workdirs written by ``python -m rsjax.import_weights`` (``config.job ==
    "import_weights"``: no method; ``data.name`` may be '' when the source's bands are not
    declared, then ``bands`` is empty). ``meta["normalization"]`` is the input the encoder
    expects (``config.data.normalization``; ``"registry"`` for runs that predate the key), and
    ``mean`` / ``std`` / ``scale`` are the values that mode applies.
    """
    from rsjax import methods
    from rsjax.data import registry

    config = read_config(workdir)
    step, state = read_state(workdir, step)
    imported = config.get("job", None) == IMPORTED_JOB
    if not imported:
        methods.get_method(config)  # validates the config names an existing method
    normalization = registry.normalization_name(config.data.get("normalization", None))
    n = int(config.model.in_channels)
    if config.data.get("name", ""):
        info = registry.with_normalization(
            registry.get_config_info(config.data.name, config.data.get("builder_config", None)), normalization)
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
        "dataset": config.data.get("name", "") or None,
    }
    if imported:
        meta["imported_from"] = config.imported.to_dict()
    return state["params"]["encoder"], state["batch_stats"]["encoder"], meta
