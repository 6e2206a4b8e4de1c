"""Helpers shared by the per-method tests: load a config variant, make a random batch and
evaluate a method's loss (value, gradients, aux) jitted over a mesh of n devices."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from rsjax import optim, train
from rsjax import sharding as shd

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str, variant: str = "smoke"):
    from conftest import load_config as load

    return load(name, variant)


def random_batch(config, b, seed=0, view2_noise=1.0):
    """view2 = view1 + view2_noise * N(0, 1): small noise gives highly similar pairs."""
    rng = np.random.default_rng(seed)
    s, c = config.data.image_size, config.model.in_channels
    v1 = rng.normal(size=(b, s, s, c)).astype(np.float32)
    return {
        "view1": v1,
        "view2": (v1 + view2_noise * rng.normal(size=v1.shape)).astype(np.float32),
        "scene_id": np.repeat(np.arange(b // 2), 2).astype(np.int32),
        "label": np.zeros((b,), np.int32),
    }


def loss_on_mesh(method, variables, batch, devices, step=0):
    """(loss, grads, aux) of ``method.loss`` jitted with the batch sharded over ``devices``."""
    params, batch_stats, extra = variables
    mesh = shd.make_mesh(devices)
    rngs = {n: jax.random.PRNGKey(i) for i, n in enumerate(train.RNG_STREAMS)}

    def f(params, batch_stats, extra, batch):
        g = lambda p: method.loss(p, batch_stats, extra, batch, rngs, step)  # noqa: E731
        (loss, aux), grads = jax.value_and_grad(g, has_aux=True)(params)
        return loss, grads, aux

    rep, dat = shd.replicated(mesh), shd.data_sharded(mesh)
    out = jax.jit(f, in_shardings=(rep, rep, rep, dat), out_shardings=rep)(
        params, batch_stats, extra, jax.device_put(batch, dat)
    )
    return jax.device_get(out)


def assert_trees_close(a, b, rtol=1e-4, atol=1e-6, scale_atol=0.0):
    """Leaf-wise allclose; ``scale_atol`` adds ``scale_atol * max|leaf|`` to ``atol`` (float32
    sums in a different order differ by rounding relative to the largest term, not to each entry)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert la, "empty trees"
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        tol = atol + scale_atol * float(np.max(np.abs(y))) if y.size else atol
        np.testing.assert_allclose(x, y, rtol=rtol, atol=tol)


def run_train_steps(method, config, batches, seed=0):
    """States before every step and after the last, from ``train.make_train_step`` (the real
    loop's step: optimizer update, then ``method.update_extra``) jitted on one device."""
    tx, schedule = optim.make(config.optimizer, config.total_steps)
    state = train.init_state(method, tx, batches[0], seed)
    step = jax.jit(train.make_train_step(method, tx, schedule, seed=config.seed))
    states, metrics = [jax.device_get(state)], []
    for batch in batches:
        state, m = step(state, batch)
        states.append(jax.device_get(state))
        metrics.append(jax.device_get(m))
    return states, metrics
