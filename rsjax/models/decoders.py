"""Dense-prediction decoders over ResNet features, and the models that wrap them.

Decoders take the encoder's multi-scale maps ``(stem, [c1, c2, c3, c4])`` (see
``rsjax.models.resnet.ResNet(..., return_features=True, return_stem=True)``) and the input
size, and return float32 logits ``[B, H, W, num_classes]`` at input resolution. Every
upsampling resizes to the *actual* size of the map it meets (not a fixed x2), so the same
decoder works with the standard stem (strides 2/4/8/16/32), the cifar stem (1/1/2/4/8) and
dilated encoders (output stride 16 / 8).

* :class:`UNet` (as segmentation_models_pytorch's Unet): starting from c4, five decoder
  blocks; block i resizes (nearest) to the next skip's size (c3, c2, c1, stem, then the
  input), concatenates the skip (none for the last) and applies two 3x3 conv -> BN -> ReLU
  with ``decoder_channels[i]`` channels; a 3x3 conv gives the logits.
* :class:`DeepLabV3Plus` (Chen et al. 2018): ASPP on c4 = [1x1 conv, three 3x3 atrous convs
  at ``atrous_rates``, global-average-pool -> 1x1 conv -> broadcast], each -> BN -> ReLU
  with ``aspp_channels``; concat -> 1x1 conv -> BN -> ReLU -> dropout. Bilinear resize to c1's
  size, concat with the low-level branch (1x1 conv of c1 to 48 channels -> BN -> ReLU), two
  3x3 conv -> BN -> ReLU, 1x1 conv to logits, bilinear resize to the input. Rates: (6, 12, 18)
  for output stride 16, (12, 24, 36) for 8 (:func:`aspp_rates`); the output stride itself is
  set by dilating the encoder (``SegmentationModel.output_stride``).
* :class:`PSPNet` (Zhao et al. 2017): pyramid pooling on c4: adaptive average pooling to
  ``bins`` = 1, 2, 3, 6 (PyTorch's adaptive-pool bin edges), 1x1 conv to C4 / len(bins)
  -> BN -> ReLU, bilinear resize back, concat with c4; 3x3 conv -> BN -> ReLU -> dropout,
  1x1 conv to logits, bilinear resize to the input.

Models (the parameter trees are ``{'encoder': <ResNet tree>, 'decoder': ...}``, and the same
for ``batch_stats``, so a pretrained encoder plugs in by replacing ``params['encoder']`` and
``batch_stats['encoder']`` with the trees of ``rsjax.checkpoint.load_encoder``):

* :class:`SegmentationModel`: ResNet encoder + one of the decoders above.
* :class:`SiameseCDUNet`: change detection. One shared-weight encoder sees image A and image
  B (one call on the batch-concatenated pair, so BatchNorm statistics are computed over
  both dates together); every scale (stem, c1..c4) is fused as the absolute difference
  ``|f_A - f_B|`` (symmetric in A and B, parameter free, and zero where nothing changed,
  which is what the change class needs; concatenation would double decoder widths and
  make the order of dates matter); a :class:`UNet` decodes the differences to one logit
  per pixel (``sigmoid > 0.5`` = change).

``freeze_encoder=True`` runs the encoder in inference mode (BatchNorm running statistics,
not updated) and stops gradients at its outputs; the caller must also keep the optimizer
from touching ``params['encoder']`` (e.g. ``optax.multi_transform`` with
``optax.set_to_zero``) so decoupled weight decay does not change it.

Dropout (DeepLabV3+ ASPP, PSPNet) is active only with ``train=True`` and then needs
``rngs={'dropout': key}``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rsjax.models import conv as conv_lib
from rsjax.models import resnet as resnet_lib

DECODERS = ("unet", "deeplabv3plus", "pspnet")


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """ASPP atrous rates for an output stride: 16 -> (6, 12, 18), 8 -> (12, 24, 36)."""
    table = {16: (6, 12, 18), 8: (12, 24, 36), 32: (3, 6, 9)}
    if output_stride not in table:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    return table[output_stride]


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------
def _resize(x, hw: tuple[int, int], method: str):
    """Resize NHWC ``x`` to spatial size ``hw`` (no-op when it already has it).

    ``bilinear`` uses half-pixel centres (= PyTorch ``align_corners=False``); we only
    upsample, where jax's antialiasing does not apply.
    """
    if tuple(x.shape[1:3]) == tuple(hw):
        return x
    return jax.image.resize(x, (x.shape[0], hw[0], hw[1], x.shape[3]), method=method)


def _adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] averaging weights of PyTorch's adaptive average pooling along one axis:
    bin i covers [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out))."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x, bins: int):
    """Adaptive average pooling of NHWC ``x`` to ``bins x bins`` (PyTorch bin edges)."""
    ph = jnp.asarray(_adaptive_pool_matrix(x.shape[1], bins), x.dtype)
    pw = jnp.asarray(_adaptive_pool_matrix(x.shape[2], bins), x.dtype)
    return jnp.einsum("ih,jw,bhwc->bijc", ph, pw, x)


class ConvBNReLU(nn.Module):
    """k x k conv (no bias, symmetric padding ``dilation * (k // 2)``) -> BatchNorm -> ReLU."""

    features: int
    kernel: int = 3
    dilation: int = 1
    dtype: Any = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool):
        pad = self.dilation * (self.kernel // 2)
        x = conv_lib.Conv(
            self.features,
            (self.kernel, self.kernel),
            padding=((pad, pad), (pad, pad)),
            kernel_dilation=(self.dilation, self.dilation),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=resnet_lib.conv_kernel_init,
            impl=self.conv,
            name="conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="bn",
        )(x)
        return nn.relu(x)


def _head(features: int, kernel: int, dtype, name: str, impl: str) -> conv_lib.Conv:
    pad = kernel // 2
    return conv_lib.Conv(
        features,
        (kernel, kernel),
        padding=((pad, pad), (pad, pad)),
        dtype=dtype,
        param_dtype=jnp.float32,
        impl=impl,
        name=name,
    )


# --------------------------------------------------------------------------------------
# Decoders: (stem, [c1..c4], out_hw) -> logits [B, H, W, num_classes] float32
# --------------------------------------------------------------------------------------
class UNet(nn.Module):
    """UNet decoder (see module docstring). Submodules ``block{i}_conv{1,2}``, ``head``."""

    num_classes: int
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
    dtype: Any = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, stem, features, out_hw, *, train: bool):
        if len(features) != 4 or len(self.decoder_channels) != 5:
            raise ValueError(
                "UNet needs 4 stage features and 5 decoder_channels, got "
                f"{len(features)} and {tuple(self.decoder_channels)}"
            )
        c1, c2, c3, c4 = features
        x = c4
        skips = (c3, c2, c1, stem, None)
        for i, (skip, ch) in enumerate(zip(skips, self.decoder_channels)):
            target = tuple(out_hw) if skip is None else tuple(skip.shape[1:3])
            x = _resize(x, target, "nearest")
            if skip is not None:
                x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
            x = ConvBNReLU(ch, dtype=self.dtype, conv=self.conv, name=f"block{i}_conv1")(x, train=train)
            x = ConvBNReLU(ch, dtype=self.dtype, conv=self.conv, name=f"block{i}_conv2")(x, train=train)
        return _head(self.num_classes, 3, self.dtype, "head", self.conv)(x).astype(jnp.float32)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3)."""

    channels: int = 256
    rates: Sequence[int] = (6, 12, 18)
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool):
        cbr = lambda ch, k, name, d=1: ConvBNReLU(ch, k, d, dtype=self.dtype, conv=self.conv, name=name)  # noqa: E731
        branches = [cbr(self.channels, 1, "b0")(x, train=train)]
        for i, r in enumerate(self.rates):
            branches.append(cbr(self.channels, 3, f"b{i + 1}", r)(x, train=train))
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
        pooled = cbr(self.channels, 1, "pool")(pooled, train=train)
        branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.channels,)))
        y = cbr(self.channels, 1, "project")(jnp.concatenate(branches, -1), train=train)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ decoder (ASPP on c4 + low-level skip from c1)."""

    num_classes: int
    atrous_rates: Sequence[int] = (6, 12, 18)
    aspp_channels: int = 256
    low_level_channels: int = 48
    decoder_channels: int = 256
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, stem, features, out_hw, *, train: bool):
        del stem
        c1, c4 = features[0], features[3]
        x = ASPP(self.aspp_channels, tuple(self.atrous_rates), self.dropout_rate, self.dtype, self.conv, name="aspp")(
            c4, train=train
        )
        x = _resize(x, c1.shape[1:3], "bilinear")
        low = ConvBNReLU(self.low_level_channels, 1, dtype=self.dtype, conv=self.conv, name="low_level")(
            c1, train=train
        )
        x = jnp.concatenate([x, low.astype(x.dtype)], axis=-1)
        x = ConvBNReLU(self.decoder_channels, 3, dtype=self.dtype, conv=self.conv, name="fuse1")(x, train=train)
        x = ConvBNReLU(self.decoder_channels, 3, dtype=self.dtype, conv=self.conv, name="fuse2")(x, train=train)
        x = _head(self.num_classes, 1, self.dtype, "head", self.conv)(x).astype(jnp.float32)
        return _resize(x, out_hw, "bilinear")


class PSPNet(nn.Module):
    """PSPNet decoder (pyramid pooling module on c4)."""

    num_classes: int
    bins: Sequence[int] = (1, 2, 3, 6)
    decoder_channels: int = 512
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, stem, features, out_hw, *, train: bool):
        del stem
        c4 = features[3]
        hw = c4.shape[1:3]
        branch_ch = max(1, c4.shape[-1] // len(self.bins))
        pyramid = [c4]
        for b in self.bins:
            p = adaptive_avg_pool(c4.astype(jnp.float32), b).astype(self.dtype)
            p = ConvBNReLU(branch_ch, 1, dtype=self.dtype, conv=self.conv, name=f"pool{b}")(p, train=train)
            pyramid.append(_resize(p, hw, "bilinear"))
        x = jnp.concatenate(pyramid, axis=-1)
        x = ConvBNReLU(self.decoder_channels, 3, dtype=self.dtype, conv=self.conv, name="bottleneck")(x, train=train)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = _head(self.num_classes, 1, self.dtype, "head", self.conv)(x).astype(jnp.float32)
        return _resize(x, out_hw, "bilinear")


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------
def _default_unet_channels(encoder_name: str) -> tuple[int, ...]:
    # smp's default for full-size encoders; scaled down with the toy encoder.
    return (32, 16, 16, 8, 8) if encoder_name == "tiny" else (256, 128, 64, 32, 16)


def make_decoder(
    decoder: str,
    num_classes: int,
    *,
    encoder_name: str = "resnet18",
    output_stride: int = 32,
    decoder_channels: Sequence[int] | int | None = None,
    dropout_rate: float | None = None,
    dtype: Any = jnp.float32,
    conv: str = "auto",
    name: str | None = None,
) -> nn.Module:
    """Builds decoder ``unet | deeplabv3plus | pspnet`` with sizes suited to ``encoder_name``."""
    small = encoder_name == "tiny"
    kw = {} if name is None else {"name": name}
    if decoder == "unet":
        ch = tuple(decoder_channels) if decoder_channels else _default_unet_channels(encoder_name)
        return UNet(num_classes, ch, dtype, conv, **kw)
    if decoder == "deeplabv3plus":
        ch = int(decoder_channels) if decoder_channels else (16 if small else 256)
        return DeepLabV3Plus(
            num_classes,
            aspp_rates(output_stride),
            aspp_channels=ch,
            low_level_channels=8 if small else 48,
            decoder_channels=ch,
            dropout_rate=0.5 if dropout_rate is None else dropout_rate,
            dtype=dtype,
            conv=conv,
            **kw,
        )
    if decoder == "pspnet":
        ch = int(decoder_channels) if decoder_channels else (16 if small else 512)
        return PSPNet(
            num_classes,
            decoder_channels=ch,
            dropout_rate=0.1 if dropout_rate is None else dropout_rate,
            dtype=dtype,
            conv=conv,
            **kw,
        )
    raise ValueError(f"unknown decoder {decoder!r} (config key model.decoder); known: {', '.join(DECODERS)}")


class SegmentationModel(nn.Module):
    """ResNet encoder + dense decoder; params/batch_stats ``{'encoder': ..., 'decoder': ...}``.

    Attributes:
      encoder_name: ``resnet18 | resnet34 | resnet50 | tiny``.
      decoder: ``unet | deeplabv3plus | pspnet``.
      num_classes: output channels (logits).
      in_channels: bands of the input; checked against the input's last axis.
      stem: encoder stem (``standard`` | ``cifar``).
      output_stride: 32 (no dilation), 16 or 8: dilates layer4 (and layer3) of the encoder and
        picks the DeepLabV3+ ASPP rates. Applies to every decoder.
      decoder_channels: override the decoder width (tuple for UNet, int otherwise).
      dropout_rate: override the decoder dropout (DeepLabV3+ 0.5, PSPNet 0.1).
      freeze_encoder: encoder in inference mode with stopped gradients (see module docstring).
      dtype: compute dtype; logits are float32.
      conv: convolution formulation of encoder and decoder (:mod:`rsjax.models.conv`).
    """

    encoder_name: str
    decoder: str
    num_classes: int
    in_channels: int
    stem: str = "standard"
    output_stride: int = 32
    decoder_channels: Any = None
    dropout_rate: float | None = None
    freeze_encoder: bool = False
    dtype: Any = jnp.float32
    conv: str = "auto"

    def setup(self):
        self.encoder = resnet_lib.create_encoder(
            self.encoder_name,
            dtype=self.dtype,
            stem=self.stem,
            replace_stride_with_dilation=resnet_lib.dilation_for_output_stride(self.output_stride),
            conv=self.conv,
        )
        self.head = make_decoder(
            self.decoder,
            self.num_classes,
            encoder_name=self.encoder_name,
            output_stride=self.output_stride,
            decoder_channels=self.decoder_channels,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            conv=self.conv,
            name="decoder",
        )

    def encode(self, x, *, train: bool):
        """(stem, [c1..c4]) of the encoder, honouring ``freeze_encoder``."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects [B, H, W, {self.in_channels}] input "
                f"(model.in_channels), got shape {x.shape}"
            )
        enc_train = train and not self.freeze_encoder
        _, feats, stem = self.encoder(x, train=enc_train, return_features=True, return_stem=True)
        if self.freeze_encoder:
            feats = [jax.lax.stop_gradient(f) for f in feats]
            stem = jax.lax.stop_gradient(stem)
        return stem, feats

    def __call__(self, x, *, train: bool):
        """``x`` [B, H, W, in_channels] -> logits [B, H, W, num_classes] float32."""
        stem, feats = self.encode(x, train=train)
        return self.head(stem, feats, x.shape[1:3], train=train)


class SiameseCDUNet(nn.Module):
    """Siamese change detection: shared encoder, per-scale ``|f_A - f_B|``, UNet, 1 logit.

    Params/batch_stats ``{'encoder': <ResNet tree>, 'decoder': <UNet tree>}``.
    ``__call__(a, b, train=...)`` -> change logits [B, H, W] float32.
    """

    encoder_name: str
    in_channels: int
    stem: str = "standard"
    decoder_channels: Any = None
    freeze_encoder: bool = False
    dtype: Any = jnp.float32
    conv: str = "auto"

    def setup(self):
        self.encoder = resnet_lib.create_encoder(self.encoder_name, dtype=self.dtype, stem=self.stem, conv=self.conv)
        ch = tuple(self.decoder_channels) if self.decoder_channels else _default_unet_channels(self.encoder_name)
        self.decoder = UNet(1, ch, self.dtype, self.conv)

    def __call__(self, a, b, *, train: bool):
        for name, x in (("image A", a), ("image B", b)):
            if x.ndim != 4 or x.shape[-1] != self.in_channels:
                raise ValueError(
                    f"SiameseCDUNet expects {name} as [B, H, W, {self.in_channels}] "
                    f"(model.in_channels), got shape {x.shape}"
                )
        if a.shape != b.shape:
            raise ValueError(f"SiameseCDUNet: image A {a.shape} and image B {b.shape} differ in shape")
        n = a.shape[0]
        enc_train = train and not self.freeze_encoder
        # One call on [A; B]: shared weights, and BatchNorm sees both dates at once.
        _, feats, stem = self.encoder(
            jnp.concatenate([a, b], 0), train=enc_train, return_features=True, return_stem=True
        )
        diff = lambda f: jnp.abs(f[:n] - f[n:])  # noqa: E731
        feats, stem = [diff(f) for f in feats], diff(stem)
        if self.freeze_encoder:
            feats = [jax.lax.stop_gradient(f) for f in feats]
            stem = jax.lax.stop_gradient(stem)
        return self.decoder(stem, feats, a.shape[1:3], train=train)[..., 0]


def plug_encoder(variables: dict, encoder_params, encoder_batch_stats) -> dict:
    """Returns ``variables`` ({'params', 'batch_stats'}) with the encoder trees replaced.

    Checks that every leaf of the new encoder has the shape of the one it replaces and raises
    ValueError naming the first mismatching parameter (e.g. a different band count).
    """

    def check(new, old, what):
        flat_old = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(old)[0]}
        flat_new = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(new)[0]}
        if set(flat_old) != set(flat_new):
            missing = sorted(set(flat_old) - set(flat_new))[:3]
            extra = sorted(set(flat_new) - set(flat_old))[:3]
            raise ValueError(
                f"pretrained encoder {what} do not match the model's: missing {missing}, unexpected {extra}"
            )
        for k, v in flat_old.items():
            if tuple(np.shape(flat_new[k])) != tuple(np.shape(v)):
                raise ValueError(
                    f"pretrained encoder {what}{k} has shape {tuple(np.shape(flat_new[k]))}, "
                    f"the model expects {tuple(np.shape(v))}"
                )

    check(encoder_params, variables["params"]["encoder"], "params")
    check(encoder_batch_stats, variables.get("batch_stats", {}).get("encoder", {}), "batch_stats")
    out = dict(variables)
    out["params"] = {**variables["params"], "encoder": jax.tree.map(jnp.asarray, encoder_params)}
    if "batch_stats" in variables:
        out["batch_stats"] = {**variables["batch_stats"], "encoder": jax.tree.map(jnp.asarray, encoder_batch_stats)}
    return out
