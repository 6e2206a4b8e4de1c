"""Learning-rate schedules beyond the trainer's default warm-up + cosine decay.

``config.optimizer.schedule`` selects one:

* ``cosine`` (default): linear warm-up to ``optimizer.lr``, then one cosine decay to
  ``lr * final_lr_fraction`` at ``total_steps`` (what ``rsjax.train.make_schedule`` builds).
* ``cosine_restarts``: linear warm-up, then ``optimizer.num_cycles`` equal cosine cycles
  ("SGDR", Loshchilov & Hutter 2017; like VISSL's ``cosine_warm_restart`` with a half wave,
  non-adaptive peaks, but each cycle ending at its own ``peak_k * final_lr_fraction``),
  the peak of cycle k being ``lr * cycle_decay**k``. Used by the FALSE demo.

Formula of ``cosine_restarts`` at step s (W = warmup_steps, T = total_steps, C = num_cycles,
L = (T - W) / C, peak_k = lr * cycle_decay**k, end_k = peak_k * final_lr_fraction)::

    s < W:   lr * s / W
    s >= W:  k = min(floor((s - W) / L), C - 1),  f = clip((s - W - k L) / L, 0, 1)
             end_k + (peak_k - end_k) * (1 + cos(pi f)) / 2

With ``num_cycles = 1`` and ``cycle_decay = 1`` it equals the ``cosine`` schedule.

* ``vissl_cosine_warm_restart``: the FALSE yaml's VISSL composite schedule
  (``configs/config/pretrain/FALSE/false_1gpu_resnet.yaml``): a ``linear`` warm-up from
  ``optimizer.warmup_start_lr`` to ``optimizer.lr`` over ``warmup_steps``, then VISSL's
  ``CosineWarmRestartScheduler`` (``vissl/optimizers/param_scheduler/
  cosine_warm_restart_scheduler.py``) from ``start = lr`` to ``end = lr * final_lr_fraction``
  over the remaining steps, both phases "rescaled" to [0, 1) as classy_vision's composite
  scheduler does. With u = (s - W) / (T - W), R = ``optimizer.restart_interval`` (a fraction
  of the cosine phase) and ``optimizer.wave``:

      full:  restarts r = [0] + arange(R, 1, 2R);  value = end + (peak_k - end) (1 + cos(pi u / R)) / 2
      half:  restarts r = [0] + arange(R, 1, R);   value = end + (peak_k - end) (1 + cos(pi (u mod R) / R)) / 2

  with k = max(bisect_right(r, u) - 1, 0) and, for ``optimizer.adaptive_restarts`` (VISSL
  ``is_adaptive``), ``peak_k = end + (start - end) (1 + cos(pi (R + r_k))) / 2`` (full) or
  ``(1 + cos(pi r_k)) / 2`` (half): the peak follows one long cosine from start to end;
  otherwise ``peak_k = start * cycle_decay**k`` (VISSL ``lr_multiplier``). A full wave runs
  down AND back up within 2R, so with R = 0.334 and adaptive peaks the FALSE yaml gives
  ~3.6 at the end of warm-up (note: lower than the warm-up's 4.8 target; the reference
  jumps), a trough of ``end`` at u = R, ~1.2 at u = 2R, and ~end at u = 1. classy_vision
  switches phase at ``where + 1e-6 > 0.1``; here at s >= W (the same step for T < 10^6).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("cosine", "cosine_restarts", "vissl_cosine_warm_restart")


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


def vissl_cosine_warm_restart(*, start_value: float, end_value: float, restart_interval: float,
                              wave: str = "full", adaptive: bool = True, lr_multiplier: float = 1.0):
    """VISSL's ``CosineWarmRestartScheduler`` as a function of u in [0, 1] (see module docstring)."""
    if wave not in ("full", "half"):
        raise ValueError(f"config.optimizer.wave={wave!r}: expected 'full' or 'half'")
    if not 0 < restart_interval <= 1:
        raise ValueError(f"config.optimizer.restart_interval={restart_interval}: must be in (0, 1]")
    step = 2 * restart_interval if wave == "full" else restart_interval
    # numpy's arange, as VISSL: the restart points are exactly the reference's floats
    restarts = [0.0] + np.arange(restart_interval, 1.0, step).tolist()
    peaks = []
    for k, r in enumerate(restarts):
        if adaptive:
            phase = restart_interval + r if wave == "full" else r
            peaks.append(end_value + 0.5 * (start_value - end_value) * (1 + math.cos(math.pi * phase)))
        else:
            peaks.append(start_value * lr_multiplier**k)
    r_arr = jnp.asarray(restarts, jnp.float32)
    p_arr = jnp.asarray(peaks, jnp.float32)

    def schedule(u):
        u = jnp.asarray(u, jnp.float32)
        k = jnp.maximum(jnp.sum(u[..., None] >= r_arr, axis=-1) - 1, 0)  # bisect_right - 1
        peak = p_arr[k]
        x = u / restart_interval if wave == "full" else jnp.mod(u, restart_interval) / restart_interval
        return end_value + 0.5 * (peak - end_value) * (1.0 + jnp.cos(math.pi * x))

    return schedule


def warmup_vissl_cosine_warm_restart(*, warmup_start: float, peak_value: float, warmup_steps: int,
                                     total_steps: int, final_fraction: float, restart_interval: float,
                                     wave: str = "full", adaptive: bool = True,
                                     lr_multiplier: float = 1.0) -> optax.Schedule:
    """Linear ``warmup_start -> peak_value`` over W steps, then :func:`vissl_cosine_warm_restart`."""
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ValueError(f"warm-up of {warmup_steps} steps does not fit in total_steps={total_steps}")
    w = int(warmup_steps)
    cos = vissl_cosine_warm_restart(start_value=peak_value, end_value=peak_value * final_fraction,
                                    restart_interval=restart_interval, wave=wave, adaptive=adaptive,
                                    lr_multiplier=lr_multiplier)

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        warm = warmup_start + (peak_value - warmup_start) * s / max(w, 1)
        return jnp.where(s < w, warm, cos((s - w) / (total_steps - w)))

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
    if name == "vissl_cosine_warm_restart":
        return warmup_vissl_cosine_warm_restart(
            warmup_start=float(o.get("warmup_start_lr", 0.0)),
            peak_value=o.lr,
            warmup_steps=warmup,
            total_steps=max(config.total_steps, warmup + 1),
            final_fraction=float(o.get("final_lr_fraction", 0.0)),
            restart_interval=float(o.get("restart_interval", 0.5)),
            wave=o.get("wave", "full"),
            adaptive=bool(o.get("adaptive_restarts", True)),
            lr_multiplier=float(o.get("cycle_decay", 1.0)),
        )
    raise ValueError(f"config.optimizer.schedule={name!r}: expected one of {SCHEDULES}")
