"""Device mesh, shardings and host-local -> global arrays.

rsjax is data parallel over every device of every host: one mesh axis ``data``.
The train state is replicated; every batch array is split along its first axis.
Under ``jax.jit`` with these shardings XLA computes reductions over the *global*
batch, so contrastive negatives and BatchNorm statistics see every device
without explicit collectives (DESIGN §2).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Calls ``jax.distributed.initialize()`` when launched as one of several processes.

    Triggered by the standard JAX env variables (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) or cluster auto-detection (TPU pods,
    SLURM) via ``RSJAX_DISTRIBUTED=1``. A single-process run never calls it.
    """
    if getattr(maybe_initialize_distributed, "_done", False):
        return
    explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if explicit or os.environ.get("RSJAX_DISTRIBUTED") == "1":
        kwargs: dict[str, Any] = {}
        if explicit:
            kwargs = dict(
                coordinator_address=explicit,
                num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                process_id=int(os.environ["JAX_PROCESS_ID"]),
            )
        # CPU processes need an explicit collectives backend (backends must not be
        # initialised before distributed.initialize, so decide from the environment).
        if os.environ.get("JAX_PLATFORMS", "").lower() == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(**kwargs)
    maybe_initialize_distributed._done = True  # type: ignore[attr-defined]


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all (global) devices with axis name ``data``."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(
            f"config.batch_size={global_batch_size} is not divisible by the {n} devices of the mesh; "
            f"use a multiple of {n}."
        )
    if global_batch_size % jax.process_count():
        raise ValueError(
            f"config.batch_size={global_batch_size} is not divisible by the {jax.process_count()} processes."
        )


def host_to_global(batch: Any, mesh: Mesh) -> Any:
    """Assembles each host's slice of the batch into one global array sharded on ``data``.

    Every process passes the rows it read (its contiguous slice of the global batch,
    in process order); the result has the global leading dimension.
    """
    sharding = data_sharded(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a host-identical pytree replicated on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
