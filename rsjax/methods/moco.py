"""MoCo v2 (He et al. 2020; Chen et al. 2020) with scene-aware InfoNCE.

Query encoder f_q + MLP projector; key encoder = EMA of f_q (momentum m); a queue of K
keys, each stored with its scene id so that scene-wide matching (DESIGN §3.1) can see
false negatives in the queue too. The loss is symmetrised over the two views (q1 vs k2
and q2 vs k1, as in MoCo v3), which halves the variance of short runs; the keys of view 2
are enqueued (B per step).

BatchNorm: statistics are global (the step is jitted over the whole mesh), so MoCo's
shuffling BN is not needed to stop intra-device leakage; the key encoder runs in train
mode on its own batch and its running statistics are an EMA of the query's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rsjax import losses
from rsjax.methods.base import Method


def _l2n(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ema(target, online, momentum):
    return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)


class MoCo(Method):
    name = "moco"
    scene_mode_default = "none"

    def __init__(self, config):
        super().__init__(config)
        self.queue_size = int(config.moco.queue_size)
        if self.queue_size and self.queue_size % config.batch_size:
            raise ValueError(
                f"config.moco.queue_size={self.queue_size} must be a multiple of "
                f"config.batch_size={config.batch_size} (the queue advances by one global batch per step)."
            )

    @property
    def scene_mode(self) -> str:
        return self.config.loss.get("scene_mode", self.scene_mode_default)

    def init(self, rng, batch):
        k_model, k_queue = jax.random.split(rng)
        params, batch_stats = self._init_encoder_projector(k_model, batch["view1"])
        extra = {
            "key_params": jax.tree.map(jnp.copy, {"encoder": params["encoder"], "projector": params["projector"]}),
            "key_batch_stats": jax.tree.map(jnp.copy, batch_stats),
        }
        if self.queue_size:
            d = self.config.model.proj_dim
            extra["queue"] = _l2n(jax.random.normal(k_queue, (self.queue_size, d), jnp.float32))
            # -1 never equals a real scene id (>= 0), so random initial entries are never matched.
            extra["queue_scene"] = jnp.full((self.queue_size,), -1, jnp.int32)
            extra["queue_ptr"] = jnp.zeros((), jnp.int32)
        return params, batch_stats, extra

    def contrastive(self, params, batch_stats, extra, batch):
        """Symmetric MoCo loss. Returns (loss, new_batch_stats, aux pieces, query stage features)."""
        b = batch["view1"].shape[0]
        x = jnp.concatenate([batch["view1"], batch["view2"]], axis=0)
        q, new_bs, feats = self.embed(params, batch_stats, x, train=True, return_features=True)
        k, _ = self.embed(extra["key_params"], extra["key_batch_stats"], x, train=True)
        q, k = _l2n(q), jax.lax.stop_gradient(_l2n(k))
        scene = batch["scene_id"].astype(jnp.int32)
        kw = dict(
            scene_q=scene,
            scene_k=scene,
            temperature=self.config.loss.temperature,
            mode=self.scene_mode,
            queue=extra.get("queue"),
            scene_queue=extra.get("queue_scene"),
        )
        l12 = losses.scene_infonce(q[:b], k[b:], **kw)
        l21 = losses.scene_infonce(q[b:], k[:b], **kw)
        loss = 0.5 * (jnp.mean(l12) + jnp.mean(l21))
        return loss, new_bs, {"keys": k[b:], "scene": scene}, feats

    def loss(self, params, batch_stats, extra, batch, rngs, step):
        del rngs, step
        loss, new_bs, pieces, _ = self.contrastive(params, batch_stats, extra, batch)
        return loss, {"batch_stats": new_bs, "enqueue": pieces, "metrics": {"loss_contrastive": loss}}

    def momentum(self, step):
        """Key-encoder momentum; optionally cosine-increased to 1 (BYOL-style) over the run."""
        m = self.config.moco.momentum
        if not self.config.moco.get("cosine_momentum", False):
            return jnp.asarray(m, jnp.float32)
        frac = jnp.minimum(step / max(1, self.config.total_steps), 1.0)
        return 1.0 - (1.0 - m) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

    def update_extra(self, params, batch_stats, extra, aux, step):
        m = self.momentum(step)
        extra = dict(extra)
        extra["key_params"] = ema(
            extra["key_params"], {"encoder": params["encoder"], "projector": params["projector"]}, m
        )
        extra["key_batch_stats"] = ema(extra["key_batch_stats"], batch_stats, m)
        if self.queue_size:
            keys, scene = aux["enqueue"]["keys"], aux["enqueue"]["scene"]
            ptr = extra["queue_ptr"]
            extra["queue"] = jax.lax.dynamic_update_slice(extra["queue"], keys.astype(jnp.float32), (ptr, 0))
            extra["queue_scene"] = jax.lax.dynamic_update_slice(extra["queue_scene"], scene, (ptr,))
            extra["queue_ptr"] = (ptr + keys.shape[0]) % self.queue_size
        return extra
