"""Noisy-label pretraining on the one loop: pure helpers against numpy, the job end to end
(checkpoint in the pretraining layout -> load_encoder and PyTorch export), the acceptance test
(``configs/noisy_label.py:smoke`` stopped with ``stop_after_steps`` and rerun gives the report of
an uninterrupted run), refused non-finite steps, the plateau rule across a resume, the study's
outputs, clear config errors before anything is written."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from _method_check import load_config

from rsjax import checkpoint as ckpt_lib
from rsjax import errors, optim
from rsjax.data import segmentation as SD
from rsjax.evaluate import layers as LY
from rsjax.jobs import noisy_label as NL
from rsjax.jobs import noisy_label_study as NLS


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from rsjax.data import build

    d = str(tmp_path_factory.mktemp("tfds_nl"))
    build.ensure_built("rs_synthetic", d, config="tiny")
    return d


def _smoke(synth_dir, name="noisy_label"):
    c = load_config(name)
    c.data.data_dir = synth_dir
    return c


def _pretrain_only(c):
    c.transfer.enabled = False
    c.analysis.every = 0
    return c


def _read(path):
    return [json.loads(r) for r in path.read_text().splitlines() if r.strip()]


def _load_encoder(path):
    if hasattr(ckpt_lib, "load_encoder"):
        return ckpt_lib.load_encoder(str(path))
    return ckpt_lib.load_encoder(str(path))


# --- pure helpers ---------------------------------------------------------------------
def test_masks_to_labels_and_remap():
    m = np.array([[0, 1], [9, 3], [255, 2]], np.uint8)
    np.testing.assert_array_equal(SD.masks_to_labels(m, None), m)
    # ignore_value 0 = mmseg's reduce_zero_label: 0 and 255 ignored, v -> v - 1
    np.testing.assert_array_equal(SD.masks_to_labels(m, 0), [[-1, 0], [8, 2], [-1, 1]])
    np.testing.assert_array_equal(SD.masks_to_labels(m, 9), [[0, 1], [-1, 3], [255, 2]])
    lab = np.array([[-1, 0, 1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(SD.remap(lab, SD.SYNTHETIC_MERGE_MAP), [[-1, 0, 1, 1, 1, 2, 2]])


def test_tile_cuts_a_grid_and_keeps_scenes():
    im = np.arange(2 * 8 * 8 * 1).reshape(2, 8, 8, 1)
    lab = im[..., 0] % 5
    ims, labs, sc = SD.tile(im, lab, np.array([7, 9]), 4)
    assert ims.shape == (8, 4, 4, 1) and labs.shape == (8, 4, 4)
    np.testing.assert_array_equal(sc, [7, 7, 7, 7, 9, 9, 9, 9])
    np.testing.assert_array_equal(ims[1], im[0, :4, 4:])
    np.testing.assert_array_equal(labs[6], lab[1, 4:, :4])
    with pytest.raises(errors.ConfigError, match="image_size"):
        SD.tile(im, lab, np.array([0, 1]), 16)


def test_holdout_split():
    tr, va = SD.holdout_split(10, 0.2, 0, key="optimizer.plateau.val_fraction")
    assert len(va) == 2 and sorted(np.concatenate([tr, va]).tolist()) == list(range(10))
    tr, va = SD.holdout_split(10, 0.0, 0, key="x")
    assert len(va) == 0 and len(tr) == 10
    with pytest.raises(errors.ConfigError, match="config.optimizer.plateau.val_fraction"):
        SD.holdout_split(1, 0.5, 0, key="optimizer.plateau.val_fraction")


def _np_fisher(x, y, k):
    """Hard-label Fisher ratio tr(S_b) / tr(S_w) by a plain loop."""
    mu = x[y >= 0].mean(0)
    sb = sw = 0.0
    for c in range(k):
        xc = x[y == c]
        if len(xc) == 0:
            continue
        mc = xc.mean(0)
        sb += len(xc) * np.sum((mc - mu) ** 2)
        sw += np.sum((xc - mc) ** 2)
    return sb / sw


def test_fisher_ratio_matches_numpy_at_full_resolution():
    rng = np.random.default_rng(0)
    y = rng.integers(-1, 4, (3, 6, 6))
    x = rng.normal(size=(3, 6, 6, 5)) + 0.7 * np.eye(5)[np.maximum(y, 0)]
    n, s, q = jax.device_get(LY.fisher_stats(x.astype(np.float32), y, 4))
    ref = _np_fisher(x.reshape(-1, 5), y.reshape(-1), 4)
    np.testing.assert_allclose(LY.fisher_ratio(n, s, q), ref, rtol=1e-4)
    # statistics add over batches
    parts = [jax.device_get(LY.fisher_stats(x[i : i + 1].astype(np.float32), y[i : i + 1], 4)) for i in range(3)]
    summed = [sum(p[j] for p in parts) for j in range(3)]
    np.testing.assert_allclose(LY.fisher_ratio(*summed), ref, rtol=1e-4)


def test_fisher_pooled_labels_are_class_fractions():
    y = np.zeros((1, 4, 4), np.int64)
    y[0, :, 2:] = 1  # left half class 0, right half class 1
    x = np.zeros((1, 2, 2, 1), np.float32)
    n, s, q = jax.device_get(LY.fisher_stats(x, y, 2))
    np.testing.assert_allclose(n, [2.0, 2.0], atol=1e-5)  # each 2x2 cell is one pure class


def test_weight_stats():
    p0 = {
        "encoder": {
            "conv1": {"kernel": np.ones((2, 2))},
            "layer1_0": {"conv1": {"kernel": np.ones((3, 3))}},
            "bn1": {"scale": np.ones(4)},
        },
        "decoder": {"block0_conv1": {"conv": {"kernel": np.ones((2, 2))}}, "head": {"kernel": np.ones((2, 1))}},
    }
    p1 = jax.tree.map(lambda a: a * 2.0 if a.ndim > 1 else a, p0)
    st = LY.weight_stats(p1, p0)
    assert set(st) == {"enc_stem", "enc_layer1", "dec_block0", "dec_head"}
    np.testing.assert_allclose(st["enc_stem"]["norm"], 4.0)
    for g in st.values():
        np.testing.assert_allclose(g["rel_change"], 1.0)
    assert all(v["rel_change"] == 0 for v in LY.weight_stats(p0, p0).values())


# --- the job: acceptance (stop + rerun == uninterrupted) --------------------------------
@pytest.fixture(scope="module")
def full_run(synth_dir, tmp_path_factory):
    c = _smoke(synth_dir)
    wd = tmp_path_factory.mktemp("nl_full") / "wd"
    return wd, NL.run(c, str(wd)), c


def test_run_report_and_pictures(full_run):
    wd, report, c = full_run
    for name in (
        "config.json",
        "predictions.png",
        "label_noise.png",
        "confusion_pretrain.png",
        "transfer_miou.png",
        "eval_report.json",
        "pretrain/metrics.jsonl",
        "pretrain/analysis.jsonl",
        "pretrain/loss_curve.png",
        "transfer_pretrained_unet/metrics.jsonl",
        "transfer_random_init_unet/metrics.jsonl",
    ):
        assert (wd / name).exists(), name
    rep = json.loads((wd / "eval_report.json").read_text())
    assert rep["task"] == "noisy_label_pretraining"
    assert 0.05 < rep["metrics"]["pretrain"]["pixel_noise_rate"] < 0.9
    res = report["transfer"]["results"]
    assert set(res) == {"random_init", "pretrained"}
    for tag in res:
        assert set(res[tag]) == {"unet"}
        s = res[tag]["unet"]
        assert 0.0 <= s["miou"] <= 1.0 and len(s["per_class_iou"]) == 3
        assert [r["step"] for r in s["loss_curve"]] == list(range(1, c.transfer.total_steps + 1))
    rows = _read(wd / "pretrain" / "analysis.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert set(rows[-1]["fisher"]) == {"enc_c1", "enc_c2", "enc_c3", "enc_c4"} | {f"dec_block{i}" for i in range(5)}
    assert rows[0]["weights"]["enc_layer1"]["rel_change"] == 0.0 < rows[-1]["weights"]["enc_layer1"]["rel_change"]
    losses = [r for r in _read(wd / "pretrain" / "metrics.jsonl") if "loss" in r]
    assert losses[-1]["step"] == c.total_steps and np.isfinite(losses[-1]["loss"])


def test_checkpoint_is_a_pretraining_checkpoint(full_run, tmp_path):
    wd, _, c = full_run
    enc, bs, meta = _load_encoder(wd / "pretrain")
    assert meta["arch"] == "tiny" and meta["in_channels"] == 13
    assert meta["step"] == c.total_steps and "layer4_0" in enc and "bn1" in bs
    from rsjax.export import torch_export

    out = tmp_path / "enc.pt"
    torch_export.export_encoder(str(wd / "pretrain"), str(out), fmt="torchvision")
    sd = torch_export.load_state_dict(str(out))
    assert tuple(sd["conv1.weight"].shape) == (8, 13, 7, 7)


def test_stop_and_rerun_equals_uninterrupted(full_run, synth_dir, tmp_path):
    """Acceptance: configs/noisy_label.py:smoke with stop_after_steps=2 stops in the pretraining
    phase; the rerun without it continues there and ends with the report (pretraining and
    transfer scores) and metrics of the uninterrupted run."""
    wd_full, report_full, _ = full_run
    c = _smoke(synth_dir)
    c.stop_after_steps = 2
    assert NL.run(c, str(tmp_path / "split")) == {"stopped": "pretrain", "step": 2}
    assert not (tmp_path / "split" / "eval_report.json").exists()
    c.stop_after_steps = 0
    report = NL.run(c, str(tmp_path / "split"))
    assert report == report_full
    full = json.loads((wd_full / "eval_report.json").read_text())["metrics"]
    split = json.loads((tmp_path / "split" / "eval_report.json").read_text())["metrics"]
    assert split == full
    for phase in ("pretrain", "transfer_pretrained_unet"):
        key = lambda r: (r["step"], r.get("loss"), r.get("lr"))  # noqa: E731
        assert list(map(key, _read(tmp_path / "split" / phase / "metrics.jsonl"))) == list(
            map(key, _read(wd_full / phase / "metrics.jsonl"))
        )
    assert _read(tmp_path / "split" / "pretrain" / "analysis.jsonl") == _read(wd_full / "pretrain" / "analysis.jsonl")
    a, _, _ = _load_encoder(wd_full / "pretrain")
    b, _, _ = _load_encoder(tmp_path / "split" / "pretrain")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_nonfinite_steps_are_refused(synth_dir, tmp_path, monkeypatch):
    """RSJAX_DEBUG_NONFINITE_FROM_STEP=3: steps 3 and 4 give a NaN loss; both are refused
    (events.jsonl of the pretraining phase) and the parameters stay those of step 2."""
    c = _pretrain_only(_smoke(synth_dir))
    monkeypatch.setenv("RSJAX_DEBUG_NONFINITE_FROM_STEP", "3")
    NL.run(c, str(tmp_path / "wd"))
    events = [e for e in _read(tmp_path / "wd" / "pretrain" / "events.jsonl") if e.get("kind") == "nonfinite"]
    assert [e["step"] for e in events] == [3, 4]


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("model.num_classes", 4, "config.model.num_classes"),
        ("model.in_channels", 3, "config.model.in_channels"),
        ("noise.flip_mode", "pixels", "config.noise.flip_mode"),
        ("transfer.decoders", ("fpn",), "config.transfer.decoders"),
        ("optimizer.name", "adamx", "config.optimizer.name"),
        ("transfer.optimizer.lr", -1.0, "config.transfer.optimizer.lr"),
        ("transfer.freeze_encoder", True, "config.transfer.optimizer.freeze"),
    ],
)
def test_bad_config_names_the_key(synth_dir, tmp_path, key, value, match):
    c = _smoke(synth_dir)
    node = c
    *parents, last = key.split(".")
    for p in parents:
        node = node[p]
    with node.unlocked():
        node[last] = value
    with pytest.raises(errors.ConfigError, match=match):
        NL.run(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_plateau_rule_survives_resume(synth_dir, tmp_path):
    """ReduceLROnPlateau (config.optimizer.plateau, a train.Hook) validated every step with
    patience 0: the split run (stopped after 2 steps, resumed) logs the same losses and plateau
    rows as the uninterrupted one, and every row replays torch's rule (rsjax.optim.plateau_update)
    from the initial state."""
    c = _pretrain_only(_smoke(synth_dir))
    p = c.optimizer.plateau
    p.enabled, p.every, p.patience, p.val_fraction = True, 1, 0, 0.25
    NL.run(c, str(tmp_path / "full"))
    c.stop_after_steps = 2
    assert NL.run(c, str(tmp_path / "split"))["stopped"] == "pretrain"
    c.stop_after_steps = 0
    NL.run(c, str(tmp_path / "split"))

    m_full, m_split = (_read(tmp_path / d / "pretrain" / "metrics.jsonl") for d in ("full", "split"))
    assert m_full == m_split
    rows = [r for r in m_split if "val_miou" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    st = {"scale": 1.0, "best": -np.inf, "num_bad": 0, "cooldown_counter": 0, "num_evals": 0}
    for r in rows:
        st = optim.plateau_update(st, r["val_miou"], base_lr=c.optimizer.lr, patience=0)
        st = {k: float(np.float32(v)) if k in ("scale", "best") else v for k, v in st.items()}  # stored float32
        assert (r["lr_scale"], r["best"], r["num_bad"]) == (st["scale"], st["best"], st["num_bad"])


def test_study_outputs(synth_dir, tmp_path):
    c = _smoke(synth_dir, "noisy_label_study")
    c.transfer.decoders = ("pspnet",)  # unet: full_run; deeplabv3plus: the segmentation job tests
    c.study.include_random_init = False
    summary = NLS.run(c, str(tmp_path / "study"))
    d = tmp_path / "study"
    for name in (
        "study.json",
        "study.md",
        "study_miou.png",
        "study_layers.png",
        "eval_report.json",
        "clean/pretrain/analysis.jsonl",
        "noise_0.50/transfer_pspnet/metrics.jsonl",
    ):
        assert (d / name).exists(), name
    assert [r["arm"] for r in summary["table"]] == ["clean", "noise_0.50"]
    clean, noisy = summary["table"]
    assert clean["pixel_noise_rate"] == 0.0 < noisy["pixel_noise_rate"]
    assert set(clean["downstream_miou"]) == {"pspnet"}
    assert set(summary["analysis"]) == {"clean", "noise_0.50"}
    # every arm is an exportable pretraining run
    _, _, meta = _load_encoder(d / "noise_0.50" / "pretrain")
    assert meta["step"] == c.total_steps
    assert "| noise_0.50 |" in (d / "study.md").read_text()
