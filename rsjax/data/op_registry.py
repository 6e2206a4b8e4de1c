"""The op registry: preprocessing / augmentation recipes as data, with a numpy and a jax backend.

This module holds the definitions, the parser and the pipelines, and imports no
implementation: the backends (:mod:`rsjax.data.augment`, :mod:`rsjax.data.device_augment`)
import it to register theirs, and :mod:`rsjax.data.ops` imports the three in order. Use
``rsjax.data.ops`` (the registry with every implementation registered).

A recipe is a string of ops separated by ``|`` (the mini-language of big_vision's
``pp/builder.py``), each op a name or a call with Python-literal arguments::

    "rrc(0.2, 1.0)|flip_rot|jitter(0.4, p=0.8)|gray(0.2)|blur(0.5, sigma=(0.1, 1.0))"

:func:`parse` turns it into :class:`OpCall` s (name + the complete, validated parameters);
:func:`build` returns a :class:`Pipeline` for one *backend*:

* ``"numpy"`` -- host, one example at a time: ``pipe(data, rng, ctx)`` with ``data`` a dict
  of per-example arrays (``image`` ``[H, W, C]`` float32, optionally ``mask`` ``[H, W]``,
  ``label``), ``rng`` a ``np.random.Generator``. Every op draws from that one generator in
  recipe order, so a generator seeded from ``(seed, batch, row)`` makes resumable views.
* ``"jax"`` -- device, batched, inside the jitted step: ``pipe(data, key, ctx)`` with ``data``
  a dict of ``[B, ...]`` arrays; op ``i`` draws from ``fold_in(key, i)``.

An op is *defined* once (:func:`define`: its signature, defaults and range checks -- one
meaning per argument) and *implemented* per backend (:func:`register`). A recipe naming an
op that the chosen backend lacks is refused with a :class:`rsjax.errors.ConfigError` naming
the op, the config key and the backends that have it; so are unknown ops, bad arguments and
syntax errors. Deterministic ops (``normalize``, ``ignore``, ``remap``, ``multi_hot``) accept
any leading batch axes on the numpy backend too.

Registered ops (implementations: :mod:`rsjax.data.augment` = numpy,
:mod:`rsjax.data.device_augment` = jax):

=================================================  =======  =========================================
op                                                 backend  what
=================================================  =======  =========================================
``rrc(scale_min=0.2, scale_max=1.0,                np, jax  random resized crop (Inception rule,
ratio=(0.75, 1.333), size=None)``                           antialiased bilinear) to ``size``
                                                            (None: ``ctx.out_size``)
``resize(size=None)``                              np, jax  whole image (device: its region) to size
``flip_rot``                                       np, jax  one of the 8 square symmetries, uniform
                                                            (image and mask alike)
``flip_lr(p=0.5)``                                 np, jax  left-right mirror with probability p
``jitter(strength=0.4, p=0.8, band=0.0,            np, jax  band-agnostic brightness / contrast
saturation=0.0)``                                           (0.8 s), per-band gain, saturation
``gray(p=0.2)``                                    np, jax  all bands -> their mean, probability p
``blur(p=0.5, sigma=(0.1, 1.0))``                  np, jax  Gaussian blur, sigma ~ U(sigma) px
``normalize(keys=("image",))``                     np, jax  ``(x / scale - mean) / std`` of
                                                            ``ctx.info`` (the dataset registry)
``crop_flip(size=0, augment=True)``                np       paired random window + flip + rot90
                                                            for image(s) and mask alike
``ignore(value)``                                  np       stored mask -> int32 labels, -1 ignore
``remap(class_map)``                               np       label -> class_map[label]; -1 stays
``multi_hot(num_classes)``                         np       mask [..., H, W] -> multi-hot [..., K]
=================================================  =======  =========================================

The draws of each numpy op are exactly those of the former fixed recipe
(:func:`rsjax.data.augment.photometric_jitter` etc.), so :data:`DEFAULT_AUGMENT` makes the
same host views as before for the same seed.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping, Optional

from rsjax.errors import ConfigError

BACKENDS = ("numpy", "jax")

#: Today's default pretraining view recipe (SimCLR / MoCo v2 without the RGB-only parts).
DEFAULT_AUGMENT = "rrc(0.2, 1.0)|flip_rot|jitter(0.4, p=0.8)|blur(0.5, sigma=(0.1, 1.0))"

#: Ops that set the view size (a pretraining recipe starts with one of them).
SIZING_OPS = ("rrc", "resize")

#: Ops that draw no random numbers: the only ones a preparation recipe (``data.pp_eval``) may
#: use, since evaluation inputs must not depend on a seed.
DETERMINISTIC_OPS = ("resize", "normalize", "ignore", "remap", "multi_hot")

#: The dense inputs' recipe (``config.data.pp_dense``: segmentation, change detection and
#: noisy-label pretraining images, on the host and on the device): the registry's normalisation.
DEFAULT_PP_DENSE = "normalize"

#: The former individual ``config.data`` augmentation keys, folded into ``data.augment`` by
#: :func:`spec_from_legacy` (old workdirs / configs), with their former defaults.
LEGACY_KEYS = {
    "crop_scale_min": 0.2,
    "crop_scale_max": 1.0,
    "flip_rot": True,
    "jitter_strength": 0.4,
    "jitter_prob": 0.8,
    "band_jitter": 0.0,
    "saturation": 0.0,
    "gray_prob": 0.0,
    "blur_prob": 0.5,
    "blur_sigma_min": 0.1,
    "blur_sigma_max": 1.0,
}


@dataclasses.dataclass(frozen=True)
class Context:
    """What an op needs besides its arguments and the data.

    Attributes:
      out_size: view side in pixels (``config.data.image_size``) for ``rrc`` / ``resize``.
      info: the dataset's :class:`rsjax.data.registry.DatasetInfo` (``normalize``).
      regions: jax backend only: ``[B, 4]`` float ``(y0, x0, h, w)`` sub-region each view is
        cut from (crops-as-scenes); None = the whole image. The host cuts the region first.
    """

    out_size: Optional[int] = None
    info: Any = None
    regions: Any = None


@dataclasses.dataclass(frozen=True)
class OpCall:
    """One parsed op: its name, the complete validated parameters, and the source text."""

    name: str
    params: tuple[tuple[str, Any], ...]
    text: str

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


_DEFS: dict[str, Callable[..., dict]] = {}
_IMPLS: dict[tuple[str, str], Callable] = {}


def define(name: str):
    """Decorator: ``fn(*args, **kwargs) -> dict`` defines op ``name``: its signature (Python
    defaults), range checks (raise ValueError) and the complete parameter dict."""

    def deco(fn):
        if name in _DEFS:
            raise KeyError(f"op {name!r} is already defined")
        _DEFS[name] = fn
        return fn

    return deco


def register(name: str, backend: str):
    """Decorator: implementation of op ``name`` for ``backend``.

    numpy: ``fn(data: dict, rng: np.random.Generator, ctx: Context, **params) -> dict``;
    jax: ``fn(data: dict, key: jax.Array, ctx: Context, **params) -> dict`` (batched)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends: {BACKENDS}")

    def deco(fn):
        if (name, backend) in _IMPLS:
            raise KeyError(f"op {name!r} already has a {backend} implementation")
        _IMPLS[(name, backend)] = fn
        return fn

    return deco


def backends_of(name: str) -> tuple[str, ...]:
    return tuple(b for b in BACKENDS if (name, b) in _IMPLS)


def known_ops() -> tuple[str, ...]:
    return tuple(sorted(_DEFS))


def _parse_one(text: str, key: str) -> tuple[str, tuple, dict]:
    """``"name"`` or ``"name(args, kw=...)"`` with literal arguments (big_vision's parse_name)."""
    try:
        expr = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise ConfigError(f"config.{key}: cannot parse op {text!r}: {e.msg}") from None
    if isinstance(expr, ast.Name):
        return expr.id, (), {}
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
        try:
            args = tuple(ast.literal_eval(a) for a in expr.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in expr.keywords}
        except ValueError:
            raise ConfigError(
                f"config.{key}: op {text!r}: arguments must be Python literals (numbers, strings, tuples)"
            ) from None
        if None in kwargs:
            raise ConfigError(f"config.{key}: op {text!r}: **kwargs are not supported")
        return expr.func.id, args, kwargs
    raise ConfigError(f"config.{key}: {text!r} is not an op (a name or a call such as rrc(0.2, 1.0))")


def parse(spec: str, *, key: str = "data.augment", backend: Optional[str] = None) -> tuple[OpCall, ...]:
    """Parses and validates a recipe; with ``backend``, refuses ops that backend lacks.

    Raises:
      ConfigError naming ``config.<key>`` and the op: syntax errors, unknown ops, bad or
      out-of-range arguments, an op without an implementation for ``backend``.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"config.{key}={spec!r}: must be an op string such as {DEFAULT_AUGMENT!r}")
    calls = []
    for text in (t.strip() for t in spec.split("|")):
        if not text:
            continue
        name, args, kwargs = _parse_one(text, key)
        if name not in _DEFS:
            raise ConfigError(f"config.{key}: unknown op {name!r} in {text!r}; known ops: {', '.join(known_ops())}")
        fn = _DEFS[name]
        try:
            bound = inspect.signature(fn).bind(*args, **kwargs)
        except TypeError as e:
            raise ConfigError(f"config.{key}: op {text!r}: {e} (signature {name}{inspect.signature(fn)})") from None
        try:
            params = fn(*bound.args, **bound.kwargs)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"config.{key}: op {text!r}: {e}") from None
        if backend is not None and (name, backend) not in _IMPLS:
            have = backends_of(name)
            raise ConfigError(
                f"config.{key}: op {name!r} has no {backend} implementation (backends that have it: "
                f"{', '.join(have) or 'none'}); "
                + ("the host pipeline (data.device_resident=False) has it" if "numpy" in have else "choose another op")
            )
        calls.append(OpCall(name, tuple(sorted(params.items())), text))
    return tuple(calls)


class Pipeline:
    """The ops of a recipe for one backend, applied in order (picklable for grain workers)."""

    def __init__(self, calls: tuple[OpCall, ...], backend: str, spec: str = ""):
        self.calls, self.backend, self.spec = tuple(calls), backend, spec

    def __call__(self, data: dict, rng_or_key, ctx: Context = Context()) -> dict:
        data = dict(data)
        if self.backend == "numpy":
            for call in self.calls:
                data = _IMPLS[(call.name, "numpy")](data, rng_or_key, ctx, **call.kwargs)
            return data
        import jax  # only for the jax backend: the numpy pipelines (grain workers) never import it

        for i, call in enumerate(self.calls):
            # key None: deterministic recipes only (normalize, resize); a random op then fails loudly
            k = None if rng_or_key is None else jax.random.fold_in(rng_or_key, i)
            data = _IMPLS[(call.name, "jax")](data, k, ctx, **call.kwargs)
        return data

    def image(self, img, rng_or_key, ctx: Context = Context()):
        """Shorthand: the recipe applied to ``{"image": img}``, returning the image."""
        return self({"image": img}, rng_or_key, ctx)["image"]

    def on_keys(self, data: dict, keys, ctx: Context = Context()) -> dict:
        """A deterministic recipe applied to each of ``keys`` of ``data`` as its image (the two
        dates of a change pair, say); the other entries pass through unchanged."""
        return {k: self.image(v, None, ctx) if k in keys else v for k, v in data.items()}

    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.calls)

    def __repr__(self):
        return f"Pipeline({self.spec!r}, backend={self.backend!r})"


def build(spec: str, backend: str, *, key: str = "data.augment") -> Pipeline:
    """:func:`parse` + the :class:`Pipeline` of ``backend`` (``numpy`` or ``jax``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends: {BACKENDS}")
    return Pipeline(parse(spec, key=key, backend=backend), backend, spec)


@functools.lru_cache(maxsize=256)
def cached(spec: str, backend: str = "numpy", key: str = "ops") -> Pipeline:
    """:func:`build`, memoized (library code that applies a fixed recipe per example)."""
    return build(spec, backend, key=key)


def apply(
    spec: str, data: dict, rng_or_key=None, ctx: Context = Context(), *, backend: str = "numpy", key: str = "ops"
) -> dict:
    """One-off: ``build(spec, backend)(data, rng_or_key, ctx)`` (deterministic ops need no rng)."""
    return cached(spec, backend, key)(data, rng_or_key, ctx)


def view_recipe(spec: str, backend: str, *, key: str = "data.augment") -> Pipeline:
    """A pretraining view recipe: like :func:`build`, and the first op must set the view size
    (``rrc`` or ``resize``), which is also where the device path honours crops-as-scenes regions."""
    pipe = build(spec, backend, key=key)
    if not pipe.calls or pipe.calls[0].name not in SIZING_OPS:
        raise ConfigError(
            f"config.{key}={spec!r}: a view recipe starts with an op that sets the view size "
            f"({' or '.join(SIZING_OPS)}), e.g. {DEFAULT_AUGMENT!r}"
        )
    return pipe


@functools.lru_cache(maxsize=64)
def prep_recipe(spec: str, backend: str = "numpy", *, key: str = "data.pp_eval") -> Pipeline:
    """A preparation recipe (evaluation inputs): like :func:`build`, memoized, and every op
    deterministic (:data:`DETERMINISTIC_OPS`); a random op is refused naming it and the key."""
    pipe = build(spec, backend, key=key)
    random_ops = [c.name for c in pipe.calls if c.name not in DETERMINISTIC_OPS]
    if random_ops:
        raise ConfigError(
            f"config.{key}={spec!r}: {random_ops} draw random numbers; a preparation recipe "
            f"uses only {list(DETERMINISTIC_OPS)}, e.g. 'normalize|resize'"
        )
    return pipe


@functools.lru_cache(maxsize=64)
def dense_recipe(spec: str, backend: str = "numpy", *, key: str = "data.pp_dense") -> Pipeline:
    """A dense inputs' recipe: a :func:`prep_recipe` without the ops that change the image size
    (the masks and change maps keep the images' grid); refused naming the op and the key."""
    pipe = prep_recipe(spec, backend, key=key)
    sizing = [c.name for c in pipe.calls if c.name in SIZING_OPS]
    if sizing:
        raise ConfigError(
            f"config.{key}={spec!r}: {sizing} change the image size, which the masks must keep; "
            f"a dense recipe uses per-pixel ops, e.g. {DEFAULT_PP_DENSE!r}"
        )
    return pipe


def augment_spec(data: Any, key: str = "data.augment") -> str:
    """The view recipe of a ``config.data`` block: ``data.augment``, or -- for configs and
    workdirs written before it existed -- the recipe of the former individual keys
    (:data:`LEGACY_KEYS`, folded by :func:`spec_from_legacy`). Both spellings at once
    (a non-default ``augment`` and a former key) are refused, naming the keys."""
    has = (lambda k: k in data) if isinstance(data, Mapping) or hasattr(data, "keys") else (lambda k: hasattr(data, k))
    get = (lambda k: data[k]) if isinstance(data, Mapping) or hasattr(data, "keys") else (lambda k: getattr(data, k))
    spec = get("augment") if has("augment") else None
    legacy = {k: get(k) for k in LEGACY_KEYS if has(k)}
    if legacy:
        if spec not in (None, "", DEFAULT_AUGMENT):
            raise ConfigError(
                f"config.{key}={spec!r} and the former augmentation key(s) "
                f"{', '.join('data.' + k for k in sorted(legacy))}: give the recipe once, in "
                f"config.{key} (e.g. {spec_from_legacy(legacy)!r})"
            )
        names = ", ".join(f"data.{k}={v!r}" for k, v in sorted(legacy.items()))
        try:
            spec = spec_from_legacy(legacy)
            parse(spec, key=key)
        except (ConfigError, TypeError, ValueError) as e:
            raise ConfigError(
                f"config.{names}: the former augmentation keys (now config.{key}) give no valid recipe: {e}"
            ) from None
        return spec
    return spec or DEFAULT_AUGMENT


def spec_from_legacy(values: Mapping[str, Any]) -> str:
    """The ``data.augment`` recipe equivalent to the former individual keys (:data:`LEGACY_KEYS`;
    missing ones take their former defaults). The numpy draws are exactly the former ones."""
    v = {k: values.get(k, d) for k, d in LEGACY_KEYS.items()}
    for k, d in LEGACY_KEYS.items():
        if v[k] is None:
            v[k] = d
    ops = [f"rrc({float(v['crop_scale_min'])!r}, {float(v['crop_scale_max'])!r})"]
    if v["flip_rot"]:
        ops.append("flip_rot")
    s, band, sat = float(v["jitter_strength"]), float(v["band_jitter"]), float(v["saturation"])
    if s > 0 or band > 0 or sat > 0:
        extra = (f", band={band!r}" if band > 0 else "") + (f", saturation={sat!r}" if sat > 0 else "")
        ops.append(f"jitter({s!r}, p={float(v['jitter_prob'])!r}{extra})")
    if float(v["gray_prob"]) > 0:
        ops.append(f"gray({float(v['gray_prob'])!r})")
    if float(v["blur_prob"]) > 0:
        ops.append(
            f"blur({float(v['blur_prob'])!r}, sigma=({float(v['blur_sigma_min'])!r}, {float(v['blur_sigma_max'])!r}))"
        )
    return "|".join(ops)


# ----------------------------------------------------------------------------------------
# Definitions: signature, defaults and range checks of every op (backend-independent)
# ----------------------------------------------------------------------------------------


def _prob(p, what="p"):
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{what}={p} must be in [0, 1]")
    return p


def _size(size):
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"size={size!r} must be a positive integer (or None: config.data.image_size)")
    return size


def _range(r, what, lo_ok: Callable[[float], bool], msg: str):
    try:
        a, b = (float(x) for x in r)
    except (TypeError, ValueError):
        raise ValueError(f"{what}={r!r} must be a pair (min, max)") from None
    if not (lo_ok(a) and a <= b):
        raise ValueError(f"{what}={r!r}: {msg}")
    return (a, b)


@define("rrc")
def _def_rrc(scale_min=0.2, scale_max=1.0, ratio=(3 / 4, 4 / 3), size=None):
    scale = _range((scale_min, scale_max), "(scale_min, scale_max)", lambda a: a > 0, "need 0 < min <= max <= 1")
    if scale[1] > 1.0:
        raise ValueError(f"scale_max={scale[1]} must be <= 1 (a fraction of the image area)")
    ratio = _range(ratio, "ratio", lambda a: a > 0, "need 0 < min <= max (aspect ratio width / height)")
    return {"scale": scale, "ratio": ratio, "size": _size(size)}


@define("resize")
def _def_resize(size=None):
    return {"size": _size(size)}


@define("flip_rot")
def _def_flip_rot():
    return {}


@define("flip_lr")
def _def_flip_lr(p=0.5):
    return {"p": _prob(p)}


@define("jitter")
def _def_jitter(strength=0.4, p=0.8, band=0.0, saturation=0.0):
    strength = float(strength)
    if strength < 0:
        raise ValueError(f"strength={strength} must be >= 0")
    band = float(band)
    if not 0.0 <= band < 1.0:
        raise ValueError(f"band={band} must be in [0, 1): the per-band gain is U(1 - band, 1 + band)")
    return {"strength": strength, "p": _prob(p), "band": band, "saturation": _prob(saturation, "saturation")}


@define("gray")
def _def_gray(p=0.2):
    return {"p": _prob(p)}


@define("blur")
def _def_blur(p=0.5, sigma=(0.1, 1.0)):
    return {"p": _prob(p), "sigma": _range(sigma, "sigma", lambda a: a > 0, "need 0 < min <= max (pixels)")}


@define("normalize")
def _def_normalize(keys=("image",)):
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    return {"keys": keys}


@define("crop_flip")
def _def_crop_flip(size=0, augment=True):
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size={size!r} must be an integer >= 0 (0 = the whole image)")
    return {"size": size, "augment": bool(augment)}


@define("ignore")
def _def_ignore(value=None):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"value={value!r} must be an integer stored mask value or None")
    return {"value": value}


@define("remap")
def _def_remap(class_map):
    cm = tuple(int(c) for c in class_map)
    if any(c < -1 for c in cm):
        raise ValueError(f"class_map={class_map!r}: entries are class ids >= 0 or -1 (ignore)")
    return {"class_map": cm}


@define("multi_hot")
def _def_multi_hot(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes={num_classes!r} must be a positive integer")
    return {"num_classes": num_classes}
