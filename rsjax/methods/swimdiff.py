"""SwiMDiff (Tian et al., TGRS 2024): scene-wide matching InfoNCE + a DDPM constraint.

L = lambda_C * L_C + lambda_D * L_D (DESIGN §3.1-3.2).

* L_C: MoCo v2 with :func:`rsjax.losses.scene_infonce` (``loss.scene_mode`` none|mask|soft,
  default soft): same-scene candidates are false negatives and get recalibrated targets.
  Unlike MoCo v2 (queue only), the candidates are the other keys of the batch AND the
  queue (``moco.batch_negatives=True``): scene-aware batches (``data.scenes_per_batch`` x
  ``data.samples_per_scene``) put the same-scene keys in the batch, where matching can act
  on them; from the queue alone it would only see the rare stale same-scene key.
* L_D: DDPM noise prediction. x0 = the query view mapped to [-1, 1]
  (``clip(view1 / swimdiff.x0_scale, -1, 1)`` on the standardized view: x0_scale standard
  deviations map to +-1); t ~ U{0..T-1}, eps ~ N(0, I), x_t = q_sample(x0, t, eps); a small
  UNet denoiser eps_theta(x_t, t, c) conditioned on the query encoder's features of the
  *clean* view (``swimdiff.conditioning``, :class:`rsjax.models.heads.Denoiser`): ``maps``
  the stage 1..4 maps added at the denoiser's closest levels (the first design), ``film`` the
  pooled representation (the features the evaluation reads) modulating every block (AdaGN),
  ``both``. Gradients of L_D flow into the encoder: that is the constraint.

Ablations by config: ``swimdiff.lambda_d=0`` (matching only), ``loss.scene_mode=none``
(diffusion only on top of MoCo), ``swimdiff.lambda_c=0`` (pure diffusion pretraining),
``swimdiff.conditioning=maps`` (the first conditioning).

Diagnostics, forward only, no gradient, computed only on the steps that are logged
(``lax.cond`` on the step: a multiple of ``log_every``, the last of ``total_steps`` and of
``stop_after_steps``; NaN on the others, which are not logged; ``swimdiff.log_nocond=False``
turns them off), all with the same denoiser, t and noise as L_D:

* ``loss_diffusion_nocond``: every conditioning input zeroed (maps and pooled vector);
* ``loss_diffusion_shuffled``: the conditioning of the image half a batch away (another scene):
  in-distribution features that say nothing about this image;
* ``conditioning_gain`` = (nocond - L_D) / nocond. Zeroed features are outside what the
  denoiser was trained on, so this gain can be large for a denoiser that only uses the
  conditioning as a constant; (shuffled - L_D) / shuffled is the part that is information about
  the image. Both are reported (README "Documented choices").
* ``grad_share_diffusion`` (``swimdiff.log_grad_share``): |g_D| / (|g_C| + |g_D|) on the
  encoder's parameters, g_D the gradient of lambda_D * L_D and g_C of the rest: the loop runs
  its probe step on logged steps only (one more pullback; :meth:`SwiMDiff.probe_metrics`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rsjax import diffusion, trainable
from rsjax.methods.moco import MoCo
from rsjax.models import conv as conv_lib
from rsjax.models import heads as heads_lib


class SwiMDiff(MoCo):
    name = "swimdiff"
    scene_mode_default = "soft"

    def __init__(self, config):
        super().__init__(config)
        d = config.swimdiff
        self.denoiser = heads_lib.Denoiser(
            out_channels=config.model.in_channels,
            base_channels=d.denoiser_channels,
            channel_mults=tuple(d.denoiser_mults),
            time_dim=d.time_dim,
            dtype=self.dtype,
            conv=conv_lib.from_config(config.model),
            conditioning=d.get("conditioning", "maps"),
        )
        betas = diffusion.linear_beta_schedule(d.num_timesteps, d.beta_start, d.beta_end)
        self.alphas_cumprod = diffusion.alphas_cumprod(betas)

    @property
    def use_diffusion(self) -> bool:
        return float(self.config.swimdiff.lambda_d) != 0.0

    def init(self, rng, batch):
        k_moco, k_den = jax.random.split(rng)
        params, batch_stats, extra = super().init(k_moco, batch)
        if self.use_diffusion:
            x = batch["view1"]
            _, feats = self.encoder.apply(
                {"params": params["encoder"], "batch_stats": batch_stats["encoder"]},
                x,
                train=False,
                return_features=True,
            )
            size = int(self.config.swimdiff.get("diffusion_size", 0) or 0)
            if size:
                x = jnp.zeros((x.shape[0], size, size, x.shape[-1]), x.dtype)
            t = jnp.zeros((x.shape[0],), jnp.int32)
            params["denoiser"] = self.denoiser.init(k_den, x, t, feats, train=False, vec=pooled(feats))["params"]
        return params, batch_stats, extra

    def logged(self, step):
        """True on the steps the loop logs (:func:`rsjax.trainable.is_logged` of the traced step)."""
        c = self.config
        return trainable.is_logged(step + 1, c.log_every, (c.total_steps, c.get("stop_after_steps", 0) or 0))

    def diffusion_loss(self, params, x, feats, rngs, step=None):
        """L_D (mean over the batch); with ``step`` also returns the logged-step diagnostics
        ``loss_diffusion_nocond``, ``loss_diffusion_shuffled`` and ``conditioning_gain`` (see the
        module docstring) as a dict, else None in its place."""
        cfg = self.config.swimdiff
        x0 = jnp.clip(x.astype(jnp.float32) / cfg.x0_scale, -1.0, 1.0)
        size = int(cfg.get("diffusion_size", 0) or 0)
        if size and size != x0.shape[1]:
            # The denoiser runs at full resolution and, unlike the encoder, never downsamples
            # early: at 64-224 px it costs several times the encoder. Denoising an
            # antialiased downsample keeps the pixel-level constraint at a fraction of the cost.
            x0 = jax.image.resize(x0, (x0.shape[0], size, size, x0.shape[-1]), "linear", antialias=True)
        b = x0.shape[0]
        t = jax.random.randint(rngs["diffusion_t"], (b,), 0, cfg.num_timesteps)
        noise = jax.random.normal(rngs["diffusion_noise"], x0.shape, jnp.float32)
        x_t = diffusion.q_sample(x0, t, noise, self.alphas_cumprod)
        x_t = x_t.astype(self.dtype)
        pred = self.denoiser.apply({"params": params["denoiser"]}, x_t, t, feats, train=True, vec=pooled(feats))
        l_d = jnp.mean(diffusion.ddpm_loss(noise, pred))
        if step is None:
            return l_d, None

        # Same x_t, t and noise; the conditioning zeroed, or taken from another image of the
        # batch (rolled by half the batch: another scene). No input carries a tangent, so nothing
        # here is differentiated; two denoiser forwards on logged steps only.
        den = jax.lax.stop_gradient(params["denoiser"])
        sg = [jax.lax.stop_gradient(f) for f in feats]

        def with_cond(maps):
            p = self.denoiser.apply({"params": den}, x_t, t, maps, train=True, vec=pooled(maps))
            return jnp.mean(diffusion.ddpm_loss(noise, p))

        def diagnostics(_):
            l_nc = with_cond([jnp.zeros(f.shape, f.dtype) for f in sg])
            l_sh = with_cond([jnp.roll(f, b // 2, axis=0) for f in sg])
            return {
                "loss_diffusion_nocond": l_nc,
                "loss_diffusion_shuffled": l_sh,
                "conditioning_gain": (l_nc - jax.lax.stop_gradient(l_d)) / l_nc,
            }

        nan = jnp.full((), jnp.nan, jnp.float32)
        return l_d, jax.lax.cond(
            self.logged(step),
            diagnostics,
            lambda _: {k: nan for k in ("loss_diffusion_nocond", "loss_diffusion_shuffled", "conditioning_gain")},
            None,
        )

    def loss(self, params, batch_stats, extra, batch, rngs, step):
        cfg = self.config.swimdiff
        l_c, new_bs, pieces, feats, metrics = self.contrastive(params, batch_stats, extra, batch)
        loss = cfg.lambda_c * l_c
        if self.use_diffusion:
            # feats: the query encoder's stage maps of view 1 (the clean x0's view)
            l_d, diag = self.diffusion_loss(
                params, batch["view1"], feats, rngs, step=step if cfg.get("log_nocond", True) else None
            )
            metrics["loss_diffusion"] = l_d
            metrics.update(diag or {})
            loss = loss + cfg.lambda_d * l_d
        aux = {"batch_stats": new_bs, "enqueue": pieces, "metrics": metrics}
        if self.use_diffusion:
            aux["probe"] = cfg.lambda_d * l_d  # its own gradient on logged steps: probe_metrics
        return loss, aux

    @property
    def wants_probe(self) -> bool:
        """The loop runs its probe step (rsjax.train.make_train_step) on logged steps."""
        return self.use_diffusion and bool(self.config.swimdiff.get("log_grad_share", False))

    def probe_metrics(self, grads, probe_grads):
        """``grad_share_diffusion`` = ``|g_D| / (|g_C| + |g_D|)`` on the encoder's parameters, with
        ``g_D`` the gradient of ``lambda_D * L_D`` and ``g_C = g - g_D`` that of the rest (the
        contrastive term)."""
        g_d = probe_grads["encoder"]
        n_d = optax.tree.norm(g_d)
        n_c = optax.tree.norm(jax.tree.map(lambda g, d: g - d, grads["encoder"], g_d))
        return {"grad_share_diffusion": (n_d / jnp.maximum(n_c + n_d, 1e-30)).astype(jnp.float32)}


def pooled(feats):
    """The encoder's pooled representation (what the evaluation reads): the global mean of
    the last stage map, float32."""
    return jnp.mean(feats[-1].astype(jnp.float32), axis=(1, 2))
