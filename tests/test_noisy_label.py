"""Noisy-label pretraining: pure helpers against numpy, the job end to end (checkpoint in the
pretraining layout -> load_encoder and PyTorch export), exact resume, transfer to
UNet / DeepLabv3+ / PSPNet, the study's outputs, clear config errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from _method_check import load_config

from rsjax import checkpoint as ckpt_lib
from rsjax import noisy_label as NL


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


# --- pure helpers ---------------------------------------------------------------------
def test_masks_to_labels_and_remap():
    m = np.array([[0, 1], [9, 3]], np.uint8)
    np.testing.assert_array_equal(NL.masks_to_labels(m, None), m)
    np.testing.assert_array_equal(NL.masks_to_labels(m, 0), [[-1, 0], [8, 2]])
    np.testing.assert_array_equal(NL.masks_to_labels(m, 9), [[0, 1], [-1, 3]])
    lab = np.array([[-1, 0, 1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(NL.remap(lab, NL.SYNTHETIC_MERGE_MAP), [[-1, 0, 1, 1, 1, 2, 2]])


def test_tile_cuts_a_grid_and_keeps_scenes():
    im = np.arange(2 * 8 * 8 * 1).reshape(2, 8, 8, 1)
    lab = im[..., 0] % 5
    ims, labs, sc = NL.tile(im, lab, np.array([7, 9]), 4)
    assert ims.shape == (8, 4, 4, 1) and labs.shape == (8, 4, 4)
    np.testing.assert_array_equal(sc, [7, 7, 7, 7, 9, 9, 9, 9])
    np.testing.assert_array_equal(ims[1], im[0, :4, 4:])
    np.testing.assert_array_equal(labs[6], lab[1, 4:, :4])
    with pytest.raises(ValueError, match="image_size"):
        NL.tile(im, lab, np.array([0, 1]), 16)


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
    n, s, q = jax.device_get(NL.fisher_stats(x.astype(np.float32), y, 4))
    ref = _np_fisher(x.reshape(-1, 5), y.reshape(-1), 4)
    np.testing.assert_allclose(NL.fisher_ratio(n, s, q), ref, rtol=1e-4)
    # statistics add over batches
    parts = [jax.device_get(NL.fisher_stats(x[i:i + 1].astype(np.float32), y[i:i + 1], 4)) for i in range(3)]
    summed = [sum(p[j] for p in parts) for j in range(3)]
    np.testing.assert_allclose(NL.fisher_ratio(*summed), ref, rtol=1e-4)


def test_fisher_pooled_labels_are_class_fractions():
    y = np.zeros((1, 4, 4), np.int64)
    y[0, :, 2:] = 1  # left half class 0, right half class 1
    x = np.zeros((1, 2, 2, 1), np.float32)
    n, s, q = jax.device_get(NL.fisher_stats(x, y, 2))
    np.testing.assert_allclose(n, [2.0, 2.0], atol=1e-5)  # each 2x2 cell is one pure class


def test_weight_stats():
    p0 = {"encoder": {"conv1": {"kernel": np.ones((2, 2))}, "layer1_0": {"conv1": {"kernel": np.ones((3, 3))}},
                      "bn1": {"scale": np.ones(4)}},
          "decoder": {"block0_conv1": {"conv": {"kernel": np.ones((2, 2))}}, "head": {"kernel": np.ones((2, 1))}}}
    p1 = jax.tree.map(lambda a: a * 2.0 if a.ndim > 1 else a, p0)
    st = NL.weight_stats(p1, p0)
    assert set(st) == {"enc_stem", "enc_layer1", "dec_block0", "dec_head"}
    np.testing.assert_allclose(st["enc_stem"]["norm"], 4.0)
    for g in st.values():
        np.testing.assert_allclose(g["rel_change"], 1.0)
    assert all(v["rel_change"] == 0 for v in NL.weight_stats(p0, p0).values())


# --- the job ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(synth_dir, tmp_path_factory):
    c = _smoke(synth_dir)
    c.transfer.decoders = ("unet", "deeplabv3plus", "pspnet")
    c.transfer.total_steps = 2
    wd = tmp_path_factory.mktemp("nl_run") / "wd"
    report = NL.run(c, str(wd))
    return wd, report, c


def test_run_report_and_pictures(run_dir):
    wd, report, c = run_dir
    for name in ("config.json", "metrics.jsonl", "analysis.jsonl", "loss_curve.png", "predictions.png",
                 "label_noise.png", "confusion_pretrain.png", "transfer_miou.png", "eval_report.json"):
        assert (wd / name).exists(), name
    rep = json.loads((wd / "eval_report.json").read_text())
    assert rep["task"] == "noisy_label_pretraining"
    assert 0.05 < rep["metrics"]["pretrain"]["pixel_noise_rate"] < 0.9
    res = report["transfer"]["results"]
    assert set(res) == {"random_init", "pretrained"}
    for tag in res:
        assert set(res[tag]) == {"unet", "deeplabv3plus", "pspnet"}
        for s in res[tag].values():
            assert 0.0 <= s["miou"] <= 1.0 and len(s["per_class_iou"]) == 3
    rows = [json.loads(r) for r in (wd / "analysis.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert set(rows[-1]["fisher"]) == {"enc_c1", "enc_c2", "enc_c3", "enc_c4"} | {f"dec_block{i}" for i in range(5)}
    assert rows[0]["weights"]["enc_layer1"]["rel_change"] == 0.0 < rows[-1]["weights"]["enc_layer1"]["rel_change"]
    metrics = [json.loads(r) for r in (wd / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == c.total_steps and np.isfinite(metrics[-1]["loss"])


def test_checkpoint_is_a_pretraining_checkpoint(run_dir, tmp_path):
    wd, _, c = run_dir
    enc, bs, meta = ckpt_lib.load_encoder(str(wd))
    assert meta["arch"] == "tiny" and meta["in_channels"] == 13 and meta["method"] == "noisy_label"
    assert meta["step"] == c.total_steps and "layer4_0" in enc and "bn1" in bs
    from rsjax.export import torch_export

    out = tmp_path / "enc.pt"
    torch_export.export_encoder(str(wd), str(out), fmt="torchvision")
    sd = torch_export.load_state_dict(str(out))
    assert tuple(sd["conv1.weight"].shape) == (8, 13, 7, 7)


def test_resume_equals_uninterrupted(synth_dir, tmp_path):
    c = _smoke(synth_dir)
    c.transfer.enabled = False
    c.analysis.every = 0
    NL.run(c, str(tmp_path / "full"))
    c.stop_after_steps = 2
    assert NL.run(c, str(tmp_path / "split")) == {"step": 2}
    c.stop_after_steps = 0
    NL.run(c, str(tmp_path / "split"))

    def rows(d):
        return [(r["step"], r["loss"]) for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())]

    assert rows("full") == rows("split")
    a, _, _ = ckpt_lib.load_encoder(str(tmp_path / "full"))
    b, _, _ = ckpt_lib.load_encoder(str(tmp_path / "split"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_study_outputs(synth_dir, tmp_path):
    c = _smoke(synth_dir, "noisy_label_study")
    summary = NL.run_study(c, str(tmp_path / "study"))
    d = tmp_path / "study"
    for name in ("study.json", "study.md", "study_miou.png", "study_layers.png", "eval_report.json"):
        assert (d / name).exists(), name
    arms = [r["arm"] for r in summary["table"]]
    assert arms == ["random_init", "clean", "noise_0.50"]
    clean, noisy = summary["table"][1], summary["table"][2]
    assert clean["pixel_noise_rate"] == 0.0 < noisy["pixel_noise_rate"]
    assert set(summary["analysis"]) == {"clean", "noise_0.50"}
    # every arm is an exportable pretraining run
    _, _, meta = ckpt_lib.load_encoder(str(d / "arms" / "noise_0.50"))
    assert meta["step"] == c.total_steps
    assert "| noise_0.50 |" in (d / "study.md").read_text()


@pytest.mark.parametrize("key,value,match", [
    ("model.num_classes", 4, "model.num_classes"), ("model.in_channels", 3, "in_channels"),
    ("noise.flip_mode", "pixels", "noise.flip_mode"), ("transfer.decoders", ("fpn",), "transfer.decoders"),
])
def test_bad_config_names_the_key(synth_dir, tmp_path, key, value, match):
    c = _smoke(synth_dir)
    node = c
    *parents, last = key.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    with pytest.raises(ValueError, match=match):
        NL.run(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_plateau_rule_survives_resume(synth_dir, tmp_path):
    """ReduceLROnPlateau (config.optimizer.plateau) validated every step with patience 0: the
    split run (stopped after 2 steps, resumed) logs the same losses, learning rates and plateau
    rows as the uninterrupted one, every row replays torch's rule (rsjax.noisy_label.
    plateau_update) from the initial state, and the logged lr is the schedule times the scale set
    by the previous validation."""
    from rsjax import train

    c = _smoke(synth_dir)
    c.transfer.enabled = False
    c.analysis.every = 0
    p = c.optimizer.plateau
    p.enabled, p.every, p.patience, p.val_fraction = True, 1, 0, 0.25
    NL.run(c, str(tmp_path / "full"))
    c.stop_after_steps = 2
    assert NL.run(c, str(tmp_path / "split")) == {"step": 2}
    c.stop_after_steps = 0
    NL.run(c, str(tmp_path / "split"))

    def read(d, name):
        return [json.loads(r) for r in (tmp_path / d / name).read_text().splitlines()]

    m_full, m_split = read("full", "metrics.jsonl"), read("split", "metrics.jsonl")
    assert [(r["step"], r["loss"], r["lr"]) for r in m_full] == [(r["step"], r["loss"], r["lr"]) for r in m_split]
    p_full, p_split = read("full", "plateau.jsonl"), read("split", "plateau.jsonl")
    assert p_full == p_split and [r["step"] for r in p_full] == [1, 2, 3, 4]
    st = {"scale": 1.0, "best": -np.inf, "num_bad": 0, "cooldown_counter": 0, "num_evals": 0}
    for r in p_split:
        st = NL.plateau_update(st, r["val_miou"], base_lr=c.optimizer.lr, patience=0)
        st = {k: float(np.float32(v)) if k in ("scale", "best") else v for k, v in st.items()}  # stored float32
        assert (r["lr_scale"], r["best"], r["num_bad"]) == (st["scale"], st["best"], st["num_bad"])
    sched = train.make_schedule(c)
    scale_before = {r["step"] + 1: r["lr_scale"] for r in p_full}
    for r in m_full:
        np.testing.assert_allclose(r["lr"], float(sched(r["step"] - 1)) * scale_before.get(r["step"], 1.0),
                                   rtol=1e-6)
