"""Learning-rate schedules beyond the trainer's default warm-up + cosine decay.

``config.optimizer.schedule`` selects one:

* ``cosine`` (default): linear warm-up to ``optimizer.lr``, then one cosine decay to
  ``lr * final_lr_fraction`` at ``total_steps`` (what ``rsjax.train.make_schedule`` builds).
* ``cosine_restarts``: linear warm-up, then ``optimizer.num_cycles`` equal cosine cycles
  ("SGDR", Loshchilov & Hutter 2017; VISSL's ``cosine_warm_restart`` with a half wave),
  the peak of cycle k being ``lr * cycle_decay**k``. Used by the FALSE official config
  (warm-up + cosine with restarts).

Formula of ``cosine_restarts`` at step s (W = warmup_steps, T = total_steps, C = num_cycles,
L = (T - W) / C, peak_k = lr * cycle_decay**k, end_k = peak_k * final_lr_fraction)::

    s < W:   lr * s / W
    s >= W:  k = min(floor((s - W) / L), C - 1),  f = clip((s - W - k L) / L, 0, 1)
             end_k + (peak_k - end_k) * (1 + cos(pi f)) / 2

With ``num_cycles = 1`` and ``cycle_decay = 1`` it equals the ``cosine`` schedule.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "cosine_restarts")


def warmup_cosine_restarts(*, peak_value: float, warmup_steps: int, total_steps: int, num_cycles: int = 2,
                           cycle_decay: float = 1.0, final_fraction: float = 0.0) -> optax.Schedule:
    """Warm-up + ``num_cycles`` cosine cycles with warm restarts (see module docstring)."""
    if num_cycles < 1:
        raise ValueError(f"config.optimizer.num_cycles={num_cycles}: must be >= 1")
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ValueError(f"warm-up of {warmup_steps} steps does not fit in total_steps={total_steps}")
    w = int(warmup_steps)
    cycle = (total_steps - w) / num_cycles

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        warm = peak_value * s / max(w, 1)
        t = s - w
        k = jnp.clip(jnp.floor(t / cycle), 0, num_cycles - 1)
        f = jnp.clip((t - k * cycle) / cycle, 0.0, 1.0)
        peak = peak_value * jnp.power(jnp.float32(cycle_decay), k)
        end = peak * final_fraction
        cos = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * f))
        return jnp.where(s < w, warm, cos)

    return schedule


def from_config(config) -> optax.Schedule:
    """The schedule named by ``config.optimizer.schedule`` (default ``cosine``)."""
    o = config.optimizer
    name = o.get("schedule", "cosine")
    warmup = int(o.get("warmup_steps", 0))
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else o.lr,
            peak_value=o.lr,
            warmup_steps=warmup,
            decay_steps=max(config.total_steps, warmup + 1),
            end_value=o.lr * o.get("final_lr_fraction", 0.0),
        )
    if name == "cosine_restarts":
        return warmup_cosine_restarts(
            peak_value=o.lr,
            warmup_steps=warmup,
            total_steps=max(config.total_steps, warmup + 1),
            num_cycles=int(o.get("num_cycles", 2)),
            cycle_decay=float(o.get("cycle_decay", 1.0)),
            final_fraction=float(o.get("final_lr_fraction", 0.0)),
        )
    raise ValueError(f"config.optimizer.schedule={name!r}: expected one of {SCHEDULES}")
