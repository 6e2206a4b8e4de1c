"""End to end: a real smoke pretraining run -> ``python -m rsjax.export`` (a separate process)
-> ``strict=True`` load into the reference torch ResNet -> the Flax encoder's pooled features."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import _torch_compat  # noqa: E402  (tests/: skip naming any import failure, see its docstring)
import jax
import numpy as np
import pytest

torch = _torch_compat.require("torch", module_level=True)

from rsjax.export import load_state_dict, sidecar_path, torch_resnet  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 2


def _smoke_config(data_dir):
    from conftest import load_config

    config = load_config("swimdiff", "smoke")
    config.data.data_dir = data_dir
    config.total_steps = STEPS
    config.eval.enabled = False
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step SwiMDiff smoke run on 8 fake devices, and standardized test images of its data."""
    from rsjax.data import build, pipeline
    from rsjax.jobs import pretrain

    root = tmp_path_factory.mktemp("export_e2e")
    data_dir = str(root / "tfds")
    build.ensure_built("rs_synthetic", data_dir, config="tiny")
    config = _smoke_config(data_dir)
    workdir = root / "run"
    summary = pretrain.run(config, str(workdir))
    assert summary["step"] == STEPS
    images, _ = pipeline.eval_arrays(config.data, "test", limit=8)
    return config, workdir, np.asarray(images, np.float32)


def _flax_pooled(config, workdir, images):
    # The Flax side straight from the full train state in the checkpoint (not through the
    # export's own loader), encoded the way the trainer's evaluation does.
    import orbax.checkpoint as ocp

    from rsjax import checkpoint, methods

    manager = checkpoint.make_manager(str(workdir), read_only=True)
    assert max(manager.all_steps()) == STEPS
    state = manager.restore(STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    method = methods.get_method(config)
    encode = jax.jit(lambda x: method.encode(state["params"], state["batch_stats"], x))
    return np.asarray(encode(images), np.float32)


def _export_cli(workdir, out, env):
    res = subprocess.run(
        [sys.executable, "-m", "rsjax.export", f"--workdir={workdir}", f"--out={out}", "--format=torchvision"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Traceback" not in res.stderr
    return res


def _check_export(out, config, flax_pooled, images):
    side = json.loads(sidecar_path(out).read_text())
    assert side["format"] == "torchvision" and side["step"] == STEPS
    assert side["arch"] == config.model.name == "tiny" and side["stem"] == "standard"
    assert side["in_channels"] == config.model.in_channels == len(side["bands"]) == len(side["mean"]) == 13
    assert side["method"] == "swimdiff" and side["dataset"] == "rs_synthetic"
    # The input description comes from the registry entry the run trained on.
    from rsjax.data import registry

    info = registry.get_config_info(config.data.name, config.data.get("builder_config", None))
    assert side["bands"] == list(info.bands)
    assert side["wavelengths_nm"] == list(info.wavelengths_nm) and side["gsd_m"] == list(info.gsd_m)
    assert side["product_level"] and side["normalization_formula"].startswith("x[c] = (x_raw[c] / ")
    # Readable by others: 0666 minus the umask, as for any file the user writes.
    umask = os.umask(0o022)
    os.umask(umask)
    for p in (out, out.with_suffix(".safetensors"), sidecar_path(out)):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p
    for path in (out, out.with_suffix(".safetensors")):
        net = torch_resnet.reference_resnet(side["arch"], side["in_channels"], stem=side["stem"])
        net.load_state_dict(load_state_dict(path), strict=True)
        torch_pooled = torch_resnet.pooled_features(net, images)
        assert torch_pooled.shape == flax_pooled.shape == (len(images), net.num_features)
        assert np.max(np.abs(torch_pooled - flax_pooled)) <= 1e-4, path
    # from_export reads the sidecar itself and gives the same network.
    np.testing.assert_allclose(
        torch_resnet.pooled_features(torch_resnet.from_export(out), images), flax_pooled, atol=1e-4, rtol=0
    )


def test_cli_export_of_a_real_run_matches_flax_features(run, tmp_path):
    config, workdir, images = run
    flax_pooled = _flax_pooled(config, workdir, images)
    assert np.all(np.isfinite(flax_pooled)) and flax_pooled.std() > 1e-3  # a non-trivial comparison
    out = tmp_path / "export" / "encoder.pt"
    res = _export_cli(workdir, out, {**os.environ, "JAX_PLATFORMS": "cpu"})
    assert str(out) in res.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["encoder.pt", "encoder.pt.json", "encoder.safetensors"]
    _check_export(out, config, flax_pooled, images)


def test_cli_export_on_a_machine_with_fewer_devices(run, tmp_path):
    # Trained on 8 (fake) devices, exported on a 1-device machine: the usual TPU -> laptop path
    # (the checkpoint must be restored onto the local device, not with the saved 8-device sharding).
    config, workdir, images = run
    flax_pooled = _flax_pooled(config, workdir, images)
    out = tmp_path / "export" / "encoder.pt"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    _export_cli(workdir, out, {**env, "JAX_PLATFORMS": "cpu"})
    _check_export(out, config, flax_pooled, images)


def test_export_to_an_unwritable_place_is_one_line_exit_2(run, tmp_path, monkeypatch):
    """Issue 27 fault 5: --out below a path that is a file, or in a folder that cannot be written
    (read-only file system: simulated in-process, as this suite runs as root), is refused in one
    line with exit 2, before the checkpoint is read, and no partial file stays."""
    import tempfile

    from rsjax import errors
    from rsjax.export import torch_export

    config, workdir, _ = run
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    res = subprocess.run(
        [sys.executable, "-m", "rsjax.export", f"--workdir={workdir}", f"--out={blocker / 'sub' / 'encoder.pt'}"],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == [f"rsjax.export: error: --out={blocker / 'sub' / 'encoder.pt'}: {blocker} is a file, not a folder"]

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    out = tmp_path / "ro" / "encoder.pt"
    with pytest.raises(errors.ConfigError) as e:
        torch_export.export_encoder(str(workdir), str(out))
    assert errors.one_line("rsjax.export", e.value) == (
        f"rsjax.export: error: --out={out}: cannot write in {out.parent} (Read-only file system)"
    )
    assert list(out.parent.iterdir()) == []
