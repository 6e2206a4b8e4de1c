"""The versions of what rsjax runs on, checked against what ``pyproject.toml`` declares.

    python -m rsjax.versions            # one line: python, jax, jaxlib, flax, optax, orbax, ...
    python -m rsjax.versions --check    # the same line; exit 3 naming each package out of range

For a machine whose image was not installed from rsjax's ``pyproject.toml`` (a lent GPU
machine: ``.ci/device/*.sh`` print this line first and stop before any work on a mismatch,
so a device window is never spent on a run that fails later, e.g. flax <= 0.12.8 on jax >= 0.11).
The ranges are read from the checkout's ``pyproject.toml`` (markers such as
``python_version < '3.12'`` evaluated for this interpreter), so they cannot drift from it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# Shown on the line (in this order); checked when pyproject.toml names them.
SHOWN = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "chex",
    "ml-collections",
    "grain",
    "array_record",
    "tensorflow-datasets",
    "numpy",
    "torch",
)
PYPROJECT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
MISMATCH_EXIT = 3
# Without these nothing runs; another declared package that is missing is only reported (e.g. an
# image without tensorflow-datasets still runs jobs that read class folders).
ESSENTIAL = ("jax", "flax", "optax", "orbax-checkpoint", "ml-collections", "grain", "numpy", "absl-py")


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def line() -> str:
    parts = [f"python {platform.python_version()}"]
    parts += [f"{n} {installed(n) or '-'}" for n in SHOWN]
    return " | ".join(parts)


def requirements(pyproject: str = PYPROJECT) -> list[str]:
    """The ``[project] dependencies`` of ``pyproject`` that apply to this interpreter."""
    with open(pyproject, "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return [d for d in deps if Requirement(d).marker is None or Requirement(d).marker.evaluate()]


def problems(pyproject: str = PYPROJECT, version_of=installed) -> tuple[list[str], list[str]]:
    """``(errors, warnings)``: an installed package outside its declared range or a missing
    :data:`ESSENTIAL` one is an error (``"flax 0.12.8 is not in <0.13,>=0.12.10"``), another
    missing package a warning."""
    errors, warnings = [], []
    essential = {canonicalize_name(n) for n in ESSENTIAL}
    for text in requirements(pyproject):
        req = Requirement(text)
        have = version_of(req.name)
        if have is None:
            (errors if canonicalize_name(req.name) in essential else warnings).append(
                f"{req.name} is not installed (needs {req.specifier or 'any version'})"
            )
        elif req.specifier and not req.specifier.contains(Version(have), prereleases=True):
            errors.append(f"{req.name} {have} is not in {req.specifier}")
    return errors, warnings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rsjax.versions", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--check", action="store_true", help=f"exit {MISMATCH_EXIT} if a package is outside pyproject.toml's range"
    )
    ap.add_argument("--pyproject", default=PYPROJECT)
    a = ap.parse_args(argv)
    print(line(), flush=True)
    if not a.check:
        return 0
    bad, warn = problems(a.pyproject)
    for p in warn:
        print(f"rsjax.versions: warning: {p}", file=sys.stderr)
    for p in bad:
        print(f"rsjax.versions: error: {p} ({a.pyproject})", file=sys.stderr)
    return MISMATCH_EXIT if bad else 0


if __name__ == "__main__":
    sys.exit(main())
