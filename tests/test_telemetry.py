"""Training telemetry: what reaches TensorBoard (train scalars, throughput, evaluation metrics,
hparams), absl's --verbosity, and Orbax asynchronous checkpointing (accelerators) ending every
run with complete checkpoints.

The TensorBoard events are read back with a reader written here from the TFRecord framing and
TensorBoard's ``Event`` protocol buffer (as shipped by tensorboardX), not with rsjax's writer.
"""

from __future__ import annotations

import json
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest

from rsjax import checkpoint as ckpt_lib
from rsjax.jobs import pretrain

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load_config(name: str, variant: str = "smoke"):
    from conftest import load_config

    return load_config(name, variant)


def read_events(tb_dir) -> list:
    """Every ``Event`` of every events file in ``tb_dir`` (TFRecord: u64 length, u32 crc,
    payload, u32 crc)."""
    from tensorboardX.proto import event_pb2

    events = []
    files = sorted(pathlib.Path(tb_dir).glob("events*"))
    assert files, f"no events file in {tb_dir}"
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            payload = data[pos + 12 : pos + 12 + n]
            assert len(payload) == n, f"truncated record in {path}"
            ev = event_pb2.Event()
            ev.ParseFromString(payload)
            events.append(ev)
            pos += 12 + n + 4
    return events


def scalars(events) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for ev in events:
        for v in ev.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, {})[int(ev.step)] = float(v.simple_value)
    return out


def hparams(events) -> dict:
    """The hparams of the run (session start info of TensorBoard's hparams plugin)."""
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    for ev in events:
        for v in ev.summary.value:
            if v.tag == "_hparams_/session_start_info":
                data = HParamsPluginData()
                data.ParseFromString(v.metadata.plugin_data.content)
                out = {}
                for k, val in data.session_start_info.hparams.items():
                    kind = val.WhichOneof("kind")
                    out[k] = getattr(val, kind)
                return out
    raise AssertionError("no hparams session_start_info in the events")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from rsjax.data import build

    d = str(tmp_path_factory.mktemp("tfds"))
    build.ensure_built("rs_synthetic", d, config="tiny")
    return d


def test_tensorboard_writer_leaves_torch_unimported_and_importable(tmp_path):
    """tensorboardX imports torch at its top where torch is installed (about 1 s per training
    process, for values rsjax never passes): a run's TensorBoard writer must not pull it in, and
    torch must still import afterwards. In a fresh process, as a CLI run starts."""
    pytest.importorskip("torch")
    code = f"""
import sys, ml_collections
from rsjax import workdir
with workdir.Workdir({str(tmp_path / "wd")!r}, ml_collections.ConfigDict({{"seed": 0}})) as wd:
    wd.log_hparams({{"seed": 0}})
    wd.log_scalars(1, {{"loss": 0.5}}, "train")
assert "torch" not in sys.modules, "the writer imported torch"
import torch
assert torch.zeros(2).sum().item() == 0.0
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert list((tmp_path / "wd" / "tb").glob("events*"))


def test_pretrain_smoke_reaches_tensorboard(synth_dir, tmp_path):
    config = _load_config("simclr.py")
    config.data.data_dir = synth_dir
    wd = tmp_path / "wd"
    from rsjax import main as main_lib

    main_lib.run(config, str(wd))
    events = read_events(wd / "tb")
    sc = scalars(events)

    # Training scalars equal metrics.jsonl (the record of truth) at every logged step.
    rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, config.total_steps + 1))
    for r in rows:
        assert sc["train/loss"][r["step"]] == pytest.approx(r["loss"], rel=1e-6)
    # Throughput per logged step (the first, compiling step has none), in TensorBoard only.
    ips = sc["train/img_per_s"]
    assert sorted(ips) == list(range(2, config.total_steps + 1)), ips
    assert all(np.isfinite(v) and v > 0 for v in ips.values())
    for s, v in sc["train/steps_per_s"].items():
        assert ips[s] == pytest.approx(v * config.batch_size, rel=1e-5)
    assert "img_per_s" not in rows[-1]

    # Evaluation metrics: every scalar of eval_report.json, at the last training step.
    report = json.loads((wd / "eval_report.json").read_text())["metrics"]
    for key in ("knn_top1", "linear_top1", "majority_baseline", "num_test"):
        assert sc[f"eval/pretrain_knn_linear/{key}"] == {config.total_steps: pytest.approx(report[key], rel=1e-6)}
    assert not any(t.startswith("eval/pretrain_knn_linear/linear_per_class") for t in sc)  # lists are not scalars

    # Hparams: the flattened config.
    hp = hparams(events)
    cfg = json.loads((wd / "config.json").read_text())
    assert hp["method"] == cfg["method"] == "simclr"
    assert hp["total_steps"] == cfg["total_steps"] == 4
    assert hp["optimizer.lr"] == pytest.approx(cfg["optimizer"]["lr"])
    assert hp["model.name"] == "tiny"
    assert isinstance(hp["data.image_size"], float) and hp["data.image_size"] == 32
    list_keys = [k for k, v in _flat(cfg).items() if isinstance(v, list)]
    for k in list_keys:  # lists as JSON strings
        assert json.loads(hp[k]) == _flat(cfg)[k]


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_eval_report_scalars_reach_tensorboard(tmp_path):
    """Every evaluation job reports through Workdir.write_eval_report: its scalars (nested dicts
    flattened with '/') reach TensorBoard, non-scalars do not."""
    import ml_collections

    from rsjax import workdir as workdir_lib

    config = ml_collections.ConfigDict({"job": "segmentation", "seed": 3, "model": {"decoder": "unet"}})
    wd = workdir_lib.Workdir(str(tmp_path / "wd"), config)
    wd.log_metrics(7, {"loss": 0.5})
    metrics = {
        "miou": 0.25,
        "overall_accuracy": np.float64(0.75),
        "per_class_iou": [0.1, 0.4],
        "frozen": {"miou": 0.125},
        "decoder": "unet",
        "epochs": 3,
    }
    wd.write_eval_report("segmentation", metrics, config)
    wd.write_eval_report("segmentation", {"miou": 0.5}, config, name="eval_b.json", step=11)
    wd.close()
    sc = scalars(read_events(tmp_path / "wd" / "tb"))
    assert sc["eval/segmentation/miou"] == {7: 0.25, 11: 0.5}
    assert sc["eval/segmentation/overall_accuracy"] == {7: 0.75}
    assert sc["eval/segmentation/frozen/miou"] == {7: 0.125}
    assert sc["eval/segmentation/epochs"] == {7: 3.0}
    assert not any("per_class_iou" in t or "decoder" in t for t in sc)
    assert sc["train/loss"] == {7: 0.5}


_VERBOSITY_SCRIPT = """
import sys
from absl import app, logging
import rsjax.main as m
m.run = lambda config, workdir: print("VERBOSITY", logging.get_verbosity(), flush=True)
sys.argv = ["rsjax.main", "--config=configs/simclr.py:smoke", "--workdir=unused"] + sys.argv[1:]
app.run(m.main)
"""


@pytest.mark.parametrize(
    "flags,expected", [([], -1), (["--verbosity=1"], 1), (["-v", "0"], 0), (["--verbosity=-2"], -2)]
)
def test_main_respects_verbosity_flag(flags, expected):
    """WARNING (-1) unless --verbosity / -v is given; then absl's own value stands."""
    out = subprocess.run(
        [sys.executable, "-c", _VERBOSITY_SCRIPT, *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"VERBOSITY {expected}\n" in out.stdout, out.stdout + out.stderr[-2000:]


def test_async_checkpointing_on_accelerators_completes_every_exit(synth_dir, tmp_path, monkeypatch):
    """Orbax asynchronous saves (the accelerator default) forced on CPU: a run stopped by
    stop_after_steps and its resumed continuation end with every checkpoint complete and
    readable, and the resumed run equals an uninterrupted synchronous one."""
    assert ckpt_lib.async_default() is False  # CPU keeps synchronous saves
    cfg = ckpt_lib.make_manager(str(tmp_path / "probe"))._options
    assert cfg.enable_async_checkpointing is False

    def config(stop=0):
        c = _load_config("simclr.py")
        c.data.data_dir = synth_dir
        c.eval.enabled = False
        c.stop_after_steps = stop
        return c

    ref = tmp_path / "sync"
    pretrain.run(config(), str(ref))

    monkeypatch.setattr(ckpt_lib, "async_default", lambda: True)
    made = []
    real_make = ckpt_lib.make_manager

    def spy(*a, **k):
        m = real_make(*a, **k)
        made.append(m._options.enable_async_checkpointing)
        return m

    monkeypatch.setattr(ckpt_lib, "make_manager", spy)
    wd = tmp_path / "async"
    pretrain.run(config(stop=3), str(wd))  # exits right after saving step 3
    assert made == [True]
    names = sorted(p.name for p in (wd / "checkpoints").iterdir())
    assert names == ["2", "3"], names  # complete (renamed) steps, no temporary folder left
    pretrain.run(config(), str(wd))
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["2", "3", "4"]

    def loss_rows(d):
        return [(r["step"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]

    assert loss_rows(wd) == loss_rows(ref)
    import jax

    a, b = ckpt_lib.read_state(str(wd), 4)[1], ckpt_lib.read_state(str(ref), 4)[1]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
