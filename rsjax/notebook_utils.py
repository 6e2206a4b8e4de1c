"""Small helpers behind the Colab notebooks in ``colab/`` (they only import rsjax).

Environment variables (set by ``tests/test_notebooks.py`` to run every notebook headless on
CPU in seconds; a person running a notebook leaves them unset):

``RSJAX_NOTEBOOK_SMOKE=1``     use the configs' ``smoke`` variant (tiny ResNet, a few steps)
                                instead of the notebook's own choice.
``RSJAX_NOTEBOOK_DATA_DIR``    TFDS data dir (``config.data.data_dir``) instead of the notebook's.
``RSJAX_NOTEBOOK_WORKDIR``     run directory instead of the notebook's.
``RSJAX_NOTEBOOK_OUT``         output folder of the export notebook.
``RSJAX_NOTEBOOK_ALLOW_BACKEND`` comma-separated JAX backends :func:`require_backend` accepts
                                besides the expected one (the suite runs 02 on ``cpu``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np

from configs import (
    common,  # the repository's config package, only where a notebook loads one
)
from rsjax import checkpoint, sharding
from rsjax import workdir as workdir_lib
from rsjax.data import pipeline
from rsjax.models.resnet import create_encoder

SMOKE_ENV = "RSJAX_NOTEBOOK_SMOKE"
DATA_DIR_ENV = "RSJAX_NOTEBOOK_DATA_DIR"
WORKDIR_ENV = "RSJAX_NOTEBOOK_WORKDIR"
OUT_ENV = "RSJAX_NOTEBOOK_OUT"
ALLOW_BACKEND_ENV = "RSJAX_NOTEBOOK_ALLOW_BACKEND"


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------
def smoke_mode() -> bool:
    """True when ``$RSJAX_NOTEBOOK_SMOKE`` is set to 1/true/yes (the test suite)."""
    return os.environ.get(SMOKE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def variant(default: str) -> str:
    """The config variant a notebook runs: ``smoke`` under the test suite, else ``default``."""
    return "smoke" if smoke_mode() else default


def data_dir(default: str | None = None) -> str | None:
    """``$RSJAX_NOTEBOOK_DATA_DIR`` if set, else ``default`` (None = TFDS's default folder)."""
    return os.environ.get(DATA_DIR_ENV) or default


def workdir(default: str) -> str:
    """``$RSJAX_NOTEBOOK_WORKDIR`` if set, else ``default``."""
    return os.environ.get(WORKDIR_ENV) or default


def out_dir(default: str) -> str:
    """``$RSJAX_NOTEBOOK_OUT`` if set, else ``default``."""
    return os.environ.get(OUT_ENV) or default


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------
def load_config(name: str, variant: str | None = None, overrides: Mapping[str, Any] | None = None):
    """``configs/<name>.py:<variant>`` with dotted-key ``overrides`` applied, the same config
    ``python -m rsjax.main --config=configs/<name>.py:<variant> --config.<key>=<value>`` runs
    (``configs.common.load``: the configs package installed with rsjax)."""
    return common.load(name, variant, dict(overrides or {}))


def command_line(name: str, variant: str | None, workdir: str, overrides: Mapping[str, Any] | None = None) -> str:
    """The ``python -m rsjax.main`` command equivalent to :func:`load_config` + training."""
    cfg = f"configs/{name}.py" + (f":{variant}" if variant else "")
    parts = ["python -m rsjax.main", f"--config={cfg}", f"--workdir={workdir}"]
    parts += [f"--config.{k}={v}" for k, v in (overrides or {}).items() if v is not None]
    return " \\\n    ".join(parts)


def summarize_config(
    config,
    keys=(
        "method",
        "model.name",
        "model.in_channels",
        "batch_size",
        "total_steps",
        "stop_after_steps",
        "dtype",
        "optimizer.name",
        "optimizer.lr",
        "data.name",
        "data.data_dir",
        "data.image_size",
        "checkpoint_every",
    ),
) -> str:
    """One ``key = value`` line per (present) key."""
    lines = []
    for k in keys:
        node = config
        try:
            for p in k.split("."):
                node = node[p]
        except (KeyError, AttributeError):
            continue
        lines.append(f"{k:<20} = {node!r}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------
def device_report() -> str:
    """Platform, device count and kinds, process count (what ``jax.devices()`` sees)."""
    devs = jax.devices()
    kinds = sorted({d.device_kind for d in devs})
    return (
        f"platform {jax.default_backend()}: {jax.device_count()} devices ({', '.join(kinds)}), "
        f"{jax.local_device_count()} local, {jax.process_count()} process(es)"
    )


def require_backend(expected: str = "tpu", *, allow_other: bool = False) -> str:
    """Refuses a runtime whose JAX backend is not ``expected`` before a long run starts on it.

    Returns the backend name. ``allow_other=True`` (a person's explicit choice in the notebook)
    or ``$RSJAX_NOTEBOOK_ALLOW_BACKEND`` naming the backend (the headless test) lets it through.

    Raises:
      RuntimeError: another backend, with how to switch the Colab runtime or override.
    """
    backend = jax.default_backend()
    allowed = {expected} | {b.strip() for b in os.environ.get(ALLOW_BACKEND_ENV, "").split(",") if b.strip()}
    if backend in allowed or allow_other:
        return backend
    raise RuntimeError(
        f"this runtime's JAX backend is {backend!r} ({jax.device_count()} device(s)), not {expected!r}: the "
        f"paper-scale run would crawl here. In Colab: Runtime > Change runtime type > {expected.upper()}, then "
        f"run the notebook again from the top (the install cell picks jax[{expected}]). To run on this backend "
        f"anyway set ALLOW_OTHER_BACKEND = True in this cell."
    )


def batch_report(config, mesh) -> str:
    """Checks ``config.batch_size`` against ``mesh`` (ValueError naming the key if it does not divide)
    and says how it is split."""
    sharding.check_batch_divisible(config.batch_size, mesh)
    n = mesh.devices.size
    return (
        f"global batch {config.batch_size} over {n} devices (mesh axis {mesh.axis_names[0]!r}): "
        f"{config.batch_size // n} examples per device"
    )


# --------------------------------------------------------------------------------------
# Run results
# --------------------------------------------------------------------------------------
def read_metrics(workdir: str) -> list[dict]:
    """The rows of ``<workdir>/metrics.jsonl`` (``step``, ``loss``, ...)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: has the run logged a step yet?")
    return workdir_lib.read_jsonl(path)  # a torn last line (run killed mid-write) is ignored


def plot_loss(workdir: str, *, title: str | None = None):
    """A matplotlib Figure of every ``loss*`` column of ``metrics.jsonl`` against step.

    Built without pyplot, so it displays in a notebook (as a cell's last expression) whatever
    matplotlib backend is active, and nothing is left open.
    """
    from matplotlib.figure import Figure  # heavy import (matplotlib): only when drawing

    rows = read_metrics(workdir)
    keys = sorted({k for r in rows for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    fig = Figure(figsize=(6.5, 3.5))
    ax = fig.subplots()
    steps = [r["step"] for r in rows]
    for k in keys:
        # None = a non-finite value (written as null: strict JSON)
        ax.plot(
            steps, [np.nan if r.get(k) is None else r[k] for r in rows], marker="o" if len(rows) < 20 else None, label=k
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or os.path.basename(os.path.abspath(workdir)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def read_eval_report(workdir: str) -> dict:
    """``<workdir>/eval_report.json`` (``{"task", "metrics", "config"}``)."""
    path = os.path.join(workdir, "eval_report.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: the run has not finished its evaluation "
            f"(it is written after total_steps when config.eval.enabled)"
        )
    with open(path) as f:
        return json.load(f)


def checkpoint_steps(workdir: str) -> list[int]:
    """Steps of the complete checkpoints in ``<workdir>/checkpoints`` (empty when none)."""
    if not os.path.isdir(checkpoint.checkpoint_dir(workdir)):
        return []
    return sorted(int(s) for s in checkpoint.make_manager(workdir, read_only=True).all_steps())


# --------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------
def sample_images(workdir: str, n: int = 8, split: str | None = None) -> np.ndarray:
    """``n`` standardized images (NHWC float32) of the run's dataset, the encoder's input."""
    config = checkpoint.read_config(workdir)  # completed with the defaults of keys added since
    data_cfg = config.data
    split = split or config.get("eval", {}).get("test_split", "test")
    x, _ = pipeline.eval_arrays(data_cfg, split, limit=n)
    return np.asarray(x, np.float32)


def flax_features(workdir: str, images: np.ndarray, *, step: int | None = None) -> np.ndarray:
    """Pooled eval-mode features ``[N, C]`` of the run's encoder (checkpoint ``step``, latest if
    None) computed by the Flax model, the values an export must reproduce."""
    params, batch_stats, meta = checkpoint.load_encoder(workdir, step)
    model = create_encoder(meta["arch"], stem=meta.get("stem", "standard"))
    out = sharding.batched_predict(
        lambda v, x: model.apply(v, x, train=False),
        {"params": params, "batch_stats": batch_stats},
        np.asarray(images, np.float32),
        batch_size=64,
        desc="features",
        progress=False,
    )
    return np.asarray(out, np.float32)
