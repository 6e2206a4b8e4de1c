"""rsjax.bench runs on CPU (tiny variant) and reports the fields the README table uses."""

import pathlib

import numpy as np

from rsjax import bench


def test_bench_smoke_on_cpu():
    from conftest import load_config

    config = load_config("simclr", "smoke")  # the bench is method-agnostic: the cheapest step
    for mode in ("views", "device_augment"):
        r = bench.bench_rsjax(config, steps=2, warmup=1, input_mode=mode)
        assert r["images_per_s"] > 0 and np.isclose(r["images_per_s"], 2 * r["pairs_per_s"])
        assert r["step_ms_p10"] <= r["step_ms_median"] <= r["step_ms_p90"]
        assert r["flops_per_step"] > 0 and r["compile_s"] > 0 and np.isfinite(r["final_loss"])
        assert r["num_devices"] == 8


def test_peak_flops_table():
    assert bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_flops("cpu") is None


def test_peak_and_mfu_by_hand():
    assert bench.peak_flops("NVIDIA H200") == 989e12 and "989" in bench.peak_source("NVIDIA H200")
    # 1.978 TFLOP per step at 0.01 s per step = 197.8 TFLOP/s = 20 % of 989 TFLOP/s.
    assert np.isclose(bench.mfu(1.978e12, 0.01, "NVIDIA H100 80GB HBM3"), 0.2)
    assert np.isclose(bench.mfu(1.978e12, 0.01, "NVIDIA H100", num_devices=2), 0.1)
    assert bench.mfu(1e12, 0.01, "cpu") is None


def _row(config, method, ips, flops, peer=None):
    prov = {"command": f"python -m rsjax.bench --config={config}", "date": "2030-01-02T00:00:00+00:00",
            "machine": {"jax": "9.9"}}
    r = {"config": config, "input": "views", "provenance": prov,
         "rsjax": {"method": method, "model": "resnet50", "batch_size": 50, "image_size": 224,
                   "images_per_s": ips, "step_ms_median": 1e3 * 100 / ips, "step_ms_p10": 1.0, "step_ms_p90": 2.0,
                   "compile_s": 12.0, "flops_per_step": flops, "peak_flops_per_s": 1e14, "peak_source": "test peak",
                   "peak_memory_gb": 3.25, "device": "Test GPU", "num_devices": 1}}
    if peer:
        r["peer"] = {"framework": "torch 9.1", "mode": "compiled", "images_per_s": peer}
    return r


def test_render_bench_table_by_hand():
    from rsjax import results

    payload = {"kind": "rsjax.bench/v1", "rows": [
        _row("configs/simclr.py:bench", "simclr", 1000.0, 2e12, peer=500.0),   # 10 steps/s x 2 TFLOP / 100 TFLOP/s
        _row("configs/moco.py:bench", "moco", 800.0, 2e12),                   # 8 steps/s -> 16 %
        _row("configs/swimdiff.py:bench", "swimdiff", 600.0, 1e12)]}          # 6 steps/s -> 6 %
    text = results.render_bench_table([payload])
    lines = text.splitlines()
    assert lines[0] == "**1x Test GPU, 2030-01-02** (jax 9.9, torch 9.1)"
    simclr, moco, swim = (next(ln for ln in lines if f"configs/{m}.py" in ln and ln.startswith("|"))
                          for m in ("simclr", "moco", "swimdiff"))
    assert "| 20.0% |" in simclr and "500 (compiled)" in simclr and "**2.00x**" in simclr
    assert "| 1,000 |" in simclr and "| 100 (1-2) |" in simclr and "| 2.00 |" in simclr
    assert "| 16.0% |" in moco
    assert "| 6.0% |" in swim and "0.75x of MoCo, 0.60x of SimCLR" in swim
    assert "100 TFLOP/s per device (test peak)" in text


def test_flops_only_appends_rows(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "bench_x.json"
    cmd = [sys.executable, "-m", "rsjax.bench", "--config=configs/simclr.py:smoke", "--flops_only", f"--out={out}"]
    root = pathlib.Path(__file__).resolve().parents[1]
    subprocess.run(cmd, check=True, cwd=root, capture_output=True, timeout=300)
    bench.append_row(str(out), {"config": "second", "input": "views"})
    payload = json.loads(out.read_text())
    assert payload["kind"] == "rsjax.bench/v1" and [r["config"] for r in payload["rows"]] == [
        "configs/simclr.py:smoke", "second"]
    row = payload["rows"][0]
    assert row["flops_per_step"] > 0
    assert row["provenance"]["command"].startswith("python -m rsjax.bench --config=configs/simclr.py:smoke")
    assert {"git", "date", "machine"} <= set(row["provenance"])
