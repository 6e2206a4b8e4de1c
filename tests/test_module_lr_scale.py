"""``optimizer.module_lr_scale``: a per-module learning-rate factor (rsjax.optim.scale_modules), and
``optimizer.modules``: a module trained by its own optimizer block (optax.multi_transform)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rsjax import optim


def _config(name, scales, lr=0.1, wd=0.0):
    c = ml_collections.ConfigDict()
    c.total_steps = 10
    c.optimizer = ml_collections.ConfigDict(
        dict(
            name=name,
            lr=lr,
            weight_decay=wd,
            warmup_steps=0,
            final_lr_fraction=1.0,
            grad_clip=0.0,
            module_lr_scale=scales,
        )
    )
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
    params = {
        "encoder": {"w": rng.normal(size=(3, 2)).astype(np.float32)},
        "denoiser": {"w": rng.normal(size=(4,)).astype(np.float32)},
    }
    grads = [{k: {"w": rng.normal(size=v["w"].shape).astype(np.float32)} for k, v in params.items()} for _ in range(3)]
    tx, _ = optim.make(*_block("sgd", spelling))
    state = tx.init(params)
    p = jax.tree.map(jnp.asarray, params)
    for g in grads:
        upd, state = tx.update(g, state, p)
        p = jax.tree.map(lambda a, b: a + b, p, upd)
    for module, lr in (("encoder", 0.1), ("denoiser", 0.01)):
        want = _sgd_momentum_numpy(params[module]["w"], [g[module]["w"] for g in grads], lr)
        np.testing.assert_allclose(np.asarray(p[module]["w"]), want, rtol=1e-5, atol=1e-6)


def _adam_numpy(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam (Kingma & Ba, Algorithm 1, eps outside the square root), one parameter array."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


def test_a_module_with_its_own_optimizer_follows_it_and_the_rest_the_shared_one():
    """SGD + momentum on the encoder, Adam on the denoiser (each at a constant lr): three steps
    equal the two numpy references; the shared gradient clip sees only the shared leaves."""
    rng = np.random.default_rng(1)
    params = {
        "encoder": {"w": rng.normal(size=(3, 2)).astype(np.float32)},
        "denoiser": {"w": rng.normal(size=(4,)).astype(np.float32)},
    }
    grads = [{k: {"w": rng.normal(size=v["w"].shape).astype(np.float32)} for k, v in params.items()} for _ in range(3)]
    block = optim.default_block(
        name="sgd",
        lr=0.1,
        weight_decay=0.0,
        schedule="constant",
        modules={"denoiser": {"name": "adam", "lr": 0.01, "weight_decay": 0.0, "schedule": "constant"}},
    )
    tx, _ = optim.make(block, 10)
    state = tx.init(params)
    p = jax.tree.map(jnp.asarray, params)
    for g in grads:
        upd, state = tx.update(g, state, p)
        p = jax.tree.map(lambda a, b: a + b, p, upd)
    np.testing.assert_allclose(
        np.asarray(p["encoder"]["w"]),
        _sgd_momentum_numpy(params["encoder"]["w"], [g["encoder"]["w"] for g in grads], 0.1),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(p["denoiser"]["w"]),
        _adam_numpy(params["denoiser"]["w"], [g["denoiser"]["w"] for g in grads], 0.01),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "modules,match",
    [
        ({"decoder": {"name": "adam"}}, r"modules names \['decoder'\]"),
        ({"denoiser": {"name": "adan"}}, r"optimizer\.modules\.denoiser\.name"),
        ({"denoiser": {"modules": {"x": {}}}}, r"cannot split"),
        ({"denoiser": 0.1}, r"modules\.denoiser=0\.1: expected an optimizer block"),
    ],
)
def test_bad_module_optimizers_are_refused_naming_the_key(modules, match):
    with pytest.raises(ValueError, match=match):
        tx, _ = optim.make(optim.default_block(name="sgd", lr=0.1, modules=modules), 10)
        tx.init({"encoder": {"w": jnp.zeros(2)}, "denoiser": {"w": jnp.zeros(2)}})


def test_unknown_module_is_refused_naming_the_key():
    tx, _ = optim.make(*_block("adamw", "decoder=0.5"))
    with pytest.raises(ValueError, match="module_lr_scale.*decoder"):
        tx.init({"encoder": {"w": jnp.zeros(2)}})


def test_bad_spelling_is_refused():
    with pytest.raises(ValueError, match="module_lr_scale"):
        optim.make(*_block("sgd", "denoiser:0.1"))[0].init({"denoiser": {"w": jnp.zeros(2)}})


def test_study_swimdiff_arms_train_the_denoiser_with_its_own_adam():
    from conftest import load_config

    from rsjax import study

    cfg = load_config("study_eurosat", "cpu")
    mods = study.arm_config(cfg, "swimdiff", 0, 1000).optimizer.modules.to_dict()
    assert mods == {"denoiser": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}}
    cfg.swimdiff_denoiser_lr = 3e-4  # as --config.swimdiff_denoiser_lr=3e-4 does
    assert study.arm_config(cfg, "moco_v2_diffusion", 0, 1000).optimizer.modules.denoiser.lr == 3e-4
    for arm in ("moco_v2_matching", "simclr"):
        a = study.arm_config(cfg, arm, 0, 1000).optimizer
        assert a.module_lr_scale == "" and not a.modules.to_dict()
