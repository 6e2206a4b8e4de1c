"""Shared by test_reliability.py and test_multihost.py: the smoke run they all compare
against, CLI subprocesses with the test suite's compile cache, and readers of a workdir."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = pathlib.Path(__file__).resolve().parent / "_fault_worker.py"
TOTAL_STEPS = 6  # checkpoints at 2, 4, 6 (smoke: checkpoint_every = 2)
CONFIG = "swimdiff.py"

_CACHE: dict = {}


def load_config(name: str = CONFIG, variant: str = "smoke"):
    from conftest import load_config as load

    return load(name, variant)


def smoke_config(data_dir: str):
    """The run every reliability test compares with (swimdiff :smoke, 6 steps, SGD, no eval,
    the matching-only ablation ``swimdiff.lambda_d=0``).

    Matching only: the state keeps what makes a resume hard (the MoCo queue, the EMA key
    encoder, scene-aware batches whose plan must resume, the global-batch scene matching),
    and the step compiles in well under half the time without the denoiser; every test here
    starts from a fresh process or rebuilds the step several times. The denoiser's random
    streams resume through the same per-step key as every stream (tests/test_train.py).

    SGD rather than the smoke config's AdamW: Adam divides each update by the gradient's own
    magnitude, so a parameter whose gradient is zero in exact arithmetic (a conv bias in
    front of a normalization layer) takes lr-sized steps in the direction of its float32
    rounding noise, and a run with another reduction order (2 processes) ends elsewhere.
    With SGD the parameters of differently parallelised runs agree to float32 tolerance.
    """
    c = load_config()
    c.total_steps = TOTAL_STEPS
    c.optimizer.name = "sgd"
    c.swimdiff.lambda_d = 0.0
    c.data.data_dir = data_dir
    c.eval.enabled = False
    return c


def cli_overrides(data_dir: str) -> list[str]:
    """The same config as :func:`smoke_config`, as command-line flags."""
    return [
        f"--config={REPO}/configs/{CONFIG}:smoke",
        f"--config.total_steps={TOTAL_STEPS}",
        f"--config.data.data_dir={data_dir}",
        "--config.eval.enabled=False",
        "--config.optimizer.name=sgd",
        "--config.swimdiff.lambda_d=0.0",
    ]


def synth_dir(tmp_path_factory) -> str:
    """rs_synthetic/tiny built once per session."""
    if "synth" not in _CACHE:
        from rsjax.data import build

        d = str(tmp_path_factory.mktemp("tfds_rel"))
        build.ensure_built("rs_synthetic", d, config="tiny")
        _CACHE["synth"] = d
    return _CACHE["synth"]


def reference_run(tmp_path_factory) -> pathlib.Path:
    """Workdir of an uninterrupted single-process run of :func:`smoke_config` (once per session)."""
    if "ref" not in _CACHE:
        from rsjax.jobs import pretrain

        wd = tmp_path_factory.mktemp("reference") / "wd"
        summary = pretrain.run(smoke_config(synth_dir(tmp_path_factory)), str(wd))
        assert summary["step"] == TOTAL_STEPS and summary["nonfinite_steps"] == 0
        _CACHE["ref"] = wd
    return _CACHE["ref"]


def env(**extra) -> dict:
    """The test process's environment (8 fake devices, XLA opt level 0, persistent compile
    cache, all set by conftest.py) plus ``extra``: identical programs compile once."""
    e = dict(os.environ)
    e.setdefault("JAX_PLATFORMS", "cpu")
    e["PYTHONUNBUFFERED"] = "1"
    e.update({k: str(v) for k, v in extra.items()})
    return e


def start(args: list[str], workdir, *, worker: bool = False, **extra_env) -> subprocess.Popen:
    """``python -m rsjax.main ARGS --workdir=WORKDIR`` (or the instrumented worker) in the background."""
    cmd = [sys.executable] + ([str(WORKER)] if worker else ["-m", "rsjax.main"]) + args + [f"--workdir={workdir}"]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env(RSJAX_TEST_WORKDIR=workdir, **extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"process did not finish in {timeout} s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    return p.returncode, out, err


def metrics(workdir) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written
                pass
    return rows


def wait_until(cond, procs, what: str, timeout: float = 240) -> None:
    """Polls ``cond()`` until true; fails (killing ``procs``) when a process exits first."""
    t0 = time.time()
    while not cond():
        for p in procs:
            if p.poll() is not None:
                out, err = p.communicate()
                raise AssertionError(
                    f"process exited ({p.returncode}) before {what}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
                )
        if time.time() - t0 > timeout:
            for p in procs:
                p.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_for_step(workdir, step: int, procs) -> None:
    wait_until(
        lambda: any(r["step"] >= step for r in metrics(workdir)),
        procs,
        f"metrics.jsonl of {workdir} to reach step {step}",
    )


def steps(workdir) -> list[int]:
    d = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def state_at(workdir, step: int) -> dict:
    """The whole train state of checkpoint ``step`` as numpy, whatever mesh wrote it."""
    from rsjax import checkpoint as ckpt_lib

    return ckpt_lib.read_state(str(workdir), step)[1]


def assert_states_equal(a: dict, b: dict, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Bit-equal trees, or with ``rtol`` equal within float32 tolerance: each element within
    ``rtol`` of its value or of the largest magnitude in its tensor (rounding differences of
    another reduction order scale with the summed terms, not with a small result)."""
    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in la] == [p for p, _ in lb]
    assert len(la) > 10
    for (path, x), (_, y) in zip(la, lb):
        if rtol or atol:
            scale = float(np.abs(y).max()) if np.size(y) and y.dtype.kind == "f" else 0.0
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol + rtol * scale, err_msg=jax.tree_util.keystr(path))
        else:
            np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def assert_metrics_equal(rows: list[dict], ref_rows: list[dict], rtol: float = 0.0) -> None:
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for r, q in zip(rows, ref_rows):
        assert set(r) == set(q)
        for k in r:
            if rtol:
                np.testing.assert_allclose(r[k], q[k], rtol=rtol, atol=1e-6, err_msg=f"step {r['step']} {k}")
            else:
                assert r[k] == q[k], (r["step"], k, r[k], q[k])


def copy_workdir(src, dst) -> pathlib.Path:
    shutil.copytree(src, dst)
    return pathlib.Path(dst)


SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
