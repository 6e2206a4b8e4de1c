"""Label noise: connected components vs a BFS reference, flips of whole regions, blob pixel
rate, erosion / dilation by exact pixel counts, coarse labels (majority pooling) and the
agreement report against written-out loops, ignore pixels untouched, determinism."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from rsjax.data import label_noise as LN
from rsjax.data import synthetic


def _bfs_components(mask, ignore_index=None):
    h, w = mask.shape
    out = np.full((h, w), -1, np.int32)
    n = 0
    for y in range(h):
        for x in range(w):
            if out[y, x] >= 0 or (ignore_index is not None and mask[y, x] == ignore_index):
                continue
            q = collections.deque([(y, x)])
            out[y, x] = n
            while q:
                a, b = q.popleft()
                for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    u, v = a + dy, b + dx
                    if 0 <= u < h and 0 <= v < w and out[u, v] < 0 and mask[u, v] == mask[a, b]:
                        out[u, v] = n
                        q.append((u, v))
            n += 1
    return out, n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_connected_components_match_bfs(seed):
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 3, (17, 23)).astype(np.uint8)
    # plus a spiral-like snake to exercise long propagation
    m[2, 1:20] = 7
    m[2:12, 19] = 7
    m[11, 3:20] = 7
    ref, n_ref = _bfs_components(m)
    got, n = LN.connected_components(m)
    assert n == n_ref
    np.testing.assert_array_equal(got, ref)  # same raster numbering


def test_connected_components_ignore():
    m = np.array([[1, 1, 0, 1], [1, 0, 0, 1], [2, 2, 2, 2]], np.int32)
    got, n = LN.connected_components(m, ignore_index=0)
    assert n == 3
    assert (got[m == 0] == -1).all()
    assert got[0, 0] == got[1, 0] != got[0, 3]


def test_flip_regions_flips_whole_regions():
    tile = synthetic.generate_tile(0, tile_size=64)["mask"].astype(np.int32)
    regions, n = LN.connected_components(tile)
    none = LN.flip_regions(tile, 0.0, 6, np.random.default_rng(0))
    np.testing.assert_array_equal(none, tile)
    allf = LN.flip_regions(tile, 1.0, 6, np.random.default_rng(0))
    assert (allf != tile).all()  # every region to another class
    half = LN.flip_regions(tile, 0.5, 6, np.random.default_rng(0))
    for r in range(n):
        changed = half[regions == r] != tile[regions == r]
        assert changed.all() or not changed.any()  # a region flips as a whole
        assert len(np.unique(half[regions == r])) == 1
    assert half.dtype == tile.dtype


def test_flip_regions_rate_statistics():
    masks = synthetic.generate(6, tile_size=64, crop_size=32)["mask"]
    total, flipped = 0, 0
    for i, m in enumerate(masks):
        regions, n = LN.connected_components(m)
        noisy = LN.flip_regions(m, 0.3, 6, np.random.default_rng(i))
        for r in range(n):
            total += 1
            flipped += bool((noisy[regions == r] != m[regions == r]).any())
    assert total > 30 and 0.15 < flipped / total < 0.45


def test_flip_blobs_reaches_rate():
    m = np.zeros((48, 48), np.int32)
    m[:, 24:] = 1
    m[0:4, 0:4] = -1
    noisy = LN.flip_blobs(m, 0.2, 4, np.random.default_rng(0), radius=5, ignore_index=-1)
    rate = LN.noise_rate(m, noisy, ignore_index=-1)
    assert 0.2 <= rate < 0.5
    assert (noisy[m == -1] == -1).all()


def test_erode_and_dilate_exact():
    m = np.zeros((11, 11), np.int32)
    m[3:8, 3:8] = 1  # a 5x5 square of class 1
    e1 = LN.erode_class(m, 1, 1)
    assert (e1 == 1).sum() == 9 and (e1[4:7, 4:7] == 1).all()
    assert (LN.erode_class(m, 1, 3) == 1).sum() == 0
    d1 = LN.dilate_class(m, 1, 1)
    assert (d1 == 1).sum() == 25 + 4 * 5  # 4-connected: a cross-shaped growth
    d2 = LN.dilate_class(m, 1, 2)
    assert (d2 == 1).sum() == 25 + 4 * 5 + 4 * 5 + 4  # diamond corners after 2 steps
    # erosion of class 1 == dilation of class 0 with two classes
    np.testing.assert_array_equal(LN.erode_class(m, 1, 2), np.where(LN.dilate_class(m, 0, 2) == 0, 0, 1))


def test_shift_boundaries_moves_only_boundary_pixels():
    tile = synthetic.generate_tile(3, tile_size=64)["mask"].astype(np.int32)
    noisy = LN.shift_boundaries(tile, 2, np.random.default_rng(0))
    changed = noisy != tile
    assert changed.any()
    # every changed pixel lies within 2 px (4-connected) of a clean boundary
    boundary = np.zeros_like(changed)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        boundary |= (LN._shift(tile, dy, dx, -1) != tile) & (LN._shift(tile, dy, dx, -1) >= 0)
    near = boundary.copy()
    for _ in range(2):
        grown = near.copy()
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            grown |= LN._shift(near, dy, dx, False)
        near = grown
    assert not (changed & ~near).any()
    # class-specific: negative erosion = dilation of that class
    np.testing.assert_array_equal(
        LN.shift_boundaries(tile, -1, np.random.default_rng(0), erosion_class=2), LN.dilate_class(tile, 2, 1)
    )


def test_apply_label_noise_deterministic():
    masks = synthetic.generate(2, tile_size=64, crop_size=32)["mask"]
    kw = dict(num_classes=6, flip_rate=0.3, erosion=1, seed=5)
    a = LN.apply_label_noise(masks, **kw)
    b = LN.apply_label_noise(masks, **kw)
    np.testing.assert_array_equal(a, b)
    # image i's noise depends only on (seed, i) and its own mask
    np.testing.assert_array_equal(LN.apply_label_noise(masks[:3], **kw), a[:3])
    assert a.dtype == masks.dtype and a.shape == masks.shape
    assert LN.noise_rate(masks, a) > 0
    np.testing.assert_array_equal(LN.apply_label_noise(masks, num_classes=6), masks)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(flip_rate=1.5), "flip_rate"),
        (dict(flip_rate=0.1, flip_mode="pixels"), "flip_mode"),
        (dict(erosion=1, erosion_class=9), "erosion_class"),
        (dict(pool_factor=0), "pool_factor"),
    ],
)
def test_bad_arguments_name_the_key(kw, match):
    masks = np.zeros((1, 8, 8), np.int32)
    with pytest.raises(ValueError, match=match):
        LN.apply_label_noise(masks, num_classes=6, **kw)


def _pool_loops(mask, f, k, ignore):
    """Majority pooling written out: every block of f x f pixels from the top-left (cut at the
    border), its valid pixels counted class by class, the first most frequent class written
    back to the block's valid pixels."""
    h, w = mask.shape
    out = mask.copy()
    for by in range(0, h, f):
        for bx in range(0, w, f):
            votes = [0] * k
            for y in range(by, min(by + f, h)):
                for x in range(bx, min(bx + f, w)):
                    if mask[y, x] != ignore:
                        votes[mask[y, x]] += 1
            if max(votes) == 0:
                continue
            best = votes.index(max(votes))
            for y in range(by, min(by + f, h)):
                for x in range(bx, min(bx + f, w)):
                    if mask[y, x] != ignore:
                        out[y, x] = best
    return out


@pytest.mark.parametrize("f,shape", [(4, (16, 16)), (3, (10, 14)), (16, (40, 33)), (1, (5, 5))])
def test_majority_pool_matches_loops(f, shape):
    rng = np.random.default_rng(f)
    masks = rng.integers(-1, 5, (3,) + shape).astype(np.int32)  # -1 = ignore, about 1 in 6
    masks[0, :f, :f] = -1  # a block with no valid pixel: stays ignored
    got = LN.majority_pool(masks, f, 5, ignore_index=-1)
    for m, g in zip(masks, got):
        np.testing.assert_array_equal(g, _pool_loops(m, f, 5, -1))
    assert got.dtype == masks.dtype and (got[masks == -1] == -1).all()


def test_majority_pool_by_hand():
    # 2 x 2 blocks: [0 0 / 1 -]: 0 wins; [1 1 / 2 2]: tie -> the smaller id 1; right column cut
    # at the border: [3 / 3] -> 3; bottom row [4 4 | 0]
    m = np.array([[0, 0, 1, 1, 3], [1, -1, 2, 2, 3], [4, 4, 2, 0, 0]], np.int64)
    expect = np.array([[0, 0, 1, 1, 3], [0, -1, 1, 1, 3], [4, 4, 0, 0, 0]])
    np.testing.assert_array_equal(LN.majority_pool(m, 2, 5, ignore_index=-1), expect)
    # in apply_label_noise: pooling, then nothing else (no flip, no erosion)
    np.testing.assert_array_equal(
        LN.apply_label_noise(m[None], num_classes=5, pool_factor=2, ignore_index=-1)[0], expect
    )


def test_agreement_matches_loops():
    rng = np.random.default_rng(3)
    clean = rng.integers(-1, 4, (2, 9, 11))
    noisy = np.where(rng.random(clean.shape) < 0.3, rng.integers(-1, 4, clean.shape), clean)
    a = LN.agreement(clean, noisy, ignore_index=-1)
    pixels = [(c, n) for c, n in zip(clean.ravel().tolist(), noisy.ravel().tolist()) if c != -1]
    assert a["pixels"] == len(pixels)
    assert a["pixel"] == pytest.approx(sum(c == n for c, n in pixels) / len(pixels))
    for k in range(4):
        of_k = [n for c, n in pixels if c == k]
        assert a["per_class"][k] == pytest.approx(sum(n == k for n in of_k) / len(of_k))
    assert LN.noise_rate(clean, noisy, -1) == pytest.approx(1 - a["pixel"])
    assert LN.agreement(np.full((2, 2), -1), np.zeros((2, 2), int), -1) == {"pixel": 1.0, "per_class": {}, "pixels": 0}
