"""rsjax.bench runs on CPU (tiny variant) and reports the fields the README table uses."""

import json
import pathlib
import subprocess
import sys

import numpy as np

from rsjax import bench, results


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
    prov = {
        "command": f"python -m rsjax.bench --config={config}",
        "date": "2030-01-02T00:00:00+00:00",
        "machine": {"jax": "9.9"},
    }
    r = {
        "config": config,
        "input": "views",
        "provenance": prov,
        "rsjax": {
            "method": method,
            "model": "resnet50",
            "batch_size": 50,
            "image_size": 224,
            "images_per_s": ips,
            "step_ms_median": 1e3 * 100 / ips,
            "step_ms_p10": 1.0,
            "step_ms_p90": 2.0,
            "compile_s": 12.0,
            "flops_per_step": flops,
            "peak_flops_per_s": 1e14,
            "peak_source": "test peak",
            "peak_memory_gb": 3.25,
            "device": "Test GPU",
            "num_devices": 1,
        },
    }
    if peer:
        r["peer"] = {"framework": "torch 9.1", "mode": "compiled", "images_per_s": peer}
    return r


def test_render_bench_table_by_hand():
    from rsjax import results

    payload = {
        "kind": "rsjax.bench/v1",
        "rows": [
            _row("configs/simclr.py:bench", "simclr", 1000.0, 2e12, peer=500.0),  # 10 steps/s x 2 TFLOP / 100 TFLOP/s
            _row("configs/moco.py:bench", "moco", 800.0, 2e12),  # 8 steps/s -> 16 %
            _row("configs/swimdiff.py:bench", "swimdiff", 600.0, 1e12),
        ],
    }  # 6 steps/s -> 6 %
    text = results.render_bench_table([payload])
    lines = text.splitlines()
    assert lines[0] == "**1x Test GPU, 2030-01-02** (jax 9.9, torch 9.1)"
    simclr, moco, swim = (
        next(ln for ln in lines if f"configs/{m}.py" in ln and ln.startswith("|"))
        for m in ("simclr", "moco", "swimdiff")
    )
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
        "configs/simclr.py:smoke",
        "second",
    ]
    row = payload["rows"][0]
    assert row["flops_per_step"] > 0
    assert row["provenance"]["command"].startswith("python -m rsjax.bench --config=configs/simclr.py:smoke")
    assert {"git", "date", "machine"} <= set(row["provenance"])


def test_cpu_bench_times_each_formulation_and_the_torch_peer_in_one_process(tmp_path):
    """`--conv=lax,auto --peer=torch` on the CPU: one row with both formulations and the torch
    eager peer (rsjax's own model), rendered by the CPU table."""
    out = tmp_path / "bench_cpu_x.json"
    cmd = [
        sys.executable,
        "-m",
        "rsjax.bench",
        "--config=configs/simclr.py:smoke",
        "--conv=lax,auto",
        "--peer=torch",
        "--steps=1",
        "--warmup=0",
        f"--out={out}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(pathlib.Path(__file__).parents[1]))
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(out.read_text())["rows"][0]
    assert set(row["rsjax_conv"]) == {"lax", "auto"} and row["rsjax"]["conv"] == "auto"
    lax_r, auto_r = row["rsjax_conv"]["lax"], row["rsjax_conv"]["auto"]
    assert lax_r["flops_per_step"] == auto_r["flops_per_step"] > 0  # the model's FLOPs, not the formulation's
    assert auto_r["peak_flops_per_s"] and 0 < auto_r["mfu"] < 1 and "FLOP/cycle" in auto_r["peak_source"]
    peer = row["peer"]
    assert peer.get("images_per_s", 0) > 0 and peer["device"] == "cpu" and peer["mode"] == "eager", peer
    assert "cpu_model" in row["provenance"]["machine"]
    table = results.render_bench_cpu_table([json.loads(out.read_text())])
    assert f"**{auto_r['images_per_s'] / lax_r['images_per_s']:.2f}x**" in table
    assert results.render_bench_table([json.loads(out.read_text())]).startswith("_No bench results")


def test_render_bench_cpu_table_by_hand():
    row = {
        "config": "configs/simclr.py:bench_cpu",
        "input": "views",
        "provenance": {
            "command": "python -m rsjax.bench --config=configs/simclr.py:bench_cpu --conv=lax,auto",
            "date": "2030-01-02T00:00:00+00:00",
            "git": {"commit": "abc1234", "dirty": False},
            "machine": {"cpu_model": "Some CPU", "cpu_count": 2, "jax": "0.10.2"},
        },
        "rsjax_conv": {
            "lax": {
                "method": "simclr",
                "model": "resnet18",
                "image_size": 32,
                "batch_size": 64,
                "images_per_s": 100.0,
                "compile_s": 5.0,
                "flops_per_step": 2.8e10,
            },
            "auto": {
                "method": "simclr",
                "model": "resnet18",
                "image_size": 32,
                "batch_size": 64,
                "images_per_s": 500.0,
                "compile_s": 6.0,
                "flops_per_step": 2.8e10,
                "gflops_per_s": 109.4,
                "mfu": 0.656,
                "peak_source": "2 cores x ...",
            },
        },
        "peer": {"framework": "torch 2.13.0+cpu", "mode": "eager", "images_per_s": 550.0},
    }
    row["rsjax"] = row["rsjax_conv"]["auto"]
    text = results.render_bench_cpu_table([{"kind": "rsjax.bench/v1", "rows": [row]}])
    assert "**CPU: Some CPU, 2 cores, 2030-01-02**" in text and "commit abc1234" in text
    assert "| 100 | 500 | **5.00x** | 550 | 0.91x | 28.00 | 109 | 65.6% | 5.0 / 6.0 |" in text
