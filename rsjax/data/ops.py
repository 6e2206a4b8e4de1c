"""The preprocessing ops, ready to use: the op registry (:mod:`rsjax.data.op_registry`:
definitions, recipe parser, pipelines; its docstring lists every op) with both backends'
implementations registered, imported in that order -- the registry imports no implementation,
so there is no import cycle.

    from rsjax.data import ops
    pipe = ops.build("rrc(0.2, 1.0)|flip_rot|normalize", "numpy")
"""

from rsjax.data import augment as _numpy_backend  # noqa: F401  registers the numpy implementations
from rsjax.data import device_augment as _jax_backend  # noqa: F401  registers the jax implementations
from rsjax.data.op_registry import (  # noqa: F401  (the public API, re-exported)
    BACKENDS,
    DEFAULT_AUGMENT,
    DEFAULT_PP_DENSE,
    DETERMINISTIC_OPS,
    LEGACY_KEYS,
    SIZING_OPS,
    Context,
    OpCall,
    Pipeline,
    apply,
    augment_spec,
    backends_of,
    build,
    cached,
    define,
    dense_recipe,
    known_ops,
    parse,
    prep_recipe,
    register,
    spec_from_legacy,
    view_recipe,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_AUGMENT",
    "DEFAULT_PP_DENSE",
    "DETERMINISTIC_OPS",
    "LEGACY_KEYS",
    "SIZING_OPS",
    "Context",
    "OpCall",
    "Pipeline",
    "apply",
    "augment_spec",
    "backends_of",
    "build",
    "cached",
    "define",
    "dense_recipe",
    "known_ops",
    "parse",
    "prep_recipe",
    "register",
    "spec_from_legacy",
    "view_recipe",
]
