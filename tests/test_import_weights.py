"""Importing published PyTorch ResNets (timm / torchvision naming) as rsjax workdirs.

References are independent of the import code: timm's own ResNet (``timm.create_model``, when
it imports; ``_torch_compat.require`` skips naming the failure otherwise) and the torch
reference ResNet with torchvision names (``rsjax.export.torch_resnet``, written separately from
the Flax model). Round trips compare tensors bit for bit; features compare the Flax forward of
the imported encoder with the torch forward of the source network, stage by stage.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import _torch_compat  # noqa: E402  (tests/: timm imports; skips naming the failure)

from rsjax.data import registry  # noqa: E402
from rsjax.export import torch_resnet  # noqa: E402
from rsjax.export.torch_export import export_encoder, load_state_dict  # noqa: E402
from rsjax.export.torch_import import torch_to_flax_state  # noqa: E402
from rsjax.import_weights import import_weights  # noqa: E402
from rsjax.models.resnet import create_encoder  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
HEAD = ("fc.weight", "fc.bias")


def _randomize(net, seed=0):
    """Random weights AND BatchNorm statistics (eval mode reads the running stats; timm zero-inits
    the last BN of each block, which would hide the residual branch)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in net.state_dict().items():
        if not v.is_floating_point():
            sd[k] = torch.zeros_like(v)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + 1.5 * torch.rand(v.shape, generator=g)
        elif k.endswith(("running_mean", ".bias")):
            sd[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif v.ndim == 4:  # conv, kaiming normal (fan_out)
            fan_out = v.shape[0] * v.shape[2] * v.shape[3]
            sd[k] = torch.randn(v.shape, generator=g) * (2.0 / fan_out) ** 0.5
        elif v.ndim == 1:  # BN scale
            sd[k] = 0.5 + 0.5 * torch.rand(v.shape, generator=g)
        else:  # fc
            sd[k] = 0.01 * torch.randn(v.shape, generator=g)
    net.load_state_dict(sd, strict=True)
    return net.eval()


def _reference_net(arch, bands, seed=0):
    net = torch_resnet.reference_resnet(arch, bands)
    net.fc = torch.nn.Linear(net.num_features, 10)  # a classifier head, as published files carry
    return _randomize(net, seed)


def _timm_net(arch, bands, seed=0):
    timm = _torch_compat.require("timm")
    return _randomize(timm.create_model(arch, pretrained=False, in_chans=bands, num_classes=10), seed)


def _state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _run(args, **kw):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600, **kw)


def _torch_stages(net, x_nhwc, kind):
    """(pooled, [layer1..layer4]) of the source network, eval mode, as NHWC numpy."""
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        act = net.act1 if kind == "timm" else net.relu
        h = net.maxpool(act(net.bn1(net.conv1(x))))
        feats = []
        for i in range(1, 5):
            h = getattr(net, f"layer{i}")(h)
            feats.append(h.numpy().transpose(0, 2, 3, 1))
        pooled = h.mean(dim=(2, 3)).numpy()
        if kind == "timm":  # timm's own end-to-end forward without the head equals the stage path
            net.reset_classifier(0)
            np.testing.assert_allclose(net(x).numpy(), pooled, rtol=0, atol=1e-6)
    return pooled, feats


_APPLY = {}


def _flax_stages(arch, params, batch_stats, x):
    if arch not in _APPLY:
        model = create_encoder(arch)
        _APPLY[arch] = jax.jit(lambda v, x: model.apply(v, x, train=False, return_features=True))
    pooled, feats = _APPLY[arch]({"params": params, "batch_stats": batch_stats}, x)
    return np.asarray(pooled), [np.asarray(f) for f in feats]


# ---------------------------------------------------------------------------------------------
# An imported workdir built by the CLI, shared by the round-trip and the evaluation-job tests.


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    d = tmp_path_factory.mktemp("import")
    net = _reference_net("resnet18", 13, seed=3)
    src = _state(net)
    torch.save(src, d / "moco.pt")
    out = d / "wd"
    r = _run(
        [
            "-m",
            "rsjax.import_weights",
            f"--weights={d / 'moco.pt'}",
            "--format=timm",
            "--arch=resnet18",
            "--in_channels=13",
            f"--workdir={out}",
            "--normalization=scale:10000",
            "--data=ssl4eo_s12",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ignored (classifier head, not part of the encoder): fc.bias, fc.weight" in r.stdout
    return d, out, src


def test_cli_workdir_layout(imported):
    _, out, _ = imported
    config = json.loads((out / "config.json").read_text())
    assert config["job"] == "import_weights"
    assert config["model"] == {"name": "resnet18", "stem": "standard", "in_channels": 13}
    assert config["data"]["normalization"] == "scale:10000" and config["data"]["name"] == "ssl4eo_s12"
    source = json.loads((out / "imported_from.json").read_text())
    assert source["format"] == "timm" and source["ignored_keys"] == ["fc.bias", "fc.weight"]
    assert len(source["sha256"]) == 64 and source["bands"] == list(registry.S2_BANDS)
    for p in (out, out / "config.json", out / "imported_from.json"):
        assert p.stat().st_mode & 0o044 == 0o044, p  # readable by others
    assert not [p for p in out.parent.iterdir() if ".import-" in p.name]  # no leftover temp dir


def test_cli_round_trip_export_is_bit_identical(imported, tmp_path):
    """torch (timm names) -> rsjax workdir -> ``python -m rsjax.export --format=timm``: same tensors."""
    _, out, src = imported
    r = _run(["-m", "rsjax.export", f"--workdir={out}", f"--out={tmp_path / 'back.pt'}", "--format=timm"])
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ("back.pt", "back.safetensors"):
        back = load_state_dict(tmp_path / f)
        assert set(back) == set(src) - set(HEAD)
        for k, v in back.items():
            assert v.dtype == src[k].dtype and torch.equal(v, src[k]), k
    sidecar = json.loads((tmp_path / "back.pt.json").read_text())
    assert sidecar["normalization"] == "scale:10000" and sidecar["scale"] == 10000.0
    assert sidecar["mean"] == [0.0] * 13 and sidecar["std"] == [1.0] * 13
    assert sidecar["imported_from"]["format"] == "timm" and sidecar["dataset"] == "ssl4eo_s12"


def test_timm_round_trip_is_bit_identical(tmp_path):
    """A random timm ResNet-18 (13 bands) through .safetensors -> rsjax -> timm export."""
    from safetensors.torch import save_file

    net = _timm_net("resnet18", 13, seed=1)
    src = _state(net)
    save_file(src, str(tmp_path / "w.safetensors"))
    res = import_weights(
        str(tmp_path / "w.safetensors"),
        str(tmp_path / "wd"),
        fmt="timm",
        arch="resnet18",
        in_channels=13,
        normalization="scale:10000",
    )
    assert res["report"]["ignored"] == ["fc.bias", "fc.weight"]
    paths = export_encoder(str(tmp_path / "wd"), str(tmp_path / "back.pt"), fmt="timm")
    back = load_state_dict(paths["safetensors"])
    assert set(back) == set(src) - set(HEAD)
    for k, v in back.items():
        assert torch.equal(v, src[k]), k
    # ... and the export loads back into timm strictly (head removed).
    net.reset_classifier(0)
    net.load_state_dict(back, strict=True)


@pytest.mark.parametrize(
    "kind,arch,bands",
    [
        ("reference", "resnet18", 13),
        ("timm", "resnet18", 13),
        ("timm", "resnet50", 3),
    ],
)
def test_imported_features_equal_source_forward(kind, arch, bands):
    net = (_timm_net if kind == "timm" else _reference_net)(arch, bands, seed=2)
    params, batch_stats, report = torch_to_flax_state(
        _state(net), arch=arch, in_channels=bands, fmt=kind if kind == "timm" else "torchvision"
    )
    assert report["ignored"] == ["fc.bias", "fc.weight"]
    x = np.random.default_rng(0).normal(size=(2, 64, 64, bands)).astype(np.float32)
    t_pooled, t_feats = _torch_stages(net, x, kind)
    f_pooled, f_feats = _flax_stages(arch, params, batch_stats, x)
    for name, a, b in zip(
        ["layer1", "layer2", "layer3", "layer4", "pooled"], f_feats + [f_pooled], t_feats + [t_pooled]
    ):
        assert a.shape == b.shape, name
        scale = max(1.0, float(np.max(np.abs(b))))
        assert np.max(np.abs(a - b)) <= 1e-5 * scale, (name, float(np.max(np.abs(a - b))), scale)


# ---------------------------------------------------------------------------------------------
# Refusals: named keys, nothing written.


def _ref_state(arch="resnet18", bands=13):
    return _state(_reference_net(arch, bands))


@pytest.mark.parametrize(
    "edit,match",
    [
        (
            lambda sd: sd.pop("layer2.0.downsample.1.running_var"),
            r"missing keys \(1\): layer2.0.downsample.1.running_var",
        ),
        (
            lambda sd: sd.update({"layer1.0.se.fc1.weight": torch.zeros(4, 64, 1, 1)}),
            r"unexpected keys \(1\): layer1.0.se.fc1.weight",
        ),
        (
            lambda sd: sd.update({"conv1.weight": torch.zeros(64, 12, 7, 7)}),
            r"13 input bands.*--in_channels=13.*: conv1.weight \(64, 12, 7, 7\) \(want \(64, 13, 7, 7\)\)",
        ),
        (lambda sd: sd.update({"bn1.weight": torch.zeros(64, dtype=torch.int64)}), r"not floating point: bn1.weight"),
    ],
)
def test_bad_state_dicts_are_refused_naming_keys(edit, match):
    sd = _ref_state()
    edit(sd)
    with pytest.raises(ValueError, match=match):
        torch_to_flax_state(sd, arch="resnet18", in_channels=13, fmt="timm", source="w.pt")


def test_wrong_arch_and_prefixed_keys_are_refused():
    with pytest.raises(ValueError, match=r"not a timm resnet18 encoder.*unexpected keys.*layer1.0.conv3.weight"):
        torch_to_flax_state(_ref_state("resnet50", 3), arch="resnet18", in_channels=3, fmt="timm")
    prefixed = {"module." + k: v for k, v in _ref_state().items()}
    with pytest.raises(ValueError, match=r"missing keys \(\d+\).*unexpected keys.*module.bn1.bias.*'module.'"):
        torch_to_flax_state(prefixed, arch="resnet18", in_channels=13, fmt="timm")


def test_wrapped_bf16_weights_import_exactly():
    sd = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in _ref_state().items()}
    params, _, report = torch_to_flax_state({"state_dict": sd}, arch="resnet18", in_channels=13, fmt="torchvision")
    assert report["source_dtypes"] == ["bfloat16"]
    want = sd["layer3.1.conv2.weight"].float().numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(params["layer3_1"]["conv2"]["kernel"], want)


def test_cli_inputs_are_checked_before_writing(tmp_path):
    from safetensors.torch import save_file

    w = tmp_path / "w.safetensors"
    save_file(_ref_state(), str(w))
    kw = dict(fmt="timm", arch="resnet18", in_channels=13)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("earlier work")
    from rsjax.errors import WorkdirError

    with pytest.raises(WorkdirError, match=r"--workdir=.*full already exists and is not empty"):
        import_weights(str(w), str(full), **kw)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match=r"--normalization: data.normalization='scale:0'"):
        import_weights(str(w), str(tmp_path / "a"), normalization="scale:0", **kw)
    with pytest.raises(ValueError, match=r"--data='eurosat_rgb' has 3 bands .* --in_channels=13"):
        import_weights(str(w), str(tmp_path / "a"), data="eurosat_rgb", **kw)
    with pytest.raises(ValueError, match=r"--arch='resnet34'"):
        import_weights(str(w), str(tmp_path / "a"), fmt="timm", arch="resnet34", in_channels=13)
    with pytest.raises(FileNotFoundError, match=r"--weights=.*nope.pt"):
        import_weights(str(tmp_path / "nope.pt"), str(tmp_path / "a"), **kw)
    with pytest.raises(ValueError, match=r"missing keys"):  # mapping fails: nothing left behind
        import_weights(str(w), str(tmp_path / "a"), fmt="timm", arch="resnet50", in_channels=13)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "w.safetensors"]


class _NotATensor:
    """Pickled beside the tensors: what torch's weights_only=True refuses to load."""


def test_junk_weight_files_are_one_line_errors_that_never_suggest_unpickling(tmp_path):
    """Issue 27 fault 4: a pickled object, a truncated .safetensors and a junk .pt are refused by
    the CLI in one line with exit 2; nothing there invites weights_only=False."""
    import torch
    from safetensors.torch import save_file

    pickled = tmp_path / "pickled.pt"
    torch.save({"conv1.weight": torch.zeros(2), "obj": _NotATensor()}, pickled)
    good = tmp_path / "good.safetensors"
    save_file(_ref_state(), str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:200])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    for path, want in (
        (pickled, "pickled Python objects"),
        (truncated, "not a readable .safetensors"),
        (junk, "not a readable PyTorch state dict"),
    ):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "rsjax.import_weights",
                f"--weights={path}",
                "--format=timm",
                "--arch=resnet18",
                "--in_channels=13",
                f"--workdir={tmp_path / 'wd'}",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
        assert lines[0].startswith(f"rsjax.import_weights: error: --weights={path}") or str(path) in lines[0]
        assert want in lines[0] and "weights_only=False" not in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "wd").exists()


# ---------------------------------------------------------------------------------------------
# data.normalization


def test_scale_normalization_is_raw_over_s():
    info = registry.get_config_info("eurosat_ms")
    raw = np.random.default_rng(0).integers(0, 12000, size=(3, 4, 4, 13)).astype(np.uint16)
    x = registry.normalize(raw, registry.with_normalization(info, "scale:10000"))
    np.testing.assert_allclose(x, raw.astype(np.float64) / 10000.0, rtol=2e-7, atol=0)
    std = registry.normalize(raw, registry.with_normalization(info, "registry"))
    ref = (raw / 10000.0 - np.asarray(info.mean)) / np.asarray(info.std)
    np.testing.assert_allclose(std, ref, rtol=1e-5, atol=1e-5)
    assert registry.data_info({"name": "eurosat_ms", "normalization": "scale:1e4"}).std == (1.0,) * 13
    assert registry.data_info({"name": "eurosat_ms"}) is info
    assert registry.normalization_name("scale:1e4") == "scale:10000"
    for bad in ("scale", "scale:-1", "scale:x", "zscore"):
        with pytest.raises(ValueError, match=r"data.normalization=.*expected 'registry'"):
            registry.parse_normalization(bad)


def test_job_with_other_normalization_is_refused(imported, tmp_path):
    from conftest import load_config

    from rsjax.evaluate import encoders

    config = load_config("eval_eurosat", "smoke")
    config.pretrained = str(imported[1])
    config.model.name = "resnet18"
    with pytest.raises(
        ValueError,
        match=r"input normalization 'scale:10000' \(checkpoint\) vs "
        r"config.data.normalization='registry'",
    ):
        encoders.load_pretrained(config)
    config.data.normalization = "scale:10000"
    params, _, meta = encoders.load_pretrained(config)
    assert meta["method"] == "imported" and meta["normalization"] == "scale:10000"
    assert registry.data_info(config.data).scale == 10000.0 and registry.data_info(config.data).mean == (0.0,) * 13


def test_imported_workdir_runs_eval_eurosat_smoke(imported, tmp_path):
    _, out, _ = imported
    wd = tmp_path / "eval"
    r = _run(
        [
            "-m",
            "rsjax.main",
            "--config=configs/eval_eurosat.py:smoke",
            f"--config.pretrained={out}",
            "--config.model.name=resnet18",
            "--config.data.normalization=scale:10000",
            "--config.finetune.total_steps=0",
            f"--config.data.data_dir={tmp_path / 'tfds'}",
            f"--workdir={wd}",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "eval_report.json").read_text())
    enc = report["metrics"]["encoder"]
    assert enc["init"] == "pretrained" and enc["method"] == "imported" and enc["arch"] == "resnet18"
    assert report["config"]["data"]["normalization"] == "scale:10000"
    assert os.path.exists(wd / "confusion_linear.png")
