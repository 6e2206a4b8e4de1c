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

``--peer=torch`` times the peer in the same process. With CUDA: a torchvision ResNet with
channels_last, bf16 autocast and torch.compile (``--peer_compile``), the same SimCLR-style step
(two views, NT-Xent, SGD), same batch and resolution. On the CPU (no CUDA needed): rsjax's own
model in torch eager (the reference ResNet + rsjax's SimCLR head, float32, NT-Xent at the config's
temperature, SGD), ``torch.set_num_threads`` = the cores JAX uses. The peer implements the
SimCLR step only; other methods' rows say so.

CPU runs (``python -m rsjax.bench --config=configs/simclr.py:bench_cpu --conv=lax,auto --peer=torch``):

* ``--conv=lax,auto`` times the step once per convolution formulation (``model.conv``, see
  :mod:`rsjax.models.conv`) in this process; the row keeps each in ``rsjax_conv`` and the config's
  own choice in ``rsjax``.
* The peak of a CPU is ``cores x clock x FP32 FLOP per cycle`` (:func:`cpu_peak`: the cores this
  process may use, the nominal clock of /proc/cpuinfo, and the vector units the CPU flags imply);
  ``mfu`` is then the fraction of that peak the step achieves (``gflops_per_s`` beside it).
* ``--conv_shapes`` times every convolution shape of the config's step (forward, input and
  kernel gradient) under each formulation and prints which one ``auto`` picks: the evidence for
  :func:`rsjax.models.conv.choose`.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from rsjax import bench_peer, optim, results, train, trainables
from rsjax import flops as flops_lib
from rsjax import sharding as shd
from rsjax.data import input as input_lib
from rsjax.errors import ConfigError
from rsjax.models import conv as conv_lib

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
    flags.DEFINE_bool("peer_compile", None, "torch.compile the peer step (default: on CUDA yes, on the CPU no: eager).")
    flags.DEFINE_list(
        "conv",
        [],
        "Convolution formulations to time in this run (model.conv), e.g. lax,auto; default: the config's own.",
    )
    flags.DEFINE_bool(
        "conv_shapes",
        False,
        "Time every convolution shape of the config's step under each "
        "formulation (forward + both gradients) instead of the step.",
    )
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


def cpu_peak() -> tuple[float | None, str]:
    """(peak FP32 FLOP/s, how it was computed) of the CPU cores this process may use.

    cores (``os.sched_getaffinity``) x nominal clock (``cpu MHz`` of /proc/cpuinfo; turbo not
    counted) x FP32 FLOP per cycle per core from the vector units: AVX-512 on Intel = 2 x 512-bit
    FMA = 64; AVX-512 on AMD (Zen 4 runs it on 2 x 256-bit FMA pipes) and AVX2 + FMA = 32; else 16.
    """
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    info.setdefault(k.strip(), v.strip())
    except OSError:
        return None, "no /proc/cpuinfo"
    try:
        mhz = float(info.get("cpu MHz", "nan"))
    except ValueError:
        mhz = float("nan")
    if not mhz == mhz:  # NaN
        return None, "no clock in /proc/cpuinfo"
    flags_ = set(info.get("flags", "").split())
    amd = info.get("vendor_id") == "AuthenticAMD"
    if "avx512f" in flags_:
        fpc, why = (32, "AVX-512 on AMD: 2 x 256-bit FMA pipes") if amd else (64, "AVX-512: 2 x 512-bit FMA")
    elif {"avx2", "fma"} <= flags_:
        fpc, why = 32, "AVX2: 2 x 256-bit FMA"
    else:
        fpc, why = 16, "SSE: 2 x 128-bit mul + add"
    cores = len(os.sched_getaffinity(0))
    model = info.get("model name", "?")
    return (
        cores * mhz * 1e6 * fpc,
        f"{model}: {cores} cores x {mhz:.0f} MHz (/proc/cpuinfo, nominal) x {fpc} FP32 FLOP/cycle ({why})",
    )


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
    return float(np.percentile(np.asarray(xs), q))


def step_flops(config, step_fn, state, batch) -> float:
    """Model FLOPs of one train step (matmuls + convolutions, forward and backward)."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, batch))
    count = step_fn.trace_count
    try:
        return flops_lib.count_flops(step_fn, *abstract)
    finally:
        step_fn.trace_count = count  # counting traces the step once more; not a recompilation


def _random_batch(config, input_mode: str) -> dict:
    b, s, c = config.batch_size, config.data.image_size, config.model.in_channels
    rng = np.random.default_rng(0)
    if input_mode == "device_augment":
        return {
            "image": rng.integers(0, 255, (b, s, s, c), dtype=np.uint8),
            "label": np.zeros((b,), np.int32),
            "scene_id": np.arange(b, dtype=np.int32) // 2,
        }
    return {
        "view1": rng.standard_normal((b, s, s, c), dtype=np.float32),
        "view2": rng.standard_normal((b, s, s, c), dtype=np.float32),
        "label": np.zeros((b,), np.int32),
        "scene_id": np.arange(b, dtype=np.int32) // 2,
    }


def config_flops(config, input_mode: str = "views") -> float:
    """Model FLOPs of one train step of ``config`` by tracing alone (abstract state and batch:
    nothing is initialised, compiled or run, so the ResNet-50 / 224 px step counts on a CPU)."""
    if input_mode == "device_augment":
        config.data.device_resident = True
    method = trainables.from_config(config)
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
    return step_flops(
        config, train.make_train_step(method, tx, schedule, seed=config.seed, batch_transform=transform), state, batch
    )


def bench_rsjax(config, *, steps: int, warmup: int, input_mode: str) -> dict:
    mesh = shd.make_mesh()
    shd.check_batch_divisible(config.batch_size, mesh)
    if input_mode == "device_augment":
        config.data.device_resident = True
    method = trainables.from_config(config)
    tx, schedule = optim.make(config.optimizer, config.total_steps)
    state = train.create_state(method, tx, config.seed, mesh)
    transform = input_lib.make_batch_transform(config) if input_mode == "device_augment" else None
    step_fn = train.make_train_step(method, tx, schedule, seed=config.seed, batch_transform=transform)
    p_step = train.jit_train_step(step_fn, mesh)
    b, s = config.batch_size, config.data.image_size
    batch = jax.device_put(_random_batch(config, input_mode), shd.data_sharded(mesh))

    lowered = p_step.lower(state, batch)
    # Model FLOPs are the model's, not the formulation's: counted on the lax step (im2col skips
    # the taps that read only padding, which would lower the count and inflate GFLOP/s).
    if config.model.get("conv", "auto") == "lax":
        flops = step_flops(config, step_fn, state, batch)
    else:
        flops = config_flops(_with_conv(config, "lax"), input_mode)
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
    if dev.platform == "cpu":  # the fake devices of one host share its cores: one peak for all
        peak, source = cpu_peak()
        n_peak = 1
    else:
        peak, source, n_peak = peak_flops(kind), peak_source(kind), n_dev
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
        "gflops_per_s": flops / med / 1e9 if flops else None,
        "mfu": flops / med / (peak * n_peak) if (flops and peak) else None,
        "peak_flops_per_s": peak,
        "peak_source": source,
        "conv": config.model.get("conv", "auto"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
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
    payload = {"kind": "rsjax.bench/v1", "rows": []}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("kind") != "rsjax.bench/v1":
            raise ConfigError(f"--out={path} exists and is not an rsjax.bench/v1 results file")
        payload = old
    payload["rows"].append(row)
    results.save(payload, path)
    return payload


def _with_conv(config, impl: str):
    """A copy of ``config`` with ``model.conv = impl``."""
    c = config.copy_and_resolve_references()
    c.model.conv = impl
    return c


def run_peer(config, *, steps: int, warmup: int, compile_: bool | None) -> dict:
    """The torch peer's row (or ``{"error": why}``) for ``config``'s shape."""
    m = config.model
    try:
        import torch  # optional dependency (torch): only for the PyTorch side

        cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - reported by the peer itself
        cuda = False
    if cuda:
        return bench_peer.torch_simclr_step(
            arch=m.name,
            batch_size=config.batch_size,
            image_size=config.data.image_size,
            in_channels=m.in_channels,
            steps=steps,
            warmup=warmup,
            compile_=True if compile_ is None else compile_,
        )
    if config.method != "simclr":
        return {"error": f"the CPU torch peer implements the SimCLR step only, not {config.method}"}
    return bench_peer.torch_cpu_simclr_step(
        arch=m.name,
        batch_size=config.batch_size,
        image_size=config.data.image_size,
        in_channels=m.in_channels,
        stem=m.get("stem", "standard"),
        proj_hidden_dim=m.proj_hidden_dim,
        proj_dim=m.proj_dim,
        proj_last_bn=bool(m.get("proj_last_bn", False)),
        temperature=float(config.loss.temperature),
        lr=float(config.optimizer.lr),
        weight_decay=float(config.optimizer.weight_decay),
        steps=steps,
        warmup=warmup,
        compile_=bool(compile_),
    )


def _conv_key(eqn) -> tuple:
    p = eqn.params
    return (
        tuple(eqn.invars[0].aval.shape),
        tuple(eqn.invars[1].aval.shape),
        tuple(p["window_strides"]),
        tuple(tuple(x) for x in p["padding"]),
        tuple(p["rhs_dilation"]),
    )


def conv_shapes(config) -> list[dict]:
    """The forward convolutions of ``config``'s train step (traced with ``model.conv=lax``;
    nothing compiled): ``[{"x", "kernel", "strides", "padding", "dilation", "count"}]``."""
    c = _with_conv(config, "lax")
    method = trainables.from_config(c)
    tx, schedule = optim.make(c.optimizer, c.total_steps)
    state = jax.eval_shape(lambda b: train.init_state(method, tx, b, c.seed), method.sample_batch(2))
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _random_batch(c, "views"))
    jaxpr = jax.make_jaxpr(train.make_train_step(method, tx, schedule, seed=c.seed))(state, batch).jaxpr
    counts: dict[tuple, int] = {}
    for eqn in flops_lib.iter_eqns(jaxpr):
        if eqn.primitive.name != "conv_general_dilated" or "transpose(" in str(eqn.source_info.name_stack):
            continue
        if any(d != 1 for d in eqn.params["lhs_dilation"]) or eqn.params["feature_group_count"] != 1:
            continue
        counts[_conv_key(eqn)] = counts.get(_conv_key(eqn), 0) + 1
    return [
        {"x": k[0], "kernel": k[1], "strides": k[2], "padding": k[3], "dilation": k[4], "count": n}
        for k, n in counts.items()
    ]


def time_conv_shapes(shapes: list[dict], impls=("lax", "taps", "im2col"), reps: int = 5) -> list[dict]:
    """Adds ``ms`` = {impl: median ms of forward + input and kernel gradients} and ``auto`` (the
    formulation :func:`rsjax.models.conv.choose` picks) to each shape."""
    out = []
    for sh in shapes:
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal(sh["x"], np.float32))
        w = jnp.asarray(rng.standard_normal(sh["kernel"], np.float32))
        row = dict(sh, auto=conv_lib.choose(sh["x"], sh["kernel"], sh["strides"], sh["padding"], sh["dilation"]), ms={})
        for impl in impls:

            def f(x, w, impl=impl):
                y = conv_lib.conv2d(
                    x, w, strides=sh["strides"], padding=sh["padding"], dilation=sh["dilation"], impl=impl
                )
                return jnp.sum(y * y)

            g = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
            jax.block_until_ready(g(x, w))
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                jax.block_until_ready(g(x, w))
                times.append(time.perf_counter() - t)
            row["ms"][impl] = 1e3 * _percentile(times, 50)
        out.append(row)
    return out


def main(argv):
    del argv

    config = _CONFIG.value
    command = " ".join(["python -m rsjax.bench", *sys.argv[1:]])
    row = {"config": _config_arg(), "input": FLAGS.input, "provenance": results.provenance(command)}
    if FLAGS.flops_only:
        row["flops_per_step"] = config_flops(config, FLAGS.input)
        print(f"{row['config']} [{FLAGS.input}]: {row['flops_per_step'] / 1e12:.4f} TFLOP per step")
        if FLAGS.out:
            append_row(FLAGS.out, row)
        return
    if FLAGS.conv_shapes:
        impls = [i for i in (FLAGS.conv or ["lax", "taps", "im2col"]) if i != "auto"]
        table = time_conv_shapes(conv_shapes(config), impls)
        print(
            f"{'input':>18} {'kernel':>16} {'stride':>6} {'dil':>4} {'n':>2}  "
            + "  ".join(f"{i:>8}" for i in impls)
            + "  auto picks"
        )
        for r in table:
            best = min(r["ms"], key=r["ms"].get)
            shape = (
                f"{str(r['x']):>18} {str(r['kernel']):>16} {r['strides'][0]:>6} {r['dilation'][0]:>4} {r['count']:>2}"
            )
            times = "  ".join(f"{r['ms'][i]:8.2f}" for i in impls)
            print(f"{shape}  {times}  {r['auto']}" + ("" if r["auto"] == best else f" (fastest here: {best})"))
        row["conv_shapes"] = table
        if FLAGS.out:
            append_row(FLAGS.out, row)
        return
    impls = list(FLAGS.conv) or [config.model.get("conv", "auto")]
    by_conv = {}
    for impl in impls:
        by_conv[impl] = bench_rsjax(
            _with_conv(config, impl), steps=FLAGS.steps, warmup=FLAGS.warmup, input_mode=FLAGS.input
        )
    own = config.model.get("conv", "auto")
    row["rsjax"] = by_conv.get(own) or by_conv[impls[-1]]
    if FLAGS.conv:
        row["rsjax_conv"] = by_conv
    if FLAGS.peer == "torch":
        peer = run_peer(config, steps=FLAGS.steps, warmup=FLAGS.warmup, compile_=FLAGS.peer_compile)
        row["peer"] = peer
        if peer.get("images_per_s"):
            row["ratio_rsjax_over_peer"] = row["rsjax"]["images_per_s"] / peer["images_per_s"]
    for impl, r in by_conv.items():
        line = (
            f"rsjax {r['method']} {r['model']} b{r['batch_size']} {r['image_size']}px {r['dtype']} conv={impl} "
            f"[{r['input']}] on {r['num_devices']}x {r['device']}: {r['images_per_s']:,.0f} img/s (both views), "
            f"step {r['step_ms_median']:.2f} ms (p10 {r['step_ms_p10']:.2f}, p90 {r['step_ms_p90']:.2f}), "
            f"compile {r['compile_s']:.1f} s, {r['flops_per_step'] / 1e12:.3f} TFLOP/step"
        )
        if r["mfu"] is not None:
            line += f", {r['gflops_per_s']:,.0f} GFLOP/s = {r['mfu']:.1%} of peak"
        if r["peak_memory_gb"] is not None:
            line += f", peak mem {r['peak_memory_gb']:.1f} GiB"
        print(line)
    if len(by_conv) > 1 and "lax" in by_conv:
        for impl, r in by_conv.items():
            if impl != "lax":
                print(f"conv={impl} / conv=lax: {r['images_per_s'] / by_conv['lax']['images_per_s']:.2f}x")
    if "peer" in row:
        p = row["peer"]
        if "error" in p:
            print(f"peer torch: not timed ({p['error']})")
        else:
            print(
                f"peer {p.get('framework')} {p.get('mode')}: {p['images_per_s']:,.0f} img/s; "
                f"ratio rsjax/peer = {row['ratio_rsjax_over_peer']:.2f}x"
            )
    if FLAGS.out:
        append_row(FLAGS.out, row)
    print(json.dumps(results.to_strict_json(row)))


if __name__ == "__main__":
    from rsjax.errors import run_cli

    _define_flags()
    run_cli(main, "rsjax.bench", _CONFIG)
