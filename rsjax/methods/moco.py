"""MoCo v2 (He et al. 2020; Chen et al. 2020) with scene-aware InfoNCE.

Query encoder f_q + MLP projector; key encoder = EMA of f_q (momentum m); a queue of K
keys, each stored with its scene id so that scene-wide matching (DESIGN §3.1) can see
false negatives in the queue too.

Candidates (``moco.batch_negatives``). MoCo v2 (facebookresearch/moco ``builder.py``)
scores each query against its positive key and the queue only:
``logits = cat([q.k+, q.queue]) / T``, label 0. ``batch_negatives=False`` (the ``moco``
configs) is exactly that; ``True`` also makes the other keys of the batch negatives
(SwiMDiff, whose matching needs same-scene keys inside the batch).

Direction (``moco.symmetric``). MoCo v2 computes one direction: q from view 1, k from
view 2, and enqueues the keys of view 2 (``symmetric=False``, the ``:paper`` config).
``symmetric=True`` (the demos) averages q1-vs-k2 and q2-vs-k1 (as MoCo v3 does), which
halves the variance of short runs; the queue still receives the keys of view 2 (B per
step). The two views then go through each encoder as one batch of 2B, so the BatchNorm
statistics are over both views (MoCo v3 runs the key encoder once per view).

EMA order. MoCo updates the key encoder at the start of each forward with the current
query parameters (those left by the previous optimizer step), then computes the keys.
rsjax applies the same update at the end of each train step, after the optimizer, with
the new query parameters (``update_extra``): the keys of step t come from
``key_t = m * key_{t-1} + (1 - m) * theta_t`` (theta_t = query parameters after step t-1's
update) in both, and key_0 = theta_0 in both (MoCo's first update is the identity).

BatchNorm: statistics are global (the step is jitted over the whole mesh), so MoCo's
shuffling BN is not needed to stop intra-device leakage; the key encoder runs in train
mode on its own batch (batch statistics, as MoCo's key encoder does). Its running
statistics, never used by a train-mode forward, are an EMA of the query's (MoCo lets the
key forward update them instead).

Logged: ``loss_contrastive`` and ``scene_false_negatives`` (mean number of same-scene
candidates per query besides the positive, batch keys only when they are candidates,
plus the queue: how many false negatives plain InfoNCE pushes away, or how many the scene
modes act on).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rsjax import losses
from rsjax.methods.base import Method


def _l2n(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ema(target, online, momentum):
    """``momentum * target + (1 - momentum) * online`` leaf by leaf (MoCo's key update)."""
    return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)


def scene_false_negatives(scene_q, scene_k, scene_queue=None, *, batch_negatives: bool = True):
    """Mean over queries of |F_i|, the same-scene candidates other than the positive.

    ``F_i`` as in :func:`rsjax.losses.scene_infonce`: keys ``k_j`` (j != i) of the batch
    with ``scene_k[j] == scene_q[i]`` when ``batch_negatives``, plus queue entries with
    ``scene_queue[m] == scene_q[i]``. Uses scene ids only (no features), so it means the
    same on every input path. Returns a float32 scalar.
    """
    scene_q = jnp.asarray(scene_q)
    b = scene_q.shape[0]
    count = jnp.zeros((b,), jnp.int32)
    if batch_negatives:
        same = (scene_q[:, None] == jnp.asarray(scene_k)[None, :]) & ~jnp.eye(b, dtype=bool)
        count = count + jnp.sum(same, axis=1)
    if scene_queue is not None:
        count = count + jnp.sum(scene_q[:, None] == jnp.asarray(scene_queue)[None, :], axis=1)
    return jnp.mean(count.astype(jnp.float32))


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
        self.batch_negatives = bool(config.moco.get("batch_negatives", True))
        self.symmetric = bool(config.moco.get("symmetric", True))
        if not self.batch_negatives and not self.queue_size:
            raise ValueError(
                "config.moco.batch_negatives=False needs config.moco.queue_size > 0: the candidates are "
                "then the positive and the queue only, so without a queue there is no negative."
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
        """MoCo loss. Returns (loss, new_batch_stats, aux pieces, query stage features of view 1)."""
        b = batch["view1"].shape[0]
        scene = batch["scene_id"].astype(jnp.int32)
        kw = dict(
            scene_q=scene,
            scene_k=scene,
            temperature=self.config.loss.temperature,
            mode=self.scene_mode,
            queue=extra.get("queue"),
            scene_queue=extra.get("queue_scene"),
            batch_negatives=self.batch_negatives,
        )
        if self.symmetric:
            x = jnp.concatenate([batch["view1"], batch["view2"]], axis=0)
            q, new_bs, feats = self.embed(params, batch_stats, x, train=True, return_features=True)
            k, _ = self.embed(extra["key_params"], extra["key_batch_stats"], x, train=True)
            q, k = _l2n(q), jax.lax.stop_gradient(_l2n(k))
            l12 = losses.scene_infonce(q[:b], k[b:], **kw)
            l21 = losses.scene_infonce(q[b:], k[:b], **kw)
            loss = 0.5 * (jnp.mean(l12) + jnp.mean(l21))
            keys, feats = k[b:], [f[:b] for f in feats]
        else:
            q, new_bs, feats = self.embed(params, batch_stats, batch["view1"], train=True, return_features=True)
            k, _ = self.embed(extra["key_params"], extra["key_batch_stats"], batch["view2"], train=True)
            q, keys = _l2n(q), jax.lax.stop_gradient(_l2n(k))
            loss = jnp.mean(losses.scene_infonce(q, keys, **kw))
        # Both directions share the scene ids, so one count describes the step.
        n_fn = scene_false_negatives(scene, scene, extra.get("queue_scene"), batch_negatives=self.batch_negatives)
        metrics = {"loss_contrastive": loss, "scene_false_negatives": n_fn}
        return loss, new_bs, {"keys": keys, "scene": scene}, feats, metrics

    def loss(self, params, batch_stats, extra, batch, rngs, step):
        del rngs, step
        loss, new_bs, pieces, _, metrics = self.contrastive(params, batch_stats, extra, batch)
        return loss, {"batch_stats": new_bs, "enqueue": pieces, "metrics": metrics}

    def momentum(self, step):
        """Key-encoder momentum; optionally cosine-increased to 1 (BYOL-style) over the run."""
        m = self.config.moco.momentum
        if not self.config.moco.get("cosine_momentum", False):
            return jnp.asarray(m, jnp.float32)
        frac = jnp.minimum(step / max(1, self.config.total_steps), 1.0)
        return 1.0 - (1.0 - m) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

    def update_extra(self, params, batch_stats, extra, aux, step):
        """After the optimizer step: key <- m * key + (1 - m) * params (the updated query
        parameters), then enqueue this step's keys (view 2) and their scene ids at the pointer,
        which advances by B modulo K (MoCo's ``_dequeue_and_enqueue``)."""
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
