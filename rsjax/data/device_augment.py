"""GPU-resident two-view augmentation, done inside the jitted train step.

Small-image SSL is bound by CPU-side augmentation; here the decoded dataset sits in device
memory (raw dtype, e.g. uint8 EuroSAT: 21,600 x 64 x 64 x 3 = 265 MB) and each step gathers
its batch and augments it on device. Every geometric and blur operation is linear and
separable, so one view is two small batched matrix products:

    view = M_y @ X @ M_x^T      M_y = B_y(sigma) . F_y . R_y(box)   ([S, H])

with R the antialiased bilinear resampling of the random box (:func:`resample_matrix`,
identical to the host pipeline's ``rsjax.data.augment.resample_matrix``), F a row reversal
(flip), B a Gaussian blur with mirror boundaries, and a transpose for the 90-degree
rotations. The dihedral group (h/v flips x transpose, 8 elements) is drawn uniformly as in
the host pipeline. Then photometric jitter (band-agnostic), the same definitions as the
host's ``rsjax.data.augment.photometric_jitter``: with probability ``jitter_prob``
brightness and contrast as ``rsjax.data.augment.brightness_contrast``, the optional per-band
gain ``g_k ~ U(1 - band_jitter, 1 + band_jitter)`` and the optional "saturation" (each band
pulled to or pushed from the per-pixel band mean, ``sat ~ U(1 - saturation, 1 +
saturation)``; for RGB this is the usual saturation); independently, with probability
``gray_prob``, "grayscale" (all bands replaced by their mean); then the clip at 0 and
per-band standardization.

Keys honoured (``DeviceAugmentConfig.from_data_config``): ``crop_scale_min/max``,
``flip_rot``, ``jitter_strength``, ``jitter_prob``, ``band_jitter``, ``saturation``,
``gray_prob``, ``blur_prob``, ``blur_sigma_min/max`` -- the same set as the host pipeline.

Differences from the host pipeline, by design: blur is folded into the resampling matrices
so it acts before the photometric jitter (host: after; both are linear, so only the clip at
0 and the mirror boundary differ); the crop box uses the same 10-try Inception rule, drawn
vectorized.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DeviceAugmentConfig:
    out_size: int = 64
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_rot: bool = True
    jitter_strength: float = 0.4
    jitter_prob: float = 0.8
    band_jitter: float = 0.0     # 0 = off; per-band gain range, as the host's band_jitter
    saturation: float = 0.0      # 0 = off; SimCLR uses 0.8 * s for RGB
    gray_prob: float = 0.0
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.0)

    @classmethod
    def from_data_config(cls, d: Any, out_size: int) -> "DeviceAugmentConfig":
        g = (lambda k, v: d.get(k, v)) if isinstance(d, Mapping) or hasattr(d, "get") else (lambda k, v: getattr(d, k, v))
        return cls(
            out_size=out_size,
            crop_scale=(float(g("crop_scale_min", 0.2)), float(g("crop_scale_max", 1.0))),
            flip_rot=bool(g("flip_rot", True)),
            jitter_strength=float(g("jitter_strength", 0.4)),
            jitter_prob=float(g("jitter_prob", 0.8)),
            band_jitter=float(g("band_jitter", 0.0)),
            saturation=float(g("saturation", 0.0)),
            gray_prob=float(g("gray_prob", 0.0)),
            blur_prob=float(g("blur_prob", 0.5)),
            blur_sigma=(float(g("blur_sigma_min", 0.1)), float(g("blur_sigma_max", 1.0))),
        )


def resample_matrix(start, length, in_size: int, out_size: int):
    """[out_size, in_size] antialiased tent-filter operator for the window [start, start+length).

    Same formula as the host ``rsjax.data.augment.resample_matrix`` (start/length may be traced).
    """
    scale = length / out_size
    support = jnp.maximum(1.0, scale)
    centres = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5
    centres = jnp.clip(centres, 0.0, in_size - 1.0)
    w = 1.0 - jnp.abs(jnp.arange(in_size, dtype=jnp.float32)[None, :] - centres[:, None]) / support
    w = jnp.maximum(w, 0.0)
    return w / jnp.sum(w, axis=1, keepdims=True)


def blur_matrix(size: int, sigma, max_sigma: float):
    """[size, size] 1-D Gaussian blur with mirror boundaries (radius ceil(3 max_sigma), static)."""
    radius = max(1, int(math.ceil(3.0 * max_sigma)))
    d = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    k = jnp.exp(-(d**2) / (2.0 * sigma * sigma))
    k = jnp.where(jnp.abs(d) <= jnp.ceil(3.0 * sigma), k, 0.0)
    k = k / jnp.sum(k)
    rows = jnp.arange(size)[:, None] + jnp.arange(-radius, radius + 1)[None, :]
    rows = jnp.where(rows < 0, -rows - 1, rows)
    rows = jnp.where(rows >= size, 2 * size - rows - 1, rows)
    rows = jnp.clip(rows, 0, size - 1)
    return jnp.einsum("ik,ikj->ij", jnp.broadcast_to(k, rows.shape), jax.nn.one_hot(rows, size))


def sample_crop_box(key, h, w, scale, ratio, tries: int = 10):
    """(y0, x0, ch, cw) with the host's Inception rule: up to ``tries`` draws of area fraction
    U(scale) and log-uniform aspect ratio, the first that fits wins; else the largest centred
    box with the ratio clamped. ``h``/``w`` may be traced (sub-regions)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    area = h * w
    target = area * jax.random.uniform(k1, (tries,), minval=scale[0], maxval=scale[1])
    ar = jnp.exp(jax.random.uniform(k2, (tries,), minval=math.log(ratio[0]), maxval=math.log(ratio[1])))
    cw, ch = jnp.sqrt(target * ar), jnp.sqrt(target / ar)
    ok = (cw <= w) & (ch <= h)
    i = jnp.argmax(ok)
    in_ratio = w / h
    fb_cw = jnp.where(in_ratio < ratio[0], w, jnp.where(in_ratio > ratio[1], h * ratio[1], w))
    fb_ch = jnp.where(in_ratio < ratio[0], w / ratio[0], h)
    found = jnp.any(ok)
    ch = jnp.where(found, ch[i], fb_ch)
    cw = jnp.where(found, cw[i], fb_cw)
    y0 = jnp.where(found, jax.random.uniform(k3) * (h - ch), (h - ch) / 2)
    x0 = jnp.where(found, jax.random.uniform(k4) * (w - cw), (w - cw) / 2)
    return y0, x0, ch, cw


def _view_params(key, region, in_hw, cfg: DeviceAugmentConfig, num_bands: int = 1):
    """Per-example operators: M_y [S, H], M_x [S, W], transpose flag, photometric draws
    (brightness, contrast, per-band gain [C], saturation, grayscale flag)."""
    ry0, rx0, rh, rw = region
    ks = jax.random.split(key, 12)
    y0, x0, ch, cw = sample_crop_box(ks[0], rh, rw, cfg.crop_scale, cfg.crop_ratio)
    my = resample_matrix(ry0 + y0, ch, in_hw[0], cfg.out_size)
    mx = resample_matrix(rx0 + x0, cw, in_hw[1], cfg.out_size)
    if cfg.blur_prob > 0:
        sigma = jax.random.uniform(ks[1], minval=cfg.blur_sigma[0], maxval=cfg.blur_sigma[1])
        do = jax.random.uniform(ks[2]) < cfg.blur_prob
        bm = blur_matrix(cfg.out_size, sigma, cfg.blur_sigma[1])
        eye = jnp.eye(cfg.out_size)
        bm = jnp.where(do, bm, eye)
        my, mx = bm @ my, bm @ mx
    transpose = jnp.asarray(False)
    if cfg.flip_rot:
        fy, fx, tr = (jax.random.bernoulli(k) for k in ks[3:6])
        my = jnp.where(fy, my[::-1], my)
        mx = jnp.where(fx, mx[::-1], mx)
        transpose = tr
    s = 0.8 * cfg.jitter_strength
    jit_on = jax.random.uniform(ks[6]) < cfg.jitter_prob
    b = jnp.where(jit_on, jax.random.uniform(ks[7], minval=1 - s, maxval=1 + s), 1.0)
    c = jnp.where(jit_on, jax.random.uniform(ks[8], minval=1 - s, maxval=1 + s), 1.0)
    sat = jnp.where(jit_on, jax.random.uniform(ks[9], minval=1 - cfg.saturation, maxval=1 + cfg.saturation), 1.0)
    gray = jax.random.uniform(ks[10]) < cfg.gray_prob
    gain = jnp.where(jit_on, jax.random.uniform(ks[11], (num_bands,), minval=1 - cfg.band_jitter,
                                                maxval=1 + cfg.band_jitter), 1.0)
    return my, mx, transpose, b, c, gain, sat, gray


def augment_views(key, images, cfg: DeviceAugmentConfig, *, scale: float, mean, std, regions=None):
    """One augmented view of each image.

    Args:
      key: PRNG key for the whole batch (each example folds in its row index).
      images: [B, H, W, C] raw values (any dtype; divided by ``scale`` first).
      cfg: augmentation parameters.
      scale, mean, std: band normalization (registry): ``(x / scale - mean) / std``.
      regions: optional [B, 4] float (y0, x0, h, w) sub-region each view is cropped from
        (crops-as-scenes); default: the whole image.

    Returns:
      float32 [B, S, S, C] standardized views.
    """
    b, h, w, nb = images.shape
    if regions is None:
        regions = jnp.broadcast_to(jnp.asarray([0.0, 0.0, h, w], jnp.float32), (b, 4))
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))
    my, mx, tr, bb, cc, gain, sat, gray = jax.vmap(
        lambda k, r: _view_params(k, (r[0], r[1], r[2], r[3]), (h, w), cfg, nb)
    )(keys, regions)
    x = images.astype(jnp.float32) / scale
    x = jnp.einsum("boh,bhwc->bowc", my, x)
    x = jnp.einsum("bpw,bowc->bopc", mx, x)
    if cfg.flip_rot:
        x = jnp.where(tr[:, None, None, None], jnp.swapaxes(x, 1, 2), x)
    mu = jnp.mean(x, axis=(1, 2), keepdims=True)
    x = x * (bb * cc)[:, None, None, None] + mu * (bb * (1.0 - cc))[:, None, None, None]
    if cfg.band_jitter > 0:
        x = x * gain[:, None, None, :]
    if cfg.saturation > 0 or cfg.gray_prob > 0:
        m = jnp.mean(x, axis=-1, keepdims=True)
        x = m + sat[:, None, None, None] * (x - m)
        x = jnp.where(gray[:, None, None, None], jnp.broadcast_to(m, x.shape), x)
    x = jnp.maximum(x, 0.0)
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (x - mean) / std


def two_views(key, images, cfg: DeviceAugmentConfig, *, scale, mean, std, regions=None):
    k1, k2 = jax.random.split(key)
    kw = dict(scale=scale, mean=mean, std=std, regions=regions)
    return augment_views(k1, images, cfg, **kw), augment_views(k2, images, cfg, **kw)


def crops_as_scenes_regions(batch_size: int, g: int, h: int, w: int):
    """Regions for ``g x g`` adjacent sub-crops: row r is sub-crop r % (g*g) of image r // (g*g)."""
    return sub_crop_regions(jnp.arange(batch_size) % (g * g), g, h, w)


def sub_crop_regions(sub, g: int, h: int, w: int):
    """[len(sub), 4] float32 (y0, x0, h, w) of sub-crop ``sub`` (row-major) of the ``g x g``
    grid of adjacent crops, as the host's ``pipeline._sub_crop`` cuts them."""
    j = jnp.asarray(sub)
    ch, cw = float(h // g), float(w // g)  # integer crop sides, as the host cuts them
    return jnp.stack([(j // g) * ch, (j % g) * cw, jnp.full_like(j, ch, dtype=jnp.float32),
                      jnp.full_like(j, cw, dtype=jnp.float32)], axis=-1).astype(jnp.float32)
