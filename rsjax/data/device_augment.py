"""The jax backend of the op registry: batched view recipes inside the jitted train step.

Small-image SSL is bound by CPU-side augmentation; with ``data.device_resident`` the decoded
split sits in device memory (raw dtype, e.g. uint8 EuroSAT: 21,600 x 64 x 64 x 3 = 265 MB)
and each step gathers its batch and makes the views on device from the same recipe
(``config.data.augment``, :mod:`rsjax.data.ops`) the host pipeline applies per example. Each
op here is the batched twin of the numpy op in :mod:`rsjax.data.augment`, with the same
definition and the same distribution (tests/test_ops.py draws both and compares):

* ``rrc`` / ``resize``: geometric resampling is linear and separable, so a view is
  ``M_y @ X @ M_x^T`` with ``M`` the antialiased bilinear operator of the random box
  (:func:`resample_matrix`, the host's formula); boxes follow the same 10-try Inception rule,
  drawn vectorized, inside the row's crops-as-scenes region (``Context.regions``);
* ``flip_rot``: row flip x column flip x transpose, each Bernoulli(1/2): the 8 symmetries
  of the square uniformly, as the host's rotation k ~ U{0..3} and a mirror;
* ``jitter`` / ``gray``: the host's band-agnostic photometric definitions (brightness and
  contrast 0.8 s, per-band gain, saturation about the per-pixel band mean; grayscale = band
  mean), clip at 0 of changed views;
* ``blur``: ``B(sigma) @ X @ B(sigma)^T`` with the host's mirror-boundary Gaussian operator
  (:func:`blur_matrix`; sigma rounded to 0.01 px as on the host).

Op ``i`` of a recipe draws from ``fold_in(key, i)``. Ops apply in recipe order on both
backends (the former fixed device recipe folded the blur into the resampling, before the
photometric ops; now both backends blur where the recipe says).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rsjax.data import (
    op_registry as ops,  # the registry; rsjax.data.ops imports this module
)
from rsjax.data import registry
from rsjax.errors import ConfigError


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


def _size(size, ctx) -> int:
    out = size or ctx.out_size
    if not out:
        raise ConfigError("op needs a size: give size=... or set config.data.image_size")
    return int(out)


def _regions(ctx, b, h, w):
    if ctx.regions is None:
        return jnp.broadcast_to(jnp.asarray([0.0, 0.0, h, w], jnp.float32), (b, 4))
    return jnp.asarray(ctx.regions, jnp.float32)


def _spatial_keys(data) -> list[str]:
    """Batched spatial arrays ``[B, H, W, ...]`` (images and masks), not labels."""
    return [k for k, v in data.items() if jnp.ndim(v) >= 3]


def _resample(x, my, mx):
    """``out[b] = my[b] @ x[b] @ mx[b]^T`` per band: two batched matrix products."""
    x = jnp.einsum("boh,bhwc->bowc", my, x.astype(jnp.float32))
    return jnp.einsum("bpw,bowc->bopc", mx, x)


@ops.register("rrc", "jax")
def _jax_rrc(data, key, ctx, *, scale, ratio, size):
    x = data["image"]
    b, h, w, _ = x.shape
    s = _size(size, ctx)
    reg = _regions(ctx, b, h, w)
    y0, x0, ch, cw = jax.vmap(lambda k, r: sample_crop_box(k, r[2], r[3], scale, ratio))(jax.random.split(key, b), reg)
    my = jax.vmap(lambda st, ln: resample_matrix(st, ln, h, s))(reg[:, 0] + y0, ch)
    mx = jax.vmap(lambda st, ln: resample_matrix(st, ln, w, s))(reg[:, 1] + x0, cw)
    data["image"] = _resample(x, my, mx)
    return data


@ops.register("resize", "jax")
def _jax_resize(data, key, ctx, *, size):
    x = data["image"]
    b, h, w, _ = x.shape
    s = _size(size, ctx)
    reg = _regions(ctx, b, h, w)
    my = jax.vmap(lambda st, ln: resample_matrix(st, ln, h, s))(reg[:, 0], reg[:, 2])
    mx = jax.vmap(lambda st, ln: resample_matrix(st, ln, w, s))(reg[:, 1], reg[:, 3])
    data["image"] = _resample(x, my, mx)
    return data


def _where(flag, a, b):
    return jnp.where(flag.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


@ops.register("flip_rot", "jax")
def _jax_flip_rot(data, key, ctx):
    # Row flip x column flip x transpose, each Bernoulli(1/2): the 8 symmetries of the square,
    # uniformly (the host draws rotation k ~ U{0..3} and a mirror: the same distribution).
    keys = jax.random.split(key, 3)
    b = data["image"].shape[0]
    fy, fx, tr = (jax.random.bernoulli(k, 0.5, (b,)) for k in keys)
    for name in _spatial_keys(data):
        x = data[name]
        if x.shape[1] != x.shape[2]:
            raise ConfigError(
                f"op flip_rot on the device path needs square views, got {x.shape[1:3]} (config.data.augment)"
            )
        x = _where(fy, x[:, ::-1], x)
        x = _where(fx, x[:, :, ::-1], x)
        data[name] = _where(tr, jnp.swapaxes(x, 1, 2), x)
    return data


@ops.register("flip_lr", "jax")
def _jax_flip_lr(data, key, ctx, *, p):
    flip = jax.random.bernoulli(key, p, (data["image"].shape[0],))
    for name in _spatial_keys(data):
        data[name] = _where(flip, data[name][:, :, ::-1], data[name])
    return data


@ops.register("jitter", "jax")
def _jax_jitter(data, key, ctx, *, strength, p, band, saturation):
    """The host's :func:`rsjax.data.augment.photometric_jitter` (without grayscale), batched."""
    x = data["image"].astype(jnp.float32)
    b, nb = x.shape[0], x.shape[-1]
    ks = jax.random.split(key, 5)
    s = 0.8 * strength
    on = jax.random.uniform(ks[0], (b,)) < p
    bb = jnp.where(on, jax.random.uniform(ks[1], (b,), minval=1 - s, maxval=1 + s), 1.0)
    cc = jnp.where(on, jax.random.uniform(ks[2], (b,), minval=1 - s, maxval=1 + s), 1.0)
    mu = jnp.mean(x, axis=(1, 2), keepdims=True)
    y = x * (bb * cc)[:, None, None, None] + mu * (bb * (1.0 - cc))[:, None, None, None]
    if band > 0:
        y = y * jax.random.uniform(ks[3], (b, 1, 1, nb), minval=1 - band, maxval=1 + band)
    if saturation > 0:
        sat = jax.random.uniform(ks[4], (b, 1, 1, 1), minval=1 - saturation, maxval=1 + saturation)
        m = jnp.mean(y, axis=-1, keepdims=True)
        y = m + sat * (y - m)
    data["image"] = _where(on, jnp.maximum(y, 0.0), x)  # the host clips only changed views
    return data


@ops.register("gray", "jax")
def _jax_gray(data, key, ctx, *, p):
    x = data["image"].astype(jnp.float32)
    g = jax.random.uniform(key, (x.shape[0],)) < p
    m = jnp.broadcast_to(jnp.mean(x, axis=-1, keepdims=True), x.shape)
    data["image"] = _where(g, jnp.maximum(m, 0.0), x)
    return data


@ops.register("blur", "jax")
def _jax_blur(data, key, ctx, *, p, sigma):
    x = data["image"].astype(jnp.float32)
    b, h, w, _ = x.shape
    k1, k2 = jax.random.split(key)
    on = jax.random.uniform(k1, (b,)) < p
    # sigma rounded to 0.01 px (at least 0.01), as the host's gaussian_blur
    sig = jnp.maximum(jnp.round(jax.random.uniform(k2, (b,), minval=sigma[0], maxval=sigma[1]) * 100) / 100, 0.01)
    by = jax.vmap(lambda sg: blur_matrix(h, sg, sigma[1]))(sig)
    bx = by if w == h else jax.vmap(lambda sg: blur_matrix(w, sg, sigma[1]))(sig)
    data["image"] = _where(on, _resample(x, by, bx), x)
    return data


@ops.register("normalize", "jax")
def _jax_normalize(data, key, ctx, *, keys):
    if ctx.info is None:
        raise ValueError("op normalize needs the dataset's registry entry (Context.info)")
    for k in keys:
        if k in data:
            data[k] = registry.normalize(data[k], ctx.info, jnp)
    return data


def augment_views(key, images, recipe=ops.DEFAULT_AUGMENT, *, out_size: int, scale: float, mean, std, regions=None):
    """One augmented view of each image.

    Args:
      key: PRNG key for the whole batch.
      images: [B, H, W, C] raw values (any dtype; divided by ``scale`` first).
      recipe: the view recipe (``config.data.augment``) or its built jax
        :class:`~rsjax.data.ops.Pipeline`; its first op sets the size (rrc / resize).
      out_size: view side in pixels (``config.data.image_size``).
      scale, mean, std: band normalization (registry): ``(x / scale - mean) / std``.
      regions: optional [B, 4] float (y0, x0, h, w) sub-region each view is cut from
        (crops-as-scenes); default: the whole image.

    Returns:
      float32 [B, S, S, C] standardized views.
    """
    pipe = recipe if isinstance(recipe, ops.Pipeline) else ops.view_recipe(recipe, "jax")
    x = registry.scale_values(images, scale, jnp)
    x = pipe.image(x, key, ops.Context(out_size=int(out_size), regions=regions))
    return registry.standardize_values(x, mean, std, jnp)


def two_views(key, images, recipe=ops.DEFAULT_AUGMENT, *, out_size: int, scale, mean, std, regions=None):
    """Two independent views (keys ``split(key)``) of every image, see :func:`augment_views`."""
    k1, k2 = jax.random.split(key)
    kw = dict(out_size=out_size, scale=scale, mean=mean, std=std, regions=regions)
    return augment_views(k1, images, recipe, **kw), augment_views(k2, images, recipe, **kw)


def crops_as_scenes_regions(batch_size: int, g: int, h: int, w: int):
    """Regions for ``g x g`` adjacent sub-crops: row r is sub-crop r % (g*g) of image r // (g*g)."""
    return sub_crop_regions(jnp.arange(batch_size) % (g * g), g, h, w)


def sub_crop_regions(sub, g: int, h: int, w: int):
    """[len(sub), 4] float32 (y0, x0, h, w) of sub-crop ``sub`` (row-major) of the ``g x g``
    grid of adjacent crops, as the host's ``pipeline._sub_crop`` cuts them."""
    j = jnp.asarray(sub)
    ch, cw = float(h // g), float(w // g)  # integer crop sides, as the host cuts them
    return jnp.stack(
        [(j // g) * ch, (j % g) * cw, jnp.full_like(j, ch, dtype=jnp.float32), jnp.full_like(j, cw, dtype=jnp.float32)],
        axis=-1,
    ).astype(jnp.float32)
