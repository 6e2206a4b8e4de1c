"""Throughput benchmark of a config's train step, optionally beside the PyTorch peer.

    python -m rsjax.bench --config=configs/simclr.py:bench [--steps=N] [--peer=torch] [--out=bench.json]

Prints and writes JSON with: images/s (``images_per_s`` counts BOTH views of every pair,
as the PyTorch peer does; ``pairs_per_s`` = images_per_s / 2), step time median and spread
(p10/p90) over the timed steps after warm-up, compile time (first call, reported
separately), model FLOPs per step from XLA's cost analysis and the utilisation against the
device's peak (bf16 dense), peak device memory, and the device name. Input: random views
already on device (what the peer times), or with ``--input=device_augment`` random raw
uint8 images augmented inside the step (the GPU-resident input path).

``--peer=torch`` (needs CUDA torch + torchvision) times the peer in the same process: a
torchvision ResNet with channels_last, bf16 autocast and torch.compile (``--peer_compile``),
the same SimCLR-style step (two views, NT-Xent, SGD), same batch and resolution.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
_CONFIG = None


def _define_flags():
    """Flags exist only when this module runs as a program, so importing it (tests,
    notebooks) never clashes with ``rsjax.main``'s ``--config``."""
    global _CONFIG
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py[:variant]).")
    flags.DEFINE_integer("steps", 20, "Timed steps.")
    flags.DEFINE_integer("warmup", 3, "Untimed steps after the compiling call.")
    flags.DEFINE_enum("peer", "none", ["none", "torch"], "Also time the PyTorch peer in this process.")
    flags.DEFINE_bool("peer_compile", True, "torch.compile the peer step.")
    flags.DEFINE_enum("input", "views", ["views", "device_augment"], "Input of the timed step.")
    flags.DEFINE_string("out", "", "Write the JSON here (default: print only).")
    flags.mark_flags_as_required(["config"])

# Dense bf16 peak FLOP/s (no sparsity) by device kind substring.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "v5e": 197e12, "v4": 275e12}


def peak_flops(kind: str):
    for k, v in PEAK_FLOPS.items():
        if k.lower() in kind.lower():
            return v
    return None


def _percentile(xs, q):
    import numpy as np

    return float(np.percentile(np.asarray(xs), q))


def step_flops(config, step_fn, state, batch) -> float:
    """Model FLOPs of one train step (matmuls + convolutions, forward and backward)."""
    import jax

    from rsjax import flops as flops_lib

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, batch))
    count = step_fn.trace_count
    try:
        return flops_lib.count_flops(step_fn, *abstract)
    finally:
        step_fn.trace_count = count  # counting traces the step once more; not a recompilation


def bench_rsjax(config, *, steps: int, warmup: int, input_mode: str) -> dict:
    import jax
    import numpy as np

    from rsjax import methods, train
    from rsjax import sharding as shd

    mesh = shd.make_mesh()
    shd.check_batch_divisible(config.batch_size, mesh)
    if input_mode == "device_augment":
        config.data.device_resident = True
    method = methods.get_method(config)
    tx = train.make_optimizer(config)
    state = train.create_state(method, tx, config, mesh)
    step_fn = train.make_train_step(method, tx, config)
    p_step = train.jit_train_step(step_fn, mesh)
    b, s, c = config.batch_size, config.data.image_size, config.model.in_channels
    rng = np.random.default_rng(0)
    if input_mode == "device_augment":
        batch = {"image": rng.integers(0, 255, (b, s, s, c), dtype=np.uint8),
                 "label": np.zeros((b,), np.int32), "scene_id": np.arange(b, dtype=np.int32) // 2}
    else:
        batch = {"view1": rng.standard_normal((b, s, s, c), dtype=np.float32),
                 "view2": rng.standard_normal((b, s, s, c), dtype=np.float32),
                 "label": np.zeros((b,), np.int32), "scene_id": np.arange(b, dtype=np.int32) // 2}
    batch = jax.device_put(batch, shd.data_sharded(mesh))

    lowered = p_step.lower(state, batch)
    flops = step_flops(config, step_fn, state, batch)
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    for _ in range(warmup):
        state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    med = _percentile(times, 50)
    dev = jax.devices()[0]
    kind = dev.device_kind
    n_dev = jax.device_count()
    peak = peak_flops(kind)
    try:
        mem = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU has none
        mem = {}
    return {
        "framework": "rsjax",
        "method": config.method,
        "model": config.model.name,
        "batch_size": b,
        "image_size": s,
        "dtype": config.get("dtype", "float32"),
        "input": input_mode,
        "images_per_s": 2 * b / med,
        "pairs_per_s": b / med,
        "step_ms_median": 1e3 * med,
        "step_ms_p10": 1e3 * _percentile(times, 10),
        "step_ms_p90": 1e3 * _percentile(times, 90),
        "compile_s": compile_s,
        "flops_per_step": flops,
        "mfu": (flops / med / (peak * n_dev)) if (peak and flops) else None,
        "peak_memory_gb": mem.get("peak_bytes_in_use", 0) / 2**30 if mem else None,
        "device": kind,
        "num_devices": n_dev,
        "final_loss": float(m["loss"]),
    }


def main(argv):
    del argv
    config = _CONFIG.value
    res = {"date": time.strftime("%Y-%m-%d"), "rsjax": bench_rsjax(config, steps=FLAGS.steps, warmup=FLAGS.warmup,
                                                                   input_mode=FLAGS.input)}
    if FLAGS.peer == "torch":
        from rsjax import bench_peer

        peer = bench_peer.torch_simclr_step(
            arch=config.model.name, batch_size=config.batch_size, image_size=config.data.image_size,
            in_channels=config.model.in_channels, steps=FLAGS.steps, warmup=FLAGS.warmup,
            compile_=FLAGS.peer_compile)
        res["peer"] = peer
        if peer.get("images_per_s"):
            res["ratio_rsjax_over_peer"] = res["rsjax"]["images_per_s"] / peer["images_per_s"]
    r = res["rsjax"]
    line = (f"rsjax {r['method']} {r['model']} b{r['batch_size']} {r['image_size']}px {r['dtype']} "
            f"[{r['input']}] on {r['num_devices']}x {r['device']}: {r['images_per_s']:,.0f} img/s (both views), "
            f"step {r['step_ms_median']:.2f} ms (p10 {r['step_ms_p10']:.2f}, p90 {r['step_ms_p90']:.2f}), "
            f"compile {r['compile_s']:.1f} s")
    if r["mfu"] is not None:
        line += f", MFU {r['mfu']:.1%}"
    if r["peak_memory_gb"] is not None:
        line += f", peak mem {r['peak_memory_gb']:.1f} GiB"
    print(line)
    if "peer" in res:
        p = res["peer"]
        print(f"peer torch {p.get('mode')}: {p.get('images_per_s', float('nan')):,.0f} img/s; "
              f"ratio rsjax/peer = {res.get('ratio_rsjax_over_peer', float('nan')):.2f}x")
    if FLAGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        with open(FLAGS.out, "w") as f:
            json.dump(res, f, indent=2)
    print(json.dumps(res))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
