"""Band-agnostic numpy augmentations: shapes, ranges, exactness and seed determinism."""

import numpy as np
import pytest

from rsjax.data import augment, ops

BANDS = (3, 13)


def _img(c, size=24, seed=0):
    return np.random.default_rng(seed).random((size, size, c), dtype=np.float32)


@pytest.mark.parametrize("c", BANDS)
def test_random_resized_crop_shape_range_determinism(c):
    img = _img(c, 20)
    a = augment.random_resized_crop(img, 32, rng=np.random.default_rng(7))
    b = augment.random_resized_crop(img, 32, rng=np.random.default_rng(7))
    d = augment.random_resized_crop(img, 32, rng=np.random.default_rng(8))
    assert a.shape == (32, 32, c) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, d)
    # interpolation is a convex combination of input pixels (per band)
    assert (a.min(axis=(0, 1)) >= img.min(axis=(0, 1)) - 1e-6).all()
    assert (a.max(axis=(0, 1)) <= img.max(axis=(0, 1)) + 1e-6).all()
    # downsampling (antialiased) also works
    small = augment.random_resized_crop(_img(c, 64), 16, rng=np.random.default_rng(0))
    assert small.shape == (16, 16, c)
    with pytest.raises(ValueError, match="np.random.Generator"):
        augment.random_resized_crop(img, 8)


def test_full_crop_is_identity_and_constant_is_preserved():
    img = _img(5, 16)
    out = augment.random_resized_crop(img, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), rng=np.random.default_rng(0))
    np.testing.assert_allclose(out, img, atol=1e-6)
    const = np.full((10, 10, 4), 0.3, np.float32)
    for out_size in (5, 10, 23):
        r = augment.random_resized_crop(const, out_size, rng=np.random.default_rng(1))
        np.testing.assert_allclose(r, 0.3, atol=1e-6)
    np.testing.assert_allclose(augment.resize(const, 7), 0.3, atol=1e-6)


def test_crop_box_statistics():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        y0, x0, ch, cw = augment.sample_crop_box(64, 64, rng, (0.2, 1.0), (3 / 4, 4 / 3))
        assert 0 <= y0 and y0 + ch <= 64 + 1e-9 and 0 <= x0 and x0 + cw <= 64 + 1e-9
        areas.append(ch * cw / 64**2)
        ratios.append(cw / ch)
    assert 0.2 - 1e-9 <= min(areas) and max(areas) <= 1.0 + 1e-9
    assert 3 / 4 - 1e-9 <= min(ratios) and max(ratios) <= 4 / 3 + 1e-9
    assert 0.5 < np.mean(areas) < 0.65  # ~U(0.2, 1) minus rejections of too-large boxes


@pytest.mark.parametrize("c", BANDS)
def test_flip_rot90_exactly_permutes_pixels(c):
    img = _img(c, 8)
    expected = []
    for k in range(4):
        for flip in (False, True):
            out = augment.flip_rot90(img, k, flip)
            ref = np.rot90(img, k, axes=(0, 1))
            ref = ref[:, ::-1] if flip else ref
            np.testing.assert_array_equal(out, ref)
            # same multiset of pixel vectors (a pure permutation, no interpolation)
            np.testing.assert_array_equal(np.sort(out.reshape(-1, c), axis=0), np.sort(img.reshape(-1, c), axis=0))
            expected.append(out)
    # random_flip_rot90 returns one of the 8 symmetries, all of them over many draws,
    # including a pure vertical flip and a pure horizontal flip
    seen = set()
    for s in range(200):
        out = augment.random_flip_rot90(img, np.random.default_rng(s))
        hits = [i for i, e in enumerate(expected) if np.array_equal(out, e)]
        assert len(hits) == 1
        seen.add(hits[0])
    assert seen == set(range(8))
    assert any(np.array_equal(e, img[::-1]) for e in expected)
    assert any(np.array_equal(e, img[:, ::-1]) for e in expected)


@pytest.mark.parametrize("c", BANDS)
def test_brightness_contrast_all_bands_alike(c):
    img = _img(c, 16) + 0.5  # in [0.5, 1.5]: no pixel reaches the clip at 0
    out = augment.brightness_contrast(img, np.random.default_rng(3), strength=0.5, p=1.0)
    assert out.shape == img.shape and out.dtype == np.float32 and (out >= 0).all()
    assert not np.allclose(out, img)
    # contrast keeps every band's mean; brightness scales all bands by the same factor
    ratio = out.mean(axis=(0, 1)) / img.mean(axis=(0, 1))
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    np.testing.assert_array_equal(out, augment.brightness_contrast(img, np.random.default_rng(3), strength=0.5, p=1.0))
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(augment.brightness_contrast(img, rng, p=0.0), img)
    np.testing.assert_array_equal(augment.brightness_contrast(img, rng, 0.0), img)
    jit = augment.brightness_contrast(img, np.random.default_rng(3), 0.5, p=1.0, band_jitter=0.1)
    r2 = jit.mean(axis=(0, 1)) / img.mean(axis=(0, 1))
    assert np.ptp(r2) > 1e-3  # per-band gain changes the spectral ratios


@pytest.mark.parametrize("c", BANDS)
def test_gaussian_blur(c):
    img = _img(c, 20)
    np.testing.assert_array_equal(augment.gaussian_blur(img, np.random.default_rng(0), p=0.0), img)
    out = augment.gaussian_blur(img, np.random.default_rng(0), (1.0, 1.5), p=1.0)
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.var() < 0.5 * img.var()  # white noise loses most of its variance
    np.testing.assert_allclose(out.mean(axis=(0, 1)), img.mean(axis=(0, 1)), atol=0.02)
    np.testing.assert_array_equal(out, augment.gaussian_blur(img, np.random.default_rng(0), (1.0, 1.5), p=1.0))
    const = np.full((9, 9, c), 2.0, np.float32)
    np.testing.assert_allclose(augment.gaussian_blur(const, np.random.default_rng(0), p=1.0), 2.0, rtol=1e-6)
    m = augment.gaussian_kernel_matrix(12, 2.5)
    np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-6)
    assert augment.gaussian_kernel_matrix(3, 4.0).shape == (3, 3)  # radius > size


@pytest.mark.parametrize("c", BANDS)
def test_two_views(c):
    img = _img(c, 32)
    recipe = "rrc(0.2, 1.0)|flip_rot|jitter(0.4, p=0.8, saturation=0.3)|gray(0.2)|blur(1.0)"
    v1, v2 = augment.two_views(img, np.random.default_rng(11), recipe, out_size=24)
    w1, w2 = augment.two_views(img, np.random.default_rng(11), recipe, out_size=24)
    assert v1.shape == v2.shape == (24, 24, c) and v1.dtype == np.float32
    np.testing.assert_array_equal(v1, w1)
    np.testing.assert_array_equal(v2, w2)
    assert not np.allclose(v1, v2)
    x1, _ = augment.two_views(img, np.random.default_rng(12), recipe, out_size=24)
    assert not np.allclose(v1, x1)
    # a built pipeline works as well as the string; the default recipe too
    pipe = ops.view_recipe("rrc(0.5, 1.0)|blur(0.0)", "numpy")
    assert augment.two_views(img, np.random.default_rng(0), pipe, out_size=16)[0].shape == (16, 16, c)
    assert augment.two_views(img, np.random.default_rng(0))[0].shape == (64, 64, c)
