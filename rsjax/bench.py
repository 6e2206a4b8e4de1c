"""Throughput benchmark of a config's train step, optionally beside the PyTorch peer.

    python -m rsjax.bench --config=configs/simclr.py:bench [--steps=N] [--peer=torch] [--out=bench.json]
    python -m rsjax.bench --config=configs/simclr.py:bench --flops_only   # no device work

Prints and writes JSON with: images/s (``images_per_s`` counts BOTH views of every pair,
as the PyTorch peer does; ``pairs_per_s`` = images_per_s / 2), step time median and spread
(p10/p90) over the timed steps after warm-up, compile time (``lower().compile()``, reported
separately), model FLOPs per step (:mod:`rsjax.flops`: matmuls + convolutions of the traced
step, forward and backward) and the utilisation against the device's peak

    MFU = flops_per_step / step_s_median / (peak_flops_per_s * num_devices)

(peak: bf16 dense tensor-core rate from :data:`PEAK_FLOPS`, with its source in the JSON),
peak device memory, and the device name. Input: random views already on device (what the
peer times), or with ``--input=device_augment`` random raw uint8 images augmented inside
the step (the GPU-resident input path).

``--out=FILE`` writes a results file (``rsjax.results.save``: strict JSON, atomic) of the form
``{"kind": "rsjax.bench/v1", "rows": [row, ...]}``; each row holds the config, its
provenance (``rsjax.results.provenance``: command, commit, date, machine) and the measured
fields. If FILE already holds a bench payload the row is appended, so a script that benches
several configs into one file keeps every row that finished. ``README.md``'s throughput table
is rendered from ``results/bench_*.json`` by ``rsjax.results`` (``render_bench_table``).

``--peer=torch`` (needs CUDA torch + torchvision) times the peer in the same process: a
torchvision ResNet with channels_last, bf16 autocast and torch.compile (``--peer_compile``),
the same SimCLR-style step (two views, NT-Xent, SGD), same batch and resolution.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import flags
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
    flags.DEFINE_string("out", "", "Write (or append the row to) this results JSON (default: print only).")
    flags.DEFINE_bool("flops_only", False, "Only count the step's model FLOPs (tracing; no compile, no device work).")
    flags.mark_flags_as_required(["config"])

# Dense bf16 peak FLOP/s (no sparsity) by device kind substring, with where the figure comes from.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "v5e": 197e12, "v4": 275e12}
PEAK_SOURCES = {
    "H100": "NVIDIA H100 SXM datasheet: 989 TFLOP/s BF16 dense tensor core (1,979 with 2:4 sparsity)",
    "H200": "NVIDIA H200 SXM datasheet: 989 TFLOP/s BF16 dense tensor core, the same chip rate as H100 SXM",
    "A100": "NVIDIA A100 datasheet: 312 TFLOP/s BF16 dense",
    "L4": "NVIDIA L4 datasheet: 121 TFLOP/s BF16 dense",
    "v5e": "Google Cloud TPU v5e: 197 TFLOP/s BF16 per chip",
    "v4": "Google Cloud TPU v4: 275 TFLOP/s BF16 per chip",
}


def _peak_key(kind: str):
    for k in PEAK_FLOPS:
        if k.lower() in kind.lower():
            return k
    return None


def peak_flops(kind: str):
    """Dense bf16 peak FLOP/s of one device of ``kind`` (``device_kind`` string), or None."""
    k = _peak_key(kind)
    return PEAK_FLOPS[k] if k else None


def peak_source(kind: str):
    k = _peak_key(kind)
    return PEAK_SOURCES.get(k) if k else None


def mfu(flops_per_step, step_s, kind: str, num_devices: int = 1):
    """Model FLOPs utilisation: flops_per_step / step_s / (peak(kind) * num_devices), or None."""
    peak = peak_flops(kind)
    if not (peak and flops_per_step and step_s):
        return None
    return flops_per_step / step_s / (peak * num_devices)


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


def _random_batch(config, input_mode: str) -> dict:
    import numpy as np

    b, s, c = config.batch_size, config.data.image_size, config.model.in_channels
    rng = np.random.default_rng(0)
    if input_mode == "device_augment":
        return {"image": rng.integers(0, 255, (b, s, s, c), dtype=np.uint8),
                "label": np.zeros((b,), np.int32), "scene_id": np.arange(b, dtype=np.int32) // 2}
    return {"view1": rng.standard_normal((b, s, s, c), dtype=np.float32),
            "view2": rng.standard_normal((b, s, s, c), dtype=np.float32),
            "label": np.zeros((b,), np.int32), "scene_id": np.arange(b, dtype=np.int32) // 2}


def config_flops(config, input_mode: str = "views") -> float:
    """Model FLOPs of one train step of ``config`` by tracing alone (abstract state and batch:
    nothing is initialised, compiled or run, so the ResNet-50 / 224 px step counts on a CPU)."""
    import jax
    import numpy as np

    from rsjax import methods, optim, train
    from rsjax.data import input as input_lib

    if input_mode == "device_augment":
        config.data.device_resident = True
    method = methods.get_method(config)
    tx, schedule = optim.make(config.optimizer, config.total_steps)
    state = jax.eval_shape(lambda b: train.init_state(method, tx, b, config.seed), method.sample_batch(2))
    b, s, c = config.batch_size, config.data.image_size, config.model.in_channels
    sds = jax.ShapeDtypeStruct
    if input_mode == "device_augment":
        batch = {"image": sds((b, s, s, c), np.uint8)}
    else:
        batch = {"view1": sds((b, s, s, c), np.float32), "view2": sds((b, s, s, c), np.float32)}
    batch.update(label=sds((b,), np.int32), scene_id=sds((b,), np.int32))
    transform = input_lib.make_batch_transform(config) if input_mode == "device_augment" else None
    return step_flops(config, train.make_train_step(method, tx, schedule, seed=config.seed, batch_transform=transform),
                      state, batch)


def bench_rsjax(config, *, steps: int, warmup: int, input_mode: str) -> dict:
    import jax

    from rsjax import methods, optim, train
    from rsjax import sharding as shd
    from rsjax.data import input as input_lib

    mesh = shd.make_mesh()
    shd.check_batch_divisible(config.batch_size, mesh)
    if input_mode == "device_augment":
        config.data.device_resident = True
    method = methods.get_method(config)
    tx, schedule = optim.make(config.optimizer, config.total_steps)
    state = train.create_state(method, tx, config.seed, mesh)
    transform = input_lib.make_batch_transform(config) if input_mode == "device_augment" else None
    step_fn = train.make_train_step(method, tx, schedule, seed=config.seed, batch_transform=transform)
    p_step = train.jit_train_step(step_fn, mesh)
    b, s = config.batch_size, config.data.image_size
    batch = jax.device_put(_random_batch(config, input_mode), shd.data_sharded(mesh))

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
        "mfu": mfu(flops, med, kind, n_dev),
        "peak_flops_per_s": peak_flops(kind),
        "peak_source": peak_source(kind),
        "peak_memory_gb": mem.get("peak_bytes_in_use", 0) / 2**30 if mem else None,
        "device": kind,
        "num_devices": n_dev,
        "final_loss": float(m["loss"]),
        **({"diffusion_size": int(config.swimdiff.get("diffusion_size", 0))} if "swimdiff" in config else {}),
    }


def _config_arg() -> str:
    """The ``--config=...`` value as given (file[:variant]), for the row's ``config`` field."""
    for a in sys.argv[1:]:
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return "?"


def append_row(path: str, row: dict) -> dict:
    """Adds ``row`` to the bench results file ``path`` (created if missing); returns the payload."""
    from rsjax import results

    payload = {"kind": "rsjax.bench/v1", "rows": []}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("kind") != "rsjax.bench/v1":
            from rsjax.errors import ConfigError

            raise ConfigError(f"--out={path} exists and is not an rsjax.bench/v1 results file")
        payload = old
    payload["rows"].append(row)
    results.save(payload, path)
    return payload


def main(argv):
    del argv
    from rsjax import results

    config = _CONFIG.value
    command = " ".join(["python -m rsjax.bench", *sys.argv[1:]])
    row = {"config": _config_arg(), "input": FLAGS.input, "provenance": results.provenance(command)}
    if FLAGS.flops_only:
        row["flops_per_step"] = config_flops(config, FLAGS.input)
        print(f"{row['config']} [{FLAGS.input}]: {row['flops_per_step'] / 1e12:.4f} TFLOP per step")
        if FLAGS.out:
            append_row(FLAGS.out, row)
        return
    row["rsjax"] = bench_rsjax(config, steps=FLAGS.steps, warmup=FLAGS.warmup, input_mode=FLAGS.input)
    if FLAGS.peer == "torch":
        from rsjax import bench_peer

        peer = bench_peer.torch_simclr_step(
            arch=config.model.name, batch_size=config.batch_size, image_size=config.data.image_size,
            in_channels=config.model.in_channels, steps=FLAGS.steps, warmup=FLAGS.warmup,
            compile_=FLAGS.peer_compile)
        row["peer"] = peer
        if peer.get("images_per_s"):
            row["ratio_rsjax_over_peer"] = row["rsjax"]["images_per_s"] / peer["images_per_s"]
    r = row["rsjax"]
    line = (f"rsjax {r['method']} {r['model']} b{r['batch_size']} {r['image_size']}px {r['dtype']} "
            f"[{r['input']}] on {r['num_devices']}x {r['device']}: {r['images_per_s']:,.0f} img/s (both views), "
            f"step {r['step_ms_median']:.2f} ms (p10 {r['step_ms_p10']:.2f}, p90 {r['step_ms_p90']:.2f}), "
            f"compile {r['compile_s']:.1f} s, {r['flops_per_step'] / 1e12:.3f} TFLOP/step")
    if r["mfu"] is not None:
        line += f", MFU {r['mfu']:.1%}"
    if r["peak_memory_gb"] is not None:
        line += f", peak mem {r['peak_memory_gb']:.1f} GiB"
    print(line)
    if "peer" in row:
        p = row["peer"]
        if "error" in p:
            print(f"peer torch: not timed ({p['error']})")
        else:
            print(f"peer {p.get('framework')} {p.get('mode')}: {p['images_per_s']:,.0f} img/s; "
                  f"ratio rsjax/peer = {row['ratio_rsjax_over_peer']:.2f}x")
    if FLAGS.out:
        append_row(FLAGS.out, row)
    print(json.dumps(results.to_strict_json(row)))


if __name__ == "__main__":
    from rsjax.errors import run_cli

    _define_flags()
    run_cli(main, "rsjax.bench", _CONFIG)
