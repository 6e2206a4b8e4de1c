"""Orbax checkpoints: train state + data-iterator state + config, with automatic resume.

Layout: ``<workdir>/checkpoints/<step>/{state,data,config}``. Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-write never leaves a
partial step that looks complete. When the newest complete step cannot be read (truncated
or edited files) the manager warns naming it and falls back to the previous one.
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


def make_manager(workdir: str, *, max_to_keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir), item_names=("state", "data", "config"), options=options
    )


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
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    _save_replicated_from_one_device.done = True  # type: ignore[attr-defined]


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: Any, config_dict: dict) -> None:
    _save_replicated_from_one_device()
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"iterator": data_state}),
            config=ocp.args.JsonSave(config_dict),
        ),
        force=True,
    )
    manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, state_template: Any):
    """Restores the newest readable step. Returns (step, state, data_state) or None.

    A step that fails to restore is reported (warning naming its path) and skipped in
    favour of the previous one; it is left on disk for inspection.
    """
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
            path = os.path.join(str(manager.directory), str(step))
            msg = f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); falling back to an earlier step"
            log.warning(msg)
            print(f"WARNING: {msg}", flush=True)
            continue
        return step, restored["state"], restored["data"]["iterator"]
    return None


def read_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {workdir} an rsjax workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_encoder_for_export(workdir: str, step: int | None = None):
    """Returns (encoder_params, encoder_batch_stats, meta) of a pretraining run as numpy trees."""
    import numpy as np

    from rsjax import methods
    from rsjax.data import registry

    config = read_config(workdir)
    manager = make_manager(workdir, read_only=True)
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise ValueError(f"--step={step} not found in {checkpoint_dir(workdir)}; available: {sorted(steps)}")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    state = restored["state"]
    to_np = lambda t: jax.tree.map(np.asarray, t)  # noqa: E731
    info = registry.get_dataset_info(config.data.name)
    method = methods.get_method(config)
    del method  # validates the config names an existing method
    meta = {
        "arch": config.model.name,
        "stem": config.model.get("stem", "standard"),
        "in_channels": int(config.model.in_channels),
        "bands": list(info.bands),
        "mean": list(map(float, info.mean)),
        "std": list(map(float, info.std)),
        "scale": float(info.scale),
        "step": int(step),
        "method": config.method,
        "dataset": config.data.name,
    }
    return to_np(state["params"]["encoder"]), to_np(state["batch_stats"]["encoder"]), meta
