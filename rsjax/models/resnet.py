"""ResNet encoders with torchvision's exact structure, for any number of input bands.

The layer graph, padding, strides, BatchNorm constants and parameter names are chosen so
that a checkpoint maps one-to-one onto ``torchvision.models.resnet{18,34,50}`` (minus
``fc``) with a plain name table (see :mod:`rsjax.export.torch_export`):

* stem: ``conv1`` 7x7 / stride 2 / padding 3 -> ``bn1`` -> ReLU -> 3x3 / stride 2 / padding 1
  max pool. The ``cifar`` stem is a 3x3 / stride 1 / padding 1 conv and no max pool
  (a common choice for 32-64 px remote-sensing patches; torchvision needs
  ``conv1`` replaced and ``maxpool = Identity`` to load it).
* BasicBlock (ResNet-18/34): 3x3 conv (stride s) -> BN -> ReLU -> 3x3 conv -> BN, + shortcut, ReLU.
* Bottleneck (ResNet-50, torchvision "v1.5"): 1x1 conv -> BN -> ReLU -> 3x3 conv (stride s)
  -> BN -> ReLU -> 1x1 conv (x4 channels) -> BN, + shortcut, ReLU.
* shortcut: identity, or ``downsample`` = 1x1 conv (stride s, no bias) -> BN when the
  stride or channel count changes.
* every conv has explicit symmetric padding (``k // 2`` on both sides). ``padding="SAME"``
  would pad stride-2 convs asymmetrically (0 before, 1 after) and differ from torch.
* convs have no bias; BatchNorm eps = 1e-5, flax momentum 0.9 (== torch momentum 0.1).
  One known difference that does not affect exported weights: torch updates
  ``running_var`` with the unbiased batch variance, flax with the biased one.
* initialisation follows torchvision: conv kernels kaiming-normal (fan_out, ReLU gain),
  BN scale 1 / bias 0; ``zero_init_residual`` zeroes the last BN scale of every block.

Parameter tree (flax ``params`` / ``batch_stats`` collections), e.g. ResNet-50::

    conv1/kernel                         [7, 7, C_in, 64]   (HWIO)
    bn1/{scale,bias}                     (batch_stats: bn1/{mean,var})
    layer1_0/conv1/kernel ... layer1_0/bn3/scale
    layer1_0/downsample_conv/kernel      [1, 1, 64, 256]
    layer1_0/downsample_bn/{scale,bias}
    layer4_2/conv3/kernel

i.e. torchvision's ``layer{i}.{j}.X`` is flax ``layer{i}_{j}/X`` and torchvision's
``layer{i}.{j}.downsample.0`` / ``.1`` are ``downsample_conv`` / ``downsample_bn``.

``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters and BN statistics stay
float32, and the pooled features are returned as float32.

Dilation (for dense prediction, e.g. DeepLabv3+ output stride 16 / 8): ``replace_stride_with_dilation``
= (layer2, layer3, layer4) flags with torchvision's semantics. A flagged stage keeps stride 1
and multiplies the running dilation by 2; the first block of that stage still uses the
previous dilation (its 3x3 convs), the following blocks the new one; 3x3 convs pad
``dilation`` pixels on each side so the spatial size is kept. Only strides and dilations
change, never parameter names or shapes, so a checkpoint trained without dilation loads
unchanged. (torchvision refuses dilation in BasicBlock; rsjax allows it for ResNet-18/34:
both 3x3 convs of the block are dilated.) Output stride with the standard stem: 32 (default),
16 = (False, False, True), 8 = (False, True, True); see :func:`dilation_for_output_stride`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from rsjax.models import conv as conv_lib

# name -> (stage_sizes, block, width)
ARCHS: dict[str, tuple[tuple[int, ...], str, int]] = {
    "resnet18": ((2, 2, 2, 2), "basic", 64),
    "resnet34": ((3, 4, 6, 3), "basic", 64),
    "resnet50": ((3, 4, 6, 3), "bottleneck", 64),
    # ResNet-10 at half width: the CPU demo encoder (~1/8 of ResNet-18's FLOPs).
    "resnet10_w32": ((1, 1, 1, 1), "basic", 32),
    # A 4-stage ResNet with one BasicBlock per stage and 8 base channels, for fast CPU tests.
    "tiny": ((1, 1, 1, 1), "basic", 8),
}

_EXPANSION = {"basic": 1, "bottleneck": 4}
_STEMS = ("standard", "cifar")

# torchvision: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu") -> N(0, 2 / fan_out).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _check_block(block: str) -> int:
    if block not in _EXPANSION:
        raise ValueError(f"ResNet block must be one of {sorted(_EXPANSION)}, got {block!r}")
    return _EXPANSION[block]


def _stage_channels(block: str, width: int) -> tuple[int, int, int, int]:
    expansion = _check_block(block)
    return tuple(width * (2**i) * expansion for i in range(4))  # type: ignore[return-value]


def _arch(name: str) -> tuple[tuple[int, ...], str, int]:
    if name not in ARCHS:
        raise ValueError(f"unknown encoder name {name!r} (model.name); known: {sorted(ARCHS)}")
    return ARCHS[name]


def stage_channels(name: str) -> tuple[int, int, int, int]:
    """Channel counts of the outputs of layer1..layer4 for encoder ``name``."""
    _, block, width = _arch(name)
    return _stage_channels(block, width)


def feature_dim(name: str) -> int:
    """Width of the pooled feature vector of encoder ``name`` (512 for resnet18, 2048 for resnet50)."""
    return stage_channels(name)[-1]


def _conv(
    features: int, kernel: int, stride: int, dtype: Any, name: str, dilation: int = 1, impl: str = "auto"
) -> conv_lib.Conv:
    pad = dilation * (kernel // 2)
    return conv_lib.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=conv_kernel_init,
        impl=impl,
        name=name,
    )


def _bn(train: bool, dtype: Any, axis_name: str | None, name: str, zero: bool = False) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        axis_name=axis_name,
        scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
        name=name,
    )


class BasicBlock(nn.Module):
    """torchvision BasicBlock (expansion 1)."""

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    zero_init_residual: bool = False
    dilation: int = 1
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool):
        out = _conv(self.planes, 3, self.stride, self.dtype, "conv1", self.dilation, self.conv)(x)
        out = _bn(train, self.dtype, self.bn_axis_name, "bn1")(out)
        out = nn.relu(out)
        out = _conv(self.planes, 3, 1, self.dtype, "conv2", self.dilation, self.conv)(out)
        out = _bn(train, self.dtype, self.bn_axis_name, "bn2", zero=self.zero_init_residual)(out)
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = _conv(self.planes, 1, self.stride, self.dtype, "downsample_conv", impl=self.conv)(x)
            x = _bn(train, self.dtype, self.bn_axis_name, "downsample_bn")(x)
        return nn.relu(out + x)


class Bottleneck(nn.Module):
    """torchvision Bottleneck v1.5 (stride on the 3x3 conv, expansion 4)."""

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    zero_init_residual: bool = False
    dilation: int = 1
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool):
        out_ch = self.planes * 4
        out = _conv(self.planes, 1, 1, self.dtype, "conv1", impl=self.conv)(x)
        out = _bn(train, self.dtype, self.bn_axis_name, "bn1")(out)
        out = nn.relu(out)
        out = _conv(self.planes, 3, self.stride, self.dtype, "conv2", self.dilation, self.conv)(out)
        out = _bn(train, self.dtype, self.bn_axis_name, "bn2")(out)
        out = nn.relu(out)
        out = _conv(out_ch, 1, 1, self.dtype, "conv3", impl=self.conv)(out)
        out = _bn(train, self.dtype, self.bn_axis_name, "bn3", zero=self.zero_init_residual)(out)
        if self.stride != 1 or x.shape[-1] != out_ch:
            x = _conv(out_ch, 1, self.stride, self.dtype, "downsample_conv", impl=self.conv)(x)
            x = _bn(train, self.dtype, self.bn_axis_name, "downsample_bn")(x)
        return nn.relu(out + x)


class ResNet(nn.Module):
    """torchvision-structured ResNet encoder without the classifier.

    Attributes:
      stage_sizes: number of blocks in layer1..layer4, e.g. (2, 2, 2, 2) for ResNet-18.
      block: ``"basic"`` or ``"bottleneck"``.
      width: channels of layer1's 3x3 convs (64 in torchvision); stage i uses width * 2**i.
      stem: ``"standard"`` (7x7/2 conv + 3x3/2 max pool) or ``"cifar"`` (3x3/1 conv, no pool).
      dtype: compute dtype; parameters stay float32.
      bn_axis_name: mapped axis name for cross-device BatchNorm statistics (only needed
        inside ``shard_map``/``pmap``; under ``jit`` with a sharded global batch the
        statistics are already global).
      zero_init_residual: zero-initialise the last BN scale in each block (torchvision option).
      replace_stride_with_dilation: (layer2, layer3, layer4) flags: replace that stage's stride
        2 by dilation (torchvision semantics, see the module docstring). Default: no dilation.
      conv: convolution formulation (:mod:`rsjax.models.conv`: ``auto | lax | taps | im2col``);
        never changes the parameters or, beyond rounding, the result.
    """

    stage_sizes: Sequence[int]
    block: str = "basic"
    width: int = 64
    stem: str = "standard"
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    zero_init_residual: bool = False
    replace_stride_with_dilation: Sequence[bool] = (False, False, False)
    conv: str = "auto"

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        """Channels of the layer1..layer4 outputs."""
        return _stage_channels(self.block, self.width)

    @property
    def feature_dim(self) -> int:
        """Width of the pooled features."""
        return self.stage_channels[-1]

    @nn.compact
    def __call__(self, x, *, train: bool, return_features: bool = False, return_stem: bool = False):
        """Encode ``x`` [B, H, W, C] (NHWC, any C).

        Returns the globally average-pooled layer4 output [B, feature_dim] in float32, or
        with ``return_features=True`` the tuple ``(pooled, [c1, c2, c3, c4])`` where ``ci`` is
        the output of layer i (NHWC, compute dtype; strides 4/8/16/32 with the standard
        stem, 1/2/4/8 with the cifar stem; dilated stages keep the previous stride).
        With ``return_features=True, return_stem=True`` the tuple is
        ``(pooled, [c1, c2, c3, c4], stem)`` where ``stem`` is the conv1 -> bn1 -> ReLU output
        before the max pool (stride 2 with the standard stem, 1 with the cifar stem; the
        UNet decoder's highest-resolution skip).
        """
        if len(self.stage_sizes) != 4:
            raise ValueError(f"ResNet needs 4 stage sizes, got {tuple(self.stage_sizes)}")
        if len(tuple(self.replace_stride_with_dilation)) != 3:
            raise ValueError(
                "replace_stride_with_dilation needs 3 flags (layer2, layer3, layer4), got "
                f"{tuple(self.replace_stride_with_dilation)}"
            )
        _check_block(self.block)
        if self.stem not in _STEMS:
            raise ValueError(f"ResNet stem must be one of {_STEMS}, got {self.stem!r}")
        if x.ndim != 4:
            raise ValueError(f"ResNet expects NHWC input [B, H, W, C], got shape {x.shape}")

        x = jnp.asarray(x, self.dtype)
        if self.stem == "standard":
            x = _conv(self.width, 7, 2, self.dtype, "conv1", impl=self.conv)(x)
        else:
            x = _conv(self.width, 3, 1, self.dtype, "conv1", impl=self.conv)(x)
        x = _bn(train, self.dtype, self.bn_axis_name, "bn1")(x)
        x = nn.relu(x)
        stem = x
        if self.stem == "standard":
            x = conv_lib.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), impl=self.conv)

        block_cls = BasicBlock if self.block == "basic" else Bottleneck
        features = []
        dilation = 1
        for i, n_blocks in enumerate(self.stage_sizes):
            planes = self.width * (2**i)
            stage_stride, previous_dilation = (2 if i > 0 else 1), dilation
            if i > 0 and self.replace_stride_with_dilation[i - 1]:
                dilation *= stage_stride
                stage_stride = 1
            for j in range(n_blocks):
                x = block_cls(
                    planes=planes,
                    stride=stage_stride if j == 0 else 1,
                    dtype=self.dtype,
                    bn_axis_name=self.bn_axis_name,
                    zero_init_residual=self.zero_init_residual,
                    dilation=previous_dilation if j == 0 else dilation,
                    conv=self.conv,
                    name=f"layer{i + 1}_{j}",
                )(x, train=train)
            features.append(x)

        # Average in float32 so bf16 runs do not lose precision in the reduction.
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if return_features:
            return (pooled, features, stem) if return_stem else (pooled, features)
        return pooled


def create_encoder(
    name: str,
    *,
    dtype: Any = jnp.float32,
    stem: str = "standard",
    bn_axis_name: str | None = None,
    zero_init_residual: bool = False,
    replace_stride_with_dilation: Sequence[bool] = (False, False, False),
    conv: str = "auto",
) -> ResNet:
    """Build encoder ``name`` in ``resnet18 | resnet34 | resnet50 | tiny``.

    ``replace_stride_with_dilation``: (layer2, layer3, layer4) flags, see
    :func:`dilation_for_output_stride`; parameter names and shapes do not depend on it, nor on
    ``conv`` (the convolution formulation, :mod:`rsjax.models.conv`).
    """
    stage_sizes, block, width = _arch(name)
    if stem not in _STEMS:
        raise ValueError(f"stem must be one of {_STEMS}, got {stem!r}")
    return ResNet(
        stage_sizes=stage_sizes,
        block=block,
        width=width,
        stem=stem,
        dtype=dtype,
        bn_axis_name=bn_axis_name,
        zero_init_residual=zero_init_residual,
        replace_stride_with_dilation=tuple(bool(f) for f in replace_stride_with_dilation),
        conv=conv,
    )


def encoder_from_config(model_cfg, dtype: Any = jnp.float32, **kwargs) -> ResNet:
    """The encoder a config's ``model`` block names: ``model.name``, ``model.stem``, ``model.conv``."""
    return create_encoder(
        model_cfg.name,
        dtype=dtype,
        stem=model_cfg.get("stem", "standard"),
        conv=conv_lib.from_config(model_cfg),
        **kwargs,
    )


def dilation_for_output_stride(output_stride: int) -> tuple[bool, bool, bool]:
    """``replace_stride_with_dilation`` flags giving layer4 ``output_stride`` (standard stem).

    32 -> no dilation; 16 -> layer4 dilated (rate 2); 8 -> layer3 and layer4 dilated (rates 2, 4).
    """
    table = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
    if output_stride not in table:
        raise ValueError(f"output_stride must be one of {sorted(table)}, got {output_stride!r}")
    return table[output_stride]
