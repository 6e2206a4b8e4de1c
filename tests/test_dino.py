"""DINO baseline: pure pieces against numpy, explicit state, device-count independence."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _method_check import assert_trees_close, load_config, loss_on_mesh, random_batch

from rsjax import methods, optim, train
from rsjax.methods import dino


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_dino_loss(s, t, c, ts, tt):
    """Plain loop reference: DINO's DINOLoss.forward."""
    total, n = 0.0, 0
    for iq in range(t.shape[0]):
        q = _np_softmax((t[iq] - c) / tt)
        for v in range(s.shape[0]):
            if v == iq:
                continue
            logp = np.log(_np_softmax(s[v] / ts))
            total += np.mean(np.sum(-q * logp, axis=-1))
            n += 1
    return total / n


@pytest.mark.parametrize("views", [2, 5])
def test_dino_loss_matches_numpy(views):
    rng = np.random.default_rng(0)
    s = rng.normal(size=(views, 6, 11)).astype(np.float32) * 3
    t = rng.normal(size=(2, 6, 11)).astype(np.float32) * 3
    c = rng.normal(size=(11,)).astype(np.float32)
    ref = _np_dino_loss(s.astype(np.float64), t.astype(np.float64), c.astype(np.float64), 0.1, 0.04)
    f = lambda s, t, c: dino.dino_loss(s, t, c, student_temp=0.1, teacher_temp=0.04)  # noqa: E731
    np.testing.assert_allclose(f(s, t, c), ref, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(f)(s, t, c), ref, rtol=1e-5)
    gs, gt = jax.grad(f, argnums=(0, 1))(s, t, c)
    assert np.all(np.isfinite(gs)) and np.all(gt == 0)  # teacher is stop-gradient


def test_dino_loss_extreme_logits_finite():
    s = np.full((3, 2, 4), 1e4, np.float32)
    s[..., 0] = -1e4
    t = -s[:2]
    val = dino.dino_loss(s, t, np.zeros(4, np.float32), student_temp=0.1, teacher_temp=0.04)
    assert np.isfinite(val)


def test_update_center_matches_numpy():
    rng = np.random.default_rng(1)
    c = rng.normal(size=(7,)).astype(np.float32)
    t = rng.normal(size=(2, 5, 7)).astype(np.float32)
    ref = 0.9 * c + 0.1 * t.reshape(-1, 7).mean(0)
    np.testing.assert_allclose(dino.update_center(c, t, 0.9), ref, rtol=1e-6)
    np.testing.assert_allclose(dino.update_center(c, t, 1.0), c)


def test_schedules():
    m = lambda s: float(dino.teacher_momentum(s, base=0.996, total_steps=100))  # noqa: E731
    np.testing.assert_allclose([m(0), m(50), m(100), m(500)], [0.996, 0.998, 1.0, 1.0], atol=1e-7)
    tt = lambda s: float(dino.teacher_temperature(s, warmup_temp=0.04, temp=0.07, warmup_steps=30))  # noqa: E731
    np.testing.assert_allclose([tt(0), tt(15), tt(30), tt(99)], [0.04, 0.055, 0.07, 0.07], atol=1e-7)


def test_crop_resize_samples_the_box():
    # A ramp image: value = row index. Box rows [4, 12) resampled to 4 px -> centres 5, 7, 9, 11
    # (continuous coordinates; pixel i is centred at i + 0.5). The antialiased tent of width 2
    # around each centre keeps the value of a linear ramp away from the border.
    h = w = 16
    img = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None, None], (h, w, 1))[None]
    out = dino.crop_resize(jnp.asarray(img), jnp.array([4.0]), jnp.array([0.0]), jnp.array([8.0]), jnp.array([16.0]), 4)
    np.testing.assert_allclose(np.asarray(out)[0, :, 0, 0], [4.5, 6.5, 8.5, 10.5], atol=1e-4)
    assert out.shape == (1, 4, 4, 1)


def test_local_crops_shapes_and_determinism():
    key = jax.random.PRNGKey(3)
    views = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 16, 16, 3))
    a = dino.local_crops(key, views, num_crops=3, size=8, scale=(0.05, 0.4))
    b = dino.local_crops(key, views, num_crops=3, size=8, scale=(0.05, 0.4))
    assert a.shape == (12, 8, 8, 3)
    np.testing.assert_array_equal(a, b)
    c = dino.local_crops(jax.random.PRNGKey(4), views, num_crops=3, size=8, scale=(0.05, 0.4))
    assert not np.allclose(a, c)


def test_head_weight_norm():
    head = dino.DINOHead(out_dim=10, hidden_dim=8, bottleneck_dim=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 6))
    v = head.init(jax.random.PRNGKey(1), x, train=False)
    assert "last_g" not in v["params"]
    logits = head.apply(v, x, train=False)
    assert logits.shape == (5, 10) and np.all(np.abs(logits) <= 1.0 + 1e-5)  # unit vectors
    # scaling the raw last-layer weights does not change the output (weight normalization)
    v2 = jax.tree.map(lambda a: a, v)
    v2["params"]["last_v"] = v["params"]["last_v"] * 7.0
    np.testing.assert_allclose(head.apply(v2, x, train=False), logits, rtol=1e-5)


@pytest.fixture(scope="module")
def setup():
    config = load_config("dino")
    method = methods.get_method(config)
    batch = random_batch(config, 16, view2_noise=0.5)
    variables = jax.jit(lambda b: method.init(jax.random.PRNGKey(0), b))(batch)
    return config, method, batch, variables


def test_state_is_explicit_and_step_is_pure(setup):
    config, method, batch, variables = setup
    params, batch_stats, extra = variables
    assert set(extra) == {"teacher_params", "teacher_batch_stats", "center"}
    assert extra["center"].shape == (config.dino.out_dim,) and not np.any(extra["center"])
    before = copy.copy(vars(method))
    rngs = {n: jax.random.PRNGKey(i) for i, n in enumerate(train.RNG_STREAMS)}
    f = jax.jit(lambda p, bs, ex, b: method.loss(p, bs, ex, b, rngs, 0))
    l1, aux1 = f(params, batch_stats, extra, batch)
    l2, aux2 = f(params, batch_stats, extra, batch)
    assert float(l1) == float(l2)
    assert_trees_close(aux1, aux2, rtol=0, atol=0)
    assert vars(method).keys() == before.keys() and all(vars(method)[k] is before[k] for k in before)
    # the centre update is the EMA of the teacher logits' global-batch mean
    views = jnp.concatenate([batch["view1"], batch["view2"]])
    t, _ = method.forward(extra["teacher_params"], extra["teacher_batch_stats"], views, train=True)
    ref = 0.9 * np.asarray(extra["center"]) + 0.1 * np.asarray(t).mean(0)
    np.testing.assert_allclose(aux1["center"], ref, rtol=1e-4, atol=1e-6)
    new_extra = method.update_extra(params, aux1["batch_stats"], extra, aux1, 0)
    np.testing.assert_array_equal(new_extra["center"], aux1["center"])
    # at step 0 the teacher moves by (1 - 0.996) towards the (here unchanged) student
    assert_trees_close(new_extra["teacher_params"], params, rtol=1e-6, atol=1e-7)


def test_loss_same_on_1_and_8_devices(setup):
    assert jax.device_count() == 8
    _, method, batch, variables = setup
    one = loss_on_mesh(method, variables, batch, jax.devices()[:1])
    eight = loss_on_mesh(method, variables, batch, jax.devices())
    np.testing.assert_allclose(one[0], eight[0], rtol=1e-5)
    assert_trees_close(one[1], eight[1], rtol=2e-4, atol=2e-6, scale_atol=1e-3)
    assert_trees_close(one[2]["batch_stats"], eight[2]["batch_stats"])
    assert_trees_close(one[2]["center"], eight[2]["center"], rtol=1e-4, atol=1e-6)


def test_trainer_step_traces_once(setup):
    config, method, batch, _ = setup
    from rsjax import sharding as shd

    mesh = shd.make_mesh()
    tx, schedule = optim.make(config.optimizer, config.total_steps)
    state = train.create_state(method, tx, config.seed, mesh)
    step = train.make_train_step(method, tx, schedule, seed=config.seed)
    p_step = train.jit_train_step(step, mesh)
    b = jax.device_put(batch, shd.data_sharded(mesh))
    c0 = np.asarray(state["extra"]["center"])
    for _ in range(2):
        state, m = p_step(state, b)
    assert step.trace_count == 1 and bool(m["finite"])
    assert not np.allclose(np.asarray(state["extra"]["center"]), c0)


def test_paper_config_is_the_readme_resnet50_recipe():
    """configs/dino.py:paper against the DINO reference (literal values, cited):
    facebookresearch/dino README, "ResNet-50 and other convnets trainings":
      main_dino.py --arch resnet50 --optimizer sgd --lr 0.03 --weight_decay 1e-4
        --weight_decay_end 1e-4 --global_crops_scale 0.14 1 --local_crops_scale 0.05 0.14
      (torch.distributed.launch --nproc_per_node=8)
    and main_dino.py argument defaults for everything else."""
    c = load_config("dino", "paper")
    world, per_gpu = 8, 64  # --nproc_per_node=8, --batch_size_per_gpu 64
    assert c.model.name == "resnet50"
    assert c.optimizer.name == "sgd" and c.optimizer.momentum == 0.9  # torch.optim.SGD(momentum=0.9)
    assert c.batch_size == world * per_gpu
    # main_dino: lr = args.lr * batch_size_per_gpu * world_size / 256.
    np.testing.assert_allclose(c.optimizer.lr, 0.03 * world * per_gpu / 256.0)
    np.testing.assert_allclose(c.optimizer.lr * c.optimizer.final_lr_fraction, 1e-6)  # --min_lr
    assert c.optimizer.weight_decay == 1e-4  # --weight_decay 1e-4 --weight_decay_end 1e-4
    assert c.optimizer.get("schedule", "cosine") == "cosine"
    assert c.optimizer.grad_clip == 3.0  # --clip_grad 3.0
    steps_per_epoch = c.total_steps // 100  # --epochs 100
    assert c.optimizer.warmup_steps == 10 * steps_per_epoch  # --warmup_epochs 10
    assert c.dino.freeze_last_layer_steps == 1 * steps_per_epoch  # --freeze_last_layer 1
    assert c.data.augment.startswith("rrc(0.14, 1.0)|")  # --global_crops_scale 0.14 1
    assert tuple(c.dino.local_scale) == (0.05, 0.14)
    assert c.dino.num_local_crops == 8  # --local_crops_number 8
    assert (c.data.image_size, c.dino.local_crop_size) == (224, 96)
    assert c.dino.out_dim == 65536  # --out_dim 65536
    assert (c.dino.hidden_dim, c.dino.bottleneck_dim, c.dino.head_layers) == (2048, 256, 3)  # DINOHead
    assert c.dino.head_bn is False and c.dino.norm_last_layer is True  # --use_bn_in_head, --norm_last_layer
    assert c.dino.momentum_teacher == 0.996  # --momentum_teacher
    # --warmup_teacher_temp 0.04 --teacher_temp 0.04 --warmup_teacher_temp_epochs 0
    assert (c.dino.warmup_teacher_temp, c.dino.teacher_temp, c.dino.warmup_teacher_temp_steps) == (0.04, 0.04, 0)
    assert c.dino.student_temp == 0.1 and c.dino.center_momentum == 0.9  # DINOLoss
    # the teacher temperature the method uses is 0.04 from the first step to the last
    for step in (0, c.total_steps // 2, c.total_steps - 1):
        t = dino.teacher_temperature(
            step,
            warmup_temp=c.dino.warmup_teacher_temp,
            temp=c.dino.teacher_temp,
            warmup_steps=c.dino.warmup_teacher_temp_steps,
        )
        np.testing.assert_allclose(t, 0.04, rtol=1e-6)
