"""Heads on top of the encoder: the contrastive projector and SwiMDiff's conditional denoiser.

``ProjectionHead``: [Dense -> BN -> ReLU] x (num_layers - 1) -> Dense [-> BN] (SimCLR / MoCo v2 /
FALSE projector; e.g. hidden 2048, out 128). FALSE's official VISSL head is two biased Linear
layers with neither BN nor ReLU between them (``use_bn=False, hidden_act="none"``).

``Denoiser``: the small conditional DDPM UNet eps_theta(x_t, t, c) of DESIGN section 3.2.

* time: sinusoidal embedding of the integer timestep (``_timestep_embedding``) -> Dense ->
  SiLU -> Dense, added (after a per-block Dense) inside every residual block.
* levels: level l works at resolution H / 2**l with ``base_channels * channel_mults[l]``
  channels. Down path: one residual block per level (then the conditioning is added,
  then the result is kept as the skip), stride-2 3x3 conv between levels. Middle: two
  residual blocks. Up path: nearest x2 upsample + 3x3 conv between levels, concat the
  skip, one residual block. Output: GroupNorm -> SiLU -> 3x3 conv to ``out_channels``.
* conditioning: every encoder map c_k (any resolution) is projected by its own 1x1 conv
  (``cond_proj_k``) to the channel count of the level whose resolution is closest in
  log2 scale (ties go to the finer level), bilinearly resized to that level's H x W if it
  differs, and added there. No stop-gradient: the diffusion loss trains the encoder.
* normalisation: GroupNorm (batch-independent, so no cross-device statistics needed).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax import diffusion
from rsjax.models import conv as conv_lib


def _timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding of timesteps t [B] -> [B, dim] float32 (see
    :func:`rsjax.diffusion.timestep_embedding`, sines first)."""
    return diffusion.timestep_embedding(jnp.asarray(t).reshape(-1), dim, max_period)


class ProjectionHead(nn.Module):
    """MLP projector: [Dense -> BN -> act] x (num_layers - 1) -> Dense [-> BN if last_bn].

    Without BN (``use_bn=False``) the hidden Dense layers carry a bias; with BN they do not
    (the BN shift replaces it). ``hidden_act``: ``"relu"`` (default) or ``"none"`` (no
    nonlinearity between the layers: VISSL's ``mlp`` head with ``skip_last_layer_relu_bn``,
    as in the FALSE yaml). ``last_bn``: BN after the output layer, scale only (no centring),
    as google-research/simclr's projection head. Submodules: ``dense_0``, ``bn_0``, ..., ``dense_out`` (``bn_out``).
    """

    hidden_dim: int
    out_dim: int
    num_layers: int = 2
    use_bn: bool = True
    last_bn: bool = False
    hidden_act: str = "relu"
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, *, train: bool):
        if self.num_layers < 1:
            raise ValueError(f"ProjectionHead.num_layers must be >= 1, got {self.num_layers}")
        if self.hidden_act not in ("relu", "none"):
            raise ValueError(f"ProjectionHead.hidden_act must be 'relu' or 'none', got {self.hidden_act!r}")

        def bn(name, center=True):
            return nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                axis_name=self.bn_axis_name,
                use_bias=center,
                name=name,
            )

        x = jnp.asarray(x, self.dtype)
        for i in range(self.num_layers - 1):
            x = nn.Dense(
                self.hidden_dim, use_bias=not self.use_bn, dtype=self.dtype, param_dtype=jnp.float32, name=f"dense_{i}"
            )(x)
            if self.use_bn:
                x = bn(f"bn_{i}")(x)
            if self.hidden_act == "relu":
                x = nn.relu(x)
        x = nn.Dense(
            self.out_dim, use_bias=not self.last_bn, dtype=self.dtype, param_dtype=jnp.float32, name="dense_out"
        )(x)
        if self.last_bn:
            # SimCLR's head (google-research/simclr linear_layer): BN without centering (no beta).
            x = bn("bn_out", center=False)(x)
        return x.astype(jnp.float32)


CONDITIONINGS = ("maps", "film", "both")


def _groups(channels: int, max_groups: int) -> int:
    return math.gcd(channels, max_groups)


class _ResBlock(nn.Module):
    """GN -> SiLU -> conv3x3 (+ time) -> GN -> SiLU -> conv3x3, plus a (1x1 conv) shortcut.

    ``adagn``: the second GroupNorm is modulated by the embedding ``emb`` instead of adding a
    projection of it after the first conv: ``GN(h) * (1 + s) + b`` with ``(s, b)`` a Dense of
    ``SiLU(emb)`` (AdaGN, Dhariwal & Nichol 2021), so the embedding scales every channel."""

    channels: int
    num_groups: int = 8
    dtype: Any = jnp.float32
    conv: str = "auto"
    adagn: bool = False

    @nn.compact
    def __call__(self, x, temb):
        conv = lambda c, k, name: conv_lib.Conv(  # noqa: E731
            c, (k, k), padding=k // 2, dtype=self.dtype, param_dtype=jnp.float32, impl=self.conv, name=name
        )
        h = nn.GroupNorm(_groups(x.shape[-1], self.num_groups), dtype=self.dtype, name="norm1")(x)
        h = conv(self.channels, 3, "conv1")(nn.silu(h))
        if self.adagn:
            mod = nn.Dense(2 * self.channels, dtype=self.dtype, param_dtype=jnp.float32, name="emb_proj")(
                nn.silu(temb)
            )[:, None, None, :]
            scale, shift = jnp.split(mod, 2, axis=-1)
            h = nn.GroupNorm(_groups(self.channels, self.num_groups), dtype=self.dtype, name="norm2")(h)
            h = h * (1 + scale) + shift
        else:
            h = (
                h
                + nn.Dense(self.channels, dtype=self.dtype, param_dtype=jnp.float32, name="time_proj")(temb)[
                    :, None, None, :
                ]
            )
            h = nn.GroupNorm(_groups(self.channels, self.num_groups), dtype=self.dtype, name="norm2")(h)
        h = conv(self.channels, 3, "conv2")(nn.silu(h))
        if x.shape[-1] != self.channels:
            x = conv(self.channels, 1, "skip")(x)
        return x + h


class Denoiser(nn.Module):
    """Conditional DDPM UNet predicting the noise eps from (x_t, t, encoder features).

    Attributes:
      out_channels: number of image bands (output channels = input channels).
      base_channels: channels at full resolution.
      channel_mults: per-level channel multipliers; len(channel_mults) - 1 downsamplings.
      time_dim: width of the sinusoidal embedding and of the time MLP.
      num_groups: maximal GroupNorm group count (gcd with the channel count is used).
      dtype: compute dtype; parameters and the returned eps stay float32.
      conv: convolution formulation (:mod:`rsjax.models.conv`).
      conditioning: what of the encoder the denoiser sees (DESIGN §3.2; README "Documented
        choices"): ``"maps"`` the stage maps added at the coarse levels (``cond``; the first
        design), ``"film"`` the pooled representation ``vec`` (the features the evaluation
        reads) through an MLP added to the time embedding, which modulates every residual
        block's GroupNorm (AdaGN), ``"both"``.
    """

    out_channels: int
    base_channels: int = 32
    channel_mults: Sequence[int] = (1, 2, 4)
    time_dim: int = 128
    num_groups: int = 8
    dtype: Any = jnp.float32
    conv: str = "auto"
    conditioning: str = "maps"

    @nn.compact
    def __call__(self, x_t, t, cond=None, *, train: bool, vec=None):
        """x_t [B, H, W, C], t [B] int, cond: list of NHWC maps (or None), vec: [B, D] pooled
        features (or None) -> eps [B, H, W, C] float32. ``cond`` is read by the ``maps``
        conditioning, ``vec`` by ``film`` (``both``: both).

        ``train`` is accepted for interface symmetry; the denoiser has no dropout or BN.
        """
        del train
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"Denoiser.conditioning={self.conditioning!r}: expected one of {CONDITIONINGS}")
        film = self.conditioning in ("film", "both")
        if self.conditioning == "film":
            cond = None
        if film and (vec is None or vec.ndim != 2 or vec.shape[0] != x_t.shape[0]):
            raise ValueError(
                f"Denoiser.conditioning={self.conditioning!r} needs vec [B, D] with B = "
                f"{x_t.shape[0]}, got {None if vec is None else vec.shape}"
            )
        if x_t.ndim != 4:
            raise ValueError(f"Denoiser expects x_t as [B, H, W, C], got shape {x_t.shape}")
        if x_t.shape[-1] != self.out_channels:
            raise ValueError(f"Denoiser.out_channels={self.out_channels} but x_t has {x_t.shape[-1]} bands")
        n_levels = len(self.channel_mults)
        factor = 2 ** (n_levels - 1)
        b, h, w, _ = x_t.shape
        if h % factor or w % factor:
            raise ValueError(f"Denoiser input H, W = {h}, {w} must be divisible by {factor}")
        chans = [self.base_channels * m for m in self.channel_mults]
        level_hw = [(h // 2**lvl, w // 2**lvl) for lvl in range(n_levels)]

        # Time embedding.
        temb = _timestep_embedding(t, self.time_dim)
        temb = nn.Dense(self.time_dim, dtype=self.dtype, param_dtype=jnp.float32, name="time_mlp_0")(temb)
        temb = nn.silu(temb)
        temb = nn.Dense(self.time_dim, dtype=self.dtype, param_dtype=jnp.float32, name="time_mlp_1")(temb)
        if film:
            # class-conditional DDPM style: the condition's embedding joins the time embedding
            c = nn.Dense(self.time_dim, dtype=self.dtype, param_dtype=jnp.float32, name="vec_mlp_0")(
                jnp.asarray(vec, self.dtype)
            )
            c = nn.Dense(self.time_dim, dtype=self.dtype, param_dtype=jnp.float32, name="vec_mlp_1")(nn.silu(c))
            temb = temb + c

        # Conditioning: project each map to its closest level and sum per level.
        cond_at_level: list[Any] = [None] * n_levels
        for k, c in enumerate(cond or []):
            if c.ndim != 4 or c.shape[0] != b:
                raise ValueError(f"cond[{k}] must be NHWC with batch {b}, got shape {c.shape}")
            ch_h = c.shape[1]
            dist = [abs(math.log2(ch_h / lh)) for lh, _ in level_hw]
            lvl = min(range(n_levels), key=lambda i: (dist[i], i))
            p = conv_lib.Conv(
                chans[lvl], (1, 1), dtype=self.dtype, param_dtype=jnp.float32, impl=self.conv, name=f"cond_proj_{k}"
            )(jnp.asarray(c, self.dtype))
            if p.shape[1:3] != level_hw[lvl]:
                p = jax.image.resize(p, (b, *level_hw[lvl], p.shape[-1]), method="bilinear")
            cond_at_level[lvl] = p if cond_at_level[lvl] is None else cond_at_level[lvl] + p

        conv3 = lambda c, name, stride=1: conv_lib.Conv(  # noqa: E731
            c,
            (3, 3),
            strides=(stride, stride),
            padding=((1, 1), (1, 1)),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            impl=self.conv,
            name=name,
        )

        x = conv3(chans[0], "conv_in")(jnp.asarray(x_t, self.dtype))
        skips = []
        for lvl in range(n_levels):
            x = _ResBlock(chans[lvl], self.num_groups, self.dtype, self.conv, film, name=f"down_{lvl}")(x, temb)
            if cond_at_level[lvl] is not None:
                x = x + cond_at_level[lvl].astype(x.dtype)
            skips.append(x)
            if lvl < n_levels - 1:
                x = conv3(chans[lvl + 1], f"downsample_{lvl}", stride=2)(x)

        x = _ResBlock(chans[-1], self.num_groups, self.dtype, self.conv, film, name="mid_0")(x, temb)
        x = _ResBlock(chans[-1], self.num_groups, self.dtype, self.conv, film, name="mid_1")(x, temb)

        for lvl in reversed(range(n_levels)):
            if lvl < n_levels - 1:
                x = jax.image.resize(x, (b, *level_hw[lvl], x.shape[-1]), method="nearest")
                x = conv3(chans[lvl], f"upsample_{lvl}")(x)
            x = jnp.concatenate([x, skips[lvl]], axis=-1)
            x = _ResBlock(chans[lvl], self.num_groups, self.dtype, self.conv, film, name=f"up_{lvl}")(x, temb)

        x = nn.GroupNorm(_groups(chans[0], self.num_groups), dtype=self.dtype, name="norm_out")(x)
        x = conv3(self.out_channels, "conv_out")(nn.silu(x))
        return x.astype(jnp.float32)
