"""Device mesh, shardings and host-local -> global arrays.

rsjax is data parallel over every device of every host: one mesh axis ``data``.
The train state is replicated; every batch array is split along its first axis.
Under ``jax.jit`` with these shardings XLA computes reductions over the *global*
batch, so contrastive negatives and BatchNorm statistics see every device
without explicit collectives (DESIGN §2).

:func:`batched_predict` is the one padded, data-parallel predict loop (features for the
evaluators, dense predictions, fine-tuned logits, the study).
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

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
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


# --------------------------------------------------------------------------------------
# Batched prediction (features, dense predictions, fine-tuned logits)
# --------------------------------------------------------------------------------------
# fn -> {mesh: jitted fn} (jit itself caches one executable per input shape). Weak keys: a
# closure's entry dies with it.
_PREDICT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _jitted_predict(fn, mesh: Mesh):
    try:
        per_fn = _PREDICT_CACHE.setdefault(fn, {})
    except TypeError:  # not weak-referenceable (e.g. a functools.partial of a builtin): no cache
        per_fn = {}
    if mesh not in per_fn:
        # Variables replicated, batch split on ``data``, outputs replicated so every host can
        # read them back (np.asarray of a replicated global array is host-local).
        per_fn[mesh] = jax.jit(fn, in_shardings=(replicated(mesh), data_sharded(mesh)), out_shardings=replicated(mesh))
    return per_fn[mesh]


def predict_batch_size(batch_size: int, mesh: Mesh) -> int:
    """``batch_size`` rounded up to a multiple of the mesh's device count (at least one row per device)."""
    n = mesh.devices.size
    return max(n, -(-int(batch_size) // n) * n)


def batched_predict(
    fn,
    variables: Any,
    arrays: Any,
    *,
    batch_size: int,
    desc: str = "predict",
    mesh: Mesh | None = None,
    progress: bool = True,
) -> Any:
    """Runs ``fn(variables, batch)`` over every row of ``arrays`` and returns the outputs as numpy.

    The one padded, data-parallel predict loop of rsjax (feature extraction for kNN / linear
    probes, dense segmentation and change-detection predictions, fine-tuned logits, the study):

    * ``arrays``: one array or a pytree (e.g. ``{"a": ..., "b": ...}``) of host arrays sharing
      their leading axis N; batch ``i`` is rows ``[i*B, (i+1)*B)`` of every leaf.
    * ``B = batch_size`` rounded up to a multiple of the device count; every batch has exactly
      B rows (the last one is zero-padded), so ``fn`` is traced and compiled once per
      (fn, mesh, B, shapes) and cached across calls (train and test features: one compile).
    * ``variables`` are placed once, replicated on every device; each batch is sharded on the
      mesh axis ``data`` (each device computes B / n_devices rows); outputs come back replicated.
    * Returns ``fn``'s output pytree with every leaf's leading axis cut back to N (padding rows
      removed), as numpy. ``fn`` must be row-wise (eval mode: no cross-example statistics),
      otherwise the zero rows would change real rows' outputs.

    Multi-process: every process passes the same full ``arrays``; each device reads its own
    rows, and every process gets the whole result.
    """
    mesh = make_mesh() if mesh is None else mesh
    leaves, treedef = jax.tree.flatten(arrays)
    if not leaves:
        raise ValueError("batched_predict: no input arrays")
    n = int(np.shape(leaves[0])[0])
    for leaf in leaves:
        if np.shape(leaf)[0] != n:
            raise ValueError(f"batched_predict: inputs differ in their leading axis ({[np.shape(x) for x in leaves]})")
    b = predict_batch_size(batch_size, mesh)
    f = _jitted_predict(fn, mesh)
    variables = jax.device_put(variables, replicated(mesh))
    sharding = data_sharded(mesh)
    steps = -(-n // b)
    outs = []

    for i in tqdm(range(steps), desc=desc, disable=not progress or steps <= 1, leave=False):
        chunk = []
        for leaf in leaves:
            x = np.asarray(leaf[i * b : (i + 1) * b])
            if x.shape[0] < b:
                x = np.concatenate([x, np.zeros((b - x.shape[0],) + x.shape[1:], x.dtype)])
            # make_array_from_callback works for one or many processes (each device reads its rows).
            chunk.append(jax.make_array_from_callback(x.shape, sharding, lambda idx, x=x: x[idx]))
        y = f(variables, jax.tree.unflatten(treedef, chunk))
        m = min(b, n - i * b)
        outs.append(jax.tree.map(lambda a, m=m: np.asarray(a)[:m], y))
    if not outs:  # n == 0: trace for the output structure without running anything
        shapes = jax.eval_shape(
            fn,
            variables,
            jax.tree.unflatten(
                treedef, [jax.ShapeDtypeStruct((b,) + np.shape(x)[1:], np.asarray(x).dtype) for x in leaves]
            ),
        )
        return jax.tree.map(lambda s: np.zeros((0,) + s.shape[1:], s.dtype), shapes)
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
