"""rsjax.optim: the one optimizer + schedule builder.

References are independent of the code under test: schedules against their closed-form
formulas (and a few hand-computed values), optimizers against numpy ports written here
(SGD with L2 and momentum, torch-style Adam with L2, optax's LARS chain with its masks), and
the plateau scale against the same optimizer built at ``lr * scale``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rsjax import optim
from rsjax.errors import ConfigError


def _run(tx, params, grads, state=None):
    state = tx.init(params) if state is None else state
    p = jax.tree.map(jnp.asarray, params)
    for g in grads:
        upd, state = tx.update(g, state, p)
        p = jax.tree.map(lambda a, b: a + b, p, upd)
    return jax.tree.map(np.asarray, p), state


def _params(rng):
    return {
        "encoder": {
            "conv": {
                "kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
                "bias": rng.normal(size=(4,)).astype(np.float32),
            },
            "bn1": {
                "scale": (1 + 0.1 * rng.normal(size=(4,))).astype(np.float32),
                "bias": rng.normal(size=(4,)).astype(np.float32),
            },
        },
        "head": {
            "kernel": rng.normal(size=(4, 3)).astype(np.float32),
            "bias": rng.normal(size=(3,)).astype(np.float32),
        },
    }


def _grads(rng, params, n=3, scale=1.0):
    return [jax.tree.map(lambda p: (scale * rng.normal(size=p.shape)).astype(np.float32), params) for _ in range(n)]


def _flat(tree):
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


# --------------------------------------------------------------------------------------
# Schedules against their formulas
# --------------------------------------------------------------------------------------
def _eval(sched, steps):
    return np.array([float(sched(s)) for s in steps])


def test_cosine_schedule_formula():
    lr, w, t, f, lr0 = 0.1, 3, 13, 0.1, 0.02
    blk = optim.default_block(lr=lr, warmup_steps=w, final_lr_fraction=f, warmup_start_lr=lr0)
    steps = np.arange(0, t + 3)
    want = np.where(
        steps < w,
        lr0 + (lr - lr0) * steps / w,
        lr * f + (lr - lr * f) * (1 + np.cos(np.pi * np.clip(steps - w, 0, t - w) / (t - w))) / 2,
    )
    np.testing.assert_allclose(_eval(optim.schedule(blk, t), steps), want, rtol=1e-6, atol=1e-9)
    # by hand: half-way through the decay (s = 8) the value is (lr + lr f) / 2 = 0.055; the end 0.01
    np.testing.assert_allclose(_eval(optim.schedule(blk, t), [8, 13, 20]), [0.055, 0.01, 0.01], rtol=1e-6)
    # no warm-up: starts at lr
    np.testing.assert_allclose(float(optim.schedule(optim.default_block(lr=0.3), 10)(0)), 0.3, rtol=1e-7)


def test_poly_schedule_formula():
    lr, w, t, power, f = 0.01, 2, 12, 0.9, 0.05
    blk = optim.default_block(lr=lr, schedule="poly", warmup_steps=w, poly_power=power, final_lr_fraction=f)
    steps = np.arange(0, t + 3)
    u = np.clip((steps - w) / (t - w), 0, 1)
    want = np.where(steps < w, lr * steps / w, lr * f + (lr - lr * f) * (1 - u) ** power)
    np.testing.assert_allclose(_eval(optim.schedule(blk, t), steps), want, rtol=1e-6, atol=1e-10)
    # by hand, no warm-up, power 1, f 0: lr (1 - s / T)
    blk = optim.default_block(lr=1.0, schedule="poly", poly_power=1.0)
    np.testing.assert_allclose(_eval(optim.schedule(blk, 4), [0, 1, 2, 3, 4, 9]), [1, 0.75, 0.5, 0.25, 0, 0], atol=1e-7)


def test_constant_schedule_formula():
    np.testing.assert_allclose(
        _eval(optim.schedule(optim.default_block(lr=0.2, schedule="constant"), 5), range(8)), [0.2] * 8, rtol=1e-7
    )
    blk = optim.default_block(lr=0.2, schedule="constant", warmup_steps=4)
    np.testing.assert_allclose(
        _eval(optim.schedule(blk, 10), range(7)), [0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2], rtol=1e-6, atol=1e-9
    )


def test_cosine_restarts_warmup_start():
    # W = 4 from 0.2 to 1.0, then 2 cycles of 5 steps (peak 1, then 0.5), ending at 0
    blk = optim.default_block(
        lr=1.0, schedule="cosine_restarts", warmup_steps=4, warmup_start_lr=0.2, num_cycles=2, cycle_decay=0.5
    )
    s = optim.schedule(blk, 14)
    steps = np.arange(15)
    k = np.clip(np.floor((steps - 4) / 5), 0, 1)
    frac = np.clip((steps - 4 - 5 * k) / 5, 0, 1)
    want = np.where(steps < 4, 0.2 + 0.8 * steps / 4, 0.5**k * (1 + np.cos(np.pi * frac)) / 2)
    np.testing.assert_allclose(_eval(s, steps), want, rtol=1e-5, atol=1e-7)


def test_schedule_tolerates_a_warmup_longer_than_the_run():
    # the smoke configs: 4 steps, 10-step warm-up (schedule runs as if T = W + 1)
    s = optim.schedule(optim.default_block(lr=1.0, warmup_steps=10), 4)
    np.testing.assert_allclose(_eval(s, range(4)), [0, 0.1, 0.2, 0.3], atol=1e-7)


# --------------------------------------------------------------------------------------
# Optimizers against numpy ports
# --------------------------------------------------------------------------------------
def _sgd_numpy(p, grads, lr, wd, mom, decay):
    """SGD, L2 ``wd * p`` added to the gradient (when ``decay``), heavy-ball momentum."""
    v = np.zeros_like(p)
    for g in grads:
        g = g + wd * p if decay else g
        v = g + mom * v
        p = p - lr * v
    return p


def _adam_l2_numpy(p, grads, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adam(weight_decay=wd): L2 on the gradient, bias-corrected moments."""
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


def _lars_numpy(p, grads, lr, wd, mom, tc, eps, decay, trust):
    """optax.lars on one leaf: (+ wd p) -> x tc |p| / (|u| + eps) (1 when a norm is 0) -> x -lr -> trace."""
    t = np.zeros_like(p, np.float64)
    p = p.astype(np.float64)
    for g in grads:
        u = g + wd * p if decay else g.astype(np.float64)
        if trust:
            pn, un = np.linalg.norm(p), np.linalg.norm(u)
            u = u * (1.0 if pn == 0 or un == 0 else tc * pn / (un + eps))
        u = -lr * u
        t = u + mom * t
        p = p + t
    return p


def test_sgd_matches_numpy_decay_mask():
    rng = np.random.default_rng(0)
    params, lr, wd = _params(rng), 0.05, 0.1
    grads = _grads(rng, params)
    tx, _ = optim.make(optim.default_block(name="sgd", lr=lr, weight_decay=wd, schedule="constant"), 10)
    got = _flat(_run(tx, params, grads)[0])
    for name, p in _flat(params).items():
        want = _sgd_numpy(p, [_flat(g)[name] for g in grads], lr, wd, 0.9, decay=p.ndim > 1)
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_adam_weight_decay_is_torch_l2():
    rng = np.random.default_rng(1)
    params, lr, wd = _params(rng), 0.01, 0.5
    grads = _grads(rng, params)
    tx, _ = optim.make(optim.default_block(name="adam", lr=lr, weight_decay=wd, schedule="constant"), 10)
    got = _flat(_run(tx, params, grads)[0])
    for name, p in _flat(params).items():
        g = [_flat(x)[name] for x in grads]
        want = _adam_l2_numpy(p, g, lr, wd if p.ndim > 1 else 0.0)
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("decay_bias,trust_all", [(False, False), (True, True)])
def test_lars_masks_match_numpy(decay_bias, trust_all):
    rng = np.random.default_rng(2)
    params, lr, wd, tc, eps = _params(rng), 0.5, 0.01, 0.001, 1e-8
    grads = _grads(rng, params)
    blk = optim.default_block(
        name="lars",
        lr=lr,
        weight_decay=wd,
        schedule="constant",
        trust_coefficient=tc,
        lars_eps=eps,
        decay_bias=decay_bias,
        trust_ratio_all=trust_all,
    )
    got = _flat(_run(optim.make(blk, 10)[0], params, grads)[0])
    for name, p in _flat(params).items():
        in_bn = "bn1" in name
        decay = (not in_bn) if decay_bias else p.ndim > 1  # VISSL regularize_bias, BN never decayed
        trust = True if trust_all else p.ndim > 1  # apex LARC adapts every parameter
        want = _lars_numpy(p, [_flat(g)[name] for g in grads], lr, wd, 0.9, tc, eps, decay, trust)
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_module_lr_scale_is_a_per_module_sgd_lr():
    rng = np.random.default_rng(3)
    params, lr, wd = _params(rng), 0.1, 0.05
    grads = _grads(rng, params)
    blk = optim.default_block(name="sgd", lr=lr, weight_decay=wd, schedule="constant", module_lr_scale="head=0.1")
    got = _flat(_run(optim.make(blk, 10)[0], params, grads)[0])
    for name, p in _flat(params).items():
        mod_lr = lr * 0.1 if name.startswith("head/") else lr
        want = _sgd_numpy(p, [_flat(g)[name] for g in grads], mod_lr, wd, 0.9, decay=p.ndim > 1)
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_grad_clip_clips_the_global_norm():
    rng = np.random.default_rng(4)
    params = {"w": rng.normal(size=(3, 2)).astype(np.float32)}
    grads = [{"w": np.full((3, 2), 2.0, np.float32)}]  # norm sqrt(24) -> clipped to 1
    blk = optim.default_block(name="sgd", lr=0.1, weight_decay=0.0, momentum=0.0, schedule="constant", grad_clip=1.0)
    got = _run(optim.make(blk, 10)[0], params, grads)[0]["w"]
    np.testing.assert_allclose(got, params["w"] - 0.1 * 2.0 / math.sqrt(24.0), rtol=1e-6)


# --------------------------------------------------------------------------------------
# Freezing
# --------------------------------------------------------------------------------------
def test_frozen_patterns():
    params = _params(np.random.default_rng(5))
    f = lambda pat: _flat(optim.frozen(params, optim.default_block(freeze=pat)))  # noqa: E731
    assert {k for k, v in f("encoder/*").items() if v} == {
        "encoder/conv/kernel",
        "encoder/conv/bias",
        "encoder/bn1/scale",
        "encoder/bn1/bias",
    }
    assert f("encoder") == f("encoder/*") == f("enc*")
    assert {k for k, v in f("*/bias").items() if v} == {"encoder/conv/bias", "encoder/bn1/bias", "head/bias"}
    assert {k for k, v in f("head/kernel, encoder/bn1").items() if v} == {
        "head/kernel",
        "encoder/bn1/scale",
        "encoder/bn1/bias",
    }
    assert not any(f("").values())


def test_a_pattern_matching_nothing_is_refused():
    params = _params(np.random.default_rng(6))
    blk = optim.default_block(freeze="encoder/*,decoder/*")
    with pytest.raises(ConfigError, match=r"config\.finetune\.optimizer\.freeze.*decoder/\*"):
        optim.frozen(params, blk, where="finetune.optimizer")
    tx, _ = optim.make(blk, 10, where="transfer.optimizer")
    with pytest.raises(ConfigError, match=r"config\.transfer\.optimizer\.freeze.*decoder"):
        tx.init(params)


@pytest.mark.parametrize("name", ["adamw", "sgd", "lars", "adam"])
def test_frozen_leaves_stay_bit_identical(name):
    rng = np.random.default_rng(7)
    params = _params(rng)
    grads = _grads(rng, params, n=4)
    blk = optim.default_block(name=name, lr=0.05, weight_decay=0.1, freeze="encoder/*", grad_clip=5.0)
    got, _ = _run(optim.make(blk, 10)[0], params, grads)
    got, before = _flat(got), _flat(params)
    for name_, p in before.items():
        if name_.startswith("encoder/"):
            assert np.array_equal(got[name_], p), name_  # no update, no weight decay
        else:
            assert not np.allclose(got[name_], p), name_


def test_freeze_does_not_touch_the_trained_leaves():
    # huge gradients on the frozen encoder: the clip norm is the trained leaves' own, so the head
    # follows plain SGD (its gradient norm is below grad_clip)
    rng = np.random.default_rng(8)
    params = _params(rng)
    grads = _grads(rng, params, n=3, scale=0.01)
    for g in grads:
        g["encoder"] = jax.tree.map(lambda x: x * 1e4, g["encoder"])
    blk = optim.default_block(
        name="sgd", lr=0.1, weight_decay=0.01, schedule="constant", freeze="encoder", grad_clip=1.0
    )
    got = _flat(_run(optim.make(blk, 10)[0], params, grads)[0])
    for name, p in _flat(params).items():
        if name.startswith("head/"):
            want = _sgd_numpy(p, [_flat(g)[name] for g in grads], 0.1, 0.01, 0.9, decay=p.ndim > 1)
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-7, err_msg=name)


def test_freezes_module():
    fm = lambda pat, m="encoder": optim.freezes_module(optim.default_block(freeze=pat), m)  # noqa: E731
    assert fm("encoder") and fm("encoder/*") and fm("enc*") and fm("head/*,encoder")
    assert not fm("") and not fm("*/bias") and not fm("encoder/conv/*") and not fm("encoder/*", "head")


# --------------------------------------------------------------------------------------
# ReduceLROnPlateau through make()
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["adamw", "sgd", "adam"])
def test_plateau_scale_is_the_lr_times_scale(name):
    rng = np.random.default_rng(9)
    params = _params(rng)
    grads = _grads(rng, params, n=3)
    blk = optim.default_block(name=name, lr=0.01, weight_decay=0.1, schedule="constant", plateau=dict(enabled=True))
    tx, _ = optim.make(blk, 10)
    state = tx.init(params)
    st = optim.plateau_get(state)
    assert st == {"scale": 1.0, "best": -math.inf, "num_bad": 0, "cooldown_counter": 0, "num_evals": 0}
    state = optim.plateau_set(state, dict(st, scale=0.25, num_bad=3))
    assert optim.plateau_get(state)["scale"] == 0.25 and optim.plateau_get(state)["num_bad"] == 3
    assert state[-1].num_bad.dtype == np.int32 and state[-1].scale.dtype == np.float32
    got, _ = _run(tx, params, grads, state)
    ref_blk = optim.default_block(name=name, lr=0.0025, weight_decay=0.1, schedule="constant")
    want, _ = _run(optim.make(ref_blk, 10)[0], params, grads)
    for k, v in _flat(want).items():
        np.testing.assert_allclose(_flat(got)[k], v, rtol=2e-5, atol=1e-7, err_msg=k)


def test_plateau_rule_of_make_matches_plateau_update_and_survives_freeze():
    params = _params(np.random.default_rng(10))
    blk = optim.default_block(name="adam", lr=0.1, freeze="encoder", plateau=dict(enabled=True, patience=1))
    tx, _ = optim.make(blk, 10)
    state = tx.init(params)
    kw = optim.plateau_kwargs(blk)
    assert kw["base_lr"] == 0.1 and kw["patience"] == 1 and kw["factor"] == 0.5
    for metric in (0.5, 0.4, 0.4):  # improve, bad 1, bad 2 > patience 1 -> lr x 0.5
        state = optim.plateau_set(state, optim.plateau_update(optim.plateau_get(state), metric, **kw))
    got = optim.plateau_get(state)
    assert got["scale"] == 0.5 and got["best"] == 0.5 and got["num_evals"] == 3 and got["num_bad"] == 0


def test_plateau_set_keeps_the_sharding():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rep = NamedSharding(mesh, PartitionSpec())
    tx, _ = optim.make(optim.default_block(plateau=dict(enabled=True)), 10)
    state = jax.device_put(tx.init({"w": np.ones((2, 2), np.float32)}), rep)
    new = optim.plateau_set(state, dict(optim.plateau_get(state), scale=0.5))
    assert new[-1].scale.sharding == rep and float(new[-1].scale) == 0.5


def test_plateau_get_without_plateau_is_a_clear_error():
    tx, _ = optim.make(optim.default_block(), 10)
    with pytest.raises(ConfigError, match="plateau.enabled"):
        optim.plateau_get(tx.init({"w": np.ones(2, np.float32)}))


# --------------------------------------------------------------------------------------
# validate() and default_block()
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,key",
    [
        (dict(name="adagrad"), "name"),
        (dict(schedule="step"), "schedule"),
        (dict(lr=0.0), "lr"),
        (dict(lr=-1e-3), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(lr="fast"), "lr"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(momentum=1.0), "momentum"),
        (dict(b2=1.5), "b2"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(warmup_steps=2.5), "warmup_steps"),
        (dict(grad_clip=-1.0), "grad_clip"),
        (dict(num_cycles=0), "num_cycles"),
        (dict(restart_interval=0.0), "restart_interval"),
        (dict(wave="square"), "wave"),
        (dict(poly_power=0.0), "poly_power"),
        (dict(nesterov="yes"), "nesterov"),
        (dict(module_lr_scale="denoiser:0.1"), "module_lr_scale"),
        (dict(module_lr_scale="denoiser=-1"), "module_lr_scale"),
        (dict(plateau=dict(factor=1.0)), "plateau.factor"),
        (dict(plateau=dict(mode="up")), "plateau.mode"),
        (dict(plateau=dict(threshold_mode="pct")), "plateau.threshold_mode"),
        (dict(plateau=dict(patience=-1)), "plateau.patience"),
        (dict(plateau=dict(val_fraction=1.0)), "plateau.val_fraction"),
        (dict(name="lars", plateau=dict(enabled=True)), "plateau.enabled"),
    ],
)
def test_validate_names_the_key(overrides, key):
    blk = optim.default_block().to_dict()  # a plain dict: also the wrong types ConfigDict would refuse
    for k, v in overrides.items():
        if k == "plateau":
            blk["plateau"].update(v)
        else:
            blk[k] = v
    with pytest.raises(ConfigError, match=rf"config\.finetune\.optimizer\.{key}\b"):
        optim.validate(blk, "finetune.optimizer")
    with pytest.raises(ConfigError):  # make() validates too
        optim.make(blk, 100, where="finetune.optimizer")


def test_validate_unknown_keys_and_total_steps():
    blk = ml_collections.ConfigDict(dict(name="sgd", lr=0.1, learning_rate=0.1))
    with pytest.raises(ConfigError, match=r"config\.optimizer: unknown key.*learning_rate"):
        optim.validate(blk)
    blk = ml_collections.ConfigDict(dict(lr=0.1, plateau=dict(enabled=True, patients=3)))
    with pytest.raises(ConfigError, match=r"config\.transfer\.optimizer\.plateau: unknown key.*patients.*patience"):
        optim.validate(blk, "transfer.optimizer")
    blk = optim.default_block(warmup_steps=100)
    optim.validate(blk)  # fine without a step count
    with pytest.raises(ConfigError, match=r"config\.optimizer\.warmup_steps=100.*100 total steps"):
        optim.validate(blk, total_steps=100)
    optim.validate(blk, total_steps=101)


def test_default_block_is_complete_and_locked():
    blk = optim.default_block(name="sgd", lr=0.3, plateau=dict(enabled=True))
    optim.validate(blk, total_steps=10)
    assert blk.name == "sgd" and blk.lr == 0.3 and blk.plateau.enabled and blk.plateau.factor == 0.5
    assert blk.schedule == "cosine" and blk.freeze == "" and blk.module_lr_scale == ""
    with pytest.raises(AttributeError):
        blk.learning_rate = 0.1  # locked: a typo cannot add a key
    with pytest.raises(ConfigError, match="lerning_rate"):
        optim.default_block(lerning_rate=0.1)
    with pytest.raises(ConfigError, match=r"plateau\.patients.*patience"):
        optim.default_block(plateau=dict(patients=3))
    with pytest.raises(ConfigError, match=r"warmup_steps=2\.5: expected type int"):
        optim.default_block(warmup_steps=2.5)
    assert optim.default_block(module_lr_scale={"denoiser": 0.1}).module_lr_scale == "denoiser=0.1"
    # a partial block gets the defaults: the same optimizer as the complete one
    rng = np.random.default_rng(11)
    params = _params(rng)
    grads = _grads(rng, params, n=2)
    partial = ml_collections.ConfigDict(dict(name="adamw", lr=0.01))
    a = _flat(_run(optim.make(partial, 10)[0], params, grads)[0])
    b = _flat(_run(optim.make(optim.default_block(lr=0.01), 10)[0], params, grads)[0])
    assert all(np.array_equal(a[k], b[k]) for k in a)
