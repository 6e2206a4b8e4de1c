"""Flax ResNet -> PyTorch export: name table, numerical parity with an independent torch
ResNet (torchvision module names), file round trips and the export entry point."""

import json
import os
import pickle
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn as tnn  # noqa: E402

from rsjax.export import (  # noqa: E402
    FORMATS,
    export_encoder,
    flax_to_torch_state,
    load_state_dict,
    save_encoder,
    torch_name_table,
    torch_resnet,
)
from rsjax.models.resnet import create_encoder  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Reference torch ResNet with torchvision's module names, written independently of the Flax
# model (rsjax.export.torch_resnet; the notebooks use it too).


def RefResNet(arch, in_ch):
    return torch_resnet.reference_resnet(arch, in_ch)


# ---------------------------------------------------------------------------------------------
# Flax side: random parameters and non-trivial BN statistics, built from shapes with numpy
# (eval_shape: no init compile, which costs ~10 s for ResNet-50 on CPU).

_CACHE = {}


def _random_variables(arch, bands, seed=0):
    model = create_encoder(arch)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros((1, 32, 32, bands)))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        leaf = path[-1].key
        if leaf == "kernel":  # kaiming normal, fan_out
            kh, kw, _, cout = s.shape
            return rng.normal(0.0, np.sqrt(2.0 / (kh * kw * cout)), s.shape).astype(np.float32)
        if leaf == "scale":
            return rng.uniform(0.5, 1.0, s.shape).astype(np.float32)
        if leaf in ("bias", "mean"):
            return rng.normal(0.0, 0.1, s.shape).astype(np.float32)
        if leaf == "var":
            return rng.uniform(0.5, 2.0, s.shape).astype(np.float32)
        raise AssertionError(path)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    return model, variables


def _flax_case(arch, bands):
    key = (arch, bands)
    if key not in _CACHE:
        model, variables = _random_variables(arch, bands)
        x = np.random.default_rng(1).normal(size=(2, 64, 64, bands)).astype(np.float32)
        pooled, feats = jax.jit(lambda v, x: model.apply(v, x, train=False, return_features=True))(variables, x)
        _CACHE[key] = (variables, x, np.asarray(pooled), [np.asarray(f) for f in feats])
    return _CACHE[key]


def _torch_forward(module, x_nhwc):
    module.eval()
    with torch.no_grad():
        pooled, feats = module(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)).contiguous())
    return pooled.numpy(), [f.numpy().transpose(0, 2, 3, 1) for f in feats]


def _to_torch(sd):
    return {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["tiny", "resnet18", "resnet34", "resnet50"])
def test_name_table_matches_reference_keys(arch):
    ref = RefResNet(arch, 3)
    _, variables = _random_variables(arch, 3)
    sd = flax_to_torch_state(variables["params"], variables["batch_stats"], arch=arch)
    assert set(sd) == set(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert tuple(sd[k].shape) == tuple(v.shape), k
        assert sd[k].dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float32), k
    # Every table row maps one module.
    assert len(torch_name_table(arch)) == sum(1 for k in sd if k.endswith(".weight"))


@pytest.mark.parametrize(
    "arch,expected", [("resnet18", 11_176_512), ("resnet34", 21_284_672), ("resnet50", 23_508_032)]
)
def test_param_count_equals_torch_reference(arch, expected):
    ref = RefResNet(arch, 3)
    n_torch = sum(p.numel() for p in ref.parameters())
    model = create_encoder(arch)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros((1, 32, 32, 3)))
    n_flax = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"]))
    assert n_torch == n_flax == expected


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("bands", [3, 13])
def test_parity_with_reference_torch_resnet(arch, bands):
    variables, x, pooled, feats = _flax_case(arch, bands)
    sd = flax_to_torch_state(variables["params"], variables["batch_stats"], arch=arch)
    ref = RefResNet(arch, bands)
    ref.load_state_dict(_to_torch(sd), strict=True)
    t_pooled, t_feats = _torch_forward(ref, x)
    assert pooled.shape == t_pooled.shape
    assert np.max(np.abs(pooled - t_pooled)) <= 1e-4
    for f, tf in zip(feats, t_feats):
        assert f.shape == tf.shape
        np.testing.assert_allclose(f, tf, atol=1e-4, rtol=1e-4)


def test_parity_with_variables_dict_and_eval_stats_are_used():
    # The full variables dict is accepted; changing running stats changes torch's output
    # (i.e. the exported running_mean/var are the ones torch uses in eval mode).
    variables, x, pooled, _ = _flax_case("resnet18", 3)
    sd = flax_to_torch_state(variables, variables, arch="resnet18")
    ref = RefResNet("resnet18", 3)
    ref.load_state_dict(_to_torch(sd), strict=True)
    assert np.max(np.abs(_torch_forward(ref, x)[0] - pooled)) <= 1e-4
    sd2 = dict(sd)
    sd2["bn1.running_var"] = sd["bn1.running_var"] * 4.0
    ref.load_state_dict(_to_torch(sd2), strict=True)
    assert np.max(np.abs(_torch_forward(ref, x)[0] - pooled)) > 1e-3


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_loads_into_torchvision(arch):
    tvm = pytest.importorskip("torchvision.models")
    variables, x, pooled, _ = _flax_case(arch, 3)
    sd = flax_to_torch_state(variables["params"], variables["batch_stats"], arch=arch)
    net = getattr(tvm, arch)(weights=None)
    expected = {k for k in net.state_dict() if not k.startswith("fc.")}
    assert set(sd) == expected
    net.fc = tnn.Identity()
    net.load_state_dict(_to_torch(sd), strict=True)
    net.eval()
    with torch.no_grad():
        out = net(torch.from_numpy(x.transpose(0, 3, 1, 2)).contiguous()).numpy()
    assert np.max(np.abs(out - pooled)) <= 1e-4


def test_formats_timm_and_smp_keys():
    _, variables = _random_variables("tiny", 4)
    tv = flax_to_torch_state(variables["params"], variables["batch_stats"], arch="tiny", fmt="torchvision")
    timm_sd = flax_to_torch_state(variables["params"], variables["batch_stats"], arch="tiny", fmt="timm")
    smp_sd = flax_to_torch_state(variables["params"], variables["batch_stats"], arch="tiny", fmt="smp")
    assert set(timm_sd) == set(tv)
    assert set(smp_sd) == {"encoder." + k for k in tv}
    for k, v in tv.items():
        np.testing.assert_array_equal(timm_sd[k], v)
        np.testing.assert_array_equal(smp_sd["encoder." + k], v)
    assert "layer2.0.downsample.0.weight" in tv and "layer2.0.downsample.1.num_batches_tracked" in tv
    assert not any(k.startswith("fc") for k in tv)
    assert set(FORMATS) == {"torchvision", "timm", "smp"}


def test_optional_timm_and_smp_load():
    _, variables = _random_variables("resnet18", 3)
    try:
        import timm
    except Exception:
        timm = None
    if timm is not None:
        net = timm.create_model("resnet18", pretrained=False, in_chans=3)
        net.reset_classifier(0)
        sd = flax_to_torch_state(variables["params"], variables["batch_stats"], arch="resnet18", fmt="timm")
        net.load_state_dict(_to_torch(sd), strict=True)
    try:
        import segmentation_models_pytorch as smp
    except Exception:
        smp = None
    if smp is not None:
        net = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=2)
        sd = flax_to_torch_state(variables["params"], variables["batch_stats"], arch="resnet18", fmt="smp")
        missing, unexpected = net.load_state_dict(_to_torch(sd), strict=False)
        assert not unexpected and not any(k.startswith("encoder.") for k in missing)
    if timm is None and smp is None:
        pytest.skip("neither timm nor segmentation_models_pytorch is installed")


def test_bad_inputs_raise():
    _, variables = _random_variables("tiny", 3)
    with pytest.raises(ValueError, match="format"):
        flax_to_torch_state(variables["params"], variables["batch_stats"], arch="tiny", fmt="keras")
    with pytest.raises(ValueError, match="arch"):
        flax_to_torch_state(variables["params"], variables["batch_stats"], arch="resnet999")
    # A tree of another architecture: missing weights are named.
    with pytest.raises(KeyError, match="layer1_1"):
        flax_to_torch_state(variables["params"], variables["batch_stats"], arch="resnet18")
    # Extra weights are not silently dropped.
    params = jax.tree.map(lambda a: a, variables["params"])
    params = {**params, "fc": {"kernel": np.zeros((64, 10), np.float32)}}
    with pytest.raises(ValueError, match="fc/kernel"):
        flax_to_torch_state(params, variables["batch_stats"], arch="tiny")


def test_save_and_load_round_trip(tmp_path):
    _, variables = _random_variables("tiny", 13)
    sd = flax_to_torch_state(variables["params"], variables["batch_stats"], arch="tiny")
    meta = {
        "arch": "tiny",
        "in_channels": 13,
        "bands": [f"B{i}" for i in range(13)],
        "mean": np.linspace(0.1, 0.2, 13, dtype=np.float32),
        "std": [0.5] * 13,
        "step": 7,
        "format": "torchvision",
    }
    paths = save_encoder(sd, tmp_path / "out" / "encoder.pt", meta)
    assert paths["pt"] == tmp_path / "out" / "encoder.pt"
    assert paths["safetensors"] == tmp_path / "out" / "encoder.safetensors"
    assert paths["json"] == tmp_path / "out" / "encoder.pt.json"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "encoder.pt",
        "encoder.pt.json",
        "encoder.safetensors",
    ]
    for p in (paths["pt"], paths["safetensors"]):
        loaded = load_state_dict(p)
        assert set(loaded) == set(sd)
        for k, v in sd.items():
            assert loaded[k].dtype == (torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
            np.testing.assert_array_equal(loaded[k].numpy(), v)
        RefResNet("tiny", 13).load_state_dict(loaded, strict=True)
    side = json.loads(paths["json"].read_text())
    assert side["arch"] == "tiny" and side["in_channels"] == 13 and side["step"] == 7
    assert side["bands"] == meta["bands"] and side["format"] == "torchvision"
    np.testing.assert_allclose(side["mean"], meta["mean"], rtol=1e-6)
    assert side["std"] == [0.5] * 13
    from safetensors import safe_open

    with safe_open(str(paths["safetensors"]), framework="pt") as f:
        assert json.loads(f.metadata()["rsjax"])["arch"] == "tiny"


def test_load_state_dict_refuses_pickled_objects(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "obj": types.SimpleNamespace(a=1)}, p)
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict(p)
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "missing.pt")


def test_importing_export_does_not_import_torch_and_cli_has_flags():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    code = ("import sys, rsjax.export, rsjax.export.__main__, rsjax.export.torch_resnet; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    res = subprocess.run(
        [sys.executable, "-m", "rsjax.export", "--helpshort"], env=env, capture_output=True, text=True, timeout=120
    )
    # absl's --helpshort exits with status 1 after printing the flags.
    assert "Traceback" not in res.stderr, res.stderr
    for flag in ("--workdir", "--step", "--out", "--format"):
        assert flag in res.stdout + res.stderr


def test_export_encoder_entry_point(tmp_path, monkeypatch):
    _, variables = _random_variables("tiny", 4)
    calls = []

    def fake_loader(workdir, step):
        calls.append((workdir, step))
        meta = {"arch": "tiny", "in_channels": 4, "bands": ["R", "G", "B", "N"], "mean": [0.1] * 4,
                "std": [0.2] * 4, "step": 12, "stem": "standard", "scale": 1e-4}
        return variables["params"], variables["batch_stats"], meta

    fake = types.ModuleType("rsjax.checkpoint")
    fake.load_encoder_for_export = fake_loader
    monkeypatch.setitem(sys.modules, "rsjax.checkpoint", fake)
    paths = export_encoder(str(tmp_path / "run"), str(tmp_path / "enc.pt"), step=12, fmt="smp")
    assert calls == [(str(tmp_path / "run"), 12)]
    sd = load_state_dict(paths["pt"])
    assert all(k.startswith("encoder.") for k in sd)
    side = json.loads(paths["json"].read_text())
    assert side["format"] == "smp" and side["step"] == 12 and side["bands"] == ["R", "G", "B", "N"]
    assert side["in_channels"] == 4 and side["stem"] == "standard" and side["scale"] == 1e-4
