"""SimCLR (Chen et al. 2020): NT-Xent over the two views of the global batch."""

from __future__ import annotations

import jax.numpy as jnp

from rsjax import losses
from rsjax.methods.base import Method


class SimCLR(Method):
    name = "simclr"

    def loss(self, params, batch_stats, extra, batch, rngs, step):
        del rngs, step
        b = batch["view1"].shape[0]
        # Both views in one forward pass: BatchNorm statistics cover the 2B images.
        x = jnp.concatenate([batch["view1"], batch["view2"]], axis=0)
        z, new_bs = self.embed(params, batch_stats, x, train=True)
        per_example = losses.nt_xent(z[:b], z[b:], temperature=self.config.loss.temperature)
        loss = jnp.mean(per_example)
        return loss, {"batch_stats": new_bs, "metrics": {"loss_contrastive": loss}}
