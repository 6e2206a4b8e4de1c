"""MoCo v2 / SwiMDiff state against hand-computed references (facebookresearch/moco builder.py).

* the false-negative count logged as ``scene_false_negatives`` against counts by hand;
* the queue after several real train steps: row ``ptr .. ptr+B`` holds the L2-normalized keys
  of view 2 from the key encoder as it was at the start of that step, the scene ids beside
  them, the pointer advances by B modulo K (MoCo's ``_dequeue_and_enqueue``);
* the key encoder: after each step ``key = m * key + (1 - m) * theta``, theta = the query
  parameters AFTER that step's optimizer update (so the keys of step t use
  ``m * key_{t-1} + (1 - m) * theta_t`` with theta_t the parameters step t starts from,
  exactly what MoCo's forward computes when it updates the key encoder before the keys).

The keys are recomputed with the Flax modules applied directly (no numpy ResNet); the
queue rows, pointer, scene ids, normalization, view and EMA order are checked in numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _method_check import load_config, run_train_steps

from rsjax import methods
from rsjax.methods.moco import scene_false_negatives


def test_scene_false_negatives_counted_by_hand():
    scene = np.array([0, 0, 1, 1, 2, 3], np.int32)
    queue = np.array([7, 0, 2, 9, 9, 1, 7, 8, 0, 9], np.int32)
    # per query: same-scene batch keys other than itself = [1, 1, 1, 1, 0, 0];
    # same-scene queue entries = [2, 2, 1, 1, 1, 0] (scene 0 at rows 1, 8; 1 at 5; 2 at 2)
    assert float(scene_false_negatives(scene, scene, queue, batch_negatives=True)) == pytest.approx(11 / 6)
    assert float(scene_false_negatives(scene, scene, queue, batch_negatives=False)) == pytest.approx(7 / 6)
    assert float(scene_false_negatives(scene, scene, None, batch_negatives=True)) == pytest.approx(4 / 6)
    # a key whose scene differs from its query's does not exclude anything else
    other = np.array([0, 5, 1, 1, 2, 3], np.int32)
    assert float(scene_false_negatives(scene, other, None)) == pytest.approx(3 / 6)


def _np_l2n(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _key_forward(method, key_params, key_bs, x):
    """The key encoder in train mode (batch statistics), projector output, float32."""
    feats, _ = method.encoder.apply(
        {"params": key_params["encoder"], "batch_stats": key_bs["encoder"]}, x, train=True, mutable=["batch_stats"]
    )
    z, _ = method.projector.apply(
        {"params": key_params["projector"], "batch_stats": key_bs["projector"]},
        feats,
        train=True,
        mutable=["batch_stats"],
    )
    return np.asarray(z, np.float32)


def _batches(config, n, scene_offsets):
    rng = np.random.default_rng(0)
    b, s, c = config.batch_size, config.data.image_size, config.model.in_channels
    out = []
    for i in range(n):
        v1 = rng.normal(size=(b, s, s, c)).astype(np.float32)
        out.append(
            {
                "view1": v1,
                "view2": (v1 + rng.normal(size=v1.shape)).astype(np.float32),
                "scene_id": (scene_offsets[i] + np.repeat(np.arange(b // 2), 2)).astype(np.int32),
                "label": np.zeros((b,), np.int32),
            }
        )
    return out


@pytest.mark.parametrize("name,symmetric", [("moco", False), ("swimdiff", True)])
def test_queue_and_key_encoder_follow_moco(name, symmetric):
    config = load_config(name)
    if name == "swimdiff":
        # the matching-only ablation: the denoiser reads the queue and key encoder nowhere, and
        # without it the step compiles in under half the time
        config.swimdiff.lambda_d = 0.0
    config.moco.symmetric = symmetric
    config.moco.momentum = 0.9  # large (1 - m) and lr: the EMA order is visible
    config.optimizer.lr = 0.05
    config.optimizer.warmup_steps = 0
    config.total_steps = 100  # lr stays > 0 over the 6 steps
    b, kq = config.batch_size, config.moco.queue_size
    assert kq == 4 * b, "smoke config: the queue holds 4 batches"
    n = 6  # wraps once: pointers 16, 32, 48, 0, 16, 32
    # step 4 reuses step 0's scenes: while step 4's loss runs, step 0's keys are still in rows 0..B
    offsets = [0, 100, 200, 300, 0, 500]
    batches = _batches(config, n, offsets)
    method = methods.get_method(config)
    states, metrics = run_train_steps(method, config, batches)
    m = 0.9

    # key encoder starts as a copy of the query encoder (MoCo's param_k.data.copy_(param_q.data))
    for part in ("encoder", "projector"):
        for kk, qq in zip(
            jax.tree.leaves(states[0]["extra"]["key_params"][part]), jax.tree.leaves(states[0]["params"][part])
        ):
            np.testing.assert_array_equal(kk, qq)

    queue0 = np.asarray(states[0]["extra"]["queue"])
    np.testing.assert_allclose(np.linalg.norm(queue0, axis=1), 1.0, rtol=1e-5)
    assert np.all(states[0]["extra"]["queue_scene"] == -1) and int(states[0]["extra"]["queue_ptr"]) == 0

    expect_rows = {}  # queue row block -> (keys, scene ids) of the step that wrote it last
    for t in range(n):
        before, after, batch = states[t], states[t + 1], batches[t]
        # EMA after the optimizer: key_new = m * key_old + (1 - m) * params_new
        kp_old, kp_new = before["extra"]["key_params"], after["extra"]["key_params"]
        diff_wrong_order = 0.0
        for part in ("encoder", "projector"):
            for k_old, k_new, p_new, p_old in zip(
                jax.tree.leaves(kp_old[part]),
                jax.tree.leaves(kp_new[part]),
                jax.tree.leaves(after["params"][part]),
                jax.tree.leaves(before["params"][part]),
            ):
                want = m * np.float64(k_old) + (1 - m) * np.float64(p_new)
                np.testing.assert_allclose(k_new, want, rtol=1e-5, atol=1e-6)
                wrong = m * np.float64(k_old) + (1 - m) * np.float64(p_old)
                diff_wrong_order = max(diff_wrong_order, float(np.max(np.abs(wrong - want))))
        assert diff_wrong_order > 1e-4, "params did not move: the EMA-order check would be vacuous"
        # keys of this step: the key encoder as it entered the step, on view 2 (BN over the
        # key batch: view 2 alone, or [view 1; view 2] when symmetric)
        kb = before["extra"]["key_batch_stats"]
        if symmetric:
            z = _key_forward(method, kp_old, kb, np.concatenate([batch["view1"], batch["view2"]]))
            keys, wrong_view = z[b:], z[:b]
        else:
            keys = _key_forward(method, kp_old, kb, batch["view2"])
            wrong_view = _key_forward(method, kp_old, kb, batch["view1"])
        keys, wrong_view = _np_l2n(keys), _np_l2n(wrong_view)
        ptr = (t * b) % kq
        assert int(before["extra"]["queue_ptr"]) == ptr
        assert int(after["extra"]["queue_ptr"]) == (ptr + b) % kq
        q_after = np.asarray(after["extra"]["queue"])
        np.testing.assert_allclose(q_after[ptr : ptr + b], keys, rtol=1e-4, atol=1e-5)
        assert np.max(np.abs(q_after[ptr : ptr + b] - wrong_view)) > 1e-2  # view 1 would be caught
        np.testing.assert_array_equal(after["extra"]["queue_scene"][ptr : ptr + b], batch["scene_id"])
        expect_rows[ptr] = (keys, batch["scene_id"])
        # every other row: what its last writer put there, or the untouched initial entry
        for r in range(0, kq, b):
            if r in expect_rows:
                np.testing.assert_allclose(q_after[r : r + b], expect_rows[r][0], rtol=1e-4, atol=1e-5)
                np.testing.assert_array_equal(after["extra"]["queue_scene"][r : r + b], expect_rows[r][1])
            else:
                np.testing.assert_array_equal(q_after[r : r + b], queue0[r : r + b])
                assert np.all(after["extra"]["queue_scene"][r : r + b] == -1)

    # scene_false_negatives: pairs -> 1 same-scene batch key when the batch keys are candidates;
    # at step 4 the queue still holds step 0's keys (same scenes): 2 more per query.
    in_batch = 1.0 if config.moco.batch_negatives else 0.0
    got = [float(mm["scene_false_negatives"]) for mm in metrics]
    assert got == [in_batch] * 4 + [in_batch + 2.0, in_batch]
    assert config.moco.batch_negatives == (name == "swimdiff")


@pytest.mark.parametrize("conditioning", ["maps", "film"])
def test_swimdiff_nocond_metric_is_zero_conditioning_same_noise_no_gradient(conditioning):
    """loss_diffusion_nocond = L_D with every conditioning input zeroed (maps and the pooled
    vector), loss_diffusion_shuffled = L_D with the conditioning of the image half a batch away,
    same t and noise; conditioning_gain = (nocond - L_D) / nocond; computed on logged steps only
    (NaN otherwise) and never part of the gradient."""
    config = load_config("swimdiff", "smoke")
    config.log_every = 3
    config.total_steps = 100
    config.swimdiff.conditioning = conditioning
    config.swimdiff.log_grad_share = False
    config.swimdiff.log_nocond = True  # the smoke variant leaves it off (compile time)
    method = methods.get_method(config)
    batch = _batches(config, 1, [0])[0]
    params, batch_stats, extra = method.init(jax.random.PRNGKey(0), batch)
    rngs = {"diffusion_t": jax.random.PRNGKey(1), "diffusion_noise": jax.random.PRNGKey(2)}

    def run(params, step):
        return method.loss(params, batch_stats, extra, batch, rngs, step)

    grad_fn = jax.jit(jax.value_and_grad(run, has_aux=True))
    (_, aux2), g2 = grad_fn(params, jnp.int32(2))  # step 3 is logged (3 % log_every == 0)
    (_, aux0), g0 = grad_fn(params, jnp.int32(0))  # step 1 is not
    m = aux2["metrics"]
    for key in ("loss_diffusion_nocond", "loss_diffusion_shuffled", "conditioning_gain"):
        assert np.isnan(aux0["metrics"][key])
    nocond = float(m["loss_diffusion_nocond"])
    # the real L_D with the conditioning replaced, same rng streams
    _, _, _, feats, _ = method.contrastive(params, batch_stats, extra, batch)
    b = batch["view1"].shape[0]
    ld_zero, _ = method.diffusion_loss(params, batch["view1"], [jnp.zeros_like(f) for f in feats], rngs)
    ld_shuf, _ = method.diffusion_loss(
        params, batch["view1"], [np.roll(np.asarray(f), b // 2, axis=0) for f in feats], rngs
    )
    ld_real, _ = method.diffusion_loss(params, batch["view1"], feats, rngs)
    assert nocond == pytest.approx(float(ld_zero), rel=1e-5)
    assert float(m["loss_diffusion_shuffled"]) == pytest.approx(float(ld_shuf), rel=1e-5)
    assert float(m["loss_diffusion"]) == pytest.approx(float(ld_real), rel=1e-5)
    assert float(m["conditioning_gain"]) == pytest.approx(
        (float(ld_zero) - float(ld_real)) / float(ld_zero), rel=1e-4, abs=1e-6
    )
    assert abs(float(ld_real) - nocond) > 1e-6  # the conditioning does enter the denoiser
    # logging it changes no gradient
    for a, c in zip(jax.tree.leaves(g2), jax.tree.leaves(g0)):
        np.testing.assert_array_equal(a, c)


def test_swimdiff_grad_share_is_the_diffusion_terms_share_of_the_encoder_gradient():
    """grad_share_diffusion of the probe step (the variant the loop runs on logged steps) =
    |g_D| / (|g_C| + |g_D|) on the encoder, with g_D and g_C taken independently: jax.grad of the
    same loss with lambda_C = 0 and with lambda_D = 0 (same batch, step and random streams);
    the probe step's update equals the plain step's."""
    from rsjax import optim, train

    config = load_config("swimdiff", "smoke")
    config.swimdiff.log_grad_share = True
    config.swimdiff.lambda_d = 0.5
    method = methods.get_method(config)
    assert method.wants_probe
    batch = _batches(config, 1, [0])[0]
    tx, schedule = optim.make(config.optimizer, config.total_steps)
    state = train.init_state(method, tx, batch, config.seed)
    plain = jax.jit(train.make_train_step(method, tx, schedule, seed=config.seed))
    probe = jax.jit(train.make_train_step(method, tx, schedule, seed=config.seed, probe=True))
    s1, m1 = plain(state, batch)
    assert "grad_share_diffusion" not in m1
    s_probe, m2 = probe(s1, batch)
    s_plain, _ = plain(s1, batch)

    step_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    rngs = {name: jax.random.fold_in(step_key, i) for i, name in enumerate(train.RNG_STREAMS)}

    def grad_with(**lambdas):
        c = config.copy_and_resolve_references()
        for k, v in lambdas.items():
            c.swimdiff[k] = v
        meth = methods.get_method(c)
        return jax.jit(jax.grad(lambda p: meth.loss(p, s1["batch_stats"], s1["extra"], batch, rngs, s1["step"])[0]))(
            s1["params"]
        )["encoder"]

    n_d = float(optax.tree.norm(grad_with(lambda_c=0.0)))
    n_c = float(optax.tree.norm(grad_with(lambda_d=0.0)))
    assert 0.0 < n_d and 0.0 < n_c
    assert float(m2["grad_share_diffusion"]) == pytest.approx(n_d / (n_c + n_d), rel=1e-3)
    # the probe is a metric only: the update equals the plain step's
    for a, c in zip(jax.tree.leaves(s_probe["params"]), jax.tree.leaves(s_plain["params"])):
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)
