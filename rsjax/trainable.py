"""What the training loop trains: the :class:`Trainable` protocol, written out.

The loop (:func:`rsjax.train.fit`) knows nothing of methods or tasks; it calls these five
functions, pure and jittable, on explicit pytrees. Self-supervised methods
(:mod:`rsjax.methods`) and supervised tasks (:mod:`rsjax.tasks`) implement the protocol
independently: neither inherits from the other.

* ``params``       trainable parameters, a dict keyed by top-level module (``encoder``, ...)
* ``batch_stats``  BatchNorm running statistics, keyed the same way
* ``extra``        non-trainable state (EMA key encoder, MoCo queue, DINO centre); ``{}`` if none

Optional: a trainable with ``wants_probe = True`` puts a scalar loss term ``"probe"`` in the
loss aux; on logged steps the loop then also takes that term's own gradient and logs
``probe_metrics(grads, probe_grads)`` (SwiMDiff: L_D's share of the encoder's gradient).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax.numpy as jnp

PyTree = Any

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(config):
    """``config.dtype`` (default float32) as a jnp dtype; parameters and losses stay float32."""
    name = config.get("dtype", "float32")
    if name not in DTYPES:
        raise ValueError(f"config.dtype={name!r}: expected float32, bfloat16 or float16")
    return DTYPES[name]


def is_logged(step, log_every: int, last=()):
    """THE logging rule of the loop: step number ``step`` (1-based, the step just taken) is logged
    when it is a multiple of ``log_every`` or one of ``last`` (the run's last step and the step
    a ``stop_after_steps`` run stops at; 0 = none). Python ints, or traced arrays inside a step
    (a trainable's logged-steps-only diagnostics follow the same rule)."""
    out = step % log_every == 0
    for n in last:
        if n:
            out = out | (step == n)
    return out


@runtime_checkable
class Trainable(Protocol):
    """The loop's view of a method or task (see the module docstring)."""

    def sample_batch(self, batch_size: int = 2) -> dict:
        """Zeros shaped like a training batch (initialisation, shapes, FLOP counts)."""

    def init(self, rng, batch) -> tuple[PyTree, PyTree, PyTree]:
        """``(params, batch_stats, extra)`` from a PRNG key and a batch."""

    def loss(self, params, batch_stats, extra, batch, rngs, step) -> tuple[Any, dict]:
        """``(scalar loss, aux)``, differentiated w.r.t. ``params``; ``aux["batch_stats"]`` holds the
        new statistics, ``aux["metrics"]`` scalars to log."""

    def update_extra(self, params, batch_stats, extra, aux, step) -> PyTree:
        """``extra`` after the optimizer step (EMA, enqueue); the identity for most trainables."""

    def encode(self, params, batch_stats, x):
        """Pooled eval-mode encoder features, float32 [B, F] (downstream evaluation)."""
