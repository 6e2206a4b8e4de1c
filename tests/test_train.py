"""Trainer tests: global-batch equivalence across device counts, single trace, refused
non-finite steps, resume equality, config checks, and the :smoke variant of every config."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax import methods, optim, train
from rsjax import sharding as shd
from rsjax.jobs import pretrain

REPO = pathlib.Path(__file__).resolve().parents[1]
# Every config's :smoke variant runs end to end in one test: here, or (to compile each program
# once) in the test that already runs it: seg / cd_levir in test_dense_jobs_resume_and_refuse_
# nonfinite_steps, noisy_label in test_noisy_label.py (full_run), noisy_label_study in
# test_noisy_label.py::test_study_outputs, study_eurosat in test_results.py / test_study.py,
# study_dubai in test_study_dubai.py (on a generated Dubai-like folder: it reads a tile folder),
# study_oscd in test_study_oscd.py::test_smoke_study_end_to_end.
RUN_ELSEWHERE = {
    "seg.py",
    "cd_levir.py",
    "noisy_label.py",
    "noisy_label_study.py",
    "study_eurosat.py",
    "study_dubai.py",
    "study_oscd.py",
}
CONFIGS = sorted(
    p.name
    for p in (REPO / "configs").glob("*.py")
    if not p.name.startswith("_") and p.name != "common.py" and p.name not in RUN_ELSEWHERE
)


def load_config(name: str, variant: str = "smoke"):
    from conftest import load_config as load

    return load(name, variant)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    from rsjax.data import build

    d = str(tmp_path_factory.mktemp("tfds"))
    build.ensure_built("rs_synthetic", d, config="tiny")
    return d


def _random_batch(config, b, seed=0):
    rng = np.random.default_rng(seed)
    s, c = config.data.image_size, config.model.in_channels
    return {
        "view1": rng.normal(size=(b, s, s, c)).astype(np.float32),
        "view2": rng.normal(size=(b, s, s, c)).astype(np.float32),
        # two crops per scene so scene-wide matching has false negatives
        "scene_id": np.repeat(np.arange(b // 2), 2).astype(np.int32),
        "label": np.zeros((b,), np.int32),
    }


def _grads_and_loss(config, mesh, batch):
    method = methods.get_method(config)
    tx, schedule = optim.make(config.optimizer, config.total_steps)
    state = train.create_state(method, tx, config.seed, mesh)
    rngs = {n: jax.random.PRNGKey(i) for i, n in enumerate(train.RNG_STREAMS)}

    def lg(state, batch):
        f = lambda p: method.loss(p, state["batch_stats"], state["extra"], batch, rngs, state["step"])  # noqa: E731
        (loss, aux), g = jax.value_and_grad(f, has_aux=True)(state["params"])
        return loss, g, aux["batch_stats"]

    rep, dat = shd.replicated(mesh), shd.data_sharded(mesh)
    gbatch = jax.device_put(batch, dat)
    loss, grads, bs = jax.jit(lg, in_shardings=(rep, dat), out_shardings=rep)(state, gbatch)
    return jax.device_get((loss, grads, bs))


def test_swimdiff_step_same_on_1_and_8_devices():
    assert jax.device_count() == 8
    config = load_config("swimdiff.py")
    batch = _random_batch(config, 16)
    one = _grads_and_loss(config, shd.make_mesh(jax.devices()[:1]), batch)
    eight = _grads_and_loss(config, shd.make_mesh(jax.devices()), batch)
    np.testing.assert_allclose(one[0], eight[0], rtol=1e-5)
    flat1, flat8 = jax.tree.leaves(one[1]), jax.tree.leaves(eight[1])
    assert len(flat1) == len(flat8) > 10
    for a, b in zip(flat1, flat8):
        # atol 1e-5 (gradients ~1e-2): 1 and 8 devices reduce the global batch in different orders;
        # a loss over local shards only (the bug this guards against) differs by O(1).
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(one[2]), jax.tree.leaves(eight[2])):  # global BN statistics
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_step_traces_once_and_refuses_nonfinite():
    config = load_config("simclr.py")
    mesh = shd.make_mesh()
    method = methods.get_method(config)
    tx, schedule = optim.make(config.optimizer, config.total_steps)
    state = train.create_state(method, tx, config.seed, mesh)
    step = train.make_train_step(method, tx, schedule, seed=config.seed)
    p_step = train.jit_train_step(step, mesh)
    good = jax.device_put(_random_batch(config, 16), shd.data_sharded(mesh))
    for _ in range(2):
        state, m = p_step(state, good)
    params_before = jax.device_get(state["params"])
    bad = _random_batch(config, 16)
    bad["view1"][3, 0, 0, 0] = np.nan
    state, m = p_step(state, jax.device_put(bad, shd.data_sharded(mesh)))
    assert step.trace_count == 1
    assert not bool(m["finite"]) and int(m["nonfinite_run"]) == 1
    assert int(state["step"]) == 3 and int(state["nonfinite_total"]) == 1
    for a, b in zip(jax.tree.leaves(params_before), jax.tree.leaves(jax.device_get(state["params"]))):
        np.testing.assert_array_equal(a, b)
    state, m = p_step(state, good)
    assert bool(m["finite"]) and int(m["nonfinite_run"]) == 0
    assert step.trace_count == 1


@pytest.mark.parametrize("config_file", CONFIGS)
def test_smoke_variant_runs_end_to_end(config_file, synth_dir, tmp_path):
    config = load_config(config_file)
    if config.get("data") is not None and config.data.name == "rs_synthetic":
        config.data.data_dir = synth_dir
    from rsjax import main as main_lib

    summary = main_lib.run(config, str(tmp_path / "wd"))
    wd = tmp_path / "wd"
    assert (wd / "config.json").exists()
    if config.get("job", "pretrain") == "pretrain":
        rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == config.total_steps and np.isfinite(rows[-1]["loss"])
        assert (wd / "loss_curve.png").exists() and list((wd / "tb").glob("events*"))
        report = json.loads((wd / "eval_report.json").read_text())
        assert 0.0 <= report["metrics"]["knn_top1"] <= 1.0
        assert summary["compiles"] == 1


def _params(workdir):
    from rsjax import checkpoint

    enc, bs, meta = checkpoint.load_encoder(str(workdir))
    return enc, meta


def test_resume_equals_uninterrupted(synth_dir, tmp_path):
    """``stop_after_steps`` then a rerun ends bit-identical to an uninterrupted run: the full
    SwiMDiff :smoke (queue, EMA key encoder, denoiser and its diffusion noise; the reliability
    tests resume its matching-only ablation across processes)."""
    config = load_config("swimdiff.py", "smoke")
    config.data.data_dir = synth_dir
    config.eval.enabled = False
    ref = tmp_path / "ref"
    pretrain.run(config, str(ref))
    config.stop_after_steps = 3  # not a checkpoint step: the stop writes its own checkpoint
    s = pretrain.run(config, str(tmp_path / "split"))
    assert s["step"] == 3
    config.stop_after_steps = 0
    pretrain.run(config, str(tmp_path / "split"))

    def losses(d):
        return [(r["step"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]

    assert losses(ref) == losses(tmp_path / "split")
    a, meta = _params(ref)
    b, _ = _params(tmp_path / "split")
    assert meta["step"] == config.total_steps
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def _report(workdir):
    m = json.loads((workdir / "eval_report.json").read_text())["metrics"]
    return {k: v for k, v in m.items() if k != "seconds"}


@pytest.mark.parametrize("config_file", ["seg.py", "cd_levir.py"])
def test_dense_jobs_resume_and_refuse_nonfinite_steps(config_file, synth_dir, tmp_path, monkeypatch):
    """The dense jobs train on the one loop: stopped after step 1 (stop_after_steps) and rerun,
    they end with the same report as an uninterrupted run; the non-finite hook refuses steps."""
    from rsjax import main as main_lib

    config = load_config(config_file)
    config.data.data_dir = synth_dir
    assert config.total_steps == 2  # the :smoke variant itself, run end to end here
    main_lib.run(config, str(tmp_path / "full"))
    for png in ("loss_curve.png", "segmentation_overlay.png" if config_file == "seg.py" else "change_overlay.png"):
        assert (tmp_path / "full" / png).exists()
    config.stop_after_steps = 1
    s = main_lib.run(config, str(tmp_path / "split"))
    assert s["step"] == 1 and not s["finished"] and not (tmp_path / "split" / "eval_report.json").exists()
    config.stop_after_steps = 0
    main_lib.run(config, str(tmp_path / "split"))
    assert _report(tmp_path / "full") == _report(tmp_path / "split")
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]

    monkeypatch.setenv("RSJAX_DEBUG_NONFINITE_FROM_STEP", "2")
    with warnings.catch_warnings():  # the refused step's null loss is no sign of divergence
        warnings.filterwarnings("error", message="numerical blow-up")
        m = main_lib.run(config, str(tmp_path / "nan"))
    events = [json.loads(line) for line in (tmp_path / "nan" / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [2] and m["nonfinite_steps"] == 1


def test_config_mismatch_refused_and_workdir_kept(synth_dir, tmp_path):
    config = load_config("simclr.py")
    config.data.data_dir = synth_dir
    config.eval.enabled = False
    wd = tmp_path / "wd"
    pretrain.run(config, str(wd))
    before = {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file() and p.name != ".lock"}
    config.loss.temperature = 0.7
    from rsjax.workdir import ConfigMismatchError

    with pytest.raises(ConfigMismatchError, match=r"loss\.temperature: 0\.2 -> 0\.7"):
        pretrain.run(config, str(wd))
    after = {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file() and p.name != ".lock"}
    assert before == after


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("loss.temperature", -0.1, "loss.temperature"),
        ("batch_size", 12, "divisible"),
        ("model.in_channels", 3, "in_channels"),
    ],
)
def test_bad_config_values_get_clear_errors(synth_dir, tmp_path, key, value, match):
    config = load_config("simclr.py")
    config.data.data_dir = synth_dir
    node = config
    *parents, last = key.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    with pytest.raises(ValueError, match=match):
        pretrain.run(config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd" / "checkpoints").exists()


def test_cli_unknown_key_is_one_line_error(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsjax.main",
            f"--config={REPO}/configs/swimdiff.py:smoke",
            f"--workdir={tmp_path}/wd",
            "--config.no_such_key=1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode != 0
    assert "no_such_key" in r.stderr
    assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("name,opt", [("swimdiff", "adamw"), ("moco", "sgd")])
def test_create_state_is_init_state_with_the_seed_as_an_argument(config_loader, name, opt):
    """create_state (the parameter init compiled with its key as an argument, the optimizer state
    a second program) gives bit for bit the state of init_state with the seed as a constant, the
    one program it replaced, for seeds 0 and 3; every leaf replicated on the mesh, and the three
    counters separate buffers (the train step donates the state)."""
    c = config_loader(name, "smoke")
    c.optimizer.name = opt
    mesh = shd.make_mesh(jax.devices())
    method = methods.get_method(c)
    tx, _ = optim.make(c.optimizer, c.total_steps)
    batch = method.sample_batch(2)
    for seed in (0, 3):
        got = train.create_state(method, tx, seed, mesh)
        ref = (
            jax.jit(lambda b, seed=seed: train.init_state(method, tx, b, seed))
            .lower(batch)
            .compile(compiler_options={"xla_backend_optimization_level": 0})(batch)
        )
        assert jax.tree.structure(got) == jax.tree.structure(ref)
        for (path, a), b in zip(jax.tree.leaves_with_path(got), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
            assert a.sharding.is_equivalent_to(shd.replicated(mesh), a.ndim), jax.tree_util.keystr(path)
        counters = [got[k] for k in ("step", "nonfinite_run", "nonfinite_total")]
        assert len({x.addressable_shards[0].data.unsafe_buffer_pointer() for x in counters}) == 3
    other = train.create_state(method, tx, 1, mesh)["params"]  # the seed does reach the parameters
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(got["params"])))


class _NoisyRegression:
    """The smallest trainable whose step draws from every random stream (the loop's plumbing of
    the seed's key is what is tested, not a method: a SwiMDiff step costs ~10 s to compile)."""

    def sample_batch(self, batch_size: int = 2) -> dict:
        return {"view1": np.zeros((batch_size, 4), np.float32)}

    def init(self, rng, batch):
        return {"w": jax.random.normal(rng, (4, 3))}, {}, {}

    def loss(self, params, batch_stats, extra, batch, rngs, step):
        x = batch["view1"]
        draws = {k: jax.random.normal(rngs[k], (x.shape[0], 3)) for k in train.RNG_STREAMS}
        err = x @ params["w"] - sum(draws.values())
        metrics = {f"draw_{k}": jnp.mean(v) for k, v in draws.items()}
        return jnp.mean(err**2), {"batch_stats": batch_stats, "metrics": metrics}

    def update_extra(self, params, batch_stats, extra, aux, step):
        return extra

    def encode(self, params, batch_stats, x):
        return x @ params["w"]


def test_jitted_step_takes_the_seed_as_an_argument():
    """jit_train_step compiles one program for every seed (the seed's key is an argument: a
    study's seeds share it through the persistent cache), and that program gives bit for bit
    the state and metrics of the step with the key as a constant (jax.jit of the plain step)."""
    c = load_config("simclr.py")
    mesh = shd.make_mesh(jax.devices())
    trainable = _NoisyRegression()
    tx, schedule = optim.make(c.optimizer, c.total_steps)
    batch = jax.device_put(
        {"view1": np.random.default_rng(0).standard_normal((16, 4), np.float32)}, shd.data_sharded(mesh)
    )
    steps = {seed: train.make_train_step(trainable, tx, schedule, seed=seed) for seed in (0, 5)}
    jitted = {seed: train.jit_train_step(fn, mesh) for seed, fn in steps.items()}
    state = train.create_state(trainable, tx, 0, mesh, sample_batch=trainable.sample_batch(16))
    assert jitted[0].lower(state, batch).as_text() == jitted[5].lower(state, batch).as_text()

    fresh = lambda: train.create_state(trainable, tx, 0, mesh, sample_batch=trainable.sample_batch(16))  # noqa: E731
    got, m_first = jitted[0](fresh(), batch)
    got, m_got = jitted[0](got, batch)  # a second step: the step number reaches the key too
    ref, m_ref = jax.jit(steps[0])(fresh(), batch)
    ref, m_ref = jax.jit(steps[0])(ref, batch)
    for (path, a), b in zip(jax.tree.leaves_with_path((got, m_got)), jax.tree.leaves((ref, m_ref))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
    _, m_other = jitted[5](fresh(), batch)
    for k in train.RNG_STREAMS:  # every stream depends on the seed
        assert float(m_other[f"draw_{k}"]) != float(m_first[f"draw_{k}"]), k
        assert float(m_got[f"draw_{k}"]) != float(m_first[f"draw_{k}"]), k  # ... and on the step


class _ScaledRegression(_NoisyRegression):
    """_NoisyRegression whose loss closes over a scalar and an array (a task's data-derived
    constants, e.g. change detection's pos_weight): programs that differ only there."""

    def __init__(self, scale=1.0, weights=(1.0, 1.0, 1.0)):
        self.scale, self.weights = scale, np.asarray(weights, np.float32)

    def loss(self, params, batch_stats, extra, batch, rngs, step):
        loss, aux = super().loss(params, batch_stats, extra, batch, rngs, step)
        return self.scale * loss + jnp.sum(jnp.asarray(self.weights) * params["w"]), aux


def test_compile_once_shares_only_identical_programs(monkeypatch):
    """Fits rebuild their step from new objects; train.compile_once gives a second build of the
    same program the executable of the first (no new trace-to-executable work), and anything
    that changes the program -- a closed-over scalar or array, the mesh, the compiler options,
    jax's matmul precision, a Python callback -- gets its own. Every step's result equals a
    plain jax.jit of the same step (the independent reference)."""
    c = load_config("simclr.py")
    tx, schedule = optim.make(c.optimizer, c.total_steps)
    mesh8, mesh1 = shd.make_mesh(jax.devices()), shd.make_mesh(jax.devices()[:1])

    def run(trainable, mesh, compiled_log):
        batch = jax.device_put(
            {"view1": np.random.default_rng(0).standard_normal((16, 4), np.float32)}, shd.data_sharded(mesh)
        )
        fn = train.make_train_step(trainable, tx, schedule, seed=0)
        jitted = train.jit_train_step(fn, mesh)
        fresh = lambda: train.create_state(trainable, tx, 0, mesh, sample_batch=trainable.sample_batch(16))  # noqa: E731
        got, _ = jitted(fresh(), batch)
        compiled_log.append(jitted._compiled)
        ref, _ = jax.jit(fn)(fresh(), batch)
        for (path, a), b in zip(jax.tree.leaves_with_path(got), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
        return np.asarray(got["params"]["w"])

    log = []
    base = run(_ScaledRegression(), mesh8, log)
    assert np.array_equal(run(_ScaledRegression(), mesh8, log), base)
    assert log[1] is log[0]  # the same program: one executable
    variants = [
        lambda: run(_ScaledRegression(scale=2.0), mesh8, log),
        lambda: run(_ScaledRegression(weights=(1.0, 1.0, 1.5)), mesh8, log),
        lambda: run(_ScaledRegression(), mesh1, log),
    ]
    for v in variants:
        v()
        assert all(log[-1] is not earlier for earlier in log[:-1])
    with jax.default_matmul_precision("highest"):
        run(_ScaledRegression(), mesh8, log)
        assert all(log[-1] is not earlier for earlier in log[:-1])

    # the init: compiler options are part of the program
    trainable = _ScaledRegression()
    init = jax.jit(lambda b, k: trainable.init(k, b))
    args = (trainable.sample_batch(2), np.asarray(jax.random.PRNGKey(0)))
    plain = train.compile_once(init, *args)
    assert train.compile_once(init, *args) is plain
    assert train.compile_once(init, *args, compiler_options={"xla_backend_optimization_level": 0}) is not plain

    # a callback into Python is not visible in the jaxpr's text: never shared
    def calls_back(offset):
        return jax.jit(lambda x: jax.pure_callback(lambda a: a + offset, jax.ShapeDtypeStruct((3,), jnp.float32), x))

    x = np.zeros(3, np.float32)
    assert float(train.compile_once(calls_back(1.0), x)(x)[0]) == 1.0
    assert float(train.compile_once(calls_back(2.0), x)(x)[0]) == 2.0

    # a key that cannot be computed is no failure: the program compiles as without the cache
    monkeypatch.setattr(train, "_program_key_or_none", lambda *a: 1 / 0)
    fallback = train.compile_once(init, *args)
    assert fallback is not plain
    for a, b in zip(jax.tree.leaves(fallback(*args)), jax.tree.leaves(plain(*args))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
