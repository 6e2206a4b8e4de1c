"""rsjax.backend: the XLA:CPU flags rsjax adds at import, and the rules that keep them harmless."""

import os
import subprocess
import sys

import pytest

from rsjax import backend


def _run(code: str, **env) -> str:
    e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "RSJAX_CPU_XLA_FLAGS")}
    e.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300, check=True
    ).stdout.strip()


def test_unknown_flag_is_never_added(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert backend.xla_knows("--xla_cpu_no_such_flag_in_any_xla=1") is False
    assert backend.xla_knows("--xla_cpu_no_such_flag_in_any_xla=1") is False  # cached answer
    assert list((tmp_path / "rsjax").glob("xla_flags-jaxlib-*.json"))


def test_import_adds_known_flags_and_respects_the_user():
    show = "import os, rsjax; print(os.environ.get('XLA_FLAGS', ''))"
    known = [f for f in backend.CPU_FLAGS if backend.xla_knows(f)]
    got = _run(show)
    for f in known:
        assert f in got.split()
    # a flag the user already set keeps the user's value
    name = backend.CPU_FLAGS[0].split("=")[0]
    assert _run(show, XLA_FLAGS=f"{name}=LIBRARY_FUSION_TYPE_DOT").split() == [f"{name}=LIBRARY_FUSION_TYPE_DOT"]
    # opt-out
    assert _run(show, RSJAX_CPU_XLA_FLAGS="0") == ""
    # after JAX started its backend nothing is added (XLA read its flags already)
    assert _run("import jax, os; jax.devices(); import rsjax; print(os.environ.get('XLA_FLAGS', ''))") == ""


@pytest.mark.parametrize("flag", backend.CPU_FLAGS)
def test_flags_keep_results_within_rounding(flag):
    """The flag changes which kernels run, not what they compute: a conv + dot program agrees."""
    if not backend.xla_knows(flag):
        pytest.skip(f"this jaxlib does not know {flag}")
    code = (
        "import jax, jax.numpy as jnp, numpy as np\n"
        "x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16, 16, 3)), jnp.float32)\n"
        "w = jnp.asarray(np.random.default_rng(1).standard_normal((7, 7, 3, 32)), jnp.float32)\n"
        "y = jax.lax.conv_general_dilated(x, w, (2, 2), ((3, 3), (3, 3)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
        "z = y.reshape(4, -1) @ y.reshape(4, -1).T\n"
        "print(repr(np.asarray(z).tolist()))"
    )
    import ast

    import numpy as np

    with_flag = np.asarray(ast.literal_eval(_run(code, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")))
    without = np.asarray(ast.literal_eval(_run(code, RSJAX_CPU_XLA_FLAGS="0", JAX_PLATFORMS="cpu")))
    np.testing.assert_allclose(with_flag, without, rtol=1e-5)
