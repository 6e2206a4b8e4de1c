"""The one optimizer + learning-rate schedule builder for every block that trains.

Every training phase reads an optimizer block of the same shape: pretraining
``config.optimizer``, dense downstream jobs ``config.optimizer``, fine-tuning
``config.finetune.optimizer``, noisy-label transfer ``config.transfer.optimizer``.
:func:`default_block` gives it complete; a block that leaves keys out gets their defaults.
:func:`validate` refuses a bad block naming ``config.<where>.<key>``; :func:`make` builds
``(tx, schedule)`` (the idea of big_vision's ``optax.make``: one config shape, freezing by
parameter-name pattern with ``set_to_zero``).

Keys (default)
--------------
``name`` (adamw)           adamw | adam | sgd | lars
``lr`` (1e-3)              peak learning rate of the schedule
``weight_decay`` (1e-4)    adamw: decoupled; sgd, adam: L2 added to the gradient (torch's
                           ``weight_decay``); lars: inside the trust ratio. Never on biases and
                           normalisation parameters (rank <= 1), except lars with ``decay_bias``.
``momentum`` (0.9), ``nesterov`` (False)   sgd, lars
``b1`` (0.9), ``b2`` (0.999)               adam, adamw
``schedule`` (cosine)      cosine | cosine_restarts | vissl_cosine_warm_restart | poly | constant
``warmup_steps`` (0), ``warmup_start_lr`` (0.0)   linear warm-up from warmup_start_lr to lr
``final_lr_fraction`` (0.0)  the schedule ends at ``lr * final_lr_fraction``
``poly_power`` (0.9)       poly
``num_cycles`` (2), ``cycle_decay`` (1.0)  cosine_restarts (cycle_decay is also VISSL's lr_multiplier)
``restart_interval`` (0.5), ``wave`` (full), ``adaptive_restarts`` (True)   vissl_cosine_warm_restart
``grad_clip`` (0.0)        > 0: clip the global gradient norm (of the trained leaves) first
``module_lr_scale`` ("")   "denoiser=0.1,projector=0.5": per top-level-module lr factor
``freeze`` ("")            comma-separated fnmatch patterns on "/"-joined parameter paths
``modules`` ({})           top-level parameter modules trained by their OWN optimizer block, e.g.
                           ``{"denoiser": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}}``
                           (SwiMDiff's denoiser: Adam, as DDPM trains its UNet, while the encoder
                           keeps the SGD every arm of a study shares); each block has every key
                           above except ``modules`` and ``plateau``, with its own schedule over the
                           same total steps; the outer block's clip, ``module_lr_scale`` and
                           schedule then see only the other modules
``decay_bias``, ``trust_ratio_all`` (False), ``trust_coefficient`` (0.001), ``lars_eps`` (0.0)   lars
``plateau``                ReduceLROnPlateau: ``enabled`` (False), ``mode`` (max), ``factor`` (0.5),
                           ``patience`` (30), ``threshold`` (1e-4), ``threshold_mode`` (rel),
                           ``cooldown`` (0), ``min_lr`` (0.0), ``every`` (0 = once per epoch),
                           ``val_fraction`` (0.01)

Schedules (W = warmup_steps, T = total steps, s = step, lr0 = warmup_start_lr, f = final_lr_fraction)
----------------------------------------------------------------------------------------------
Every schedule warms up linearly, ``lr0 + (lr - lr0) s / W`` for ``s < W``, then:

* ``cosine``: ``lr f + (lr - lr f) (1 + cos(pi (s - W) / (T - W))) / 2`` (optax's
  ``warmup_cosine_decay_schedule``), constant ``lr f`` after T.
* ``poly``: ``lr f + (lr - lr f) (1 - (s - W) / (T - W)) ** poly_power`` (the dense jobs' "poly"
  of DeepLab), ``lr f`` after T.
* ``constant``: ``lr``.
* ``cosine_restarts``: ``num_cycles`` = C equal cosine cycles of length L = (T - W) / C
  ("SGDR", Loshchilov & Hutter 2017; VISSL's ``cosine_warm_restart`` with a half wave,
  non-adaptive peaks, each cycle ending at its own ``peak_k f``); peak of cycle k
  ``peak_k = lr cycle_decay**k``; with ``k = min(floor((s - W) / L), C - 1)``,
  ``u = clip((s - W - k L) / L, 0, 1)``, ``end_k = peak_k f``::

      end_k + (peak_k - end_k) (1 + cos(pi u)) / 2

  With C = 1 and cycle_decay = 1 it equals ``cosine``. Used by the FALSE demo.
* ``vissl_cosine_warm_restart``: the FALSE yaml's VISSL composite schedule
  (``configs/config/pretrain/FALSE/false_1gpu_resnet.yaml``): a ``linear`` warm-up from
  ``warmup_start_lr`` to ``lr`` over W steps, then VISSL's ``CosineWarmRestartScheduler``
  (``vissl/optimizers/param_scheduler/cosine_warm_restart_scheduler.py``) from ``start = lr`` to
  ``end = lr f`` over the remaining steps, both phases "rescaled" to [0, 1) as classy_vision's
  composite scheduler does. With u = (s - W) / (T - W), R = ``restart_interval`` (a fraction of
  the cosine phase) and ``wave``::

      full:  restarts r = [0] + arange(R, 1, 2R);  value = end + (peak_k - end) (1 + cos(pi u / R)) / 2
      half:  restarts r = [0] + arange(R, 1, R);   value = end + (peak_k - end) (1 + cos(pi (u mod R) / R)) / 2

  with k = max(bisect_right(r, u) - 1, 0) and, for ``adaptive_restarts`` (VISSL ``is_adaptive``),
  ``peak_k = end + (start - end) (1 + cos(pi (R + r_k))) / 2`` (full) or ``(1 + cos(pi r_k)) / 2``
  (half): the peak follows one long cosine from start to end; otherwise
  ``peak_k = start cycle_decay**k`` (VISSL ``lr_multiplier``). A full wave runs down AND back up
  within 2R, so with R = 0.334 and adaptive peaks the FALSE yaml gives ~3.6 at the end of
  warm-up (lower than the warm-up's 4.8 target; the reference jumps), a trough of ``end`` at
  u = R, ~1.2 at u = 2R, and ~end at u = 1. classy_vision switches phase at
  ``where + 1e-6 > 0.1``; here at s >= W (the same step for T < 10^6).

A schedule built for T <= W runs as if T = W + 1 (what the smoke configs, 4 steps with a
10-step warm-up, rely on); :func:`validate` with ``total_steps`` refuses that for real runs.

The transform :func:`make` builds (outermost last)::

    [clip_by_global_norm(grad_clip)] -> optimizer(schedule) -> [scale_modules(module_lr_scale)]
    -> [modules: that chain on the other modules, each named module's own chain on its leaves]
    -> freeze: the chain above on the trained leaves, set_to_zero on the frozen ones
    -> [plateau_scale]          (so ``opt_state[-1]`` is the PlateauState when it is on)

The unfrozen chain is exactly what ``rsjax.train.make_optimizer`` built before issue 13, so pretraining runs
are bit-identical (same values, same optimizer-state tree: old checkpoints restore).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rsjax import errors
from rsjax.errors import ConfigError

NAMES = ("adamw", "adam", "sgd", "lars")
SCHEDULES = ("cosine", "cosine_restarts", "vissl_cosine_warm_restart", "poly", "constant")
WAVES = ("full", "half")
PLATEAU_MODES = ("max", "min")
PLATEAU_THRESHOLD_MODES = ("rel", "abs")

_PLATEAU_DEFAULTS = dict(
    enabled=False,
    mode="max",  # max on a score (mIoU), min on a loss
    factor=0.5,  # lr x factor when the metric stops improving
    patience=30,  # validations without improvement before a reduction (CromSS: epochs)
    threshold=1e-4,
    threshold_mode="rel",
    cooldown=0,
    min_lr=0.0,
    every=0,  # steps between validations; 0 = one epoch of the training data
    val_fraction=0.01,  # training examples held out for the validation (CromSS --validation 0.01)
)

_DEFAULTS = dict(
    name="adamw",
    lr=1e-3,
    weight_decay=1e-4,
    momentum=0.9,
    nesterov=False,
    b1=0.9,
    b2=0.999,
    schedule="cosine",
    warmup_steps=0,
    warmup_start_lr=0.0,
    final_lr_fraction=0.0,
    poly_power=0.9,
    num_cycles=2,
    cycle_decay=1.0,
    restart_interval=0.5,
    wave="full",
    adaptive_restarts=True,
    grad_clip=0.0,
    module_lr_scale="",
    freeze="",
    modules={},
    decay_bias=False,
    trust_ratio_all=False,
    trust_coefficient=0.001,
    lars_eps=0.0,
)


# --------------------------------------------------------------------------------------
# The block
# --------------------------------------------------------------------------------------
def default_block(**overrides) -> ml_collections.ConfigDict:
    """The complete optimizer block with every key at its default, ``overrides`` applied
    (``plateau=dict(enabled=True)`` updates the sub-block). Locked: a misspelt key assigned
    later raises instead of being silently added."""
    c = ml_collections.ConfigDict(dict(_DEFAULTS, plateau=dict(_PLATEAU_DEFAULTS)))

    def assign(node, key, value, name):
        try:
            node[key] = value
        except TypeError:  # ConfigDict keeps each field's type (an int field refuses 2.5)
            raise ConfigError(f"optimizer key {name}={value!r}: expected type {type(node[key]).__name__}") from None

    for key, value in overrides.items():
        if key == "plateau" and (isinstance(value, Mapping) or hasattr(value, "to_dict")):
            for k, v in _as_dict(value).items():
                if k not in _PLATEAU_DEFAULTS:
                    raise ConfigError(
                        f"default_block: unknown key plateau.{k}"
                        f"{_did_you_mean(k, _PLATEAU_DEFAULTS)}; keys: {sorted(_PLATEAU_DEFAULTS)}"
                    )
                assign(c.plateau, k, v, f"plateau.{k}")
        elif key in _DEFAULTS:
            if key == "module_lr_scale" and value and not isinstance(value, str):  # a mapping: its spelling
                value = ",".join(f"{m}={f}" for m, f in parse_module_scales(value).items())
            assign(c, key, value, key)
        else:
            raise ConfigError(f"default_block: unknown key {key!r}{_did_you_mean(key, _DEFAULTS)}")
    c.lock()
    return c


def _as_dict(block) -> dict:
    if block is None:
        return {}
    if hasattr(block, "to_dict"):
        return block.to_dict()
    return dict(block)


def _complete(block) -> dict:
    """``block`` as a plain dict with every missing key at its default (unknown keys kept)."""
    given = _as_dict(block)
    out = dict(_DEFAULTS)
    out.update({k: v for k, v in given.items() if k != "plateau"})
    plateau = given.get("plateau") or {}
    out["plateau"] = dict(_PLATEAU_DEFAULTS, **_as_dict(plateau))
    return out


def _did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_module_scales(scales, where: str = "optimizer") -> dict[str, float]:
    """``module_lr_scale`` as ``{module: factor}``: the command-line spelling
    ``"denoiser=0.1,projector=0.5"`` or a mapping; ``""`` / None / {} = none."""
    key = f"config.{where}.module_lr_scale"
    if not scales:
        return {}
    if isinstance(scales, str):
        items = [item for item in scales.replace(" ", "").split(",") if item]
        if not all(item.count("=") == 1 for item in items):
            raise ConfigError(f"{key}={scales!r}: expected 'module=factor,...'")
        scales = dict(item.split("=") for item in items)
    elif hasattr(scales, "to_dict"):
        scales = scales.to_dict()
    try:
        out = {str(k): float(v) for k, v in dict(scales).items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={scales!r}: expected 'module=factor,...' with numeric factors") from None
    bad = {k: v for k, v in out.items() if not (math.isfinite(v) and v >= 0)}
    if bad:
        raise ConfigError(f"{key}: factors must be finite and >= 0, got {bad}")
    return out


def module_blocks(block, where: str = "optimizer") -> dict[str, dict]:
    """``modules`` of a block as ``{module: its own optimizer block}`` (empty: none)."""
    mods = _as_dict(block).get("modules") or {}
    if not isinstance(mods, Mapping) and not hasattr(mods, "to_dict"):
        raise ConfigError(
            f"config.{where}.modules={mods!r}: expected a block of "
            "{module: optimizer block}, e.g. {'denoiser': {'name': 'adam', 'lr': 1e-3}}"
        )
    out = {}
    for name, sub in _as_dict(mods).items():
        if not isinstance(sub, Mapping) and not hasattr(sub, "to_dict"):
            raise ConfigError(f"config.{where}.modules.{name}={sub!r}: expected an optimizer block")
        out[str(name)] = _as_dict(sub)
    return out


def parse_freeze(freeze, where: str = "optimizer") -> list[str]:
    """``freeze`` as a list of patterns (comma-separated string; '' = none)."""
    if not freeze:
        return []
    if not isinstance(freeze, str):
        raise ConfigError(
            f"config.{where}.freeze={freeze!r}: expected a string of comma-separated patterns such as 'encoder/*'"
        )
    return [p.strip().strip("/") for p in freeze.split(",") if p.strip().strip("/")]


def validate(block, where: str = "optimizer", *, total_steps: int | None = None) -> None:
    """Refuses a bad optimizer block with a :class:`~rsjax.errors.ConfigError` naming
    ``config.<where>.<key>``: unknown keys, unknown optimizer / schedule / wave / plateau mode
    names, ``lr <= 0``, negative weight decay or clip, momentum or betas outside [0, 1), a bad
    ``module_lr_scale`` or ``freeze`` spelling, plateau values out of range, the plateau rule
    with LARS (see :func:`plateau_scale`), and, when ``total_steps`` is given, a warm-up that
    does not end before it."""
    given = _as_dict(block)
    unknown = sorted(set(given) - set(_DEFAULTS) - {"plateau"})
    if unknown:
        raise ConfigError(
            f"config.{where}: unknown key(s) {unknown}{_did_you_mean(unknown[0], _DEFAULTS)}; "
            f"keys: {sorted([*_DEFAULTS, 'plateau'])}"
        )
    p_given = given.get("plateau")
    if p_given is not None and not isinstance(p_given, Mapping) and not hasattr(p_given, "to_dict"):
        raise ConfigError(f"config.{where}.plateau: expected a block of keys {sorted(_PLATEAU_DEFAULTS)}")
    p_unknown = sorted(set(_as_dict(p_given)) - set(_PLATEAU_DEFAULTS))
    if p_unknown:
        raise ConfigError(
            f"config.{where}.plateau: unknown key(s) {p_unknown}"
            f"{_did_you_mean(p_unknown[0], _PLATEAU_DEFAULTS)}; keys: {sorted(_PLATEAU_DEFAULTS)}"
        )
    b = _complete(block)

    def num(key, src=b, prefix=""):
        v = src[key]
        full = f"config.{where}.{prefix}{key}"
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ConfigError(f"{full}={v!r}: expected a number")
        if not math.isfinite(float(v)):
            raise ConfigError(f"{full}={v!r}: must be finite")
        return float(v)

    def integer(key, src=b, prefix=""):
        v = num(key, src, prefix)
        if v != int(v):
            raise ConfigError(f"config.{where}.{prefix}{key}={src[key]!r}: expected an integer")
        return int(v)

    def need(ok, key, msg, src=b, prefix=""):  # the block's keys, or its plateau sub-block's
        errors.require(ok, f"{where}.{prefix}{key}", src[key], msg)

    def choice(key, options, src=b, prefix=""):
        need(src[key] in options, key, f"expected one of {options}", src, prefix)

    def flag(key, src=b, prefix=""):
        need(isinstance(src[key], (bool, np.bool_)), key, "expected True or False", src, prefix)

    choice("name", NAMES)
    choice("schedule", SCHEDULES)
    choice("wave", WAVES)
    need(num("lr") > 0, "lr", "must be > 0")
    need(num("weight_decay") >= 0, "weight_decay", "must be >= 0")
    for key in ("momentum", "b1", "b2"):
        need(0 <= num(key) < 1, key, "must be in [0, 1)")
    need(integer("warmup_steps") >= 0, "warmup_steps", "must be >= 0")
    need(num("warmup_start_lr") >= 0, "warmup_start_lr", "must be >= 0")
    need(num("final_lr_fraction") >= 0, "final_lr_fraction", "must be >= 0")
    need(num("poly_power") > 0, "poly_power", "must be > 0")
    need(integer("num_cycles") >= 1, "num_cycles", "must be >= 1")
    need(num("cycle_decay") > 0, "cycle_decay", "must be > 0")
    need(0 < num("restart_interval") <= 1, "restart_interval", "must be in (0, 1]")
    need(num("grad_clip") >= 0, "grad_clip", "must be >= 0 (0 = no clipping)")
    need(num("trust_coefficient") > 0, "trust_coefficient", "must be > 0")
    need(num("lars_eps") >= 0, "lars_eps", "must be >= 0")
    for key in ("nesterov", "adaptive_restarts", "decay_bias", "trust_ratio_all"):
        flag(key)
    scales = parse_module_scales(b["module_lr_scale"], where)
    parse_freeze(b["freeze"], where)
    for name, sub in module_blocks(b, where).items():
        sub_where = f"{where}.modules.{name}"
        if module_blocks(_complete(sub), sub_where):
            raise ConfigError(f"config.{sub_where}.modules: a module's own optimizer cannot split it further")
        if _as_dict(_as_dict(sub).get("plateau")).get("enabled"):
            raise ConfigError(
                f"config.{sub_where}.plateau.enabled=True: the plateau rule applies to the "
                f"whole model (config.{where}.plateau), not to one module"
            )
        if name in scales:
            raise ConfigError(
                f"config.{where}.module_lr_scale names {name!r}, which config.{where}.modules "
                f"trains with its own optimizer: set config.{sub_where}.lr instead"
            )
        validate(sub, sub_where, total_steps=total_steps)

    p = b["plateau"]
    pre = "plateau."
    flag("enabled", p, pre)
    choice("mode", PLATEAU_MODES, p, pre)
    choice("threshold_mode", PLATEAU_THRESHOLD_MODES, p, pre)
    need(0 < num("factor", p, pre) < 1, "factor", "must be in (0, 1)", p, pre)
    need(integer("patience", p, pre) >= 0, "patience", "must be >= 0", p, pre)
    need(num("threshold", p, pre) >= 0, "threshold", "must be >= 0", p, pre)
    need(integer("cooldown", p, pre) >= 0, "cooldown", "must be >= 0", p, pre)
    need(num("min_lr", p, pre) >= 0, "min_lr", "must be >= 0", p, pre)
    need(integer("every", p, pre) >= 0, "every", "must be >= 0 (0 = once per epoch)", p, pre)
    need(0 < num("val_fraction", p, pre) < 1, "val_fraction", "must be in (0, 1)", p, pre)
    if p["enabled"] and b["name"] == "lars":
        raise ConfigError(
            f"config.{where}.plateau.enabled=True with config.{where}.name='lars': LARS keeps the "
            "learning rate inside its momentum buffer, so scaling its update is not a change of lr; "
            "use sgd, adam or adamw with the plateau rule"
        )

    if total_steps is not None:
        if int(total_steps) <= 0:
            raise ConfigError(f"total steps of config.{where} = {total_steps}: must be > 0")
        if b["warmup_steps"] >= int(total_steps):
            raise ConfigError(
                f"config.{where}.warmup_steps={b['warmup_steps']}: must be < the {int(total_steps)} "
                "total steps of the phase"
            )


# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------
def _linear_warmup(start: float, peak: float, warmup_steps: int, body: optax.Schedule) -> optax.Schedule:
    """``start + (peak - start) s / W`` for ``s < W``, then ``body(s - W)``."""
    if not warmup_steps:
        return body
    return optax.join_schedules([optax.linear_schedule(start, peak, warmup_steps), body], [warmup_steps])


def warmup_cosine_restarts(
    *,
    peak_value: float,
    warmup_steps: int,
    total_steps: int,
    num_cycles: int = 2,
    cycle_decay: float = 1.0,
    final_fraction: float = 0.0,
    init_value: float = 0.0,
) -> optax.Schedule:
    """Warm-up + ``num_cycles`` cosine cycles with warm restarts (``cosine_restarts``, module docstring)."""
    if num_cycles < 1:
        raise ConfigError(f"config.optimizer.num_cycles={num_cycles}: must be >= 1")
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ConfigError(f"warm-up of {warmup_steps} steps does not fit in total_steps={total_steps}")
    w = int(warmup_steps)
    cycle = (total_steps - w) / num_cycles

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        # init + ((peak - init) * s) / W: with init = 0 exactly the former peak * s / W
        warm = init_value + (peak_value - init_value) * s / max(w, 1)
        t = s - w
        k = jnp.clip(jnp.floor(t / cycle), 0, num_cycles - 1)
        f = jnp.clip((t - k * cycle) / cycle, 0.0, 1.0)
        peak = peak_value * jnp.power(jnp.float32(cycle_decay), k)
        end = peak * final_fraction
        cos = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * f))
        return jnp.where(s < w, warm, cos)

    return schedule


def vissl_cosine_warm_restart(
    *,
    start_value: float,
    end_value: float,
    restart_interval: float,
    wave: str = "full",
    adaptive: bool = True,
    lr_multiplier: float = 1.0,
):
    """VISSL's ``CosineWarmRestartScheduler`` as a function of u in [0, 1] (module docstring)."""
    if wave not in WAVES:
        raise ConfigError(f"config.optimizer.wave={wave!r}: expected one of {WAVES}")
    if not 0 < restart_interval <= 1:
        raise ConfigError(f"config.optimizer.restart_interval={restart_interval}: must be in (0, 1]")
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


def warmup_vissl_cosine_warm_restart(
    *,
    warmup_start: float,
    peak_value: float,
    warmup_steps: int,
    total_steps: int,
    final_fraction: float,
    restart_interval: float,
    wave: str = "full",
    adaptive: bool = True,
    lr_multiplier: float = 1.0,
) -> optax.Schedule:
    """Linear ``warmup_start -> peak_value`` over W steps, then :func:`vissl_cosine_warm_restart`."""
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ConfigError(f"warm-up of {warmup_steps} steps does not fit in total_steps={total_steps}")
    w = int(warmup_steps)
    cos = vissl_cosine_warm_restart(
        start_value=peak_value,
        end_value=peak_value * final_fraction,
        restart_interval=restart_interval,
        wave=wave,
        adaptive=adaptive,
        lr_multiplier=lr_multiplier,
    )

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        warm = warmup_start + (peak_value - warmup_start) * s / max(w, 1)
        return jnp.where(s < w, warm, cos((s - w) / (total_steps - w)))

    return schedule


def schedule(block, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule of an optimizer block over ``total_steps`` (module docstring)."""
    b = _complete(block)
    name = b["schedule"]
    lr, warmup = float(b["lr"]), int(b["warmup_steps"])
    start, frac = float(b["warmup_start_lr"]), float(b["final_lr_fraction"])
    total = max(int(total_steps), warmup + 1)  # a warm-up longer than the run: the smoke configs
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=start if warmup else lr,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=total,
            end_value=lr * frac,
        )
    if name == "poly":
        body = optax.polynomial_schedule(lr, lr * frac, float(b["poly_power"]), total - warmup)
        return _linear_warmup(start, lr, warmup, body)
    if name == "constant":
        return _linear_warmup(start, lr, warmup, optax.constant_schedule(lr))
    if name == "cosine_restarts":
        return warmup_cosine_restarts(
            peak_value=lr,
            warmup_steps=warmup,
            total_steps=total,
            num_cycles=int(b["num_cycles"]),
            cycle_decay=float(b["cycle_decay"]),
            final_fraction=frac,
            init_value=start,
        )
    if name == "vissl_cosine_warm_restart":
        return warmup_vissl_cosine_warm_restart(
            warmup_start=start,
            peak_value=lr,
            warmup_steps=warmup,
            total_steps=total,
            final_fraction=frac,
            restart_interval=float(b["restart_interval"]),
            wave=b["wave"],
            adaptive=bool(b["adaptive_restarts"]),
            lr_multiplier=float(b["cycle_decay"]),
        )
    raise ConfigError(f"config.optimizer.schedule={name!r}: expected one of {SCHEDULES}")


# --------------------------------------------------------------------------------------
# Masks, module scales, freezing
# --------------------------------------------------------------------------------------
def decay_mask(params):
    """No weight decay (nor LARS trust ratio) on biases and normalisation parameters (rank <= 1)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def not_norm_mask(params):
    """Every parameter except those of normalisation layers (modules named bn*, *_bn, *norm*)."""

    def keep(path, p):
        names = [str(getattr(k, "key", k)) for k in path[:-1]]
        return not any("bn" in n or "norm" in n for n in names)

    return jax.tree_util.tree_map_with_path(keep, params)


def _all_true(params):
    return jax.tree.map(lambda _: True, params)


def scale_modules(scales, where: str = "optimizer") -> optax.GradientTransformation:
    """Multiplies the updates of top-level parameter modules by a constant (``module_lr_scale``).

    ``{"denoiser": 0.1}`` trains SwiMDiff's denoiser at a tenth of the schedule's learning rate
    while the encoder keeps the rate every arm of a study shares. A constant factor on the final
    update is exactly a per-module learning rate for SGD, Adam(W) and LARS (their updates are
    linear in lr, LARS's momentum trace included, as the factor never changes). An unknown module
    name is refused when the optimizer state is created.
    """
    scales = parse_module_scales(scales, where)

    def init_fn(params):
        unknown = sorted(set(scales) - set(params))
        if unknown:
            raise ConfigError(
                f"config.{where}.module_lr_scale names {unknown}, which are not parameter "
                f"modules of this model; modules: {sorted(params)}"
            )
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return {
            k: (jax.tree.map(lambda u, f=scales[k]: u * f, v) if k in scales else v) for k, v in updates.items()
        }, state

    return optax.GradientTransformation(init_fn, update_fn)


def _path_name(path) -> str:
    """``"opt_state/1/0/mu/encoder/conv/kernel"`` of a jax key path."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _matches(name: str, pattern: str) -> bool:
    # a pattern naming a module freezes its whole subtree: "encoder" == "encoder/*"
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + "/*")


def frozen(params, block, *, where: str = "optimizer"):
    """A tree of bools like ``params``: True for the leaves ``block.freeze`` freezes.

    ``freeze`` holds comma-separated :mod:`fnmatch` patterns matched (case-sensitively) against
    each leaf's "/"-joined path, e.g. ``encoder/conv1/kernel``; ``*`` also crosses "/", and a
    pattern naming a module freezes everything under it (``encoder`` = ``encoder/*``). A pattern
    that matches no leaf is refused (a typo would otherwise silently train everything).
    """
    patterns = parse_freeze(_complete(block)["freeze"], where)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [_path_name(path) for path, _ in flat]
    unused = [p for p in patterns if not any(_matches(n, p) for n in names)]
    if unused:
        modules = sorted({n.split("/")[0] for n in names})
        raise ConfigError(
            f"config.{where}.freeze: pattern(s) {unused} match no parameter; paths look like "
            f"{names[:3]} (top-level modules {modules})"
        )
    return jax.tree_util.tree_unflatten(treedef, [any(_matches(n, p) for p in patterns) for n in names])


def freezes_module(block, module: str) -> bool:
    """True when the ``freeze`` patterns freeze every leaf under ``module`` (a top-level name such
    as ``encoder``), decided from the patterns alone: one pattern matches the module's name
    itself, or ends in ``*`` and matches ``<module>/``. The loop can then run that module in
    inference mode and skip its gradients (a linear probe)."""
    for p in parse_freeze(_complete(block)["freeze"]):
        if fnmatch.fnmatchcase(module, p) or (p.endswith("*") and fnmatch.fnmatchcase(module + "/", p)):
            return True
    return False


# --------------------------------------------------------------------------------------
# ReduceLROnPlateau
# --------------------------------------------------------------------------------------
class PlateauState(NamedTuple):
    """State of :func:`plateau_scale`: a leaf of the optimizer state, so it is checkpointed with
    the train state and a resumed run continues the rule where it stopped."""

    scale: jax.Array  # float32: lr multiplier (1, factor, factor**2, ...)
    best: jax.Array  # float32: best validation metric so far (-inf / +inf at start)
    num_bad: jax.Array  # int32: validations since the last improvement
    cooldown_counter: jax.Array  # int32
    num_evals: jax.Array  # int32: validations so far (torch's last_epoch)


def plateau_scale(mode: str = "max") -> optax.GradientTransformation:
    """Optax transform multiplying the updates by ``PlateauState.scale`` (set on the host by
    :func:`plateau_set` from :func:`plateau_update`). Chained after Adam / AdamW / SGD it scales
    the learning rate: their updates are ``-lr * direction`` with a direction that does not depend
    on lr (SGD's momentum is accumulated on the gradients, as in torch), so ``scale * update`` is
    the update with ``lr * scale`` -- what torch's ReduceLROnPlateau does to
    ``param_group["lr"]``. Not so for LARS (optax applies lr before its momentum trace), which
    :func:`validate` therefore refuses with the plateau rule."""
    if mode not in PLATEAU_MODES:
        raise ConfigError(f"config.optimizer.plateau.mode={mode!r}: expected one of {PLATEAU_MODES}")

    def init(params):
        del params
        return PlateauState(
            scale=jnp.ones((), jnp.float32),
            best=jnp.full((), -jnp.inf if mode == "max" else jnp.inf, jnp.float32),
            num_bad=jnp.zeros((), jnp.int32),
            cooldown_counter=jnp.zeros((), jnp.int32),
            num_evals=jnp.zeros((), jnp.int32),
        )

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def plateau_update(
    state: dict,
    metric: float,
    *,
    base_lr: float,
    mode: str = "max",
    factor: float = 0.5,
    patience: int = 30,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
    eps: float = 1e-8,
) -> dict:
    """One ``ReduceLROnPlateau.step(metric)`` of torch, on host numbers (pure).

    ``state``: ``{scale, best, num_bad, cooldown_counter, num_evals}``; the lr is
    ``base_lr * scale``. With ``better(a, best)`` = ``a > best * (1 + threshold)`` (max, rel),
    ``a > best + threshold`` (max, abs), ``a < best * (1 - threshold)`` (min, rel),
    ``a < best - threshold`` (min, abs)::

        if better(metric, best): best = metric; num_bad = 0  else: num_bad += 1
        if cooldown_counter > 0: cooldown_counter -= 1; num_bad = 0
        if num_bad > patience:
            new_lr = max(lr * factor, min_lr); lr = new_lr if lr - new_lr > eps
            cooldown_counter = cooldown; num_bad = 0

    CromSS: ``ReduceLROnPlateau(opt, "max", patience=30, factor=0.5)`` on the validation mIoU,
    stepped once per epoch (Lightning's default), the other arguments torch's defaults.
    """
    if mode not in PLATEAU_MODES:
        raise ConfigError(f"config.optimizer.plateau.mode={mode!r}: expected one of {PLATEAU_MODES}")
    if threshold_mode not in PLATEAU_THRESHOLD_MODES:
        raise ConfigError(
            f"config.optimizer.plateau.threshold_mode={threshold_mode!r}: expected one of {PLATEAU_THRESHOLD_MODES}"
        )
    a, best = float(metric), float(state["best"])
    if mode == "max":
        better = a > (best * (1.0 + threshold) if threshold_mode == "rel" else best + threshold)
    else:
        better = a < (best * (1.0 - threshold) if threshold_mode == "rel" else best - threshold)
    scale, num_bad, cool = float(state["scale"]), int(state["num_bad"]), int(state["cooldown_counter"])
    if better:
        best, num_bad = a, 0
    else:
        num_bad += 1
    if cool > 0:
        cool -= 1
        num_bad = 0
    if num_bad > patience:
        old_lr = base_lr * scale
        new_lr = max(old_lr * factor, min_lr)
        if old_lr - new_lr > eps:
            scale = new_lr / base_lr
        cool, num_bad = int(cooldown), 0
    return {
        "scale": scale,
        "best": best,
        "num_bad": num_bad,
        "cooldown_counter": cool,
        "num_evals": int(state["num_evals"]) + 1,
    }


def plateau_kwargs(block) -> dict:
    """The keyword arguments of :func:`plateau_update` for an optimizer block (base_lr = ``lr``)."""
    b = _complete(block)
    p = b["plateau"]
    return dict(
        base_lr=float(b["lr"]),
        mode=p["mode"],
        factor=float(p["factor"]),
        patience=int(p["patience"]),
        threshold=float(p["threshold"]),
        threshold_mode=p["threshold_mode"],
        cooldown=int(p["cooldown"]),
        min_lr=float(p["min_lr"]),
    )


def plateau_enabled(block) -> bool:
    return bool(_complete(block)["plateau"]["enabled"])


def _is_plateau(x) -> bool:
    return isinstance(x, PlateauState)


def plateau_get(opt_state) -> dict:
    """The :class:`PlateauState` inside ``opt_state`` as host numbers (``{scale, best, num_bad,
    cooldown_counter, num_evals}``); a ConfigError when the optimizer has no plateau rule."""
    found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_plateau) if _is_plateau(x)]
    if len(found) != 1:
        raise ConfigError(
            f"the optimizer state holds {len(found)} plateau states, expected 1: "
            "set config.optimizer.plateau.enabled=True to use the plateau rule"
        )
    return {k: np.asarray(jax.device_get(v)).item() for k, v in found[0]._asdict().items()}


def plateau_set(opt_state, values: Mapping[str, Any]):
    """``opt_state`` with its :class:`PlateauState` replaced by ``values`` (host side, between
    steps). Each new leaf keeps the dtype and, for a jax array, the sharding of the leaf it
    replaces (so a replicated state stays replicated)."""
    plateau_get(opt_state)  # exactly one, or a clear error

    def put(old, value):
        new = np.asarray(value, np.asarray(jax.device_get(old)).dtype)
        sharding = getattr(old, "sharding", None)
        return jax.device_put(new, sharding) if sharding is not None else new

    def replace(x):
        if not _is_plateau(x):
            return x
        return PlateauState(**{k: put(getattr(x, k), values[k]) for k in PlateauState._fields})

    return jax.tree.map(replace, opt_state, is_leaf=_is_plateau)


# --------------------------------------------------------------------------------------
# THE builder
# --------------------------------------------------------------------------------------
def _base_optimizer(b: dict, lr: optax.Schedule) -> optax.GradientTransformation:
    name, wd = b["name"], float(b["weight_decay"])
    if name == "adamw":
        return optax.adamw(lr, b1=b["b1"], b2=b["b2"], weight_decay=wd, mask=decay_mask)
    if name == "adam":
        tx = optax.adam(lr, b1=b["b1"], b2=b["b2"])
        # torch Adam's weight_decay: L2 on the gradient, before the moments (adamw decouples it)
        return optax.chain(optax.add_decayed_weights(wd, mask=decay_mask), tx) if wd else tx
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(wd, mask=decay_mask),
            optax.sgd(lr, momentum=b["momentum"], nesterov=bool(b["nesterov"])),
        )
    if name == "lars":
        # decay_bias / trust_ratio_all: VISSL's regularize_bias (BN never decayed) / apex LARC,
        # which adapts every parameter (FALSE's official config); defaults: matrices only.
        wd_mask = not_norm_mask if b["decay_bias"] else decay_mask
        tr_mask = _all_true if b["trust_ratio_all"] else decay_mask
        return optax.lars(
            lr,
            weight_decay=wd,
            weight_decay_mask=wd_mask,
            trust_ratio_mask=tr_mask,
            trust_coefficient=b["trust_coefficient"],
            eps=b["lars_eps"],
            momentum=b["momentum"],
            nesterov=bool(b["nesterov"]),
        )
    raise ConfigError(f"config.optimizer.name={name!r}: expected one of {NAMES}")


def make(block, total_steps: int, *, where: str = "optimizer") -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, schedule)`` of an optimizer block over ``total_steps`` (the chain in the module
    docstring). The block is validated first (:func:`validate`, without the warm-up check);
    ``module_lr_scale`` and ``freeze`` names are checked against the parameters by ``tx.init``."""
    validate(block, where)
    b = _complete(block)
    sched = schedule(block, total_steps)
    tx = _base_optimizer(b, sched)
    if b["grad_clip"]:
        tx = optax.chain(optax.clip_by_global_norm(float(b["grad_clip"])), tx)
    if parse_module_scales(b["module_lr_scale"], where):
        tx = optax.chain(tx, scale_modules(b["module_lr_scale"], where))
    own = {
        name: make(sub, total_steps, where=f"{where}.modules.{name}")[0]
        for name, sub in module_blocks(b, where).items()
    }
    if own:
        # each named top-level module by its own block; "shared" (the chain above) the others
        def module_labels(params):
            unknown = sorted(set(own) - set(params))
            if unknown:
                raise ConfigError(
                    f"config.{where}.modules names {unknown}, which are not parameter modules; "
                    f"modules: {sorted(params)}"
                )
            return {k: jax.tree.map(lambda _, k=k: k if k in own else "shared", v) for k, v in params.items()}

        tx = optax.multi_transform({"shared": tx, **own}, module_labels)
    if parse_freeze(b["freeze"], where):
        # frozen leaves: set_to_zero (no update, no decay, no optimizer moments kept); the
        # chain above only sees the trained leaves (its clip norm is theirs)
        def labels(params):
            return jax.tree.map(lambda f: "frozen" if f else "train", frozen(params, block, where=where))

        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    if b["plateau"]["enabled"]:
        tx = optax.chain(tx, plateau_scale(b["plateau"]["mode"]))  # last: opt_state[-1] is the PlateauState
    return tx, sched
