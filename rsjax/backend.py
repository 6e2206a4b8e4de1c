"""XLA:CPU settings rsjax applies when it is imported, before JAX starts its CPU backend.

``--xla_cpu_experimental_ynn_fusion_type=`` (an empty list) keeps XLA:CPU from handing dots and
convolutions to its YNNPACK library fusions, so they run on XLA's own (Eigen) kernels: on this
project's 2-core CPU (AMD EPYC, jax 0.10.2) YNNPACK's convolutions of few channels (a 7x7 stem from
3 bands to 32 maps: 31 ms vs 9 ms with a 4th zero band) and its 3x3 weight gradients are slower
than Eigen's; train steps under ``model.conv=auto`` ran 1.03-1.7x faster without them
(``docs/performance.md``, issue 23, item 3).

Rules: only flags this jaxlib knows are added (XLA aborts on an unknown flag; each flag is
probed once in a subprocess and the answer cached per jaxlib version under
``$XDG_CACHE_HOME/rsjax`` or ``~/.cache/rsjax``); a flag the user's ``XLA_FLAGS`` already names is
left as the user set it; nothing is added once JAX's backends are initialized (XLA reads the
flags then) or when ``RSJAX_CPU_XLA_FLAGS=0``. The flags only touch the CPU backend (GPU and TPU
programs are unaffected); :func:`applied` says what this process got.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from importlib.metadata import version

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)
_APPLIED: list[str] = []


def _cache_file() -> str | None:
    try:
        jaxlib = version("jaxlib")
    except Exception:  # noqa: BLE001 - no jaxlib: nothing to probe
        return None
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "rsjax", f"xla_flags-jaxlib-{jaxlib}.json")


def _read_cache(path: str | None) -> dict:
    if not path:
        return {}
    try:
        with open(path) as f:
            return dict(json.load(f))
    except (OSError, ValueError):
        return {}


def _write_cache(path: str | None, known: dict) -> None:
    if not path:
        return
    try:  # atomic: parallel test workers may probe at once
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(known, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: probe again next time


def xla_knows(flag: str) -> bool:
    """Whether this jaxlib's XLA:CPU accepts ``flag`` (subprocess probe, cached per jaxlib version)."""
    path = _cache_file()
    known = _read_cache(path)
    if flag in known:
        return bool(known[flag])
    env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu", "RSJAX_CPU_XLA_FLAGS": "0"}
    try:
        ok = (
            subprocess.run(
                [sys.executable, "-c", "import jax; jax.devices('cpu')"], env=env, capture_output=True, timeout=300
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False
    known[flag] = ok
    _write_cache(path, known)
    return ok


def _backends_initialized() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import (  # only once jax is imported: this module sets flags before that
            xla_bridge,  # private, but the only way to ask; absent -> assume started
        )

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # noqa: BLE001
        return True


def apply_cpu_flags(flags=CPU_FLAGS) -> list[str]:
    """Adds ``flags`` to ``XLA_FLAGS`` under the rules of the module docstring; returns those added."""
    if os.environ.get("RSJAX_CPU_XLA_FLAGS", "1") == "0" or _backends_initialized():
        return []
    current = os.environ.get("XLA_FLAGS", "")
    added = []
    for flag in flags:
        name = flag.split("=", 1)[0]
        if name in current or not xla_knows(flag):
            continue
        current = f"{current} {flag}".strip()
        added.append(flag)
    if added:
        os.environ["XLA_FLAGS"] = current
        _APPLIED.extend(added)
    return added


def applied() -> list[str]:
    """The flags :func:`apply_cpu_flags` added in this process."""
    return list(_APPLIED)
