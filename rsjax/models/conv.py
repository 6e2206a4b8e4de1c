"""The one 2-D convolution of every model (ResNet, decoders, denoiser), in several formulations.

XLA:CPU emits ``lax.conv_general_dilated`` well for most shapes but very slowly for some: a
3x3 convolution whose input or output map is 1-2 pixels wide (ResNet's layer3 / layer4 at
32-64 px crops) runs 10-60x slower than the same arithmetic written as one matrix product,
and a 1x1 convolution is 1.2-2x slower than the plain matmul it is
(``python -m rsjax.bench --conv_shapes`` measures every shape the models use). The formulations:

* ``lax``: ``lax.conv_general_dilated`` (NHWC / HWIO), what ``flax.linen.Conv`` calls.
* ``taps``: a sum over the kernel taps of (strided slice of the padded input) @ kernel[i, j]:
  kh * kw matmuls with contraction C_in.
* ``im2col``: the same strided slices concatenated along the channels, then ONE matmul with
  the kernel reshaped to [kh * kw * C_in, C_out] (contraction kh * kw * C_in: better for few
  input channels).
* ``auto`` (the default): the measured-fastest per backend and shape (:func:`choose`): on the
  CPU ``im2col`` for 1x1 kernels, for maps of at most 2 pixels and for kernels some of whose
  taps read only padding, ``lax`` for the rest; on GPU / TPU always ``lax``.

``taps`` and ``im2col`` leave out the taps that read only padding (a dilated 3x3 of DeepLabv3+
ASPP at rate 24 on an 8 px map reads data with its centre tap alone: a 1x1 convolution), so
they do less work than ``lax`` there, never more.

The same choice covers ResNet's 3x3 / stride-2 max pool (:func:`max_pool`): XLA:CPU's gradient
of ``reduce_window`` (select-and-scatter through a variadic reduce-window) cost ~40 ms of a
~350 ms SwiMDiff CPU step; the same first-maximum gradient computed through the window's strided
slices costs a few. Every formulation computes the same function as ``lax``
(values and gradients, up to float rounding; ``tests/test_conv.py``), and :class:`Conv` creates
exactly the parameters of ``flax.linen.Conv`` (names ``kernel`` [kh, kw, C_in, C_out] and
``bias`` [C_out], same initialisation), so checkpoints, ``rsjax.export`` and
``rsjax.import_weights`` do not depend on the choice. Config key: ``model.conv``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from rsjax.errors import ConfigError

IMPLS = ("auto", "lax", "taps", "im2col")
# On the CPU, a kxk (k > 1) convolution whose input or output map has at most this many
# pixels on a side goes through im2col (measured: 3x3 at 2 px 10-45x faster than lax, at
# 3 px and more lax is as fast or faster).
CPU_SMALL_MAP = 2

_Pad = tuple[tuple[int, int], tuple[int, int]]


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"conv {what} must be an int or a pair, got {v}")
    return v  # type: ignore[return-value]


def _padding(padding) -> _Pad:
    """``int`` (symmetric) or ``((top, bottom), (left, right))``; strings are refused."""
    if isinstance(padding, str):
        raise ValueError(
            f"conv padding must be explicit (an int or ((top, bottom), (left, right))), got "
            f"{padding!r}: 'SAME' pads stride-2 convolutions asymmetrically, unlike PyTorch"
        )
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = tuple(_pair(p, "padding") for p in padding)
    if len(pads) != 2:
        raise ValueError(f"conv padding needs two (low, high) pairs, got {padding}")
    return pads  # type: ignore[return-value]


def output_size(n: int, k: int, stride: int, pad: tuple[int, int], dilation: int) -> int:
    """Output length along one axis: (n + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1."""
    return (n + pad[0] + pad[1] - dilation * (k - 1) - 1) // stride + 1


def _live_taps(n: int, k: int, stride: int, pad: tuple[int, int], dilation: int, n_out: int) -> list[int]:
    """Kernel positions along one axis that read at least one input element (not only padding)."""
    live = []
    for i in range(k):
        rows = range(i * dilation - pad[0], i * dilation - pad[0] + stride * n_out, stride)
        if any(0 <= r < n for r in rows):
            live.append(i)
    return live


def from_config(model_cfg) -> str:
    """The formulation a config's ``model`` block names (``model.conv``, default ``auto``)."""
    impl = model_cfg.get("conv", "auto") if model_cfg is not None else "auto"
    if impl not in IMPLS:
        raise ConfigError(f"model.conv={impl!r}: expected one of {', '.join(IMPLS)}")
    return impl


def choose(
    x_shape: Sequence[int], kernel_shape: Sequence[int], strides, padding, dilation, backend: str | None = None
) -> str:
    """The formulation ``auto`` uses for this convolution on ``backend`` (default: JAX's default
    backend): see the module docstring; the rule comes from ``python -m rsjax.bench --conv_shapes``."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "lax"
    kh, kw = kernel_shape[:2]
    if kh == 1 and kw == 1:
        return "im2col"
    s, p, d = _pair(strides, "strides"), _padding(padding), _pair(dilation, "dilation")
    h, w = x_shape[1], x_shape[2]
    ho, wo = output_size(h, kh, s[0], p[0], d[0]), output_size(w, kw, s[1], p[1], d[1])
    if min(h, w, ho, wo) <= CPU_SMALL_MAP:
        return "im2col"
    live = len(_live_taps(h, kh, s[0], p[0], d[0], ho)) * len(_live_taps(w, kw, s[1], p[1], d[1], wo))
    return "im2col" if live < kh * kw else "lax"


def _strided_taps(x, kernel_hw, strides, pads: _Pad, dilation, out_hw):
    """[(ki, kj, slice of the padded input [B, Ho, Wo, C])] for every live tap."""
    b, h, w, c = x.shape
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel_hw, strides, dilation, out_hw
    live_h = _live_taps(h, kh, sh, pads[0], dh, ho)
    live_w = _live_taps(w, kw, sw, pads[1], dw, wo)
    # Pad only as far as the live taps reach (a far-dilated tap never needs its padding).
    lo_h = max(0, pads[0][0] - min(live_h, default=0) * dh)
    lo_w = max(0, pads[1][0] - min(live_w, default=0) * dw)
    hi_h = max(0, max(live_h, default=0) * dh - pads[0][0] + sh * (ho - 1) + 1 - h)
    hi_w = max(0, max(live_w, default=0) * dw - pads[1][0] + sw * (wo - 1) + 1 - w)
    xp = jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    taps = []
    for i in live_h:
        r0 = i * dh - pads[0][0] + lo_h
        for j in live_w:
            c0 = j * dw - pads[1][0] + lo_w
            part = lax.slice(xp, (0, r0, c0, 0), (b, r0 + sh * (ho - 1) + 1, c0 + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
            taps.append((i, j, part))
    return taps


def _matmul(a, w, precision):
    """[B, H, W, K] @ [K, O] -> [B, H, W, O] in the dtype of the inputs."""
    return lax.dot_general(a, w, (((a.ndim - 1,), (0,)), ((), ())), precision=precision)


def conv2d(x, kernel, *, strides=1, padding=0, dilation=1, impl: str = "auto", precision=None):
    """2-D convolution of NHWC ``x`` with an HWIO ``kernel`` (no bias, feature groups 1).

    Same function as ``lax.conv_general_dilated(x, kernel, strides, padding,
    rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))`` for every ``impl`` in
    :data:`IMPLS` (see the module docstring). ``padding``: an int or ((top, bottom), (left, right)).
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown convolution formulation {impl!r} (config key model.conv); known: {', '.join(IMPLS)}")
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"conv2d expects NHWC input and HWIO kernel, got shapes {x.shape} and {kernel.shape}")
    if x.shape[-1] != kernel.shape[2]:
        raise ValueError(
            f"conv2d: input has {x.shape[-1]} channels, kernel expects {kernel.shape[2]} (kernel shape {kernel.shape})"
        )
    strides, pads, dilation = _pair(strides, "strides"), _padding(padding), _pair(dilation, "dilation")
    if impl == "auto":
        impl = choose(x.shape, kernel.shape, strides, pads, dilation)
    if impl == "lax":
        return lax.conv_general_dilated(
            x,
            kernel,
            strides,
            pads,
            rhs_dilation=dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision,
        )
    kh, kw, cin, cout = kernel.shape
    ho = output_size(x.shape[1], kh, strides[0], pads[0], dilation[0])
    wo = output_size(x.shape[2], kw, strides[1], pads[1], dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError(
            f"conv2d: input {x.shape[1:3]} is smaller than the dilated kernel {kernel.shape[:2]} "
            f"(dilation {dilation}, padding {pads})"
        )
    taps = _strided_taps(x, (kh, kw), strides, pads, dilation, (ho, wo))
    out_dtype = jnp.result_type(x.dtype, kernel.dtype)
    if not taps:  # every tap reads padding only: the output is zero
        return jnp.zeros((x.shape[0], ho, wo, cout), out_dtype)
    if impl == "im2col":
        cols = jnp.concatenate([t for _, _, t in taps], axis=-1)  # one tap: a no-op concatenation
        w = jnp.concatenate([kernel[i, j] for i, j, _ in taps], axis=0)
        return _matmul(cols, w, precision).astype(out_dtype)
    acc = None  # taps: accumulate in float32 so bf16 sums do not lose precision tap by tap
    for i, j, t in taps:
        y = lax.dot_general(
            t, kernel[i, j], (((3,), (0,)), ((), ())), precision=precision, preferred_element_type=jnp.float32
        )
        acc = y if acc is None else acc + y
    return acc.astype(out_dtype)


# --------------------------------------------------------------------------------------
# Max pooling (ResNet's stem): the same choice
# --------------------------------------------------------------------------------------
def _window_slices(x, window, strides, pads: _Pad, fill):
    """The strided slices of ``x`` padded with ``fill``, one per window position, row-major."""
    b, h, w, c = x.shape
    (kh, kw), (sh, sw) = window, strides
    ho, wo = output_size(h, kh, sh, pads[0], 1), output_size(w, kw, sw, pads[1], 1)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=fill)
    return [
        lax.slice(xp, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
        for i in range(kh)
        for j in range(kw)
    ]


def _make_max_pool(window, strides, pads):
    """Max pooling (``lax.reduce_window``) whose gradient is computed through the window's strided
    slices with ``reduce_window``'s own rule (XLA's select-and-scatter): each output's gradient
    goes to the FIRST maximal element of its window in row-major order (ties are common after a
    ReLU)."""

    def pool(x):
        # XLA:CPU runs reduce_window's forward well (its gradient is the slow part).
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0)))

    def fwd(x):
        out = pool(x)
        return out, (x, out)

    def bwd(res, g):
        x, out = res
        parts = _window_slices(x, window, strides, pads, -jnp.inf)
        taken = jnp.zeros(out.shape, bool)
        routed = []
        for p in parts:  # row-major window order: the first maximum takes the gradient
            hit = (p == out) & ~taken
            taken = taken | hit
            routed.append(jnp.where(hit, g, jnp.zeros((), g.dtype)))
        # The transpose of a strided slice of the padded input is a strided pad; one vjp of the
        # slicing sums them exactly.
        _, slice_vjp = jax.vjp(lambda z: _window_slices(z, window, strides, pads, 0.0), x)
        return slice_vjp(routed)

    f = jax.custom_vjp(pool)
    f.defvjp(fwd, bwd)
    return f


def max_pool(x, window=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), *, impl: str = "auto"):
    """Max pooling of NHWC ``x`` (padding with -inf): ``flax.linen.max_pool`` for ``impl="lax"``
    (and ``auto`` off the CPU), the slice formulation on the CPU (its gradient is the same
    first-maximum rule; XLA:CPU's reduce-window gradient costs ~40 ms per step of the SwiMDiff
    CPU study shape)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown formulation {impl!r} (config key model.conv); known: {', '.join(IMPLS)}")
    window, strides, pads = _pair(window, "window"), _pair(strides, "strides"), _padding(padding)
    if impl == "lax" or (impl == "auto" and jax.default_backend() != "cpu"):
        return nn.max_pool(x, window, strides=strides, padding=pads)
    return _make_max_pool(window, strides, pads)(x)


class Conv(nn.Module):
    """``flax.linen.Conv`` for 2-D NHWC inputs, with the formulation chosen by ``impl``.

    Parameters, their names, shapes and initialisation are those of ``nn.Conv`` (``kernel``
    [kh, kw, C_in, features], ``bias`` [features]); only the computation may differ (and not
    its result, up to rounding). ``padding``: an int or ((top, bottom), (left, right)).
    """

    features: int
    kernel_size: Sequence[int]
    strides: Any = 1
    padding: Any = 0
    kernel_dilation: Any = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable = nn.linear.default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        kh, kw = _pair(tuple(self.kernel_size), "kernel_size")
        if x.ndim != 4:
            raise ValueError(f"Conv {self.name!r} expects NHWC input, got shape {x.shape}")
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv2d(
            x,
            kernel,
            strides=self.strides,
            padding=self.padding,
            dilation=self.kernel_dilation,
            impl=self.impl,
            precision=self.precision,
        )
        if bias is not None:
            y = y + bias.reshape((1, 1, 1, -1))
        return y
