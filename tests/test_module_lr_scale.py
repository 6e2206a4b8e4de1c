"""``optimizer.module_lr_scale``: a per-module learning-rate factor (rsjax.optim.scale_modules)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rsjax import optim


def _config(name, scales, lr=0.1, wd=0.0):
    c = ml_collections.ConfigDict()
    c.total_steps = 10
    c.optimizer = ml_collections.ConfigDict(dict(
        name=name, lr=lr, weight_decay=wd, warmup_steps=0, final_lr_fraction=1.0, grad_clip=0.0,
        module_lr_scale=scales))
    return c


def _block(name, scales, **kw):
    c = _config(name, scales, **kw)
    return c.optimizer, c.total_steps


def _sgd_momentum_numpy(p, grads, lr, mom=0.9):
    """Plain SGD with heavy-ball momentum (optax.sgd's trace), one parameter array."""
    v = np.zeros_like(p)
    for g in grads:
        v = g + mom * v
        p = p - lr * v
    return p


@pytest.mark.parametrize("spelling", ["denoiser=0.1", {"denoiser": 0.1}])
def test_sgd_scaled_module_equals_sgd_at_scaled_lr(spelling):
    rng = np.random.default_rng(0)
    params = {"encoder": {"w": rng.normal(size=(3, 2)).astype(np.float32)},
              "denoiser": {"w": rng.normal(size=(4,)).astype(np.float32)}}
    grads = [{k: {"w": rng.normal(size=v["w"].shape).astype(np.float32)} for k, v in params.items()}
             for _ in range(3)]
    tx, _ = optim.make(*_block("sgd", spelling))
    state = tx.init(params)
    p = jax.tree.map(jnp.asarray, params)
    for g in grads:
        upd, state = tx.update(g, state, p)
        p = jax.tree.map(lambda a, b: a + b, p, upd)
    for module, lr in (("encoder", 0.1), ("denoiser", 0.01)):
        want = _sgd_momentum_numpy(params[module]["w"], [g[module]["w"] for g in grads], lr)
        np.testing.assert_allclose(np.asarray(p[module]["w"]), want, rtol=1e-5, atol=1e-6)


def test_unknown_module_is_refused_naming_the_key():
    tx, _ = optim.make(*_block("adamw", "decoder=0.5"))
    with pytest.raises(ValueError, match="module_lr_scale.*decoder"):
        tx.init({"encoder": {"w": jnp.zeros(2)}})


def test_bad_spelling_is_refused():
    with pytest.raises(ValueError, match="module_lr_scale"):
        optim.make(*_block("sgd", "denoiser:0.1"))[0].init({"denoiser": {"w": jnp.zeros(2)}})


def test_study_swimdiff_arms_scale_the_denoiser_only():
    from conftest import load_config
    from rsjax import study

    cfg = load_config("study_eurosat", "cpu")
    assert study.arm_config(cfg, "swimdiff", 0, 1000).optimizer.module_lr_scale == "denoiser=0.1"
    assert study.arm_config(cfg, "swimdiff_matching_only", 0, 1000).optimizer.module_lr_scale == ""
    assert study.arm_config(cfg, "simclr", 0, 1000).optimizer.module_lr_scale == ""
