"""The method interface shared by every pretraining method.

A method owns its Flax modules and turns a batch into a scalar loss. All state is
explicit pytrees threaded through pure functions:

* ``params``       trainable parameters, a dict keyed by module (``encoder``, ``projector``, ...)
* ``batch_stats``  BatchNorm running statistics, keyed the same way
* ``extra``        non-trainable method state (EMA key encoder, MoCo queue, DINO centre)

``loss(params, batch_stats, extra, batch, rngs, step) -> (loss, aux)`` is differentiated
w.r.t. ``params``; ``aux['batch_stats']`` holds the new statistics and ``aux['metrics']``
scalars to log. ``update_extra`` runs after the optimizer update (EMA, enqueue).
``encode`` gives pooled eval-mode encoder features for downstream evaluation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rsjax.models import heads as heads_lib
from rsjax.models import resnet as resnet_lib
from rsjax.trainable import compute_dtype

PyTree = Any


class Method:
    """Base class of the self-supervised methods: an encoder (ResNet) with a projection head;
    implements :class:`rsjax.trainable.Trainable`."""

    name = "base"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.dtype = compute_dtype(config)
        self.encoder = resnet_lib.encoder_from_config(config.model, self.dtype)
        self.projector = heads_lib.ProjectionHead(
            hidden_dim=config.model.proj_hidden_dim,
            out_dim=config.model.proj_dim,
            num_layers=config.model.get("proj_layers", 2),
            use_bn=config.model.get("proj_bn", True),
            last_bn=config.model.get("proj_last_bn", False),
            hidden_act=config.model.get("proj_hidden_act", "relu"),
            dtype=self.dtype,
        )
        if self.projector.hidden_act not in ("relu", "none"):
            raise ValueError(f"config.model.proj_hidden_act={self.projector.hidden_act!r}: expected 'relu' or 'none'")

    # --- pieces shared by subclasses -------------------------------------------------
    def _init_encoder_projector(self, rng, x):
        k1, k2 = jax.random.split(rng)
        enc_vars = self.encoder.init(k1, x, train=False)
        feats = self.encoder.apply(enc_vars, x, train=False)
        proj_vars = self.projector.init(k2, feats, train=False)
        params = {"encoder": enc_vars["params"], "projector": proj_vars["params"]}
        batch_stats = {
            "encoder": enc_vars.get("batch_stats", {}),
            "projector": proj_vars.get("batch_stats", {}),
        }
        return params, batch_stats

    def embed(self, params, batch_stats, x, *, train: bool, return_features: bool = False):
        """Encoder + projector. Returns (z, new_batch_stats[, stage feature maps])."""
        enc_out, enc_upd = self.encoder.apply(
            {"params": params["encoder"], "batch_stats": batch_stats["encoder"]},
            x,
            train=train,
            return_features=return_features,
            mutable=["batch_stats"] if train else [],
        )
        pooled, feats = enc_out if return_features else (enc_out, None)
        z, proj_upd = self.projector.apply(
            {"params": params["projector"], "batch_stats": batch_stats["projector"]},
            pooled,
            train=train,
            mutable=["batch_stats"] if train else [],
        )
        new_bs = {
            "encoder": enc_upd.get("batch_stats", batch_stats["encoder"]),
            "projector": proj_upd.get("batch_stats", batch_stats["projector"]),
        }
        z = z.astype(jnp.float32)
        return (z, new_bs, feats) if return_features else (z, new_bs)

    # --- interface ----------------------------------------------------------------------
    def sample_batch(self, batch_size: int = 2) -> dict:
        """Zeros shaped like a training batch (initialisation, shapes, FLOP counts)."""
        s, c = int(self.config.data.image_size), int(self.config.model.in_channels)
        return {
            "view1": np.zeros((batch_size, s, s, c), np.float32),
            "view2": np.zeros((batch_size, s, s, c), np.float32),
            "scene_id": np.arange(batch_size, dtype=np.int32),
            "label": np.zeros((batch_size,), np.int32),
        }

    def init(self, rng, batch) -> tuple[PyTree, PyTree, PyTree]:
        params, batch_stats = self._init_encoder_projector(rng, batch["view1"])
        return params, batch_stats, {}

    def loss(self, params, batch_stats, extra, batch, rngs, step):
        raise NotImplementedError

    def update_extra(self, params, batch_stats, extra, aux, step):
        del params, batch_stats, aux, step
        return extra

    def encode(self, params, batch_stats, x):
        """Pooled eval-mode encoder features (float32) for downstream evaluation."""
        return self.encoder.apply(
            {"params": params["encoder"], "batch_stats": batch_stats["encoder"]}, x, train=False
        ).astype(jnp.float32)
