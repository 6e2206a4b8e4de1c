"""DINO (Caron et al. 2021) with a ResNet backbone: the self-distillation SSL baseline of the
noisy-label pretraining paper (DESIGN §3.4 compares against MoCo and DINO).

Student = ResNet encoder + :class:`DINOHead`; teacher = the same network with an EMA of the
student's parameters. All state is explicit in ``extra``:

* ``teacher_params`` / ``teacher_batch_stats``: EMA of the student (momentum cosine-increased
  from ``dino.momentum_teacher`` to 1 over ``total_steps``, as DINO); the teacher's BN running
  statistics are an EMA of the student's (the teacher itself normalises with batch statistics,
  like DINO's teacher, which is never put in eval mode).
* ``center`` [K]: the centring vector, ``c <- m c + (1 - m) mean(teacher logits)`` with the mean
  over the two global views of the GLOBAL batch (``dino.center_momentum``, 0.9). It is computed
  inside the jitted step on the global (sharded) batch, so it does not depend on the device
  count; :func:`update_center` is the pure formula.

Views. ``view1`` / ``view2`` of the trainer's batch are the two global crops. The
``dino.num_local_crops`` local crops are made ON DEVICE inside the loss from the global views
(:func:`local_crops`): local crop j comes from global view ``j % 2``; each image gets its own
random box with area fraction ~ U(``dino.local_scale``) of the view and log aspect ratio
~ U(log 3/4, log 4/3) (the Inception rule), resampled to ``dino.local_crop_size`` pixels
(antialiased bilinear), then a random horizontal flip: the recipe
``"rrc(lo, hi, size=S)|flip_lr"`` built with the jax backend of the op registry
(:mod:`rsjax.data.ops`), the same ``rrc`` op the view recipes use. The
randomness comes from ``rngs["augment"]``, the trainer's per-step named stream
(``fold_in(fold_in(PRNGKey(seed), step), 3)``), so a resumed run makes the same crops. (DINO
cuts local crops from the original image; here they inherit the photometric augmentation of
their global view, a documented simplification that keeps the host pipeline unchanged.)

Loss (:func:`dino_loss`): teacher probabilities of the global views
``P_t = softmax((t - c) / tau_t)`` (sharpening with ``tau_t``; stop-gradient), student
log-probabilities of every view ``log softmax(s / tau_s)`` (``tau_s`` = 0.1); the mean over
all (teacher view i, student view v != i) pairs of the batch-mean cross entropy
``-sum_k P_t[i, b, k] log P_s[v, b, k]``. ``tau_t`` warms up linearly from
``dino.warmup_teacher_temp`` to ``dino.teacher_temp`` over ``dino.warmup_teacher_temp_steps``.

BatchNorm: the student's global views are one forward pass (statistics over 2B images), its
local crops another (their own statistics, as DINO with its per-resolution forward passes).
Evaluation and export use the student encoder (``params['encoder']``), the same tree every
rsjax method exports.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.data import device_augment, ops
from rsjax.methods.base import Method
from rsjax.methods.moco import ema


# --------------------------------------------------------------------------------------
# Pure pieces (tested against numpy)
# --------------------------------------------------------------------------------------
def dino_loss(student_logits, teacher_logits, center, *, student_temp, teacher_temp):
    r"""DINO cross entropy between teacher and student views.

    Args:
      student_logits: [V, B, K]; views 0 and 1 are the global views, 2.. the local crops.
      teacher_logits: [G, B, K] teacher logits of the G (= 2) global views.
      center: [K] centring vector.
      student_temp, teacher_temp: temperatures (student 0.1; teacher 0.04 in DINO's ResNet-50 recipe).

    Returns:
      scalar float32 ``(1 / |pairs|) sum_{i < G, v < V, v != i} mean_b
      -sum_k softmax((t_i - c) / tau_t)_bk * log_softmax(s_v / tau_s)_bk``.
      The teacher term is stop-gradient.
    """
    s = jnp.asarray(student_logits, jnp.float32)
    t = jnp.asarray(teacher_logits, jnp.float32)
    if s.ndim != 3 or t.ndim != 3 or s.shape[1:] != t.shape[1:] or s.shape[0] < t.shape[0]:
        raise ValueError(f"dino_loss: student [V,B,K] and teacher [G<=V,B,K] logits expected, got {s.shape}, {t.shape}")
    p_t = jax.lax.stop_gradient(jax.nn.softmax((t - center) / teacher_temp, axis=-1))
    logp_s = jax.nn.log_softmax(s / student_temp, axis=-1)
    ce = -jnp.einsum("ibk,vbk->iv", p_t, logp_s) / s.shape[1]  # [G, V]
    g, v = t.shape[0], s.shape[0]
    pairs = jnp.arange(g)[:, None] != jnp.arange(v)[None, :]
    return jnp.sum(jnp.where(pairs, ce, 0.0)) / jnp.sum(pairs)


def update_center(center, teacher_logits, momentum):
    """``momentum * center + (1 - momentum) * mean over every row of teacher_logits [..., K]``."""
    t = jnp.asarray(teacher_logits, jnp.float32).reshape(-1, center.shape[-1])
    return momentum * center + (1.0 - momentum) * jnp.mean(t, axis=0)


def teacher_temperature(step, *, warmup_temp, temp, warmup_steps):
    """Linear warm-up of the teacher temperature, then constant."""
    if warmup_steps <= 0:
        return jnp.asarray(temp, jnp.float32)
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)
    return warmup_temp + (temp - warmup_temp) * frac


def teacher_momentum(step, *, base, total_steps):
    """Cosine increase from ``base`` to 1 over ``total_steps`` (DINO's momentum schedule)."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(1, total_steps), 0.0, 1.0)
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + jnp.cos(math.pi * frac))


def crop_resize(images, y0, x0, bh, bw, size: int):
    """Crops box ``[y0, y0+bh) x [x0, x0+bw)`` (continuous pixel units) of every image
    [N, H, W, C] and resamples it to ``size x size`` (antialiased bilinear: the resampling
    operators of the ``rrc`` op, :func:`rsjax.data.device_augment.resample_matrix`)."""
    _, h, w, _ = images.shape
    my = jax.vmap(lambda st, ln: device_augment.resample_matrix(st, ln, h, size))(y0, bh)
    mx = jax.vmap(lambda st, ln: device_augment.resample_matrix(st, ln, w, size))(x0, bw)
    x = jnp.einsum("boh,bhwc->bowc", my, images.astype(jnp.float32))
    return jnp.einsum("bpw,bowc->bopc", mx, x)


def local_crops(key, global_views, *, num_crops: int, size: int, scale):
    """``num_crops`` local crops per image from the global views.

    Args:
      key: PRNG key (the trainer's ``rngs["augment"]``).
      global_views: [G, B, H, W, C]; crop j comes from view ``j % G``.
      num_crops, size, scale: number, side in pixels, area-fraction range.

    Returns:
      [num_crops * B, size, size, C] float32, crop-major (rows j*B .. (j+1)*B - 1 are crop j).
    """
    lo, hi = (float(v) for v in scale)
    pipe = ops.build(f"rrc({lo!r}, {hi!r}, size={int(size)})|flip_lr", "jax", key="dino.local_scale")
    g = global_views.shape[0]
    out = [pipe.image(global_views[j % g], jax.random.fold_in(key, j)) for j in range(num_crops)]
    return jnp.concatenate(out, axis=0)


# --------------------------------------------------------------------------------------
# Head
# --------------------------------------------------------------------------------------
class DINOHead(nn.Module):
    """DINO projection head.

    ``[Dense -> (BN) -> GELU] x (num_layers - 1) -> Dense(bottleneck_dim) -> L2-normalize ->
    weight-normalized Dense(out_dim, no bias)``. The last layer is ``x @ (g * V / ||V||_col)``
    with ``V`` [bottleneck_dim, out_dim] (param ``last_v``) normalized per output unit; with
    ``norm_last_layer`` (DINO's default) ``g = 1`` is fixed, otherwise ``g`` (param ``last_g``,
    init 1) is learned. Dense layers use truncated-normal(0.02) init, zero bias (as DINO).
    """

    out_dim: int
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    use_bn: bool = False
    norm_last_layer: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        if self.num_layers < 1:
            raise ValueError(f"DINOHead.num_layers must be >= 1, got {self.num_layers}")
        init = nn.initializers.truncated_normal(0.02)
        x = jnp.asarray(x, self.dtype)
        for i in range(self.num_layers - 1):
            x = nn.Dense(
                self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init, name=f"dense_{i}"
            )(x)
            if self.use_bn:
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=0.9,
                    epsilon=1e-5,
                    dtype=self.dtype,
                    param_dtype=jnp.float32,
                    name=f"bn_{i}",
                )(x)
            x = nn.gelu(x, approximate=False)
        x = nn.Dense(
            self.bottleneck_dim, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init, name="bottleneck"
        )(x)
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))
        v = self.param("last_v", init, (self.bottleneck_dim, self.out_dim), jnp.float32)
        w = v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=0, keepdims=True), 1e-24))
        if not self.norm_last_layer:
            w = w * self.param("last_g", nn.initializers.ones, (self.out_dim,), jnp.float32)[None, :]
        return x @ w


# --------------------------------------------------------------------------------------
# Method
# --------------------------------------------------------------------------------------
class DINO(Method):
    name = "dino"

    def __init__(self, config):
        super().__init__(config)
        d = config.dino
        self.head = DINOHead(
            out_dim=d.out_dim,
            hidden_dim=d.hidden_dim,
            bottleneck_dim=d.bottleneck_dim,
            num_layers=d.get("head_layers", 3),
            use_bn=d.get("head_bn", False),
            norm_last_layer=d.get("norm_last_layer", True),
            dtype=self.dtype,
        )
        self.projector = None  # DINO uses its own head
        if d.num_local_crops < 0:
            raise ValueError(f"config.dino.num_local_crops={d.num_local_crops}: must be >= 0")
        lo, hi = d.local_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"config.dino.local_scale={tuple(d.local_scale)}: need 0 < min <= max <= 1")

    def init(self, rng, batch):
        k1, k2 = jax.random.split(rng)
        x = batch["view1"]
        enc_vars = self.encoder.init(k1, x, train=False)
        feats = self.encoder.apply(enc_vars, x, train=False)
        head_vars = self.head.init(k2, feats, train=False)
        params = {"encoder": enc_vars["params"], "head": head_vars["params"]}
        batch_stats = {"encoder": enc_vars.get("batch_stats", {}), "head": head_vars.get("batch_stats", {})}
        extra = {
            "teacher_params": jax.tree.map(jnp.copy, params),
            "teacher_batch_stats": jax.tree.map(jnp.copy, batch_stats),
            "center": jnp.zeros((self.config.dino.out_dim,), jnp.float32),
        }
        return params, batch_stats, extra

    def forward(self, params, batch_stats, x, *, train: bool):
        """Encoder + DINO head -> (logits [N, K] float32, new batch_stats)."""
        mut = ["batch_stats"] if train else []
        pooled, enc_upd = self.encoder.apply(
            {"params": params["encoder"], "batch_stats": batch_stats["encoder"]}, x, train=train, mutable=mut
        )
        logits, head_upd = self.head.apply(
            {"params": params["head"], "batch_stats": batch_stats["head"]}, pooled, train=train, mutable=mut
        )
        new_bs = {
            "encoder": enc_upd.get("batch_stats", batch_stats["encoder"]),
            "head": head_upd.get("batch_stats", batch_stats["head"]),
        }
        return logits.astype(jnp.float32), new_bs

    def loss(self, params, batch_stats, extra, batch, rngs, step):
        d = self.config.dino
        b = batch["view1"].shape[0]
        views = jnp.stack([batch["view1"], batch["view2"]], axis=0)  # [2, B, H, W, C]
        k = d.out_dim

        freeze = int(d.get("freeze_last_layer_steps", 0))
        if freeze:
            # DINO freezes the last layer for the first epoch: no gradient reaches it.
            head = dict(params["head"])
            head["last_v"] = jnp.where(step < freeze, jax.lax.stop_gradient(head["last_v"]), head["last_v"])
            params = {**params, "head": head}

        s_global, new_bs = self.forward(params, batch_stats, views.reshape(2 * b, *views.shape[2:]), train=True)
        student = [s_global.reshape(2, b, k)]
        if d.num_local_crops:
            loc = local_crops(
                rngs["augment"], views, num_crops=d.num_local_crops, size=d.local_crop_size, scale=tuple(d.local_scale)
            )
            s_local, new_bs = self.forward(params, new_bs, loc, train=True)
            student.append(s_local.reshape(d.num_local_crops, b, k))
        student = jnp.concatenate(student, axis=0)

        t_global, _ = self.forward(
            extra["teacher_params"], extra["teacher_batch_stats"], views.reshape(2 * b, *views.shape[2:]), train=True
        )
        t_global = jax.lax.stop_gradient(t_global).reshape(2, b, k)
        t_temp = teacher_temperature(
            step, warmup_temp=d.warmup_teacher_temp, temp=d.teacher_temp, warmup_steps=d.warmup_teacher_temp_steps
        )
        loss = dino_loss(student, t_global, extra["center"], student_temp=d.student_temp, teacher_temp=t_temp)
        new_center = update_center(extra["center"], t_global, d.center_momentum)

        p_t = jax.nn.softmax((t_global - extra["center"]) / t_temp, axis=-1)
        entropy = -jnp.mean(jnp.sum(p_t * jnp.log(jnp.maximum(p_t, 1e-12)), axis=-1))
        metrics = {
            "loss_dino": loss,
            "teacher_entropy": entropy,  # log K = uniform collapse, 0 = one-hot collapse
            "teacher_temp": t_temp,
            "center_norm": jnp.linalg.norm(new_center),
        }
        return loss, {"batch_stats": new_bs, "center": new_center, "metrics": metrics}

    def update_extra(self, params, batch_stats, extra, aux, step):
        m = teacher_momentum(step, base=self.config.dino.momentum_teacher, total_steps=self.config.total_steps)
        return {
            "teacher_params": ema(extra["teacher_params"], params, m),
            "teacher_batch_stats": ema(extra["teacher_batch_stats"], batch_stats, m),
            "center": aux["center"],
        }
