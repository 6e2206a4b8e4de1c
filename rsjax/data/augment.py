"""Host-side numpy augmentations for images with any number of bands.

All functions take and return ``[H, W, C]`` float32 arrays (any ``C``: 3 for RGB, 13 for
Sentinel-2 ...) and draw every random number from an explicit ``np.random.Generator``, so a
pipeline that seeds the generator from ``(seed, example position)`` reproduces the exact same
views after a resume. Nothing here assumes RGB: brightness / contrast act identically on all
bands, and the optional "saturation" and "grayscale" are band-agnostic (defined through the
per-pixel mean over the bands, as in :mod:`rsjax.data.device_augment`; for RGB they are the
usual ones up to the luma weights); there is no hue, which is undefined for multispectral data.

Resampling is done with separable linear operators: a crop-and-resize (or a blur) along one
axis is a small ``[out, in]`` matrix ``R``, and the 2-D operation is ``R_y @ img @ R_x^T``
applied to every band at once. This is exact bilinear interpolation when upsampling and a
triangle (tent) filter whose width grows with the shrink factor when downsampling (i.e.
antialiased, like ``torchvision`` ``antialias=True``).

The functions below are also the ``numpy`` backend of the op registry
(:mod:`rsjax.data.ops`): a view recipe such as ``config.data.augment`` is built once and
applied per example. Typical use (SimCLR / MoCo v2 style two views)::

    rng = np.random.default_rng([seed, position])
    v1, v2 = two_views(img, rng, "rrc(0.2, 1.0)|flip_rot|jitter(0.4, p=0.8)|blur(0.5)", out_size=64)
"""

from __future__ import annotations

import functools
import math

import numpy as np

from rsjax.data import (
    op_registry as ops,  # the registry; rsjax.data.ops imports this module
)
from rsjax.data import registry
from rsjax.errors import ConfigError, DataError

# ----------------------------------------------------------------------------------------
# Separable resampling
# ----------------------------------------------------------------------------------------


def resample_matrix(start: float, length: float, in_size: int, out_size: int, antialias: bool = True) -> np.ndarray:
    """Linear operator ``[out_size, in_size]`` that maps the 1-D window ``[start, start+length)``
    (in input pixel units, continuous) onto ``out_size`` output pixels.

    Output pixel ``i`` samples the input at its centre ``c_i = start + (i + 0.5) * length /
    out_size - 0.5`` with the tent weights ``w_ij = max(0, 1 - |j - c_i| / s)``, where the
    support ``s = max(1, length / out_size)`` when ``antialias`` (s = 1 otherwise: plain
    bilinear). Rows are normalized to sum to 1 over the valid input pixels, which also clamps
    samples outside the image to the border (edge padding).
    """
    scale = length / out_size
    support = max(1.0, scale) if antialias else 1.0
    centres = start + (np.arange(out_size) + 0.5) * scale - 0.5
    centres = np.minimum(np.maximum(centres, 0.0), in_size - 1.0)
    w = 1.0 - np.abs(np.arange(in_size)[None, :] - centres[:, None]) * (1.0 / support)
    np.maximum(w, 0.0, out=w)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def apply_separable(img: np.ndarray, ry: np.ndarray, rx: np.ndarray) -> np.ndarray:
    """``out[i, j, c] = sum_hw ry[i, h] * img[h, w, c] * rx[j, w]`` for ``img`` [H, W, C].

    Written as two *stacked* matmuls (one small GEMM per column, then per output row) rather
    than one large GEMM: each GEMM stays below OpenBLAS's multithreading threshold, so the
    data-loader threads never wait on BLAS worker threads (a large single GEMM was 10-40x
    slower on a busy 2-core host)."""
    tmp = np.matmul(ry, img.transpose(1, 0, 2))  # [W, oh, C]
    return np.matmul(rx, tmp.transpose(1, 0, 2))  # [oh, ow, C]


def resize(img: np.ndarray, out_size: int | tuple[int, int], antialias: bool = True) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of the whole ``[H, W, C]`` image."""
    oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
    h, w = img.shape[:2]
    if (oh, ow) == (h, w):
        return np.asarray(img, np.float32)
    ry = resample_matrix(0.0, h, h, oh, antialias)
    rx = resample_matrix(0.0, w, w, ow, antialias)
    return apply_separable(np.asarray(img, np.float32), ry, rx)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Central ``size`` x ``size`` window (no resampling); ``size`` <= H, W."""
    h, w = img.shape[:2]
    if size > h or size > w:
        raise ValueError(f"center_crop size {size} larger than image {img.shape[:2]}")
    y0, x0 = (h - size) // 2, (w - size) // 2
    return img[y0 : y0 + size, x0 : x0 + size]


# ----------------------------------------------------------------------------------------
# Geometric
# ----------------------------------------------------------------------------------------


def sample_crop_box(
    h: int, w: int, rng: np.random.Generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), max_tries: int = 10
) -> tuple[float, float, float, float]:
    """Samples ``(y0, x0, ch, cw)`` of a crop covering a fraction ``U(scale)`` of the image
    area with aspect ratio ``cw / ch`` log-uniform in ``ratio`` (Inception-style, the
    ``RandomResizedCrop`` recipe). Box sizes are continuous (sub-pixel), which keeps small
    images (32-64 px) from quantizing the scale distribution. After ``max_tries`` rejected
    draws (box larger than the image) falls back to the largest centred box with the ratio
    clamped into ``ratio``.
    """
    area = float(h * w)
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(max_tries):
        target = area * rng.uniform(scale[0], scale[1])
        ar = math.exp(rng.uniform(*log_r))
        cw = math.sqrt(target * ar)
        ch = math.sqrt(target / ar)
        if 0 < cw <= w and 0 < ch <= h:
            y0 = rng.uniform(0, h - ch)
            x0 = rng.uniform(0, w - cw)
            return y0, x0, ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = float(w), w / ratio[0]
    elif in_ratio > ratio[1]:
        ch, cw = float(h), h * ratio[1]
    else:
        ch, cw = float(h), float(w)
    return (h - ch) / 2, (w - cw) / 2, ch, cw


def random_resized_crop(
    img: np.ndarray,
    out_size: int,
    scale=(0.2, 1.0),
    ratio=(3 / 4, 4 / 3),
    rng: np.random.Generator | None = None,
    antialias: bool = True,
) -> np.ndarray:
    """Crop a random box (area fraction ``U(scale)``, aspect ratio log-uniform in ``ratio``,
    see :func:`sample_crop_box`) and resample it bilinearly to ``out_size`` x ``out_size``.

    Args:
      img: ``[H, W, C]`` float array, any ``C``.
      out_size: output side in pixels (may exceed H, W: upsampling).
      scale: range of the crop area as a fraction of the image area.
      ratio: range of the crop aspect ratio width / height.
      rng: the random generator (required).

    Returns:
      float32 ``[out_size, out_size, C]``.
    """
    if rng is None:
        raise ValueError("random_resized_crop needs an explicit np.random.Generator (rng=)")
    h, w = img.shape[:2]
    y0, x0, ch, cw = sample_crop_box(h, w, rng, scale, ratio)
    ry = resample_matrix(y0, ch, h, out_size, antialias)
    rx = resample_matrix(x0, cw, w, out_size, antialias)
    return apply_separable(np.asarray(img, np.float32), ry, rx)


def flip_rot90(img: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Deterministic dihedral transform: rotate by ``k`` x 90 degrees (counter-clockwise, axes
    (0, 1)) then, if ``flip``, mirror left-right. The 8 ``(k, flip)`` pairs are the 8 symmetries
    of the square (they include the vertical flip: ``k=2, flip=True``)."""
    out = np.rot90(img, k % 4, axes=(0, 1))
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def random_flip_rot90(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random one of the 8 square symmetries (h/v flips and 90-degree rotations).

    Overhead imagery has no canonical "up", so all 8 are label-preserving. Pixels are only
    permuted (no interpolation)."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    return flip_rot90(img, k, flip)


# ----------------------------------------------------------------------------------------
# Photometric (band-agnostic)
# ----------------------------------------------------------------------------------------


def brightness_contrast(
    img: np.ndarray, rng: np.random.Generator, strength: float = 0.4, p: float = 0.8, band_jitter: float = 0.0
) -> np.ndarray:
    """Random brightness and contrast applied identically to every band, with probability ``p``.

    With ``b ~ U(1 - 0.8 s, 1 + 0.8 s)`` and ``c ~ U(1 - 0.8 s, 1 + 0.8 s)`` (``s =
    strength``; 0.8 s is SimCLR's colour-jitter magnitude for brightness/contrast) and
    ``mu_k`` the spatial mean of band ``k``::

        out[..., k] = b * ((img[..., k] - mu_k) * c + mu_k) * g_k

    i.e. contrast stretches every band about its own mean (so the spectral signature, the
    ratio between bands, is kept) and brightness scales the whole image, which mimics a
    change of illumination. ``g_k = 1`` unless ``band_jitter > 0``: then ``g_k ~
    U(1 - band_jitter, 1 + band_jitter)`` per band, a mild per-band gain (sensor calibration
    / atmosphere) that does alter spectral ratios; keep it small. Works on any band count.
    (Brightness and contrast are both affine here, so their order does not matter: the map
    is ``x * b c + mu * b (1 - c)``.)
    Values are clipped to be >= 0 (scaled reflectance cannot be negative); no upper clip
    since reflectance can exceed 1 (clouds, snow). Nothing is drawn from ``rng`` when
    ``strength`` and ``band_jitter`` are both 0. This is :func:`photometric_jitter` without
    saturation and grayscale.
    """
    return photometric_jitter(img, rng, strength, p, band_jitter)


def photometric_jitter(
    img: np.ndarray,
    rng: np.random.Generator,
    strength: float = 0.4,
    p: float = 0.8,
    band_jitter: float = 0.0,
    saturation: float = 0.0,
    gray_prob: float = 0.0,
) -> np.ndarray:
    """Band-agnostic photometric jitter, the host twin of the device path's
    (:func:`rsjax.data.device_augment.augment_views`), for ``img`` ``[H, W, C]``, any ``C``.

    With probability ``p`` (one draw; skipped when ``strength``, ``band_jitter`` and
    ``saturation`` are all 0):

    1. brightness / contrast / per-band gain as :func:`brightness_contrast`:
       ``y_k = (b c x_k + b (1 - c) mu_k) g_k``;
    2. if ``saturation > 0``, ``sat ~ U(1 - saturation, 1 + saturation)`` and, with
       ``m = mean_k y_k`` the per-pixel band mean, ``y_k <- m + sat (y_k - m)`` (each band
       pulled towards (sat < 1) or pushed away from (sat > 1) the band mean).

    Then, independently, with probability ``gray_prob``: ``y_k <- m`` for every band
    (grayscale; ``m`` is unchanged by step 2). Finally ``y = max(y, 0)``. Draw order:
    apply?, b, c, [g_1..g_C], [sat], [gray?] -- with ``saturation = gray_prob = 0`` exactly the
    draws of the former brightness/contrast, so existing seeds keep their views.
    """
    img = np.asarray(img, np.float32)
    out = img
    changed = False
    if (strength > 0 or band_jitter > 0 or saturation > 0) and rng.random() < p:
        s = 0.8 * max(strength, 0.0)
        b = rng.uniform(1 - s, 1 + s)
        c = rng.uniform(1 - s, 1 + s)
        # Both orders of the two linear maps give the same affine map: x * b c + mu * b (1 - c).
        mu = img.mean(axis=(0, 1), keepdims=True)
        out = img * np.float32(b * c)
        out += mu * np.float32(b * (1.0 - c))
        if band_jitter > 0:
            g = rng.uniform(1 - band_jitter, 1 + band_jitter, size=img.shape[-1]).astype(np.float32)
            out *= g
        if saturation > 0:
            sat = np.float32(rng.uniform(1 - saturation, 1 + saturation))
            m = out.mean(axis=-1, keepdims=True)
            out = m + sat * (out - m)
        changed = True
    if gray_prob > 0 and rng.random() < gray_prob:
        out = np.broadcast_to(out.mean(axis=-1, keepdims=True), out.shape).astype(np.float32)
        changed = True
    if changed:
        out = np.maximum(out, 0.0).astype(np.float32, copy=False)
    return out


@functools.lru_cache(maxsize=1024)
def gaussian_kernel_matrix(size: int, sigma: float) -> np.ndarray:
    """``[size, size]`` operator of a 1-D Gaussian blur with reflect (mirror) boundaries.

    Kernel radius ``ceil(3 sigma)``; weights ``exp(-d^2 / (2 sigma^2))`` normalized to 1.
    Cached (callers round sigma to 0.01 px, so there are few distinct matrices); the returned
    array is read-only."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    d = np.arange(-radius, radius + 1)
    k = np.exp(-(d.astype(np.float64) ** 2) / (2.0 * sigma * sigma))
    k /= k.sum()
    rows = np.arange(size)
    j = rows[:, None] + d[None, :]
    # reflect: -1 -> 0, -2 -> 1, ..., size -> size - 1 ("symmetric" padding); clamp far taps
    j = np.where(j < 0, -j - 1, j)
    j = np.where(j >= size, 2 * size - j - 1, j)
    j = np.clip(j, 0, size - 1)
    m = np.zeros((size, size), np.float64)
    np.add.at(m, (np.broadcast_to(rows[:, None], j.shape), j), np.broadcast_to(k, j.shape))
    m = m.astype(np.float32)
    m.flags.writeable = False
    return m


def gaussian_blur(img: np.ndarray, rng: np.random.Generator, sigma_range=(0.1, 2.0), p: float = 0.5) -> np.ndarray:
    """With probability ``p``, blur every band with an isotropic Gaussian, ``sigma ~
    U(sigma_range)`` in pixels (separable, mirror boundaries). SimCLR uses sigma in
    [0.1, 2.0] at 224 px; for small remote-sensing patches a proportionally smaller range
    (e.g. [0.1, 1.0] at 64 px) keeps the blur comparable."""
    img = np.asarray(img, np.float32)
    if p <= 0 or rng.random() >= p:
        return img
    sigma = round(float(rng.uniform(*sigma_range)), 2)
    sigma = max(sigma, 0.01)
    h, w = img.shape[:2]
    return apply_separable(img, gaussian_kernel_matrix(h, sigma), gaussian_kernel_matrix(w, sigma))


# ----------------------------------------------------------------------------------------
# The numpy backend of the op registry (rsjax.data.ops): per example, one Generator
# ----------------------------------------------------------------------------------------


def _spatial_keys(data: dict) -> list[str]:
    """Per-example spatial arrays: ``[H, W, ...]`` (images and masks), not labels."""
    return [k for k, v in data.items() if np.ndim(v) >= 2]


def _size(size, ctx) -> int:
    out = size or ctx.out_size
    if not out:
        raise ConfigError("op needs a size: give size=... or set config.data.image_size")
    return int(out)


@ops.register("rrc", "numpy")
def _np_rrc(data, rng, ctx, *, scale, ratio, size):
    data["image"] = random_resized_crop(data["image"], _size(size, ctx), scale, ratio, rng=rng)
    return data


@ops.register("resize", "numpy")
def _np_resize(data, rng, ctx, *, size):
    data["image"] = resize(data["image"], _size(size, ctx))
    return data


@ops.register("flip_rot", "numpy")
def _np_flip_rot(data, rng, ctx):
    # Draws k, then flip: exactly random_flip_rot90's draws, shared by every spatial array.
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    for name in _spatial_keys(data):
        data[name] = flip_rot90(data[name], k, flip)
    return data


@ops.register("flip_lr", "numpy")
def _np_flip_lr(data, rng, ctx, *, p):
    if p > 0 and rng.random() < p:
        for name in _spatial_keys(data):
            data[name] = np.ascontiguousarray(data[name][:, ::-1])
    return data


@ops.register("jitter", "numpy")
def _np_jitter(data, rng, ctx, *, strength, p, band, saturation):
    data["image"] = photometric_jitter(data["image"], rng, strength, p, band, saturation, 0.0)
    return data


@ops.register("gray", "numpy")
def _np_gray(data, rng, ctx, *, p):
    # photometric_jitter with only gray_prob: one draw (when p > 0), mean over bands, clip at 0.
    data["image"] = photometric_jitter(data["image"], rng, 0.0, 0.0, 0.0, 0.0, p)
    return data


@ops.register("blur", "numpy")
def _np_blur(data, rng, ctx, *, p, sigma):
    data["image"] = gaussian_blur(data["image"], rng, sigma, p)
    return data


@ops.register("normalize", "numpy")
def _np_normalize(data, rng, ctx, *, keys):
    if ctx.info is None:
        raise ValueError("op normalize needs the dataset's registry entry (Context.info)")
    for k in keys:
        if k in data:
            data[k] = registry.normalize(data[k], ctx.info)
    return data


@ops.register("crop_flip", "numpy")
def _np_crop_flip(data, rng, ctx, *, size, augment):
    """The same random ``size`` window, left-right flip and 90-degree rotation for every spatial
    array (image(s) and mask alike); ``augment=False``: the centre window, no flip / rotation.
    ``size`` 0 or >= the image keeps it whole. Draws: y0, x0, k, flip (when ``augment``)."""
    spatial = _spatial_keys(data)
    h, w = np.shape(data[spatial[0]])[:2]
    crop = size if size > 0 else max(h, w)
    ch, cw = min(crop, h), min(crop, w)
    y0 = int(rng.integers(0, h - ch + 1)) if augment else (h - ch) // 2
    x0 = int(rng.integers(0, w - cw + 1)) if augment else (w - cw) // 2
    k, flip = (int(rng.integers(0, 4)), bool(rng.integers(0, 2))) if augment else (0, False)
    for name in spatial:
        a = data[name][y0 : y0 + ch, x0 : x0 + cw]
        if flip:
            a = a[:, ::-1]
        if k:
            a = np.rot90(a, k, axes=(0, 1))
        data[name] = np.ascontiguousarray(a)
    return data


IGNORE_INDEX = -1  # in-memory "count nowhere" label (rsjax.data.segmentation.IGNORE_INDEX)


@ops.register("ignore", "numpy")
def _np_ignore(data, rng, ctx, *, value):
    """Stored ``mask`` -> int32 class labels with -1 = ignore. ``value`` 0: stored 0 and 255 ->
    -1, ``v -> v - 1`` (``reduce_zero_label``); another value ``u``: ``u -> -1``; None: as stored."""
    mask = np.asarray(data["mask"]).astype(np.int32)
    if value is None:
        data["mask"] = mask
    elif int(value) == 0:
        data["mask"] = np.where((mask == 0) | (mask == 255), IGNORE_INDEX, mask - 1).astype(np.int32)
    else:
        data["mask"] = np.where(mask == int(value), IGNORE_INDEX, mask).astype(np.int32)
    return data


@ops.register("remap", "numpy")
def _np_remap(data, rng, ctx, *, class_map):
    """``class_map[l]`` for every label ``l`` of ``mask`` (else ``label``); -1 stays -1."""
    lut = np.asarray(list(class_map) + [IGNORE_INDEX], np.int32)  # index -1 -> the last entry
    name = "mask" if "mask" in data else "label"
    lab = np.asarray(data[name])
    if lab.size and (lab.max() >= len(class_map) or lab.min() < IGNORE_INDEX):
        raise DataError(
            f"remap: {name} values {sorted(set(np.unique(lab).tolist()))[:8]} outside "
            f"[-1, {len(class_map)}) (class_map has {len(class_map)} entries)"
        )
    data[name] = lut[lab]
    return data


@ops.register("multi_hot", "numpy")
def _np_multi_hot(data, rng, ctx, *, num_classes):
    """``label`` [..., K] int32: 1 where class k occurs anywhere in ``mask`` [..., H, W]."""
    m = np.asarray(data["mask"])
    flat = m.reshape(m.shape[:-2] + (-1,))
    data["label"] = np.stack([(flat == c).any(axis=-1) for c in range(num_classes)], axis=-1).astype(np.int32)
    return data


# ----------------------------------------------------------------------------------------
# Two views
# ----------------------------------------------------------------------------------------


def two_views(
    img: np.ndarray, rng: np.random.Generator, recipe: "str | ops.Pipeline" = ops.DEFAULT_AUGMENT, out_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Two independently augmented views of ``img`` ([H, W, C] float, any C).

    ``recipe``: a view recipe (``config.data.augment``, see :mod:`rsjax.data.ops`) or its built
    numpy :class:`~rsjax.data.ops.Pipeline`. Each view is the recipe with its own draws from
    ``rng`` (view 1 first, then view 2), so the pair is a deterministic function of ``img`` and
    the generator's state.
    """
    pipe = recipe if isinstance(recipe, ops.Pipeline) else ops.view_recipe(recipe, "numpy")
    ctx = ops.Context(out_size=int(out_size))
    img = np.asarray(img, np.float32)
    return pipe.image(img, rng, ctx), pipe.image(img, rng, ctx)
