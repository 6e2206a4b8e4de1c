"""The error paths of issue 13 ("One trainer, one workdir"), one test (or a few) per numbered
fault. Each test first builds the situation the issue describes, then asserts the fixed
behaviour. Tiny workdirs are built directly with rsjax.checkpoint.save / Workdir (no training);
CLIs run as subprocesses only where the one-line error path is the point.

Tests that need the training loop (marked "loop:" in their docstring) run ``rsjax.main`` on
``configs/simclr.py:smoke`` for a couple of steps.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rsjax import checkpoint as ckpt_lib
from rsjax import workdir as workdir_lib
from rsjax.errors import CheckpointError, ConfigError, RsjaxError, WorkdirError
from rsjax.workdir import ConfigMismatchError, Workdir

REPO = pathlib.Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------
# Helpers: a tiny state and checkpoint folder
# --------------------------------------------------------------------------------------
def _state(width: int = 4, value: float = 1.0) -> dict:
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": {"encoder": {"conv": {"kernel": jnp.full((3, width), value)}}},
        "batch_stats": {"encoder": {"bn": {"mean": jnp.full((width,), value)}}},
    }


def _config(lr: float = 0.1) -> dict:
    return {"method": "simclr", "optimizer": {"lr": lr, "name": "sgd"}, "stop_after_steps": 0, "seed": 0}


def _save_steps(workdir, steps=(2, 4), config=None) -> ckpt_lib.ocp.CheckpointManager:
    manager = ckpt_lib.make_manager(str(workdir))
    for s in steps:
        ckpt_lib.save(manager, s, _state(value=float(s)), {"next_batch": s}, config or _config())
    return manager


def _damage(step_dir: pathlib.Path) -> None:
    """Truncates every array-data file of a step (as a copy cut short would)."""
    for f in (step_dir / "state" / "d").iterdir():
        f.write_bytes(f.read_bytes()[:7])


def _listing(workdir) -> list[str]:
    return sorted(os.listdir(pathlib.Path(workdir) / "checkpoints"))


def _env() -> dict:
    e = dict(os.environ)
    e.setdefault("JAX_PLATFORMS", "cpu")
    return e


def _cli(*args, cwd=REPO, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _assert_one_line_error(p: subprocess.CompletedProcess, prog: str, *needles: str) -> str:
    """Exit 2, no traceback, the last stderr line is ``<prog>: error: ...`` containing ``needles``."""
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: error: "), p.stderr[-2000:]
    for n in needles:
        assert n in last, (n, last)
    return last


# --------------------------------------------------------------------------------------
# Fault 1: a failed checkpoint load was always treated as corruption
# --------------------------------------------------------------------------------------
def test_fault1_checkpoint_of_other_shapes_is_refused_and_never_renamed(tmp_path):
    """config.json lost, model shape changed: before, all valid checkpoints were renamed
    ``*.unreadable`` and training restarted from 0. Now: refused, naming folder and paths."""
    wd = tmp_path / "wd"
    manager = _save_steps(wd)
    with pytest.raises(CheckpointError) as e:
        ckpt_lib.restore_latest(manager, _state(width=5), _config())
    msg = str(e.value)
    assert f"checkpoint {wd / 'checkpoints' / '4'} does not fit this config" in msg
    assert "params/encoder/conv/kernel: shape (3, 4) in the checkpoint, (3, 5) here" in msg
    assert _listing(wd) == ["2", "4"]  # nothing renamed
    # A state with a parameter the checkpoint lacks: named too.
    extra = _state()
    extra["params"]["head"] = {"w": jnp.ones((2,))}
    with pytest.raises(CheckpointError, match=r"params/head/w: only in this config"):
        ckpt_lib.restore_latest(manager, extra, _config())
    assert _listing(wd) == ["2", "4"]


def test_fault1_checkpoint_written_with_another_lr_is_refused_mutable_keys_pass(tmp_path):
    """A changed learning rate used to resume silently (the stored config was never compared)."""
    wd = tmp_path / "wd"
    manager = _save_steps(wd)
    with pytest.raises(
        CheckpointError,
        match=r"checkpoints/4 was written with another config "
        r"\(optimizer\.lr: 0\.1 -> 0\.2\)",
    ):
        ckpt_lib.restore_latest(manager, _state(), _config(lr=0.2))
    assert _listing(wd) == ["2", "4"]
    # stop_after_steps is in workdir.MUTABLE_KEYS: a different value resumes.
    cfg = _config()
    cfg["stop_after_steps"] = 3
    step, state, data = ckpt_lib.restore_latest(manager, _state(), cfg)
    assert step == 4 and data == {"next_batch": 4}
    np.testing.assert_array_equal(np.asarray(state["params"]["encoder"]["conv"]["kernel"]), np.full((3, 4), 4.0))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_fault1_all_unreadable_says_so_and_set_aside_copies_do_not_accumulate(tmp_path, capsys):
    """Every checkpoint unreadable: before, "falling back to an earlier step" was printed and
    ``*.unreadable`` folders piled up (``4.unreadable``, ``4.unreadable1``, ...)."""
    wd = tmp_path / "wd"
    manager = _save_steps(wd)
    _damage(wd / "checkpoints" / "4")
    _damage(wd / "checkpoints" / "2")
    assert ckpt_lib.restore_latest(manager, _state(), _config()) is None
    out = capsys.readouterr().out
    assert out.count(f"checkpoint {wd / 'checkpoints' / '4'} is unreadable") == 1
    assert "is unreadable" in out and "falling back to an earlier step" in out.split("checkpoints/2 is unreadable")[0]
    last = [line for line in out.splitlines() if "checkpoints/2 is unreadable" in line][0]
    assert "falling back" not in last and "training starts from step 0" in last
    assert _listing(wd) == ["2.unreadable", "4.unreadable"]
    # The same steps written and damaged again: one set-aside copy per step, the newest.
    manager = _save_steps(wd)
    _damage(wd / "checkpoints" / "4")
    _damage(wd / "checkpoints" / "2")
    assert ckpt_lib.restore_latest(manager, _state(), _config()) is None
    assert _listing(wd) == ["2.unreadable", "4.unreadable"]


# --------------------------------------------------------------------------------------
# Fault 2 (workdir part): a config typo locked the workdir
# --------------------------------------------------------------------------------------
def test_fault2_workdir_where_nothing_ran_takes_the_corrected_config(tmp_path, capsys):
    wd = tmp_path / "wd"
    typo = ml_collections.ConfigDict({"method": "foo", "optimizer": {"lr": 0.1}})
    Workdir(str(wd), typo).close()  # config.json written, then the job failed: nothing ran
    assert json.loads((wd / "config.json").read_text())["method"] == "foo"
    fixed = ml_collections.ConfigDict({"method": "simclr", "optimizer": {"lr": 0.1}})
    Workdir(str(wd), fixed).close()
    assert json.loads((wd / "config.json").read_text())["method"] == "simclr"
    assert "nothing ran" in capsys.readouterr().out
    # Once something ran (metrics, or a checkpoint), another config is refused, keys named.
    with Workdir(str(wd), fixed) as w:
        w.log_metrics(1, {"loss": 1.0})
    with pytest.raises(ConfigMismatchError, match=r"method: 'simclr' -> 'moco'"):
        Workdir(str(wd), ml_collections.ConfigDict({"method": "moco", "optimizer": {"lr": 0.1}}))
    assert issubclass(ConfigMismatchError, WorkdirError) and issubclass(ConfigMismatchError, ConfigError)


def test_fault2_cli_config_typo_writes_nothing(tmp_path):
    """``--config.method=foo``: one line, exit 2, and no workdir (the job validates first)."""
    wd = tmp_path / "wd"
    p = _cli("-m", "rsjax.main", "--config=configs/simclr.py:smoke", "--config.method=foo", f"--workdir={wd}")
    _assert_one_line_error(p, "rsjax", "foo")
    assert not (wd / "config.json").exists()


# --------------------------------------------------------------------------------------
# Fault 3: evaluation / export from a workdir whose newest checkpoint is corrupt
# --------------------------------------------------------------------------------------
def _encoder_workdir(path: pathlib.Path, steps=(2, 4)) -> pathlib.Path:
    """A pretraining-layout workdir (config.json + checkpoints) of a real tiny encoder."""
    from rsjax.models.resnet import create_encoder

    sys.path.insert(0, str(REPO / "tests"))
    import _reliability_util as U

    config = U.load_config("simclr.py", "smoke")
    model = create_encoder(config.model.name, stem=config.model.get("stem", "standard"))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, config.model.in_channels)), train=False)
    Workdir(str(path), config).close()
    manager = ckpt_lib.make_manager(str(path))
    for s in steps:
        state = {
            "step": jnp.asarray(s, jnp.int32),
            "params": {"encoder": jax.tree.map(lambda a, s=s: a + s, variables["params"])},
            "batch_stats": {"encoder": variables["batch_stats"]},
        }
        ckpt_lib.save(manager, s, state, {"next_batch": s}, config.to_dict())
    return path


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_fault3_load_encoder_falls_back_past_a_corrupt_newest_step(tmp_path, capsys):
    wd = _encoder_workdir(tmp_path / "wd")
    ref, _, _ = ckpt_lib.load_encoder(str(wd), 2)
    _damage(wd / "checkpoints" / "4")
    params, _, meta = ckpt_lib.load_encoder(str(wd))
    assert meta["step"] == 2
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)
    out = capsys.readouterr().out
    assert out.count(f"checkpoint {wd / 'checkpoints' / '4'} is unreadable") == 1 and "skipped" in out
    assert _listing(wd) == ["2", "4"]  # a reader changes nothing
    with pytest.raises(CheckpointError, match=r"checkpoints/4 is unreadable"):
        ckpt_lib.load_encoder(str(wd), 4)  # the step asked for: no silent substitute
    _damage(wd / "checkpoints" / "2")
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*checkpoints"):
        ckpt_lib.load_encoder(str(wd))


def test_fault3_export_cli_from_a_corrupt_newest_step_warns_and_exports(tmp_path):
    wd = _encoder_workdir(tmp_path / "wd")
    _damage(wd / "checkpoints" / "4")
    out = tmp_path / "enc" / "encoder.pt"
    p = _cli("-m", "rsjax.export", f"--workdir={wd}", f"--out={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    text = p.stdout + p.stderr
    assert "Traceback" not in text and len(text.splitlines()) < 30, text[-3000:]
    assert f"checkpoint {wd / 'checkpoints' / '4'} is unreadable" in text
    assert json.loads(out.with_suffix(".pt.json").read_text())["step"] == 2


# --------------------------------------------------------------------------------------
# Fault 4: a torn last line of metrics.jsonl
# --------------------------------------------------------------------------------------
def test_fault4_torn_last_line_is_tolerated_dropped_and_truncate_trims_both_files(tmp_path):
    wd = tmp_path / "wd"
    cfg = ml_collections.ConfigDict({"a": 1})
    with Workdir(str(wd), cfg) as w:
        for s in (1, 2, 3):
            w.log_metrics(s, {"loss": float(s)})
            w.log_event(s, "nonfinite", f"step {s} refused")
    with open(wd / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # killed mid-write
    with open(wd / "events.jsonl", "a") as f:
        f.write('{"step": 4, "ki')
    with pytest.raises(json.JSONDecodeError):  # what every rerun used to hit
        [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in workdir_lib.read_jsonl(str(wd / "metrics.jsonl"))] == [1, 2, 3]
    with Workdir(str(wd), cfg) as w:  # reopening drops the torn line; new rows are whole lines
        assert [r["step"] for r in w.read_metrics()] == [1, 2, 3]
        w.truncate(2)  # resumed from step 2: later rows of both files go
        w.log_metrics(3, {"loss": 3.5})
    rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 3.5}]
    events = [json.loads(line) for line in (wd / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [1, 2]
    # A bad line that is not the last one is an error naming file and line.
    (wd / "metrics.jsonl").write_text('{"step": 1}\nxx\n{"step": 2}\n')
    with pytest.raises(WorkdirError, match=r"metrics.jsonl line 2 is not JSON"):
        workdir_lib.read_jsonl(str(wd / "metrics.jsonl"))


# --------------------------------------------------------------------------------------
# Fault 5: no workdir lock
# --------------------------------------------------------------------------------------
def test_fault5_second_opener_is_refused_naming_the_holder(tmp_path):
    wd = tmp_path / "wd"
    cfg = ml_collections.ConfigDict({"a": 1})
    first = Workdir(str(wd), cfg)
    with pytest.raises(WorkdirError, match=rf"workdir {wd} is in use by another run \(pid {os.getpid()} on "):
        Workdir(str(wd), cfg)
    first.close()
    Workdir(str(wd), cfg).close()  # released: a rerun opens it
    # Another process holding it (a launch in progress) is named too; its death frees the lock.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, ml_collections; from rsjax.workdir import Workdir; "
            f"w = Workdir({str(wd)!r}, ml_collections.ConfigDict({{'a': 1}})); print('locked', flush=True); "
            "sys.stdin.read()",
        ],
        cwd=REPO,
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirError, match=rf"in use by another run \(pid {holder.pid} on .*-c"):
            Workdir(str(wd), cfg)
    finally:
        holder.kill()
        holder.wait()
    Workdir(str(wd), cfg).close()  # kill -9 of the holder released it


def test_fault5_phases_share_the_parent_lock(tmp_path):
    with Workdir(str(tmp_path / "wd"), ml_collections.ConfigDict({"a": 1})) as w:
        t = w.sub("transfer")
        assert w.sub("") is w and w.sub("transfer") is t
        t.log_metrics(1, {"loss": 0.5})
        assert (tmp_path / "wd" / "transfer" / "metrics.jsonl").exists()
        assert not (tmp_path / "wd" / "transfer" / "config.json").exists()
        with pytest.raises(ConfigError):
            w.sub("../x")


# --------------------------------------------------------------------------------------
# Fault 6: raw tracebacks where one line is promised (and the reverse)
# --------------------------------------------------------------------------------------
def test_fault6_clis_print_one_line_exit_2(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (
            ("-m", "rsjax.main", "--config=configs/simclr.py:smoke", "--config.foo=1", f"--workdir={tmp_path / 'a'}"),
            "rsjax",
            ["unknown config key 'foo'", "--config.foo=1"],
        ),
        (
            ("-m", "rsjax.main", "--config=configs/nope.py", f"--workdir={tmp_path / 'b'}"),
            "rsjax",
            ["configs/nope.py", "No such file"],
        ),
        (
            (
                "-m",
                "rsjax.main",
                "--config=configs/simclr.py:smoke",
                "--config.total_steps=abc",
                f"--workdir={tmp_path / 'c'}",
            ),
            "rsjax",
            ["--config.total_steps=abc"],
        ),
        (
            ("-m", "rsjax.main", "--config=configs/simclr.py:smoke", f"--workdir={afile}"),
            "rsjax",
            [f"{afile} is a file"],
        ),
        (
            ("-m", "rsjax.data.build", "no_such_dataset", f"--data_dir={tmp_path / 'd'}"),
            "rsjax.data.build",
            ["no TFDS builder for dataset 'no_such_dataset'"],
        ),
        (
            (
                "-m",
                "rsjax.data.build",
                "eurosat_rgb",
                f"--manual_dir={tmp_path / 'missing'}",
                f"--data_dir={tmp_path / 'd'}",
            ),
            "rsjax.data.build",
            [str(tmp_path / "missing")],
        ),
        (
            ("-m", "rsjax.export", f"--workdir={tmp_path / 'none'}", f"--out={tmp_path / 'e.pt'}"),
            "rsjax.export",
            [f"{tmp_path / 'none'} does not exist"],
        ),
        (
            ("-m", "rsjax.export", f"--workdir={tmp_path}", f"--out={tmp_path}"),
            "rsjax.export",
            [f"--out={tmp_path} names a folder"],
        ),
        (
            (
                "-m",
                "rsjax.import_weights",
                f"--weights={tmp_path / 'w.pt'}",
                "--format=torchvision",
                "--arch=resnet18",
                "--in_channels=3",
                f"--workdir={tmp_path / 'iw'}",
            ),
            "rsjax.import_weights",
            ["no such file"],
        ),
        (("-m", "rsjax.bench", "--config=configs/nope.py"), "rsjax.bench", ["configs/nope.py"]),
    ]
    procs = [
        (
            subprocess.Popen(
                [sys.executable, *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ),
            prog,
            needles,
        )
        for args, prog, needles in cases
    ]
    for p, prog, needles in procs:
        out, err = p.communicate(timeout=240)
        _assert_one_line_error(subprocess.CompletedProcess(p.args, p.returncode, out, err), prog, *needles)


def test_fault6_other_exceptions_keep_their_traceback():
    """Only RsjaxError becomes one line: a bug (here a KeyError) keeps its traceback."""
    code = "from rsjax.errors import run_cli\ndef main(argv):\n    raise KeyError('a bug')\nrun_cli(main, 'prog')\n"
    p = _cli("-c", code)
    assert p.returncode == 1 and "Traceback" in p.stderr and "KeyError: 'a bug'" in p.stderr
    code = (
        "from rsjax.errors import run_cli, DataError\n"
        "def main(argv):\n    raise DataError('split train of x: record 3 is bad\\nsecond line')\n"
        "run_cli(main, 'prog')\n"
    )
    _assert_one_line_error(_cli("-c", code), "prog", "record 3 is bad; second line")


def test_fault6_workdir_not_writable_or_disk_full(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cfg = ml_collections.ConfigDict({"a": 1})
    with pytest.raises(WorkdirError, match=r"is a file, not a folder"):
        Workdir(str(afile), cfg)
    with pytest.raises(WorkdirError, match=r"cannot create --workdir"):
        Workdir(str(afile / "sub"), cfg)
    # Disk full while writing config.json: a one-line error and no config.json.tmp left.
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WorkdirError, match=r"cannot write .*config.json: No space left on device"):
        Workdir(str(tmp_path / "full"), cfg)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert sorted(os.listdir(tmp_path / "full")) == [".lock"]
    Workdir(str(tmp_path / "full"), cfg).close()  # the lock was released by the failed open


# --------------------------------------------------------------------------------------
# Fault 7: read-only reruns, strict JSON, leftovers
# --------------------------------------------------------------------------------------
def test_fault7_unchanged_config_is_not_rewritten_read_only_rerun_opens(tmp_path, monkeypatch):
    wd = tmp_path / "wd"
    cfg = ml_collections.ConfigDict({"a": 1, "stop_after_steps": 0})
    with Workdir(str(wd), cfg) as w:
        w.log_metrics(1, {"loss": 1.0})
    before = os.stat(wd / "config.json")
    # Read-only: chmod (effective for a normal user) and, for root, writes refused as on a
    # read-only mount.
    real_open, real_os_open = open, os.open
    inside = str(wd)

    def ro_open(path, mode="r", *a, **k):
        if str(path).startswith(inside) and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, mode, *a, **k)

    def ro_os_open(path, flags, *a, **k):
        if str(path).startswith(inside) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_os_open(path, flags, *a, **k)

    for p in [wd, *wd.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        monkeypatch.setattr("builtins.open", ro_open)
        monkeypatch.setattr(os, "open", ro_os_open)
        with Workdir(str(wd), cfg) as w:  # a finished run opened again: nothing written
            w.truncate(1)
            assert [r["step"] for r in w.read_metrics()] == [1]
        monkeypatch.undo()
    finally:
        for p in [wd, *wd.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    after = os.stat(wd / "config.json")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_fault7_metrics_and_reports_are_strict_json(tmp_path):
    wd = tmp_path / "wd"
    with Workdir(str(wd), ml_collections.ConfigDict({"a": 1})) as w:
        w.log_metrics(1, {"loss": float("nan"), "acc": 0.5})
        w.log_metrics(2, {"loss": float("inf"), "acc": 0.5})
        w.write_eval_report(
            "t", {"top1": float("nan"), "per_class": np.array([0.5, np.inf])}, ml_collections.ConfigDict({"a": 1})
        )
        w.plot_loss_curve()  # a null loss plots as a gap

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))

    rows = [strict(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": None, "acc": 0.5}, {"step": 2, "loss": None, "acc": 0.5}]
    report = strict((wd / "eval_report.json").read_text())
    assert report["metrics"] == {"top1": None, "per_class": [0.5, None]}
    assert (wd / "loss_curve.png").stat().st_size > 0
    assert not list(wd.glob("*.tmp"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_fault7_restore_warning_printed_once_and_readable(tmp_path, capfd):
    wd = tmp_path / "wd"
    manager = _save_steps(wd)
    _damage(wd / "checkpoints" / "4")
    step, _, _ = ckpt_lib.restore_latest(manager, _state(), _config())
    assert step == 2
    out, err = capfd.readouterr()
    text = out + err
    assert text.count("checkpoints/4 is unreadable") == 1, text
    assert "bound method" not in text and "Traceback" not in text, text


def test_errors_are_typed():
    from rsjax import errors

    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.DataError, ValueError)
    assert issubclass(errors.NonFiniteError, RuntimeError)
    assert issubclass(errors.MissingDataError, FileNotFoundError)
    for cls in (
        errors.ConfigError,
        errors.DataError,
        errors.CheckpointError,
        errors.WorkdirError,
        errors.NonFiniteError,
    ):
        assert issubclass(cls, RsjaxError)
    with pytest.raises(ConfigError, match="^x$"):
        with errors.config_errors():
            raise KeyError("x")
    with pytest.raises(RuntimeError):  # not a config problem: passes unchanged
        with errors.config_errors():
            raise RuntimeError("y")


# --------------------------------------------------------------------------------------
# Loop: behaviour of the training loop that rests on the workdir / checkpoint API
# --------------------------------------------------------------------------------------
def _smoke(wd, *extra) -> subprocess.CompletedProcess:
    return _cli(
        "-m",
        "rsjax.main",
        "--config=configs/simclr.py:smoke",
        "--config.eval.enabled=False",
        f"--workdir={wd}",
        *extra,
        timeout=300,
    )


def test_loop_fault1_resume_with_changed_lr_and_lost_config_json_is_refused(tmp_path):
    """loop: config.json lost and the learning rate changed: the rerun is refused naming the
    key (the checkpoint's stored config), and no checkpoint is renamed."""
    wd = tmp_path / "wd"
    p = _smoke(wd, "--config.stop_after_steps=2")
    assert p.returncode == 0, p.stderr[-3000:]
    steps = _listing(wd)
    assert steps and all(s.isdigit() for s in steps)
    (wd / "config.json").unlink()
    p = _smoke(wd, "--config.optimizer.lr=0.123")
    _assert_one_line_error(p, "rsjax", "was written with another config", "optimizer.lr")
    assert _listing(wd) == steps


def test_loop_fault5_two_launches_at_once(tmp_path):
    """loop: a second launch in a workdir whose run is in progress is refused naming the holder."""
    wd = tmp_path / "wd"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rsjax.main",
            "--config=configs/simclr.py:smoke",
            "--config.eval.enabled=False",
            f"--workdir={wd}",
        ],
        cwd=REPO,
        env={**_env(), "RSJAX_DEBUG_STEP_SLEEP": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        import time

        t0 = time.time()
        while not (wd / "metrics.jsonl").exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() - t0 < 240
            time.sleep(0.1)
        second = _smoke(wd)
        _assert_one_line_error(second, "rsjax", "is in use by another run", f"pid {first.pid}")
    finally:
        first.kill()
        first.communicate()


# --------------------------------------------------------------------------------------
# Issue 27's hostile-user faults
# --------------------------------------------------------------------------------------
def test_issue27_fault1_a_downstream_workdir_as_pretrained_is_one_line(tmp_path):
    """A segmentation / change-detection run's workdir where a pretraining one is expected: one
    line naming the job it holds and what is accepted (was: AttributeError 'method', 53 lines)."""
    wd = tmp_path / "cd_run"
    cfg = {
        "job": "change_detection",
        "optimizer": {"lr": 0.1, "name": "adamw"},
        "seed": 0,
        "model": {"name": "resnet18", "in_channels": 13},
        "data": {"name": "levir_cd"},
    }
    _save_steps(wd, steps=(2,), config=cfg)
    (wd / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"holds a 'change_detection' run, not a pretraining run"):
        ckpt_lib.load_encoder(str(wd))
    p = _cli("-m", "rsjax.export", f"--workdir={wd}", f"--out={tmp_path / 'e' / 'enc.pt'}")
    _assert_one_line_error(p, "rsjax.export", "'change_detection' run, not a pretraining run", "import_weights")


def test_issue27_fault3_encoder_of_another_shape_is_a_one_line_config_error():
    """Another architecture / band count: a ConfigError (one line, exit 2 from every CLI) naming
    both sides; an imported encoder without band names says so instead of printing []."""
    from rsjax import errors
    from rsjax.evaluate.encoders import check_pretrained_meta

    config = ml_collections.ConfigDict(
        {"model": {"name": "resnet50", "in_channels": 13, "stem": "standard"}, "data": {"normalization": "registry"}}
    )
    meta = {"arch": "resnet18", "in_channels": 3, "bands": [], "stem": "standard", "normalization": "registry"}
    with pytest.raises(ConfigError) as e:
        check_pretrained_meta(meta, config, "/w (step 4)")
    line = errors.one_line("rsjax", e.value)
    assert "\n" not in line and "[]" not in line
    assert "architecture 'resnet18' (checkpoint) vs config.model.name='resnet50'" in line
    assert "3 input bands (band names not recorded) (checkpoint) vs config.model.in_channels=13" in line


def test_issue27_fault8_rerun_after_the_last_step_still_draws_the_loss_curve(tmp_path):
    """loop: a run killed after its last step (e.g. during the final evaluation) and rerun trains
    nothing, and still writes loss_curve.png when it is missing."""
    wd = tmp_path / "wd"
    p = _smoke(wd)
    assert p.returncode == 0, p.stderr[-3000:]
    (wd / "loss_curve.png").unlink()  # what a kill -9 before the picture leaves
    p = _smoke(wd)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (wd / "loss_curve.png").stat().st_size > 0


def test_issue27_fault6_a_signal_during_the_final_evaluation_exits_75(monkeypatch):
    """SIGTERM after training (the job's evaluation, which writes no checkpoint) ends the job
    with exit 75 at once instead of being ignored until the evaluation ends."""
    import signal
    import time

    from rsjax import main as main_lib

    reached = []

    def job(config, workdir):  # stands in for a job whose training is done and evaluation runs
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        reached.append("evaluation ran to its end")

    monkeypatch.setattr(main_lib, "run", job)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        main_lib.run_stoppable(None, "wd")
    assert e.value.code == 75 and not reached
    assert signal.getsignal(signal.SIGTERM) is before  # handlers given back


def test_issue27_fault2_disk_full_during_a_checkpoint_is_one_line_and_frees_the_partial_write(tmp_path, monkeypatch):
    """loop (in process): the disk fills while step 4 is written (Orbax wraps the OSError): a
    CheckpointError of one line (exit 2 from the CLI) naming the last complete step; the
    half-written <step>.orbax-checkpoint-tmp folder is removed; the rerun resumes and finishes."""
    from conftest import load_config

    from rsjax import errors
    from rsjax.jobs import pretrain

    config = load_config("simclr", "smoke")
    config.eval.enabled = False
    real_save = ckpt_lib.save

    def full_disk_at_4(manager, step, *a, **k):
        if step == 4:
            partial = pathlib.Path(manager.directory) / "4.orbax-checkpoint-tmp-1700000000"
            partial.mkdir()
            (partial / "d").write_bytes(b"x" * 1000)
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as cause:
                raise ValueError("Failed to serialize array") from cause
        return real_save(manager, step, *a, **k)

    monkeypatch.setattr(ckpt_lib, "save", full_disk_at_4)
    wd = tmp_path / "wd"
    with pytest.raises(CheckpointError) as e:
        pretrain.run(config, str(wd))
    line = errors.one_line("rsjax", e.value)
    assert "no space left on device" in line and "last complete checkpoint: step 2" in line
    assert "4.orbax-checkpoint-tmp-1700000000" in line and "\n" not in line
    assert _listing(wd) == ["2"]
    monkeypatch.setattr(ckpt_lib, "save", real_save)
    assert pretrain.run(config, str(wd))["step"] == config.total_steps
