"""Multi-host data parallelism with 2 real processes on this machine (DESIGN §2).

Two processes of the CLI (tests/_fault_worker.py = ``python -m rsjax.main`` plus an audit of
the records each process reads and the files it writes) join one JAX job through
``jax.distributed`` (coordinator 127.0.0.1:<free port>, gloo CPU collectives), 4 CPU devices
each = the same 8 global devices as the single-process reference run. One of them is sent
SIGTERM mid-run; both must stop after the same step with one collective checkpoint, which a
single process (8 local devices) then resumes to the end. Checked: losses equal the
single-process run's, each process read only its slice of every global batch, process 1
wrote nothing outside checkpoints/, and the final train state equals the reference's
within float32 tolerance.
"""

from __future__ import annotations

import json
import socket

import _reliability_util as U
import pytest
from conftest import FAST_COMPILE_FLAGS

from rsjax import train
from rsjax.jobs import pretrain


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_in_one(tmp_path_factory, tmp_path):
    synth = U.synth_dir(tmp_path_factory)
    ref = U.reference_run(tmp_path_factory)
    wd, audit = tmp_path / "wd", tmp_path / "audit"
    audit.mkdir()
    port = _free_port()
    procs = []
    try:
        for pid in range(2):
            procs.append(
                U.start(
                    U.cli_overrides(synth),
                    wd,
                    worker=True,
                    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                    JAX_NUM_PROCESSES=2,
                    JAX_PROCESS_ID=pid,
                    JAX_PLATFORMS="cpu",
                    XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {FAST_COMPILE_FLAGS}",
                    RSJAX_TEST_AUDIT=audit,
                    RSJAX_DEBUG_STEP_SLEEP=0.5,
                )
            )
        U.wait_for_step(wd, 1, procs)
        procs[1].send_signal(U.SIGNALS["SIGTERM"])  # only one process is told
        results = [U.finish(p, timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rc, out, err in results:
        assert rc == train.PREEMPTED_EXIT_CODE, (rc, out[-2000:], err[-4000:])
    stop = U.steps(wd)[-1]
    assert 1 <= stop < U.TOTAL_STEPS
    assert f"Stopped by signal on another process at step {stop}" in results[0][1]  # agreed stop

    # Losses of the 2-process run = the 1-process run on the same global batches.
    rows, ref_rows = U.metrics(wd), U.metrics(ref)
    assert [r["step"] for r in rows] == list(range(1, stop + 1))  # one row per step: written once
    U.assert_metrics_equal(rows, ref_rows[:stop], rtol=1e-5)
    if stop in U.steps(ref):
        U.assert_states_equal(U.state_at(wd, stop), U.state_at(ref, stop), rtol=1e-4, atol=1e-6)

    # Each process read exactly its half of every global batch it consumed.
    from rsjax.data import pipeline

    cfg = U.smoke_config(synth).data
    source = pipeline.open_source(cfg, "train")
    plan = pipeline.EpochPlan(pipeline.unit_scene_ids(source), 16, 0, cfg.scenes_per_batch, cfg.samples_per_scene)
    for p in range(2):
        slices = [tuple(plan.batch(b)[8 * p : 8 * (p + 1)].tolist()) for b in range(stop + 20)]
        read = [tuple(json.loads(line)) for line in (audit / f"reads_{p}.jsonl").read_text().splitlines()]
        assert set(slices[:stop]) <= set(read)  # every batch it trained on ...
        assert all(r in slices for r in read), p  # ... and nothing but its own slices (read-ahead too)
    # Only process 0 writes metrics, events, config.json, pictures, TensorBoard.
    assert not (audit / "writes_1.txt").exists(), (audit / "writes_1.txt").read_text()
    written0 = set((audit / "writes_0.txt").read_text().split())
    assert {str(wd.resolve() / n) for n in ("metrics.jsonl", "loss_curve.png")} <= written0
    assert json.loads((wd / "config.json").read_text())["total_steps"] == U.TOTAL_STEPS
    assert len(list((wd / "tb").glob("events*"))) == 1

    # The collectively written checkpoint resumes in one process (8 local devices).
    summary = pretrain.run(U.smoke_config(synth), str(wd))
    assert summary["step"] == U.TOTAL_STEPS
    U.assert_metrics_equal(U.metrics(wd), ref_rows, rtol=1e-4)
    U.assert_states_equal(U.state_at(wd, U.TOTAL_STEPS), U.state_at(ref, U.TOTAL_STEPS), rtol=1e-3, atol=1e-5)
