"""Controllable label noise for segmentation masks (pure numpy, seeded).

Used by the noisy-label pretraining study (DESIGN §3.4) to turn the synthetic generator's
exact masks into masks that look like the paper's noisy sources (Dynamic World's 10 m
automatic labels, LiDAR-derived NYC masks): wrong classes on whole objects and misplaced
boundaries. All functions take ``[H, W]`` (or ``[N, H, W]`` for :func:`apply_label_noise`)
integer class maps with classes ``0 .. num_classes - 1`` and an optional ``ignore_index``
(no-data pixels: never changed, never used as a donor, excluded from :func:`noise_rate`).
Neighbourhoods are 4-connected (up, down, left, right; ties between donors go to that order).

Noise kinds:

* **coarse labels** (:func:`majority_pool`, ``pool_factor`` f): each f x f block of a mask
  (from its top-left corner) takes the most frequent class of its valid pixels and every pixel
  of the block that had a label takes it (majority pooling, then nearest upsampling): a product
  of f times coarser resolution over the imagery (Dynamic World's 10 m cells over sub-metre
  pixels). Pixels without a label keep none.
* **class flips of whole regions** (``flip_mode="regions"``): every connected same-class
  region (:func:`connected_components`) is, with probability ``flip_rate``, relabelled to a
  class drawn uniformly from the *other* classes. ``flip_rate`` is the expected fraction of
  regions (not pixels) that flip; the pixel noise rate is reported by :func:`noise_rate`.
* **class flips of random blobs** (``flip_mode="blobs"``): irregular discs (radius
  ``blob_radius * U(0.5, 1.5)`` px, radius modulated by a random low-order Fourier series
  of the angle) painted with a uniformly random class until at least ``flip_rate`` of the
  valid pixels differ from the clean map (so ``flip_rate`` is a pixel rate; the last blob may
  overshoot).
* **boundary erosion / dilation** (``erosion`` px, ``erosion_class``): with
  ``erosion_class = c >= 0``, ``erosion > 0`` erodes class c by ``erosion`` px (each of its
  pixels within that 4-connected distance of another valid class takes that class) and
  ``erosion < 0`` dilates it by ``|erosion|`` px; with ``erosion_class = -1`` (default) every
  class present is dilated by ``|erosion|`` px in a random order per image, which moves each
  boundary by up to ``|erosion|`` px in a random direction (coarse / misregistered labels).

:func:`apply_label_noise` applies the pooling first, then flips (regions of the pooled map),
then the boundary noise; image ``i`` uses ``np.random.default_rng([seed, i])``, so a mask's
noise does not depend on the other masks or on their order of processing. A coarser legend
(fewer classes, ``noise.class_map``) is a remap of the classes before all of these
(:func:`rsjax.data.segmentation.noisy_labels`). :func:`agreement` reports how far noisy labels
are from the clean ones.
"""

from __future__ import annotations

import numpy as np

FLIP_MODES = ("regions", "blobs")
_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def _shift(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """``out[y, x] = a[y + dy, x + dx]`` (``fill`` outside the array)."""
    h, w = a.shape
    out = np.full_like(a, fill)
    src = (slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
    dst = (slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0)))
    out[dst] = a[src]
    return out


def _valid(mask: np.ndarray, ignore_index) -> np.ndarray:
    return np.ones(mask.shape, bool) if ignore_index is None else mask != ignore_index


def _check_mask(mask: np.ndarray, ndim: int = 2) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != ndim or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"expected an integer class map with {ndim} dims, got {mask.dtype} {mask.shape}")
    return mask


# --------------------------------------------------------------------------------------
# Connected components
# --------------------------------------------------------------------------------------
def connected_components(mask: np.ndarray, ignore_index=None) -> tuple[np.ndarray, int]:
    """4-connected regions of equal class.

    Returns ``(regions, n)``: ``regions`` int32 [H, W] with ids ``0 .. n-1`` numbered in
    raster order of each region's first pixel, and ``-1`` on ignored pixels.

    Min-label propagation with pointer jumping: every pixel starts with its own flat index,
    takes the minimum over its same-class neighbours, then jumps to the label of the pixel it
    points to; labels only decrease and always name a pixel of the same region, so the fixed
    point gives one label (the region's smallest index) per region.
    """
    mask = _check_mask(mask)
    h, w = mask.shape
    valid = _valid(mask, ignore_index)
    big = h * w
    lab = np.where(valid, np.arange(big).reshape(h, w), big)
    same = []
    for dy, dx in _NEIGHBOURS:
        nb = _shift(mask, dy, dx, 0)
        ok = _shift(valid, dy, dx, False) & valid & (nb == mask)
        same.append((dy, dx, ok))
    while True:
        new = lab.copy()
        for dy, dx, ok in same:
            np.minimum(new, np.where(ok, _shift(lab, dy, dx, big), big), out=new)
        flat = np.append(new.ravel(), big)
        new = np.where(valid, flat[new], big)  # pointer jumping (twice is plenty per round)
        new = np.where(valid, flat[new], big)
        if np.array_equal(new, lab):
            break
        lab = new
    out = np.full((h, w), -1, np.int32)
    if valid.any():
        _, inv = np.unique(lab[valid], return_inverse=True)
        out[valid] = inv.astype(np.int32)
        n = int(inv.max()) + 1
    else:
        n = 0
    return out, n


# --------------------------------------------------------------------------------------
# Class flips
# --------------------------------------------------------------------------------------
def _other_class(rng: np.random.Generator, cls: np.ndarray, num_classes: int) -> np.ndarray:
    """A class drawn uniformly from the ``num_classes - 1`` classes other than ``cls``."""
    return (cls + rng.integers(1, num_classes, size=np.shape(cls))) % num_classes


def flip_regions(
    mask: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator, ignore_index=None
) -> np.ndarray:
    """Relabels each connected region with probability ``rate`` to another random class."""
    mask = _check_mask(mask)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise.flip_rate={rate}: must be in [0, 1]")
    if rate == 0.0 or num_classes < 2:
        return mask.copy()
    regions, n = connected_components(mask, ignore_index)
    if n == 0:
        return mask.copy()
    first = np.zeros(n, np.int64)
    flat_r, flat_m = regions.ravel(), mask.ravel()
    sel = flat_r >= 0
    first[flat_r[sel]] = flat_m[sel]  # every pixel of a region has the region's class
    flip = rng.random(n) < rate
    new_cls = np.where(flip, _other_class(rng, first, num_classes), first)
    out = mask.copy()
    out[regions >= 0] = new_cls[regions[regions >= 0]].astype(mask.dtype)
    return out


def _random_blob(rng: np.random.Generator, h: int, w: int, radius: float) -> np.ndarray:
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    r = radius * rng.uniform(0.5, 1.5)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    ang = np.arctan2(yy - cy, xx - cx)
    mod = np.ones_like(ang)
    for k in (2, 3, 5):  # irregular outline
        mod += rng.uniform(0, 0.25) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    return (yy - cy) ** 2 + (xx - cx) ** 2 < (r * mod) ** 2


def flip_blobs(
    mask: np.ndarray,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
    radius: float = 6.0,
    ignore_index=None,
    max_blobs: int = 1000,
) -> np.ndarray:
    """Paints random blobs of random classes until >= ``rate`` of valid pixels are wrong."""
    mask = _check_mask(mask)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise.flip_rate={rate}: must be in [0, 1]")
    if radius <= 0:
        raise ValueError(f"noise.blob_radius={radius}: must be > 0")
    out = mask.copy()
    valid = _valid(mask, ignore_index)
    n_valid = int(valid.sum())
    if rate == 0.0 or n_valid == 0 or num_classes < 2:
        return out
    h, w = mask.shape
    for _ in range(max_blobs):
        if np.sum((out != mask) & valid) >= rate * n_valid:
            break
        blob = _random_blob(rng, h, w, radius) & valid
        out[blob] = rng.integers(0, num_classes)
    return out


# --------------------------------------------------------------------------------------
# Boundary noise
# --------------------------------------------------------------------------------------
def _grow(mask: np.ndarray, can_take: np.ndarray, donor: np.ndarray) -> np.ndarray:
    """One 4-connected step: pixels in ``can_take`` next to a ``donor`` take its label."""
    out = mask.copy()
    taken = np.zeros(mask.shape, bool)
    for dy, dx in _NEIGHBOURS:
        nb = _shift(mask, dy, dx, 0)
        t = can_take & _shift(donor, dy, dx, False) & ~taken
        out[t] = nb[t]
        taken |= t
    return out


def dilate_class(mask: np.ndarray, cls: int, px: int, ignore_index=None) -> np.ndarray:
    """Grows class ``cls`` by ``px`` pixels (4-connected distance) over other valid classes."""
    mask = _check_mask(mask)
    valid = _valid(mask, ignore_index)
    for _ in range(int(px)):
        mask = _grow(mask, valid & (mask != cls), mask == cls)
    return mask.copy()


def erode_class(mask: np.ndarray, cls: int, px: int, ignore_index=None) -> np.ndarray:
    """Shrinks class ``cls`` by ``px`` pixels: its pixels next to another valid class take it."""
    mask = _check_mask(mask)
    valid = _valid(mask, ignore_index)
    for _ in range(int(px)):
        mask = _grow(mask, mask == cls, valid & (mask != cls))
    return mask.copy()


def shift_boundaries(
    mask: np.ndarray, px: int, rng: np.random.Generator, ignore_index=None, erosion_class: int = -1
) -> np.ndarray:
    """Boundary noise of ``px`` pixels (see module docstring for the sign convention)."""
    mask = _check_mask(mask)
    px = int(px)
    if px == 0:
        return mask.copy()
    if erosion_class >= 0:
        if px > 0:
            return erode_class(mask, erosion_class, px, ignore_index)
        return dilate_class(mask, erosion_class, -px, ignore_index)
    present = np.unique(mask[_valid(mask, ignore_index)])
    for c in rng.permutation(present):
        mask = dilate_class(mask, int(c), abs(px), ignore_index)
    return mask


# --------------------------------------------------------------------------------------
# Coarse labels
# --------------------------------------------------------------------------------------
def majority_pool(masks: np.ndarray, factor: int, num_classes: int, ignore_index=None) -> np.ndarray:
    """Coarse labels of ``masks`` [..., H, W]: majority pooling by ``factor``, nearest upsampling.

    The blocks are ``factor x factor`` pixels from the top-left corner; those at the bottom and
    right edges are cut by the image border and vote with the pixels they have. A block's label
    is the class with most valid pixels in it (ties: the smaller class id); every valid pixel of
    the block takes it, ignored pixels (``ignore_index``) stay ignored and take no part in the
    vote. ``factor`` 1 returns a copy. Classes must lie in ``0 .. num_classes - 1``.
    """
    masks = np.asarray(masks)
    if masks.ndim < 2 or not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"expected integer class maps [..., H, W], got {masks.dtype} {masks.shape}")
    f = int(factor)
    if f < 1:
        raise ValueError(f"noise.pool_factor={factor}: must be >= 1 (1 = no pooling)")
    if f == 1:
        return masks.copy()
    h, w = masks.shape[-2:]
    hb, wb = -(-h // f), -(-w // f)
    valid = _valid(masks, ignore_index)
    # counts[..., i, j, c]: pixels of class c in block (i, j); the padding (outside the image) is invalid
    padded = np.full(masks.shape[:-2] + (hb * f, wb * f), -1, np.int64)
    padded[..., :h, :w] = np.where(valid, masks, -1)
    blocks = padded.reshape(masks.shape[:-2] + (hb, f, wb, f))
    counts = np.stack([(blocks == c).sum(axis=(-3, -1)) for c in range(int(num_classes))], axis=-1)
    winner = counts.argmax(axis=-1)  # first maximum: ties go to the smaller class id
    up = np.repeat(np.repeat(winner, f, axis=-2), f, axis=-1)[..., :h, :w]
    return np.where(valid, up, masks).astype(masks.dtype)


# --------------------------------------------------------------------------------------
# Whole data sets
# --------------------------------------------------------------------------------------
def apply_label_noise(
    masks: np.ndarray,
    *,
    num_classes: int,
    flip_rate: float = 0.0,
    flip_mode: str = "regions",
    erosion: int = 0,
    erosion_class: int = -1,
    blob_radius: float = 6.0,
    pool_factor: int = 1,
    seed: int = 0,
    ignore_index=None,
) -> np.ndarray:
    """Noisy copies of ``masks`` [N, H, W]: coarse labels (``pool_factor``), then flips
    (``flip_mode``), then boundary noise.

    Image ``i`` draws from ``np.random.default_rng([seed, i])``. Returns the input dtype.
    """
    masks = _check_mask(masks, 3)
    if flip_mode not in FLIP_MODES:
        raise ValueError(f"noise.flip_mode={flip_mode!r}: expected one of {FLIP_MODES}")
    if erosion_class >= num_classes:
        raise ValueError(f"noise.erosion_class={erosion_class}: must be -1 or < num_classes={num_classes}")
    if int(pool_factor) > 1:
        masks = majority_pool(masks, pool_factor, num_classes, ignore_index)
    elif int(pool_factor) < 1:
        raise ValueError(f"noise.pool_factor={pool_factor}: must be >= 1 (1 = no pooling)")
    out = np.empty_like(masks)
    for i, m in enumerate(masks):
        rng = np.random.default_rng([int(seed), i])
        if flip_rate > 0:
            if flip_mode == "regions":
                m = flip_regions(m, flip_rate, num_classes, rng, ignore_index)
            else:
                m = flip_blobs(m, flip_rate, num_classes, rng, blob_radius, ignore_index)
        if erosion:
            m = shift_boundaries(m, erosion, rng, ignore_index, erosion_class)
        out[i] = m
    return out


def noise_rate(clean: np.ndarray, noisy: np.ndarray, ignore_index=None) -> float:
    """Fraction of valid pixels whose noisy label differs from the clean one (1 - the
    ``pixel`` agreement of :func:`agreement`)."""
    return 1.0 - agreement(clean, noisy, ignore_index)["pixel"]


def agreement(clean: np.ndarray, noisy: np.ndarray, ignore_index=None) -> dict:
    """How far noisy labels are from the clean ones, on the pixels the clean masks label.

    Returns ``{"pixel": fraction of those pixels whose noisy label equals the clean one,
    "per_class": {clean class id: the same fraction among that class's pixels}, "pixels": their
    number}``; ``pixel`` is 1.0 when no pixel is labelled. A noisy label in another legend must be
    compared with the clean labels remapped to that legend (the caller's remap)."""
    clean, noisy = np.asarray(clean), np.asarray(noisy)
    if clean.shape != noisy.shape:
        raise ValueError(f"clean {clean.shape} and noisy {noisy.shape} masks differ in shape")
    valid = _valid(clean, ignore_index)
    c, same = clean[valid].astype(np.int64), (clean == noisy)[valid]
    if len(c) and c.min() < 0:
        raise ValueError(f"clean labels must be class ids >= 0 outside ignore_index={ignore_index}, got {c.min()}")
    total = np.bincount(c)
    hits = np.bincount(c, weights=same)
    per_class = {int(k): float(hits[k] / total[k]) for k in np.flatnonzero(total)}
    return {"pixel": float(same.mean()) if len(c) else 1.0, "per_class": per_class, "pixels": int(len(c))}
