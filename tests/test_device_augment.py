"""On-device augmentation: same operators and distributions as the host pipeline,
deterministic per key, and the in-step (device-resident) path computes the same loss as
the plain step fed the same views."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.data import augment as host
from rsjax.data import device_augment as dev


def test_resample_matrix_equals_host():
    rng = np.random.default_rng(0)
    for _ in range(20):
        in_size, out = int(rng.integers(8, 80)), int(rng.integers(8, 80))
        length = float(rng.uniform(1, in_size))
        start = float(rng.uniform(0, in_size - length))
        np.testing.assert_allclose(
            np.asarray(dev.resample_matrix(start, length, in_size, out)),
            host.resample_matrix(start, length, in_size, out),
            rtol=1e-4,
            atol=1e-5,
        )


def test_blur_matrix_equals_host():
    for size, sigma in [(16, 0.5), (32, 1.0), (64, 0.37)]:
        np.testing.assert_allclose(
            np.asarray(dev.blur_matrix(size, sigma, 1.0)), host.gaussian_kernel_matrix(size, sigma), atol=1e-6
        )


def test_crop_box_distribution_matches_host():
    n = 3000
    rng = np.random.default_rng(1)
    hb = np.array([host.sample_crop_box(64, 64, rng, (0.2, 1.0)) for _ in range(n)])
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    db = np.array(jax.vmap(lambda k: jnp.stack(dev.sample_crop_box(k, 64.0, 64.0, (0.2, 1.0), (3 / 4, 4 / 3))))(keys))
    for boxes in (hb, db):
        y0, x0, ch, cw = boxes.T
        assert (y0 >= 0).all() and (x0 >= 0).all() and (y0 + ch <= 64 + 1e-4).all() and (x0 + cw <= 64 + 1e-4).all()
    area_h, area_d = hb[:, 2] * hb[:, 3] / 4096, db[:, 2] * db[:, 3] / 4096
    assert abs(area_h.mean() - area_d.mean()) < 0.02
    assert abs(np.log(hb[:, 3] / hb[:, 2]).mean() - np.log(db[:, 3] / db[:, 2]).mean()) < 0.02
    assert abs((hb[:, 1] + hb[:, 3] / 2).mean() - (db[:, 1] + db[:, 3] / 2).mean()) < 1.0  # centre x


FLIPS_ONLY = "rrc(1.0, 1.0, ratio=(1.0, 1.0))|flip_rot"  # whole image, then a random symmetry


def test_flips_and_rotations_are_the_8_symmetries_uniformly():
    img = np.arange(8 * 8 * 2, dtype=np.float32).reshape(1, 8, 8, 2)
    candidates = [host.flip_rot90(img[0], k, f) for k in range(4) for f in (False, True)]
    counts = np.zeros(8, int)
    n = 400
    imgs = np.repeat(img, n, axis=0)
    out = np.asarray(
        dev.augment_views(jax.random.PRNGKey(3), imgs, FLIPS_ONLY, out_size=8, scale=1.0, mean=0.0, std=1.0)
    )
    for o in out:
        match = [i for i, c in enumerate(candidates) if np.allclose(o, c, atol=1e-3)]
        assert len(match) == 1
        counts[match[0]] += 1
    assert counts.min() > n / 8 * 0.5  # every symmetry shows up, roughly uniformly


def test_shapes_ranges_determinism_any_band_count():
    for c in (3, 13):
        imgs = np.random.default_rng(0).integers(0, 10000, (6, 32, 32, c)).astype(np.uint16)
        cfg = "rrc(0.2, 1.0)|flip_rot|jitter(0.4, p=0.8, saturation=0.4)|gray(0.2)|blur(0.5)"
        kw = dict(out_size=16, scale=10000.0, mean=np.full(c, 0.5), std=np.full(c, 0.25))
        a1, a2 = dev.two_views(jax.random.PRNGKey(0), imgs, cfg, **kw)
        b1, _ = dev.two_views(jax.random.PRNGKey(0), imgs, cfg, **kw)
        d1, _ = dev.two_views(jax.random.PRNGKey(1), imgs, cfg, **kw)
        assert a1.shape == (6, 16, 16, c) and a1.dtype == jnp.float32
        assert np.isfinite(np.asarray(a1)).all()
        np.testing.assert_array_equal(np.asarray(a1), np.asarray(b1))
        assert not np.allclose(np.asarray(a1), np.asarray(d1))
        assert not np.allclose(np.asarray(a1), np.asarray(a2))
        # raw values in [0, 1] before standardization: (x - 0.5) / 0.25 >= -2
        assert float(jnp.min(a1)) >= -2.0 - 1e-5


def test_crops_as_scenes_views_stay_inside_their_sub_crop():
    g, h = 2, 16
    img = np.zeros((1, h, h, 1), np.float32)
    vals = [[1.0, 2.0], [3.0, 4.0]]
    for i in range(g):
        for j in range(g):
            img[0, i * 8 : (i + 1) * 8, j * 8 : (j + 1) * 8] = vals[i][j]
    imgs = np.repeat(img, g * g, axis=0)
    regions = dev.crops_as_scenes_regions(g * g, g, h, h)
    out = np.asarray(
        dev.augment_views(
            jax.random.PRNGKey(0),
            imgs,
            "rrc(0.2, 1.0)|flip_rot",
            out_size=8,
            scale=1.0,
            mean=0.0,
            std=1.0,
            regions=regions,
        )
    )
    for r in range(g * g):
        np.testing.assert_allclose(out[r], vals[r // g][r % g], atol=1e-5)


def test_device_resident_step_equals_plain_step_on_same_views():
    from conftest import load_config

    from rsjax import methods, optim, train
    from rsjax import sharding as shd
    from rsjax.data import input as input_lib
    from rsjax.data import registry

    config = load_config("simclr", "smoke")
    mesh = shd.make_mesh()
    method = methods.get_method(config)
    tx, schedule = optim.make(config.optimizer, config.total_steps)
    raw = np.random.default_rng(0).integers(0, 10000, (16, 32, 32, 13)).astype(np.uint16)
    batch = {"image": raw, "label": np.zeros(16, np.int32), "scene_id": np.arange(16, dtype=np.int32)}

    config.data.device_resident = True
    state = train.create_state(method, tx, config.seed, mesh)
    step = train.make_train_step(
        method, tx, schedule, seed=config.seed, batch_transform=input_lib.make_batch_transform(config)
    )
    _, m_dev = train.jit_train_step(step, mesh)(state, jax.device_put(batch, shd.data_sharded(mesh)))

    # The same views, made outside the step with the step's own augment key (step 0).
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0), train.RNG_STREAMS.index("augment"))
    info = registry.get_config_info(config.data.name)
    v1, v2 = dev.two_views(
        key, raw, config.data.augment, out_size=config.data.image_size, scale=info.scale, mean=info.mean, std=info.std
    )
    config.data.device_resident = False
    state = train.create_state(method, tx, config.seed, mesh)
    plain = {"view1": np.asarray(v1), "view2": np.asarray(v2), "label": batch["label"], "scene_id": batch["scene_id"]}
    _, m_plain = train.jit_train_step(train.make_train_step(method, tx, schedule, seed=config.seed), mesh)(
        state, jax.device_put(plain, shd.data_sharded(mesh))
    )
    np.testing.assert_allclose(float(m_dev["loss"]), float(m_plain["loss"]), rtol=1e-5)
