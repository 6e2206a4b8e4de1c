"""Test setup: 8 fake CPU devices, set before jax is first imported."""

import os

# 8 fake CPU devices, and XLA:CPU flags that cut compile time, which dominates this suite on a
# 2-core machine (numerics stay within float32 rounding): backend optimisation level 0 (halves
# it) and the older, non-MLIR fusion emitters (halves it again: 4.4 s -> 2.1 s for the SwiMDiff
# smoke step; the optional flag only where this jaxlib knows it, as XLA aborts on unknown flags).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"
_OPTIONAL_FLAG = "--xla_cpu_use_fusion_emitters=false"


# rsjax's own probe (rsjax/backend.py: one subprocess per flag and jaxlib version, cached on
# disk). Importing rsjax here also applies rsjax's XLA:CPU flags in every test process before
# any test can start a backend, so all workers run the same XLA configuration.
from rsjax import backend as _rsjax_backend  # noqa: E402

if _rsjax_backend.xla_knows(_OPTIONAL_FLAG):
    FAST_COMPILE_FLAGS += " " + _OPTIONAL_FLAG
_flags = os.environ.get("XLA_FLAGS", "")
for _f in FAST_COMPILE_FLAGS.split():
    if _f.split("=")[0] not in _flags:
        _flags += " " + _f
os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Identical programs (the same smoke config trained, stopped and resumed; the same encoder in
# several jobs) compile once per test session: XLA's persistent compilation cache.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"rsjax-test-xla-cache-{os.getuid()}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data (real remote-sensing files); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def load_config(name: str, arg: str | None = None):
    """``configs/<name>.py:<arg>`` through THE config loader, :func:`configs.common.load` (``name``
    with or without ``.py``; ``arg`` as after the colon on the command line, e.g. ``"smoke"`` or
    ``"smoke,total_steps=3"``)."""
    from configs import common

    return common.load(name, arg)


@pytest.fixture
def config_loader():
    """:func:`load_config` as a fixture, for tests that prefer fixtures to imports."""
    return load_config


# The modules whose tests run longest (each over ~30 s in all, or one test over ~20 s;
# 2026-12-07 durations), started first: pytest-xdist hands out tests in collection order and
# steals from the busier worker at the end, so long tests at the front overlap the rest of the
# suite instead of running alone at its end. Whole modules move, so module-scoped fixtures are
# still built once. Order only: a stale entry costs time, never a result.
_LONG_MODULES = (
    "test_study_dubai.py",
    "test_multihost.py",
    "test_study_oscd.py",
    "test_reference_moco.py",
    "test_noisy_label.py",
    "test_train.py",
    "test_eval_jobs.py",
    "test_conv.py",
    "test_faults.py",
    "test_reliability.py",
    "test_notebooks.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a module stays
