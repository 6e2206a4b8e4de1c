"""Flax ResNet -> PyTorch export: name table, numerical parity with an independent torch
ResNet (torchvision module names) and, stage by stage, with the networks of torchvision, timm
and segmentation_models_pytorch themselves; file round trips, file modes, the sidecar and the
export entry point."""

import json
import os
import subprocess
import sys
import types

import _torch_compat  # tests/: torch / torchvision / timm / smp imports, see its docstring
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = _torch_compat.require("torch", module_level=True)
from torch import nn as tnn  # noqa: E402

from rsjax.errors import DataError  # noqa: E402
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


# ---------------------------------------------------------------------------------------------
# Parity with the libraries the export targets: torchvision, timm, segmentation_models_pytorch.
# Each library builds its own network; the exported state dict is loaded strictly and every
# stage (stem, layer1..layer4, pooled) is compared with the Flax forward on the same input.
# tests/_torch_compat.require skips naming any import failure, or fails under
# RSJAX_REQUIRE_TORCH_LIBS=1 (.ci/run sets it).

TOL = 1e-4
LIB_CASES = [(a, b) for a in ("resnet18",) for b in (3, 13)] + [("resnet50", 13)]


def _flax_stages(arch, bands, dilate_layer4=False):
    """(pooled, [stem, c1, c2, c3, c4]) of the Flax encoder on the cached random variables."""
    key = (arch, bands, "stages", dilate_layer4)
    if key not in _CACHE:
        variables, x, _, _ = _flax_case(arch, bands)
        model = create_encoder(arch, replace_stride_with_dilation=(False, False, dilate_layer4))
        pooled, feats, stem = jax.jit(
            lambda v, x: model.apply(v, x, train=False, return_features=True, return_stem=True)
        )(variables, x)
        _CACHE[key] = (np.asarray(pooled), [np.asarray(stem)] + [np.asarray(f) for f in feats])
    return _CACHE[key]


def _nchw(x_nhwc):
    return torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))


def _assert_stages(torch_stages, flax_stages, names):
    assert len(torch_stages) == len(flax_stages) == len(names)
    for name, t, f in zip(names, torch_stages, flax_stages):
        t = t.detach().numpy()
        if t.ndim == 4:
            t = t.transpose(0, 2, 3, 1)
        assert t.shape == f.shape, (name, t.shape, f.shape)
        err = float(np.max(np.abs(t - f)))
        assert err <= TOL, f"{name}: max |torch - flax| = {err:.2e}"
        assert float(np.std(f)) > 1e-2, name  # a non-trivial comparison


def _assert_loaded(module, sd, prefix=""):
    # The module holds exactly the exported tensors (strict load already checked the key set).
    own = module.state_dict()
    for k, v in sd.items():
        np.testing.assert_array_equal(own[k[len(prefix) :]].numpy(), v, err_msg=k)


@pytest.mark.parametrize("arch,bands", LIB_CASES)
def test_parity_torchvision(arch, bands):
    tvm = _torch_compat.require("torchvision.models")
    variables, x, _, _ = _flax_case(arch, bands)
    pooled, stages = _flax_stages(arch, bands)
    sd = flax_to_torch_state(variables["params"], variables["batch_stats"], arch=arch, fmt="torchvision")
    net = getattr(tvm, arch)(weights=None)
    assert set(sd) == {k for k in net.state_dict() if not k.startswith("fc.")}
    if bands != 3:
        net.conv1 = tnn.Conv2d(bands, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = tnn.Identity()
    net.load_state_dict(_to_torch(sd), strict=True)
    _assert_loaded(net, sd)
    net.eval()
    with torch.no_grad():
        h = net.relu(net.bn1(net.conv1(_nchw(x))))
        outs = [h]
        h = net.maxpool(h)
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            h = layer(h)
            outs.append(h)
        out = net(_nchw(x))
    _assert_stages(outs + [out], stages + [pooled], ["stem", "layer1", "layer2", "layer3", "layer4", "pooled"])


def _timm_stages(net, x):
    with torch.no_grad():
        # timm's own feature API: indices 0..4 = act1 (stem), layer1..layer4.
        feats = net.forward_intermediates(_nchw(x), indices=[0, 1, 2, 3, 4], intermediates_only=True)
        return list(feats) + [net(_nchw(x))]


@pytest.mark.parametrize("arch,bands", LIB_CASES)
def test_parity_timm(arch, bands):
    timm = _torch_compat.require("timm")
    variables, x, _, _ = _flax_case(arch, bands)
    pooled, stages = _flax_stages(arch, bands)
    sd = flax_to_torch_state(variables["params"], variables["batch_stats"], arch=arch, fmt="timm")
    net = timm.create_model(arch, pretrained=False, in_chans=bands, num_classes=0)
    net.load_state_dict(_to_torch(sd), strict=True)
    _assert_loaded(net, sd)
    net.eval()
    names = ["stem", "layer1", "layer2", "layer3", "layer4", "pooled"]
    _assert_stages(_timm_stages(net, x), stages + [pooled], names)


@pytest.mark.parametrize("arch,bands", [("resnet18", 13)])
def test_parity_timm_pretrained_cfg_overlay(arch, bands, tmp_path, monkeypatch):
    # timm loads the export by itself, from the exported safetensors file, as the sidecar says.
    timm = _torch_compat.require("timm")
    variables, x, _, _ = _flax_case(arch, bands)
    pooled, stages = _flax_stages(arch, bands)
    calls = []

    def fake_loader(workdir, step):
        calls.append(workdir)
        meta = {
            "arch": arch,
            "in_channels": bands,
            "bands": [f"B{i}" for i in range(bands)],
            "mean": [0.0] * bands,
            "std": [1.0] * bands,
            "scale": 1e4,
            "normalization": "scale:10000",
            "step": 3,
            "stem": "standard",
            "dataset": None,
        }
        return variables["params"], variables["batch_stats"], meta

    fake = types.ModuleType("rsjax.checkpoint")
    fake.load_encoder = fake_loader
    monkeypatch.setitem(sys.modules, "rsjax.checkpoint", fake)
    paths = export_encoder(str(tmp_path / "run"), str(tmp_path / "out" / "encoder.pt"), fmt="timm")
    side = json.loads(paths["json"].read_text())
    overlay = dict(side["timm_pretrained_cfg_overlay"])
    assert overlay["file"] == "encoder.safetensors" and overlay["num_classes"] == 0
    overlay["file"] = str(paths["json"].parent / overlay["file"])
    net = timm.create_model(arch, pretrained=True, in_chans=bands, num_classes=0, pretrained_cfg_overlay=overlay)
    _assert_loaded(net, flax_to_torch_state(variables["params"], variables["batch_stats"], arch=arch, fmt="timm"))
    net.eval()
    _assert_stages(_timm_stages(net, x), stages + [pooled], ["stem", "layer1", "layer2", "layer3", "layer4", "pooled"])
    assert side["normalization_formula"] == "x = x_raw / 10000"


# Every smp model on ResNet-18 with 3 and 13 bands; one ResNet-50 case keeps the suite cheap.
SMP_CASES = [(m, "resnet18", b) for m in ("Unet", "FPN", "DeepLabV3Plus") for b in (3, 13)] + [("Unet", "resnet50", 13)]


@pytest.mark.parametrize("model_name,arch,bands", SMP_CASES)
def test_parity_smp(model_name, arch, bands):
    smp = _torch_compat.require("segmentation_models_pytorch")
    variables, x, _, _ = _flax_case(arch, bands)
    sd = flax_to_torch_state(variables["params"], variables["batch_stats"], arch=arch, fmt="smp")
    model = getattr(smp, model_name)(arch, encoder_weights=None, in_channels=bands, classes=2)
    missing, unexpected = model.load_state_dict(_to_torch(sd), strict=False)
    assert not unexpected and not any(k.startswith("encoder.") for k in missing)
    assert missing  # the decoder is not part of the export
    # The encoder alone loads strictly with the prefix stripped.
    model.encoder.load_state_dict({k[len("encoder.") :]: v for k, v in _to_torch(sd).items()}, strict=True)
    _assert_loaded(model.encoder, sd, prefix="encoder.")
    model.eval()
    with torch.no_grad():
        feats = model.encoder(_nchw(x))
    # smp's encoder returns [input, stem, layer1, layer2, layer3, layer4].
    np.testing.assert_array_equal(feats[0].numpy().transpose(0, 2, 3, 1), x)
    names = ["stem", "layer1", "layer2", "layer3", "layer4"]
    if model_name != "DeepLabV3Plus":
        _assert_stages(list(feats[1:]), _flax_stages(arch, bands)[1], names)
        return
    # DeepLabV3Plus dilates layer4 (output stride 16). smp gives EVERY conv of layer4
    # dilation 2; torchvision semantics (and rsjax's dilated encoder, which its DeepLabv3+
    # trains with) keep the first block's 3x3 convs at dilation 1. Same weights, different layer4:
    stages = _flax_stages(arch, bands, dilate_layer4=True)[1]
    _assert_stages(list(feats[1:5]), stages[:4], names[:4])
    assert float(np.max(np.abs(feats[5].numpy().transpose(0, 2, 3, 1) - stages[4]))) > 1e-2
    # ... and with the first block set back to torchvision's dilation 1, smp's encoder equals
    # rsjax's dilated one.
    for conv in model.encoder.layer4[0].modules():
        if isinstance(conv, tnn.Conv2d) and conv.kernel_size == (3, 3):
            conv.dilation, conv.padding = (1, 1), (1, 1)
    with torch.no_grad():
        feats = model.encoder(_nchw(x))
    _assert_stages(list(feats[1:]), stages, names)


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


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_exported_files_honour_the_umask(tmp_path, umask, mode):
    # Like any file opened for writing: 0666 minus the umask (not mkstemp's 0600).
    _, variables = _random_variables("tiny", 3)
    sd = flax_to_torch_state(variables["params"], variables["batch_stats"], arch="tiny")
    old = os.umask(umask)
    try:
        paths = save_encoder(sd, tmp_path / "encoder.pt", {"arch": "tiny"})
        (tmp_path / "reference").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "reference").stat().st_mode & 0o777 == mode
    for p in paths.values():
        assert p.stat().st_mode & 0o777 == mode, p
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "encoder.pt",
        "encoder.pt.json",
        "encoder.safetensors",
        "reference",
    ]  # no temporary left


def test_load_state_dict_refuses_pickled_objects(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "obj": types.SimpleNamespace(a=1)}, p)
    with pytest.raises(DataError, match="pickled Python objects"):  # one line; never suggests unpickling
        load_state_dict(p)
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "missing.pt")


def test_importing_export_does_not_import_torch_and_cli_has_flags():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    code = (
        "import sys, rsjax.export, rsjax.export.__main__, rsjax.export.torch_resnet, rsjax.main; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        # matplotlib (~0.5 s) loads with the first picture (rsjax.plots), not with the CLIs
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
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
        meta = {
            "arch": "tiny",
            "in_channels": 4,
            "bands": ["R", "G", "B", "N"],
            "mean": [0.1] * 4,
            "std": [0.2] * 4,
            "step": 12,
            "stem": "standard",
            "scale": 1e-4,
        }
        return variables["params"], variables["batch_stats"], meta

    fake = types.ModuleType("rsjax.checkpoint")
    fake.load_encoder = fake_loader
    monkeypatch.setitem(sys.modules, "rsjax.checkpoint", fake)
    paths = export_encoder(str(tmp_path / "run"), str(tmp_path / "enc.pt"), step=12, fmt="smp")
    assert calls == [(str(tmp_path / "run"), 12)]
    sd = load_state_dict(paths["pt"])
    assert all(k.startswith("encoder.") for k in sd)
    side = json.loads(paths["json"].read_text())
    assert side["format"] == "smp" and side["step"] == 12 and side["bands"] == ["R", "G", "B", "N"]
    assert side["in_channels"] == 4 and side["stem"] == "standard" and side["scale"] == 1e-4
    # No registered dataset: the data fields are present and None, not guessed.
    assert side["wavelengths_nm"] is None and side["gsd_m"] is None and side["product_level"] is None
    assert "timm_pretrained_cfg_overlay" not in side


@pytest.mark.parametrize(
    "dataset,normalization,formula",
    [
        ("ssl4eo_s12", "registry", "x[c] = (x_raw[c] / 10000 - mean[c]) / std[c]"),
        ("eurosat_rgb", "registry", "x[c] = (x_raw[c] / 255 - mean[c]) / std[c]"),
        ("ssl4eo_s12", "scale:10000", "x = x_raw / 10000"),
    ],
)
def test_sidecar_describes_the_input(tmp_path, monkeypatch, dataset, normalization, formula):
    from rsjax.data import registry

    info = registry.get_config_info(dataset)
    n = len(info.bands)
    _, variables = _random_variables("tiny", n)

    def fake_loader(workdir, step):
        return (
            variables["params"],
            variables["batch_stats"],
            {
                "arch": "tiny",
                "in_channels": n,
                "bands": list(info.bands),
                "mean": list(info.mean),
                "std": list(info.std),
                "scale": info.scale,
                "normalization": normalization,
                "step": 1,
                "stem": "standard",
                "method": "simclr",
                "dataset": dataset,
            },
        )

    fake = types.ModuleType("rsjax.checkpoint")
    fake.load_encoder = fake_loader
    monkeypatch.setitem(sys.modules, "rsjax.checkpoint", fake)
    paths = export_encoder(str(tmp_path / "run"), str(tmp_path / "enc.pt"), fmt="timm")
    side = json.loads(paths["json"].read_text())
    assert side["bands"] == list(info.bands)
    assert side["wavelengths_nm"] == list(info.wavelengths_nm) and side["gsd_m"] == list(info.gsd_m)
    if dataset == "ssl4eo_s12":  # Sentinel-2 L1C: B02 (blue) 490 nm at 10 m
        assert side["wavelengths_nm"][side["bands"].index("B02")] == 490.0
        assert side["product_level"] == "Sentinel-2 L1C"
    else:
        assert side["wavelengths_nm"] == [665.0, 560.0, 490.0]  # R, G, B
        assert "L1C" in side["product_level"]
    assert side["normalization"] == normalization and side["normalization_formula"] == formula
    assert "timm_pretrained_cfg_overlay" not in side  # tiny has no timm twin
