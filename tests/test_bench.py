"""rsjax.bench runs on CPU (tiny variant) and reports the fields the README table uses."""

import importlib.util
import pathlib

import numpy as np

from rsjax import bench


def test_bench_smoke_on_cpu():
    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "swimdiff.py"
    spec = importlib.util.spec_from_file_location("cfg_swimdiff_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config("smoke")
    for mode in ("views", "device_augment"):
        r = bench.bench_rsjax(config, steps=2, warmup=1, input_mode=mode)
        assert r["images_per_s"] > 0 and np.isclose(r["images_per_s"], 2 * r["pairs_per_s"])
        assert r["step_ms_p10"] <= r["step_ms_median"] <= r["step_ms_p90"]
        assert r["flops_per_step"] > 0 and r["compile_s"] > 0 and np.isfinite(r["final_loss"])
        assert r["num_devices"] == 8


def test_peak_flops_table():
    assert bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_flops("cpu") is None
