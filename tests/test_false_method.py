"""FALSE method: global-batch loss independent of the device count, the alpha = 0 / T > 1
degenerate cases equal SimCLR's NT-Xent, diagnostics, config and the restart schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _method_check import assert_trees_close, load_config, loss_on_mesh, random_batch

from rsjax import losses, methods, optim, train


@pytest.fixture(scope="module")
def setup():
    config = load_config("false")
    method = methods.get_method(config)
    # view2 close to view1: positive cosines pass the 0.9 gate, so FNCC acts.
    batch = random_batch(config, 16, view2_noise=0.05)
    variables = jax.jit(lambda b: method.init(jax.random.PRNGKey(0), b))(batch)
    return config, method, batch, variables


def _np_nt_xent(z1, z2, tau):
    """Independent float64 NT-Xent per anchor: -log(e^{s_ip/tau} / sum_{j != i} e^{s_ij/tau})."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n, b = len(z), len(z1)
    s = np.exp(z @ z.T / tau)
    return np.array([-np.log(s[i, (i + b) % n] / (s[i].sum() - s[i, i])) for i in range(n)])


@pytest.mark.parametrize("fnsd_mode", ["vissl", "gate_then_pick", "per_anchor"])
def test_loss_same_on_1_and_8_devices(setup, fnsd_mode):
    assert jax.device_count() == 8
    config, _, batch, variables = setup
    config = config.copy_and_resolve_references()
    config.loss.fnsd_mode = fnsd_mode
    config.loss.threshold = -1.0  # gate every anchor: the FNSD selection spans all devices
    method = methods.get_method(config)
    one = loss_on_mesh(method, variables, batch, jax.devices()[:1])
    eight = loss_on_mesh(method, variables, batch, jax.devices())
    np.testing.assert_allclose(one[0], eight[0], rtol=1e-5)
    assert_trees_close(one[1], eight[1], rtol=2e-4, atol=2e-6, scale_atol=1e-3)  # gradients
    assert_trees_close(one[2]["batch_stats"], eight[2]["batch_stats"])  # global BN statistics
    m1, m8 = one[2]["metrics"], eight[2]["metrics"]
    assert m1["false_calibrated"] == m8["false_calibrated"]
    # every row gated: vissl calibrates the row(s) of the global arg-min cell(s) (>= 1),
    # gate_then_pick exactly one row, per_anchor every row
    if fnsd_mode == "vissl":
        assert int(m1["false_calibrated"]) >= 1
    else:
        assert int(m1["false_calibrated"]) == (1 if fnsd_mode == "gate_then_pick" else 32)
    assert int(m1["false_gated"]) == 32
    assert float(m1["loss_contrastive"]) < float(m1["loss_ntxent"])


@pytest.mark.parametrize("fnsd_mode", ["vissl", "gate_then_pick"])
def test_alpha_zero_is_simclr_loss(setup, fnsd_mode):
    """alpha = 0 gives NT-Xent: the method (Python alpha, short-circuit) and the loss with a
    TRACED alpha through jit (the general FNSD path), both against an independent numpy NT-Xent;
    the same traced path with alpha = 1 differs, so the comparison can fail."""
    config, _, batch, variables = setup
    config = config.copy_and_resolve_references()
    config.loss.alpha = 0.0
    config.loss.threshold = -1.0  # every row gated: with alpha > 0 FNCC would act
    config.loss.fnsd_mode = fnsd_mode
    method = methods.get_method(config)
    params, batch_stats, extra = variables
    rngs = {n: jax.random.PRNGKey(i) for i, n in enumerate(train.RNG_STREAMS)}
    loss, aux = jax.jit(lambda p: method.loss(p, batch_stats, extra, batch, rngs, 0))(params)
    x = jnp.concatenate([batch["view1"], batch["view2"]])
    z, _ = method.embed(params, batch_stats, x, train=True)
    z1, z2 = np.asarray(z[:16]), np.asarray(z[16:])
    tau = config.loss.temperature
    ref = _np_nt_xent(z1, z2, tau)
    np.testing.assert_allclose(loss, ref.mean(), rtol=1e-5)
    assert int(aux["metrics"]["false_calibrated"]) == 0

    f = jax.jit(
        lambda a, b, al: losses.false_nt_xent(a, b, temperature=tau, threshold=-1.0, alpha=al, fnsd_mode=fnsd_mode)
    )
    np.testing.assert_allclose(f(z1, z2, jnp.float32(0.0)), ref, rtol=1e-5, atol=1e-6)
    assert not np.allclose(f(z1, z2, jnp.float32(1.0)), ref, rtol=1e-5, atol=1e-6)


def test_bad_fnsd_mode_names_the_key():
    config = load_config("false")
    config.loss.fnsd_mode = "upper_triangle"
    with pytest.raises(ValueError, match="loss.fnsd_mode"):
        methods.get_method(config)
    config.loss.fnsd_mode = "official"  # ambiguous former name: refused, naming the new choices
    with pytest.raises(ValueError, match=r"config\.loss\.fnsd_mode.*'vissl'.*'gate_then_pick'"):
        methods.get_method(config)


def test_config_variants():
    """:paper against the official yaml (GeoX-Lab/FALSE configs/config/pretrain/FALSE/
    false_1gpu_resnet.yaml; literal values from it)."""
    paper = load_config("false", "paper")
    assert paper.model.name == "resnet50"  # TRUNK resnet DEPTH 50
    # HEAD: mlp [2048, 2048] (use_relu, but skip_last_layer_relu_bn) + mlp [2048, 128]
    assert (paper.model.proj_layers, paper.model.proj_hidden_dim, paper.model.proj_dim) == (2, 2048, 128)
    assert paper.model.proj_bn is False and paper.model.proj_hidden_act == "none"
    assert paper.loss.temperature == 0.5 and paper.loss.threshold == 0.9 and paper.loss.alpha == 1
    assert paper.loss.fnsd_mode == "vissl"
    assert paper.batch_size == 256  # BATCHSIZE_PER_REPLICA x 1 GPU
    assert paper.total_steps == 200 * (8192 // 256)  # num_epochs 200
    o = paper.optimizer
    assert o.name == "lars" and o.momentum == 0.9 and o.weight_decay == 1e-6
    assert o.trust_coefficient == 0.001 and o.lars_eps == 1e-8 and o.decay_bias and o.trust_ratio_all
    assert o.schedule == "vissl_cosine_warm_restart" and o.wave == "full" and o.adaptive_restarts
    assert (o.warmup_start_lr, o.lr, o.restart_interval) == (0.6, 4.8, 0.334)
    np.testing.assert_allclose(o.lr * o.final_lr_fraction, 0.0048)
    assert o.warmup_steps == paper.total_steps // 10  # lengths [0.1, 0.9]
    demo = load_config("false", "demo")
    assert demo.model.name == "resnet10_w32" and demo.data.image_size == 32
    assert demo.loss.fnsd_mode == "vissl"


def test_official_projector_is_two_linear_layers():
    """The :paper head is x W1 + b1 then W2 + b2: no BN, no ReLU (checked by linearity)."""
    config = load_config("false", "paper")
    config.model.name = "tiny"
    method = methods.get_method(config)
    x = np.random.default_rng(0).normal(size=(4, 2048)).astype(np.float32)
    v = method.projector.init(jax.random.PRNGKey(0), x, train=False)
    assert "batch_stats" not in v or not v["batch_stats"]
    p = v["params"]
    assert sorted(p) == ["dense_0", "dense_out"]
    ref = (x @ np.asarray(p["dense_0"]["kernel"]) + np.asarray(p["dense_0"]["bias"])) @ np.asarray(
        p["dense_out"]["kernel"]
    ) + np.asarray(p["dense_out"]["bias"])
    got = method.projector.apply(v, x, train=True)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert got.shape == (4, 128)


def test_cosine_restarts_schedule():
    s = optim.warmup_cosine_restarts(
        peak_value=1.0, warmup_steps=10, total_steps=110, num_cycles=2, cycle_decay=0.5, final_fraction=0.0
    )
    np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(s(35), 0.5, atol=1e-6)  # half-way through cycle 0
    np.testing.assert_allclose(s(59.999), 0.0, atol=1e-6)
    np.testing.assert_allclose(s(60), 0.5, atol=1e-6)  # restart at peak * 0.5
    np.testing.assert_allclose(s(110), 0.0, atol=1e-6)
    # one cycle, no decay == the trainer's warm-up + cosine
    config = load_config("false", "demo")
    config.optimizer.num_cycles = 1
    a, b = (
        optim.schedule(config.optimizer, config.total_steps),
        optim.warmup_cosine_restarts(
            peak_value=config.optimizer.lr,
            warmup_steps=config.optimizer.warmup_steps,
            total_steps=config.total_steps,
            num_cycles=1,
        ),
    )
    config.optimizer.schedule = "cosine"
    c = optim.schedule(config.optimizer, config.total_steps)
    for step in (0, 3, 10, 100, 299):
        np.testing.assert_allclose(a(step), b(step), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(b(step), c(step), rtol=1e-5, atol=1e-9)
    config.optimizer.schedule = "step"
    with pytest.raises(ValueError, match="optimizer.schedule"):
        optim.schedule(config.optimizer, config.total_steps)


def test_trainer_uses_restart_schedule():
    config = load_config("false", "demo")
    trainer = optim.make(config.optimizer, config.total_steps)[1]  # what train.fit steps with
    ours = optim.schedule(config.optimizer, config.total_steps)
    for step in (0, 50, 170, 200, 290):
        np.testing.assert_allclose(trainer(step), ours(step), rtol=1e-6)
