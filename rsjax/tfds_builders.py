"""The TFDS builders of rsjax under a collision-free name: ``rsjax.tfds_builders.<name>``.

The builders live in the top-level package ``tfds_builders/`` (fixed by the project layout;
``tfds build tfds_builders/<name>`` finds them by folder). That name is generic: another
installed project may own a ``tfds_builders`` package too, and Python would import whichever
comes first on ``sys.path``. Importing through this module checks that the package found is
the one installed beside ``rsjax`` and raises ImportError naming both paths otherwise::

    from rsjax import tfds_builders
    builder_cls = tfds_builders.eurosat_rgb.Builder      # = tfds_builders.eurosat_rgb.Builder
    tfds_builders.names()                                # ('bigearthnet', ..., 'ssl4eo_s12')

Each builder package is imported on first access (importing one registers its TFDS dataset),
and is the same module object as ``tfds_builders.<name>``, so a builder is never registered
twice.
"""

from __future__ import annotations

import importlib
import pathlib
import types

_TOP = "tfds_builders"
_HERE = pathlib.Path(__file__).resolve().parents[1] / _TOP  # installed beside rsjax/


def package() -> types.ModuleType:
    """The top-level ``tfds_builders`` package, checked to be rsjax's own."""
    pkg = importlib.import_module(_TOP)
    paths = [pathlib.Path(p).resolve() for p in getattr(pkg, "__path__", [])]
    if _HERE not in paths:
        raise ImportError(
            f"'import {_TOP}' found {[str(p) for p in paths] or pkg!r}, not rsjax's builders at {_HERE}: "
            f"another installed project provides a package named {_TOP!r}; uninstall it or put {_HERE.parent} "
            "first on sys.path"
        )
    return pkg


def names() -> tuple[str, ...]:
    """Builder packages (folders with an ``__init__.py``, not starting with ``_``)."""
    return tuple(
        sorted(
            p.name
            for p in _HERE.iterdir()
            if p.is_dir() and not p.name.startswith("_") and (p / "__init__.py").is_file()
        )
    )


def __getattr__(name: str) -> types.ModuleType:
    if name.startswith("__") or name not in names():
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}; builders: {', '.join(names())}")
    package()
    return importlib.import_module(f"{_TOP}.{name}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(names()))
