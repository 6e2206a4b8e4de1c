"""FALSE method: global-batch loss independent of the device count, the alpha = 0 / T > 1
degenerate cases equal SimCLR's NT-Xent, diagnostics, config and the restart schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _method_check import assert_trees_close, load_config, loss_on_mesh, random_batch

from rsjax import losses, methods, schedules, train


@pytest.fixture(scope="module")
def setup():
    config = load_config("false")
    method = methods.get_method(config)
    # view2 close to view1: positive cosines pass the 0.9 gate, so FNCC acts.
    batch = random_batch(config, 16, view2_noise=0.05)
    variables = jax.jit(lambda b: method.init(jax.random.PRNGKey(0), b))(batch)
    return config, method, batch, variables


@pytest.mark.parametrize("fnsd_mode", ["official", "per_anchor"])
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
    expected = 1 if fnsd_mode == "official" else 32
    assert int(m1["false_calibrated"]) == expected and int(m1["false_gated"]) == 32
    assert float(m1["loss_contrastive"]) < float(m1["loss_ntxent"])


def test_alpha_zero_is_simclr_loss(setup):
    config, _, batch, variables = setup
    config = config.copy_and_resolve_references()
    config.loss.alpha = 0.0
    method = methods.get_method(config)
    params, batch_stats, extra = variables
    rngs = {n: jax.random.PRNGKey(i) for i, n in enumerate(train.RNG_STREAMS)}
    loss, aux = method.loss(params, batch_stats, extra, batch, rngs, 0)
    x = jnp.concatenate([batch["view1"], batch["view2"]])
    z, _ = method.embed(params, batch_stats, x, train=True)
    ref = jnp.mean(losses.nt_xent(z[:16], z[16:], temperature=config.loss.temperature))
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    assert int(aux["metrics"]["false_calibrated"]) == 0


def test_bad_fnsd_mode_names_the_key():
    config = load_config("false")
    config.loss.fnsd_mode = "upper_triangle"
    with pytest.raises(ValueError, match="loss.fnsd_mode"):
        methods.get_method(config)


def test_config_variants():
    paper = load_config("false", "paper")
    assert paper.model.name == "resnet50" and paper.model.proj_layers == 3
    assert (paper.model.proj_hidden_dim, paper.model.proj_dim) == (2048, 128)
    assert paper.loss.temperature == 0.5 and paper.batch_size == 256
    assert paper.optimizer.name == "lars" and paper.optimizer.schedule == "cosine_restarts"
    demo = load_config("false", "demo")
    assert demo.model.name == "resnet10_w32" and demo.data.image_size == 32


def test_cosine_restarts_schedule():
    s = schedules.warmup_cosine_restarts(peak_value=1.0, warmup_steps=10, total_steps=110, num_cycles=2,
                                         cycle_decay=0.5, final_fraction=0.0)
    np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(s(35), 0.5, atol=1e-6)     # half-way through cycle 0
    np.testing.assert_allclose(s(59.999), 0.0, atol=1e-6)
    np.testing.assert_allclose(s(60), 0.5, atol=1e-6)     # restart at peak * 0.5
    np.testing.assert_allclose(s(110), 0.0, atol=1e-6)
    # one cycle, no decay == the trainer's warm-up + cosine
    config = load_config("false", "demo")
    config.optimizer.num_cycles = 1
    a, b = schedules.from_config(config), schedules.warmup_cosine_restarts(
        peak_value=config.optimizer.lr, warmup_steps=config.optimizer.warmup_steps,
        total_steps=config.total_steps, num_cycles=1)
    config.optimizer.schedule = "cosine"
    c = schedules.from_config(config)
    for step in (0, 3, 10, 100, 299):
        np.testing.assert_allclose(a(step), b(step), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(b(step), c(step), rtol=1e-5, atol=1e-9)
    config.optimizer.schedule = "step"
    with pytest.raises(ValueError, match="optimizer.schedule"):
        schedules.from_config(config)


def test_trainer_uses_restart_schedule():
    config = load_config("false", "demo")
    trainer, ours = train.make_schedule(config), schedules.from_config(config)
    for step in (0, 50, 170, 200, 290):
        np.testing.assert_allclose(trainer(step), ours(step), rtol=1e-6)
