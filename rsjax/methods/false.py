"""FALSE (Zhang et al., GRSL 2022): NT-Xent with false-negative self-determination (FNSD)
and confidence calibration (FNCC), DESIGN §3.3.

SimCLR-style: both views go through encoder + projector in ONE forward pass (BatchNorm
statistics over the 2B images of the global batch), and the loss is
``mean(rsjax.losses.false_nt_xent(z1, z2, ...))`` over the 2B anchors of the GLOBAL batch
(the step is jitted over the whole mesh, so the similarity matrix spans every device).

Config keys: ``loss.temperature`` (tau, 0.5), ``loss.threshold`` (gate T on the positive
cosine, 0.9), ``loss.alpha`` (FNCC confidence, 1.0 as the official yaml; README suggests 0.9),
``loss.fnsd_mode`` (see :func:`rsjax.losses.false_nt_xent` for the formulas):

* ``vissl`` (default): the official code's selection (GeoX-Lab/FALSE
  ``vissl/losses/false_loss.py`` on one GPU), here on the global batch so it holds on any
  device count: arg-min of ``D = |S_ij - S_i,pos|`` over the upper triangle of ALL rows,
  unsearched cells filled with 3, every tied cell kept; THEN the gate
  ``log(S_a,pos) tau >= T`` per picked cell. It rarely calibrates anything unless (nearly)
  every pair passes the gate;
* ``gate_then_pick``: rsjax's earlier rule: gate rows first, then ONE cell, the smallest D
  over the gated rows and all negative columns;
* ``per_anchor``: every gated anchor with its own arg-min negative.

``official`` (the earlier, ambiguous name of gate_then_pick) is refused with an error naming
these choices. ``alpha = 0`` or ``threshold > 1`` is exactly SimCLR.

Metrics besides the loss (no gradient, O(B^2) on a matrix the loss forms anyway):

* ``false_gated``: number of anchors whose positive cosine reaches the gate T;
* ``false_calibrated``: number of anchors whose loss FNCC lowered, i.e. where
  ``false_nt_xent < nt_xent`` (1 or 0 in ``gate_then_pick`` mode; an anchor whose calibration
  term underflows in float32 is not counted, which does not happen at tau ~ 0.5);
* ``loss_ntxent``: the plain NT-Xent of the same embeddings, for comparison.

:func:`selection_counts` computes them (the step's metrics and :func:`firing`, the same counts
at several thresholds on one batch: where the selection fires).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rsjax import losses
from rsjax.methods.base import Method


class FALSE(Method):
    name = "false"

    def __init__(self, config):
        super().__init__(config)
        mode = config.loss.get("fnsd_mode", "vissl")
        if mode == "official":
            raise ValueError(
                "config.loss.fnsd_mode='official' is no longer accepted: it meant gate-then-pick, which "
                "is not the official VISSL selection; choose 'vissl' (the VISSL code's pick-then-gate), "
                "'gate_then_pick' (the former rsjax rule) or 'per_anchor'"
            )
        if mode not in losses.FNSD_MODES:
            raise ValueError(f"config.loss.fnsd_mode={mode!r}: expected one of {losses.FNSD_MODES}")
        if float(config.loss.get("alpha", 1.0)) < 0:
            raise ValueError(f"config.loss.alpha={config.loss.alpha!r}: must be >= 0")

    def loss_kwargs(self) -> dict:
        c = self.config.loss
        return dict(
            temperature=c.temperature,
            threshold=float(c.get("threshold", 0.9)),
            alpha=float(c.get("alpha", 1.0)),
            fnsd_mode=c.get("fnsd_mode", "vissl"),
        )

    def loss(self, params, batch_stats, extra, batch, rngs, step):
        del extra, rngs, step
        b = batch["view1"].shape[0]
        x = jnp.concatenate([batch["view1"], batch["view2"]], axis=0)
        z, new_bs = self.embed(params, batch_stats, x, train=True)
        z1, z2 = z[:b], z[b:]
        kw = self.loss_kwargs()
        per_example = losses.false_nt_xent(z1, z2, **kw)
        loss = jnp.mean(per_example)
        metrics = {
            "loss_contrastive": loss,
            **selection_counts(z1, z2, per_example, temperature=kw["temperature"], threshold=kw["threshold"]),
        }
        return loss, {"batch_stats": new_bs, "metrics": metrics}


def selection_counts(z1, z2, per_example, *, temperature, threshold) -> dict:
    """The selection's diagnostics on one batch (no gradient): ``false_gated`` (anchors whose
    positive cosine reaches ``threshold``), ``false_calibrated`` (anchors whose FALSE loss
    ``per_example`` [2B] is below their plain NT-Xent: FNCC acted), ``loss_ntxent``, ``cos_pos``
    (the mean positive cosine)."""
    zs1, zs2 = jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2)
    plain = losses.nt_xent(zs1, zs2, temperature=temperature)
    n1 = zs1 / jnp.maximum(jnp.linalg.norm(zs1, axis=-1, keepdims=True), 1e-12)
    n2 = zs2 / jnp.maximum(jnp.linalg.norm(zs2, axis=-1, keepdims=True), 1e-12)
    cos_pos = jnp.sum(n1 * n2, axis=-1)  # both views of pair i share this cosine
    return {
        "loss_ntxent": jnp.mean(plain),
        "false_gated": 2.0 * jnp.sum((cos_pos >= threshold).astype(jnp.float32)),
        "false_calibrated": jnp.sum((jax.lax.stop_gradient(per_example) < plain).astype(jnp.float32)),
        "cos_pos": jnp.mean(cos_pos),
    }


def firing(z1, z2, *, thresholds, temperature, alpha=1.0, fnsd_mode="vissl") -> dict:
    """Where the FALSE selection fires on one batch of embeddings ``z1``, ``z2`` [B, D]:
    ``{"threshold": [T...], "false_calibrated": [...], "false_gated": [...]}``, the counts of
    :func:`selection_counts` with the loss at each gate threshold T (the step's metric at
    ``loss.threshold = T``)."""
    out = {"threshold": [float(t) for t in thresholds], "false_calibrated": [], "false_gated": []}
    for t in thresholds:
        per_example = losses.false_nt_xent(
            z1, z2, temperature=temperature, threshold=float(t), alpha=alpha, fnsd_mode=fnsd_mode
        )
        c = selection_counts(z1, z2, per_example, temperature=temperature, threshold=float(t))
        out["false_calibrated"].append(float(c["false_calibrated"]))
        out["false_gated"].append(float(c["false_gated"]))
    return out
