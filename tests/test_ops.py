"""The op registry (rsjax.data.ops): parsing, refusals, and -- per op -- the numpy (host, per
example) and jax (device, batched) backends agree in distribution.

The parity tests follow big_vision's "eager vs graph" idea: many independent draws of the
same input through each backend, a scalar statistic of every output, and a two-sample test
whose tolerance comes from the sample size: the Kolmogorov-Smirnov distance of the two
empirical CDFs must stay below ``c(alpha) * sqrt(2 / n)`` (alpha = 1e-4), and means must agree
within 5 standard errors, and so must variances (standard error from the fourth central
moment). Frequencies of discrete outcomes must be within 5 binomial sigmas of
their analytic value. A backend that draws a different distribution (a wrong range, a missing
gate, a different rule) fails these.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from rsjax.data import augment, ops
from rsjax.errors import ConfigError

N = 3000
ALPHA = 1e-4
C_ALPHA = math.sqrt(-math.log(ALPHA / 2) / 2)  # KS critical constant


def _host(spec, img, n=N, size=None, seed=0):
    pipe = ops.build(spec, "numpy")
    ctx = ops.Context(out_size=size)
    return np.stack([pipe.image(img.copy(), np.random.default_rng([seed, i]), ctx) for i in range(n)])


def _device(spec, img, n=N, size=None, seed=0):
    pipe = ops.build(spec, "jax")
    imgs = np.broadcast_to(img, (n,) + img.shape)
    fn = jax.jit(lambda x, k: pipe.image(x, k, ops.Context(out_size=size)))
    return np.asarray(fn(imgs, jax.random.PRNGKey(seed)))


def _ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov distance ``sup |F_a - F_b|`` (ties handled exactly)."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def assert_same_distribution(a, b, what=""):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    n, m = len(a), len(b)
    d, crit = _ks(a, b), C_ALPHA * math.sqrt((n + m) / (n * m))
    assert d < crit, f"{what}: KS distance {d:.3f} >= {crit:.3f} (host vs device differ in distribution)"
    se = math.sqrt(a.var() / n + b.var() / m) + 1e-12
    assert abs(a.mean() - b.mean()) < 5 * se, f"{what}: means {a.mean():.4f} vs {b.mean():.4f} (se {se:.4f})"

    # variance: standard error of the sample variance sqrt((m4 - var^2) / n) per sample
    def var_se2(x):
        c = x - x.mean()
        return max(float((c**4).mean() - x.var() ** 2), 0.0) / len(x)

    se_v = math.sqrt(var_se2(a) + var_se2(b)) + 1e-12
    assert abs(a.var() - b.var()) < 5 * se_v, f"{what}: variances {a.var():.5f} vs {b.var():.5f} (se {se_v:.5f})"


def assert_rate(hits, p, what=""):
    hits = np.asarray(hits, np.float64)
    sigma = math.sqrt(p * (1 - p) / len(hits)) + 1e-12
    assert abs(hits.mean() - p) < 5 * sigma + 1e-9, f"{what}: rate {hits.mean():.3f}, expected {p}"


# ------------------------------------------------------------------------------ parsing


def test_parse_names_args_and_defaults():
    calls = ops.parse(
        "rrc(0.3, 0.9)| flip_rot |jitter(0.5, p=0.7, saturation=0.2)|gray(0.1)|blur(0.4, sigma=(0.2, 0.8))||"
    )
    assert [c.name for c in calls] == ["rrc", "flip_rot", "jitter", "gray", "blur"]
    assert calls[0].kwargs == {"scale": (0.3, 0.9), "ratio": (3 / 4, 4 / 3), "size": None}
    assert calls[2].kwargs == {"strength": 0.5, "p": 0.7, "band": 0.0, "saturation": 0.2}
    assert calls[3].kwargs == {"p": 0.1}
    assert calls[4].kwargs == {"p": 0.4, "sigma": (0.2, 0.8)}
    assert ops.parse(ops.DEFAULT_AUGMENT)[3].kwargs == {"p": 0.5, "sigma": (0.1, 1.0)}


@pytest.mark.parametrize(
    "spec,match",
    [
        ("rrc(0.2, 1.0)|hue(0.1)", r"config\.data\.augment: unknown op 'hue'.*known ops: .*rrc"),
        ("rrc(0.2, 1.0", r"config\.data\.augment: cannot parse op"),
        ("rrc(x)", r"arguments must be Python literals"),
        ("rrc(0.5, 0.2)", r"op 'rrc\(0\.5, 0\.2\)'.*need 0 < min <= max"),
        ("rrc(0.2, 1.5)", r"scale_max=1\.5 must be <= 1"),
        ("jitter(p=1.2)", r"op 'jitter\(p=1\.2\)': p=1\.2 must be in \[0, 1\]"),
        ("jitter(band=1.0)", r"band=1\.0 must be in \[0, 1\)"),
        ("gray(0.1, 0.2)", r"op 'gray\(0\.1, 0\.2\)'.*too many positional"),
        ("blur(sigma=(0.0, 1.0))", r"sigma=.*need 0 < min <= max"),
        ("flip_rot(1)", r"op 'flip_rot\(1\)'"),
        ("1 + 2", r"is not an op"),
        (3, r"must be an op string"),
    ],
)
def test_parse_errors_name_the_key_and_the_op(spec, match):
    with pytest.raises(ConfigError, match=match):
        ops.parse(spec)


def test_an_op_the_backend_lacks_is_refused_naming_the_backends():
    with pytest.raises(
        ConfigError,
        match=r"config\.data\.augment: op 'crop_flip' has no jax implementation "
        r"\(backends that have it: numpy\)",
    ):
        ops.build("rrc(0.2, 1.0)|crop_flip(8)", "jax")
    ops.build("rrc(0.2, 1.0)|crop_flip(8)", "numpy")  # the host has it
    with pytest.raises(ConfigError, match=r"config\.eval\.pp"):
        ops.build("multi_hot(3)", "jax", key="eval.pp")


def test_a_view_recipe_starts_with_a_sizing_op():
    with pytest.raises(ConfigError, match=r"starts with an op that sets the view size \(rrc or resize\)"):
        ops.view_recipe("flip_rot|rrc(0.2, 1.0)", "numpy")
    assert ops.view_recipe("resize|flip_rot", "jax").names() == ("resize", "flip_rot")


def test_legacy_keys_fold_into_one_recipe():
    assert ops.spec_from_legacy({}) == "rrc(0.2, 1.0)|flip_rot|jitter(0.4, p=0.8)|blur(0.5, sigma=(0.1, 1.0))"
    got = ops.spec_from_legacy(
        dict(
            crop_scale_min=0.4,
            flip_rot=False,
            jitter_strength=0.5,
            jitter_prob=0.7,
            band_jitter=0.1,
            saturation=0.3,
            gray_prob=0.2,
            blur_prob=0.0,
        )
    )
    assert got == "rrc(0.4, 1.0)|jitter(0.5, p=0.7, band=0.1, saturation=0.3)|gray(0.2)"
    assert ops.augment_spec({"augment": "resize|flip_rot"}) == "resize|flip_rot"
    assert ops.augment_spec({"crop_scale_min": 0.14}).startswith("rrc(0.14, 1.0)|flip_rot|")
    with pytest.raises(
        ConfigError,
        match=r"config\.data\.augment='resize' and the former augmentation "
        r"key\(s\) data\.gray_prob",
    ):
        ops.augment_spec({"augment": "resize", "gray_prob": 0.2})
    with pytest.raises(ConfigError, match=r"config\.data\.gray_prob=1\.5: the former augmentation keys"):
        ops.augment_spec({"gray_prob": 1.5})


def test_default_recipe_draws_exactly_the_former_host_views():
    # The former fixed host recipe, spelled out with the primitives: crop -> flip/rot ->
    # brightness/contrast -> blur, all from one generator. The op pipeline must reproduce it
    # bit for bit (resumed runs and old seeds keep their views).
    img = np.random.default_rng(0).random((20, 20, 4), dtype=np.float32)
    for seed in range(5):
        r = np.random.default_rng(seed)
        v = augment.random_resized_crop(img, 12, (0.2, 1.0), (3 / 4, 4 / 3), rng=r)
        v = augment.random_flip_rot90(v, r)
        v = augment.photometric_jitter(v, r, 0.4, 0.8, 0.0, 0.0, 0.0)
        v = augment.gaussian_blur(v, r, (0.1, 1.0), 0.5)
        got = ops.build(ops.DEFAULT_AUGMENT, "numpy").image(img, np.random.default_rng(seed), ops.Context(out_size=12))
        np.testing.assert_array_equal(got, v)


# ------------------------------------------------------------- per-op backend parity


def _ramp(h=16, w=16):
    """Band 0 = row centre, band 1 = column centre: a view's values tell where it came from."""
    y, x = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    return np.stack([y, x], -1).astype(np.float32)


def test_rrc_same_distribution():
    img = _ramp()
    spec = "rrc(0.1, 0.9, ratio=(0.5, 2.0))"
    h, d = _host(spec, img, size=8), _device(spec, img, size=8)
    assert h.shape == d.shape == (N, 8, 8, 2)
    for name, f in [
        ("centre y", lambda v: v[..., 0].mean((1, 2))),
        ("centre x", lambda v: v[..., 1].mean((1, 2))),
        ("height", lambda v: np.ptp(v[..., 0], axis=(1, 2))),
        ("width", lambda v: np.ptp(v[..., 1], axis=(1, 2))),
    ]:
        assert_same_distribution(f(h), f(d), f"rrc {name}")
    # the area fraction stays inside the requested range (up to the 8 px sampling of the box)
    area = (np.ptp(h[..., 0], axis=(1, 2)) * 8 / 7) * (np.ptp(h[..., 1], axis=(1, 2)) * 8 / 7) / 256
    assert area.min() > 0.05 and area.max() < 1.0


def test_resize_identical():
    img = np.random.default_rng(1).random((12, 12, 3), dtype=np.float32)
    for size in (6, 12, 20):
        h, d = _host("resize", img, n=2, size=size), _device("resize", img, n=2, size=size)
        np.testing.assert_allclose(h, d, atol=1e-5)
        np.testing.assert_allclose(h[0], augment.resize(img, size), atol=1e-6)
    np.testing.assert_allclose(_host("resize(5)", img, n=1)[0], augment.resize(img, 5), atol=1e-6)


def _symmetry_index(out, img):
    cands = [augment.flip_rot90(img, k, f) for k in range(4) for f in (False, True)]
    idx = []
    for o in out:
        hit = [i for i, c in enumerate(cands) if np.array_equal(o, c)]
        assert len(hit) == 1, "not one of the 8 symmetries of the square"
        idx.append(hit[0])
    return np.asarray(idx)


def test_flip_rot_same_distribution():
    img = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    for out in (_host("flip_rot", img, n=800), _device("flip_rot", img, n=800)):
        idx = _symmetry_index(out, img)
        for j in range(8):
            assert_rate(idx == j, 1 / 8, f"symmetry {j}")


def test_flip_rot_moves_image_and_mask_alike():
    img = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    mask = np.arange(16, dtype=np.int32).reshape(4, 4)
    pipe = ops.build("flip_rot", "numpy")
    for s in range(10):
        out = pipe({"image": img, "mask": mask}, np.random.default_rng(s))
        np.testing.assert_array_equal(out["image"][..., 0], out["mask"])
    d = ops.build("flip_rot", "jax")(
        {"image": np.broadcast_to(img, (10, 4, 4, 1)), "mask": np.broadcast_to(mask, (10, 4, 4))}, jax.random.PRNGKey(0)
    )
    np.testing.assert_array_equal(np.asarray(d["image"])[..., 0], np.asarray(d["mask"]))


def test_flip_lr_same_distribution():
    img = np.arange(9, dtype=np.float32).reshape(3, 3, 1)
    for out in (_host("flip_lr(0.3)", img), _device("flip_lr(0.3)", img)):
        flipped = np.all(out == img[:, ::-1], axis=(1, 2, 3))
        assert (flipped | np.all(out == img, axis=(1, 2, 3))).all()
        assert_rate(flipped, 0.3, "flip_lr")


def test_jitter_same_distribution():
    img = np.random.default_rng(2).uniform(0.2, 1.0, (4, 4, 3)).astype(np.float32)
    spec = "jitter(0.5, p=0.7, band=0.2, saturation=0.4)"
    h, d = _host(spec, img), _device(spec, img)
    for out in (h, d):
        assert (out >= 0).all()
        assert_rate(np.all(out == img, axis=(1, 2, 3)), 0.3, "jitter skipped (1 - p)")
    for band in range(3):
        assert_same_distribution(h[:, 0, 0, band], d[:, 0, 0, band], f"jitter pixel band {band}")
        assert_same_distribution(h[..., band].mean((1, 2)), d[..., band].mean((1, 2)), f"jitter mean band {band}")
    assert_same_distribution(h.std((1, 2, 3)), d.std((1, 2, 3)), "jitter contrast")
    ratio = lambda v: v[..., 0].mean((1, 2)) / v[..., 1].mean((1, 2))
    assert_same_distribution(ratio(h), ratio(d), "jitter spectral ratio")


def test_gray_same_distribution():
    img = np.random.default_rng(3).uniform(0.0, 1.0, (4, 4, 3)).astype(np.float32)
    for out in (_host("gray(0.35)", img), _device("gray(0.35)", img)):
        gray = np.all(np.abs(out - img.mean(-1, keepdims=True)) < 1e-6, axis=(1, 2, 3))
        assert (gray | np.all(out == img, axis=(1, 2, 3))).all()
        assert_rate(gray, 0.35, "gray")


def test_blur_same_distribution():
    img = np.zeros((9, 9, 1), np.float32)
    img[4, 4] = 1.0  # a delta: the centre value falls monotonically with sigma
    spec = "blur(0.7, sigma=(0.3, 1.5))"
    h, d = _host(spec, img), _device(spec, img)
    for out in (h, d):
        np.testing.assert_allclose(out.sum((1, 2, 3)), 1.0, atol=1e-4)  # mass kept (away from borders)
    blurred_h, blurred_d = h[:, 4, 4, 0] < 0.999, d[:, 4, 4, 0] < 0.999
    assert_rate(blurred_h, 0.7, "host blur rate")
    assert_rate(blurred_d, 0.7, "device blur rate")
    assert_same_distribution(h[blurred_h, 4, 4, 0], d[blurred_d, 4, 4, 0], "blur centre value")
    # sigma = 0.3 .. 1.5: the centre of a 2-D Gaussian of the delta is ~1 / (2 pi sigma^2) (bounded)
    assert h[blurred_h, 4, 4, 0].min() > 1 / (2 * np.pi * 1.5**2) * 0.9


def test_normalize_identical_to_the_registry():
    from rsjax.data import registry

    info = registry.get_config_info("rs_synthetic")
    raw = np.random.default_rng(4).integers(0, 10000, (2, 4, 4, info.num_bands)).astype(np.uint16)
    want = registry.normalize(raw, info)
    ctx = ops.Context(info=info)
    np.testing.assert_allclose(ops.apply("normalize", {"image": raw}, ctx=ctx)["image"], want, rtol=1e-6)
    got = ops.apply("normalize", {"image": raw}, jax.random.PRNGKey(0), ctx, backend="jax")["image"]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_a_whole_recipe_same_distribution():
    rng = np.random.default_rng(5)
    img = rng.uniform(0.1, 1.0, (16, 16, 3)).astype(np.float32)
    spec = "rrc(0.2, 1.0)|flip_rot|jitter(0.4, p=0.8, band=0.1, saturation=0.4)|gray(0.2)|blur(0.5)"
    h, d = _host(spec, img, n=1000, size=8), _device(spec, img, n=1000, size=8)
    for name, f in [
        ("mean", lambda v: v.mean((1, 2, 3))),
        ("std", lambda v: v.std((1, 2, 3))),
        ("band spread", lambda v: np.ptp(v.mean((1, 2)), axis=-1)),
    ]:
        assert_same_distribution(f(h), f(d), f"recipe {name}")


# -------------------------------------------------------------------- dense / eval ops


def test_dense_ops_against_hand_computed_values():
    mask = np.array([[0, 1, 2], [255, 3, 1]], np.uint8)
    np.testing.assert_array_equal(ops.apply("ignore(0)", {"mask": mask})["mask"], [[-1, 0, 1], [-1, 2, 0]])
    np.testing.assert_array_equal(ops.apply("ignore(255)", {"mask": mask})["mask"], [[0, 1, 2], [-1, 3, 1]])
    np.testing.assert_array_equal(ops.apply("ignore", {"mask": mask})["mask"], mask.astype(np.int32))
    labels = np.array([[-1, 0, 1], [2, 0, -1]], np.int32)
    np.testing.assert_array_equal(ops.apply("remap((1, -1, 0))", {"mask": labels})["mask"], [[-1, 1, -1], [0, 1, -1]])
    with pytest.raises(Exception, match="outside"):
        ops.apply("remap((1, 0))", {"mask": labels})
    masks = np.array([[[0, 2], [2, 2]], [[1, 1], [1, 1]]])
    np.testing.assert_array_equal(ops.apply("multi_hot(4)", {"mask": masks})["label"], [[1, 0, 1, 0], [0, 1, 0, 0]])


def test_crop_flip_same_window_for_every_spatial_array():
    img = np.arange(36, dtype=np.float32).reshape(6, 6, 1)
    mask = np.arange(36).reshape(6, 6)
    seen = set()
    for s in range(40):
        out = ops.apply("crop_flip(4)", {"image": img, "mask": mask, "label": np.int32(3)}, np.random.default_rng(s))
        assert out["image"].shape == (4, 4, 1) and out["mask"].shape == (4, 4) and out["label"] == 3
        np.testing.assert_array_equal(out["image"][..., 0], out["mask"])
        seen.add(int(out["mask"].min()))
    assert len(seen) > 4  # the window moves
    centre = ops.apply("crop_flip(4, augment=False)", {"mask": mask}, np.random.default_rng(0))["mask"]
    np.testing.assert_array_equal(centre, mask[1:5, 1:5])
