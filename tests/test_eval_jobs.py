"""Downstream evaluation jobs: the binary BCE + Dice loss against a numpy loop, the EuroSAT
folder split, pretrained-encoder plug-in and its refusal of mismatching checkpoints, a
segmentation job end to end on synthetic data with a pretrained encoder, and small runs on
real data (EuroSAT jpgs, LEVIR-CD crops, Potsdam / Vaihingen crops) when ../shared/data exists.

The :smoke variant of every eval config also runs end to end in tests/test_train.py.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config  # configs.<name> imported as a module

from rsjax import errors, losses
from rsjax.data import folders
from rsjax.evaluate import classification as cls
from rsjax.evaluate import classifier as clf
from rsjax.evaluate import encoders
from rsjax.jobs import eval_classification
from rsjax.models import resnet as R

REPO = pathlib.Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------
# bce_dice
# --------------------------------------------------------------------------------------
def ref_bce_dice(logits, labels, ignore_index, dice_weight, pos_weight=1.0):
    out = []
    for b in range(logits.shape[0]):
        bce = inter = sp = sy = 0.0
        n = 0
        for l, y in zip(logits[b].ravel().tolist(), labels[b].ravel().tolist()):
            if ignore_index is not None and y == ignore_index:
                continue
            p = 1.0 / (1.0 + math.exp(-l))
            bce += -(pos_weight * y * math.log(p) + (1 - y) * math.log(1 - p))
            inter += p * y
            sp += p
            sy += y
            n += 1
        if n == 0:
            out.append(0.0)
            continue
        dice = (2 * inter + 1.0) / (sp + sy + 1.0)
        out.append(bce / n + dice_weight * (1 - dice))
    return np.asarray(out)


@pytest.mark.parametrize("ignore_index,jit", [(None, False), (255, True)])
def test_bce_dice_matches_loop(ignore_index, jit):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 6)).astype(np.float32) * 2
    labels = (rng.random((3, 5, 6)) < 0.3).astype(np.int32)
    if ignore_index is not None:
        labels[rng.random(labels.shape) < 0.2] = ignore_index
        labels[2] = ignore_index  # an example with no valid pixel -> 0
    fn = lambda l: losses.bce_dice(l, labels, ignore_index=ignore_index, dice_weight=0.7)  # noqa: E731
    fn = jax.jit(fn) if jit else fn
    np.testing.assert_allclose(fn(logits), ref_bce_dice(logits, labels, ignore_index, 0.7), rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda l: fn(l).sum())(jnp.asarray(logits))
    assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("reduction,jit", [("example", False), ("batch", True)])
def test_bce_dice_pos_weight_matches_loop(reduction, jit):
    """The change pixels' BCE weighted by pos_weight (torch BCEWithLogitsLoss's pos_weight), against
    the loop; the weight may be a traced scalar; 1 is the unweighted loss."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 6)).astype(np.float32) * 2
    labels = (rng.random((3, 5, 6)) < 0.1).astype(np.int32)
    labels[rng.random(labels.shape) < 0.2] = 255
    fn = (
        jax.jit(losses.bce_dice, static_argnames=("ignore_index", "dice_weight", "reduction"))
        if jit
        else losses.bce_dice
    )
    for w in (1.0, 7.5, jnp.float32(0.25)):
        got = fn(logits, labels, ignore_index=255, dice_weight=0.0, reduction=reduction, pos_weight=w)
        ref = ref_bce_dice(logits, labels, 255, 0.0, float(w))  # dice_weight 0: the BCE alone
        if reduction == "batch":  # one mean over every valid pixel of the batch
            valid = labels != 255
            ref = float(np.sum(ref * valid.sum((1, 2))) / valid.sum())
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        losses.bce_dice(logits, labels, ignore_index=255, pos_weight=1.0),
        losses.bce_dice(logits, labels, ignore_index=255),
    )


def test_change_detection_pos_weight_from_the_training_change_maps(tmp_path, monkeypatch):
    """loss.pos_weight_power > 0: the job derives pos_weight = ((1 - f) / f) ** power from the
    change fraction f of the training maps (ignored pixels left out; not the test maps), trains
    with it and reports it; power 0 is the unweighted loss; an old change-detection workdir
    without the key reads as power 0."""
    from rsjax import workdir as workdir_lib
    from rsjax.data import registry
    from rsjax.jobs import change_detection
    from rsjax.tasks.change_detection import positive_weight

    rng = np.random.default_rng(3)

    def split(n, rate):
        return {
            "a": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            "b": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            "change": (rng.random((n, 32, 32)) < rate).astype(np.uint8),
        }

    train, test = split(8, 0.03), split(4, 0.5)
    f = train["change"].mean()
    seen = []
    real = losses.bce_dice
    monkeypatch.setattr(losses, "bce_dice", lambda *a, **k: seen.append(k["pos_weight"]) or real(*a, **k))
    for power in (0.5,):  # power 0 end to end: the cd_levir smoke runs of tests/test_train.py
        config = load_config("cd_levir.py")
        config.model.name = "tiny"
        config.total_steps = 1
        config.batch_size = 8
        config.data.crop_size = 32
        config.eval.batch_size = 8
        config.loss.pos_weight_power = power
        wd = str(tmp_path / f"wd{power}")
        m = change_detection.run(config, wd, data=(train, test), info=registry.get_config_info("levir_cd"))
        want = ((1 - f) / f) ** power
        np.testing.assert_allclose([m["pos_weight"], seen[-1]], [want, want], rtol=1e-12)
        np.testing.assert_allclose(m["train_change_fraction"], f, rtol=1e-12)
    assert seen[-1] != 1.0
    # power 0: the job hands bce_dice what positive_weight gives, a Python 1.0 (the unweighted program)
    weight0 = positive_weight(train["change"], 0.0)[0]
    assert weight0 == 1.0 and isinstance(weight0, float)
    old = json.load(open(os.path.join(wd, "config.json")))
    del old["loss"]["pos_weight_power"]
    config.loss.pos_weight_power = 0.0
    assert workdir_lib.config_diff(old, config.to_dict()) == []
    config.loss.pos_weight_power = 0.5
    assert workdir_lib.config_diff(old, config.to_dict()) != []
    # ignored pixels (-1) count in neither class; no change at all: nothing to balance
    maps = np.array([[1, 0, 0, -1], [0, 0, -1, -1]])
    assert positive_weight(maps, 1.0, -1) == (4.0, 0.2)
    assert positive_weight(np.zeros((2, 3)), 1.0) == (1.0, 0.0)
    with pytest.raises(errors.ConfigError, match="pos_weight_power"):
        config.loss.pos_weight_power = -1.0
        change_detection.run(
            config, str(tmp_path / "bad"), data=(train, test), info=registry.get_config_info("levir_cd")
        )


# --------------------------------------------------------------------------------------
# batched_predict and the evaluators (numpy references written from the formulas)
# --------------------------------------------------------------------------------------
def test_batched_predict_pads_shards_and_compiles_once():
    from rsjax import sharding

    traces = []

    def fn(v, batch):
        traces.append(batch["x"].shape)  # runs once per trace
        return {"y": batch["x"] @ v["w"] + v["b"], "s": batch["x"].sum(-1) + batch["z"]}

    rng = np.random.default_rng(0)
    v = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": np.float32([1.0, -1.0])}
    for n in (13, 3, 8):
        x = rng.normal(size=(n, 3)).astype(np.float32)
        z = rng.normal(size=(n,)).astype(np.float32)
        out = sharding.batched_predict(fn, v, {"x": x, "z": z}, batch_size=5, desc="t")
        np.testing.assert_allclose(out["y"], x @ v["w"] + v["b"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["s"], x.sum(-1) + z, rtol=1e-5, atol=1e-5)
        assert out["y"].shape == (n, 2) and isinstance(out["y"], np.ndarray)
    # batch 5 rounded up to the 8 devices; every call (13 rows padded to 16, 3 -> 8) reused one program
    assert traces == [(8, 3)]
    empty = sharding.batched_predict(
        fn, v, {"x": np.zeros((0, 3), np.float32), "z": np.zeros((0,), np.float32)}, batch_size=8
    )
    assert empty["y"].shape == (0, 2)


def ref_knn(f_tr, y_tr, f_te, num_classes, k, t):
    """Weighted cosine kNN, one test sample at a time."""
    out = []
    a = f_tr / np.linalg.norm(f_tr, axis=1, keepdims=True)
    for q in f_te:
        s = a @ (q / np.linalg.norm(q))
        votes = np.zeros(num_classes)
        for j in np.argsort(-s)[:k]:
            votes[y_tr[j]] += math.exp(s[j] / t)
        out.append(int(np.argmax(votes)))
    return np.asarray(out)


def ref_linear_probe(f_tr, targets, f_te, num_outputs, multilabel, epochs, lr, wd, seed):
    """Standardise, then full-batch AdamW (optax defaults b1 .9, b2 .999, eps 1e-8, decoupled
    decay on every parameter) with lr_t = lr * (1 + cos(pi t / epochs)) / 2, written in numpy."""
    mean, std = f_tr.mean(0), f_tr.std(0) + 1e-6
    x, xt = (f_tr - mean) / std, (f_te - mean) / std
    w = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (x.shape[1], num_outputs))) * 0.01
    p = {"w": w.astype(np.float64), "b": np.zeros(num_outputs)}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    s = {k: np.zeros_like(v) for k, v in p.items()}
    n = x.shape[0]
    for t in range(epochs):
        z = x @ p["w"] + p["b"]
        if multilabel:
            dz = (1 / (1 + np.exp(-z)) - targets) / (n * num_outputs)
        else:
            e = np.exp(z - z.max(1, keepdims=True))
            dz = e / e.sum(1, keepdims=True)
            dz[np.arange(n), targets] -= 1
            dz /= n
        g = {"w": x.T @ dz, "b": dz.sum(0)}
        lr_t = lr * 0.5 * (1 + math.cos(math.pi * t / epochs))
        for k in p:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            s[k] = 0.999 * s[k] + 0.001 * g[k] ** 2
            mh, sh = m[k] / (1 - 0.9 ** (t + 1)), s[k] / (1 - 0.999 ** (t + 1))
            p[k] = p[k] - lr_t * (mh / (np.sqrt(sh) + 1e-8) + wd * p[k])
    return xt @ p["w"] + p["b"]


def test_knn_and_linear_evaluators_match_numpy():
    from rsjax import evaluate
    from rsjax.evaluate import classification as cls

    rng = np.random.default_rng(1)
    f_tr, f_te = rng.normal(size=(40, 6)), rng.normal(size=(15, 6))
    y_tr, y_te = rng.integers(0, 3, 40), rng.integers(0, 3, 15)
    m, pred = evaluate.get("knn")(f_tr, y_tr, f_te, y_te, num_classes=3, k=5, temperature=0.1)
    exp = ref_knn(f_tr, y_tr, f_te, 3, 5, 0.1)
    np.testing.assert_array_equal(pred, exp)
    assert m["top1"] == pytest.approx(float((exp == y_te).mean()))
    assert m["confusion_matrix"][1][2] == int(((y_te == 1) & (exp == 2)).sum())

    logits = cls.linear_probe_logits(f_tr, y_tr, f_te, num_outputs=3, epochs=7, lr=0.05, weight_decay=0.1, seed=3)
    ref = ref_linear_probe(f_tr, y_tr, f_te, 3, False, 7, 0.05, 0.1, 3)
    np.testing.assert_allclose(logits, ref, rtol=1e-3, atol=1e-4)
    m, pred = evaluate.get("linear")(f_tr, y_tr, f_te, y_te, num_classes=3, epochs=7, lr=0.05, weight_decay=0.1, seed=3)
    np.testing.assert_array_equal(pred, ref.argmax(1))
    assert m["per_class"][0] == pytest.approx(float((ref.argmax(1)[y_te == 0] == 0).mean()))

    t_tr, t_te = rng.integers(0, 2, (40, 4)), rng.integers(0, 2, (15, 4))
    m, scores = evaluate.get("linear_multilabel")(f_tr, t_tr, f_te, t_te, epochs=7, lr=0.05, weight_decay=0.1, seed=3)
    ref = ref_linear_probe(f_tr, t_tr, f_te, 4, True, 7, 0.05, 0.1, 3)
    np.testing.assert_allclose(scores, ref, rtol=1e-3, atol=1e-4)
    assert set(m) >= {"micro_map", "macro_map", "per_class_ap"}


def test_dense_evaluators_and_unknown_name():
    from rsjax import errors, evaluate

    pred = np.array([[0, 1], [2, 2]])
    lab = np.array([[0, 1], [1, 255]])
    m = evaluate.get("segmentation")(pred, lab, num_classes=3, ignore_index=255)
    # class 0: 1/1, class 1: tp 1 fn 1 -> 1/2, class 2: tp 0 fp 1 -> 0
    assert m["per_class_iou"] == pytest.approx([1.0, 0.5, 0.0]) and m["miou"] == pytest.approx(0.5)
    m = evaluate.get("change_detection")(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 1) and m["f1"] == pytest.approx(0.5)
    with pytest.raises(errors.ConfigError, match="unknown evaluator 'knnn'.*knn, linear"):
        evaluate.get("knnn")


def test_frozen_eval_features_and_metrics():
    import ml_collections

    from rsjax.evaluate import classification as cls

    rng = np.random.default_rng(2)
    x_tr, x_te = rng.normal(size=(21, 4, 4, 2)).astype(np.float32), rng.normal(size=(9, 4, 4, 2)).astype(np.float32)
    y_tr, y_te = rng.integers(0, 3, 21), np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    v = {"w": rng.normal(size=(2, 5)).astype(np.float32)}
    encode = lambda v, x: x.mean((1, 2)) @ v["w"]  # noqa: E731
    ec = ml_collections.ConfigDict({"batch_size": 8, "knn_k": 3, "knn_temperature": 0.5, "linear_epochs": 4})
    r = cls.frozen_eval(encode, v, x_tr, y_tr, x_te, y_te, eval_config=ec, seed=0)
    f_tr = x_tr.mean((1, 2)) @ v["w"]
    f_te = x_te.mean((1, 2)) @ v["w"]
    np.testing.assert_allclose(r.train_features, f_tr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.test_features, f_te, rtol=1e-5, atol=1e-5)
    knn = ref_knn(f_tr, y_tr, f_te, 3, 3, 0.5)
    assert r.metrics["knn_top1"] == pytest.approx(float((knn == y_te).mean()))
    lin = ref_linear_probe(f_tr.astype(np.float64), y_tr, f_te, 3, False, 4, 1e-2, 1e-4, 0).argmax(1)
    assert r.metrics["linear_top1"] == pytest.approx(float((lin == y_te).mean()))
    assert r.metrics["majority_baseline"] == pytest.approx(4 / 9)
    assert (r.metrics["num_train"], r.metrics["num_test"]) == (21, 9)
    ec.evaluators = ("knn",)  # the evaluators are data: only kNN runs
    only = cls.frozen_eval(encode, v, x_tr, y_tr, x_te, y_te, eval_config=ec, seed=0)
    assert only.metrics["knn_top1"] == r.metrics["knn_top1"] and not any(k.startswith("linear") for k in only.metrics)


# --------------------------------------------------------------------------------------
# Data helpers
# --------------------------------------------------------------------------------------
def test_folder_split_follows_the_recipe(tmp_path):
    from PIL import Image

    counts = {"B": 7, "A": 10, "C": 3}
    for c, n in counts.items():
        (tmp_path / c).mkdir()
        for i in range(n):
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(tmp_path / c / f"{c}_{i + 1}.jpg")
    tr, ytr, te, yte, names = folders.folder_split(str(tmp_path))
    assert names == ["A", "B", "C"]
    rng = np.random.default_rng(0)  # the recipe, written out independently
    exp_te = []
    for c in names:
        files = sorted(os.listdir(tmp_path / c))
        perm = rng.permutation(files)
        exp_te += [str(tmp_path / c / f) for f in perm[: round(0.2 * len(files))]]
    assert te == exp_te and len(tr) + len(te) == 20 and not set(tr) & set(te)
    assert list(yte) == [0, 0, 1, 2]  # labels follow the sorted class order
    assert np.bincount(yte).tolist() == [2, 1, 1] and np.bincount(ytr).tolist() == [8, 6, 2]
    assert folders.read_images(te[:2]).shape == (2, 4, 4, 3)


def test_label_subset_and_mask_targets():
    keep = cls.label_subset(100, 0.1, 0)
    assert len(keep) == 10 and np.array_equal(keep, cls.label_subset(100, 0.1, 0))
    assert len(cls.label_subset(50, 0.01, 0)) == 1 and len(cls.label_subset(5, 1.0, 0)) == 5
    with pytest.raises(ValueError, match="label_fraction"):
        cls.label_subset(5, 0.0, 0)
    mask = np.array([[[0, 0], [2, 2]], [[1, 1], [1, 1]]])
    np.testing.assert_array_equal(cls.targets_from_mask(mask, 3), [[1, 0, 1], [0, 1, 0]])


# --------------------------------------------------------------------------------------
# Pretrained encoders
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """A pretraining workdir (simclr smoke config: tiny ResNet, 13 bands) with one checkpoint
    of known encoder weights, written without training."""
    from rsjax import checkpoint as ckpt_lib

    wd = tmp_path_factory.mktemp("pretrained")
    config = load_config("simclr.py", "smoke")
    (wd / "config.json").write_text(json.dumps(config.to_dict()))
    enc = R.create_encoder("tiny")
    v = jax.jit(lambda k: enc.init(k, jnp.zeros((1, 32, 32, 13)), train=False))(jax.random.PRNGKey(42))
    v = jax.tree.map(lambda x: np.asarray(x) + 0.01, v)  # differs from any fresh init
    state = {"params": {"encoder": v["params"]}, "batch_stats": {"encoder": v["batch_stats"]}}
    manager = ckpt_lib.make_manager(str(wd))
    ckpt_lib.save(manager, 5, state, {}, config.to_dict())
    return str(wd), v


def test_pretrained_encoder_plugs_in(pretrained_run):
    path, v = pretrained_run
    config = load_config("eval_eurosat.py", "smoke")
    config.pretrained = path
    loaded = encoders.load_pretrained(config)
    assert loaded[2]["step"] == 5 and loaded[2]["arch"] == "tiny"
    clf.validate(config)
    task = clf.make_task(config, num_outputs=10, multilabel=False, loaded=loaded)
    variables = clf.init_variables(task, config.seed)
    enc = {"params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"]["encoder"]}
    assert jax.tree.structure(enc) == jax.tree.structure(v)
    for a, b in zip(jax.tree.leaves(enc), jax.tree.leaves(v)):
        np.testing.assert_array_equal(a, b)
    assert encoders.pretrained_summary(loaded)["init"] == "pretrained"


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("model.name", "resnet18", r"architecture 'tiny' \(checkpoint\) vs config.model.name='resnet18'"),
        ("model.in_channels", 3, r"13 input bands .* vs config.model.in_channels=3"),
        ("model.stem", "cifar", r"stem 'standard' \(checkpoint\) vs config.model.stem='cifar'"),
    ],
)
def test_mismatching_checkpoint_is_refused(pretrained_run, tmp_path, key, value, match):
    config = load_config("seg.py", "smoke")
    config.pretrained = pretrained_run[0]
    section, name = key.split(".")
    config[section][name] = value
    from rsjax import main as main_lib

    with pytest.raises(ValueError, match=match):
        main_lib.run(config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()  # refused before anything was written


@pytest.mark.parametrize("name", ["eval_eurosat.py", "eval_bigearthnet.py", "seg.py", "cd_levir.py", "noisy_label.py"])
def test_every_job_refuses_an_incomplete_or_misspelt_data_block(tmp_path, name):
    # The jobs read config.data directly: a hand-edited block that lacks a key, or carries one
    # nobody reads, is refused naming it, before anything is written.
    from rsjax import main as main_lib

    for edit, match in (
        (lambda d: d.__delitem__("image_key"), r"config\.data lacks the key\(s\) image_key"),
        (lambda d: d.__setitem__("imagesize", 64), r"config\.data\.imagesize: no input path reads"),
    ):
        config = load_config(name, "smoke")
        with config.unlocked():
            edit(config.data)
        with pytest.raises(ValueError, match=match):
            main_lib.run(config, str(tmp_path / "wd"))
        assert not (tmp_path / "wd").exists()


def test_segmentation_job_with_pretrained_encoder(pretrained_run, tmp_path):
    from rsjax import main as main_lib
    from rsjax.data import build

    data_dir = str(tmp_path / "tfds")
    build.ensure_built("rs_synthetic", data_dir, config="tiny")
    config = load_config("seg.py", "smoke")
    config.data.data_dir = data_dir
    config.pretrained = pretrained_run[0]
    config.model.decoder = "pspnet"
    config.optimizer.freeze = "encoder/*"
    config.total_steps = 1
    m = main_lib.run(config, str(tmp_path / "wd"))
    report = json.loads((tmp_path / "wd" / "eval_report.json").read_text())
    assert report["task"] == "segmentation" and report["config"]["model"]["decoder"] == "pspnet"
    assert report["metrics"]["encoder"]["init"] == "pretrained" and report["metrics"]["output_stride"] == 8
    assert 0.0 <= m["miou"] <= 1.0 and 0.0 <= m["overall_accuracy"] <= 1.0
    assert set(m["per_class_iou"]) == {"water", "forest", "cropland", "grassland", "urban", "bare_soil"}
    for png in ("segmentation_overlay.png", "per_class_iou.png", "loss_curve.png"):
        assert (tmp_path / "wd" / png).stat().st_size > 1000


# --------------------------------------------------------------------------------------
# Fine-tuning on the one loop (issue 13 acceptance)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from rsjax.data import build

    d = str(tmp_path_factory.mktemp("tfds"))
    build.ensure_built("rs_synthetic", d, config="tiny")
    return d


def _eurosat_smoke(synth_dir, **overrides):
    config = load_config("eval_eurosat.py", "smoke")
    config.data.data_dir = synth_dir
    config.eval.max_train = 32
    config.eval.max_test = 16
    config.eval.linear_epochs = 5
    config.finetune.total_steps = 3
    config.finetune.batch_size = 8
    for k, v in overrides.items():
        section, _, name = k.rpartition(".")
        (config[section] if section else config)[name] = v
    return config


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_eurosat_finetune_stops_and_resumes_to_the_same_report(synth_dir, tmp_path):
    from rsjax import main as main_lib

    full = main_lib.run(_eurosat_smoke(synth_dir), str(tmp_path / "full"))
    assert full["finetune_top1"] is not None and full["finetune_nonfinite_steps"] == 0

    wd = tmp_path / "cut"
    cut = main_lib.run(_eurosat_smoke(synth_dir, stop_after_steps=2), str(wd))
    assert cut["finetune_finished"] is False and cut["finetune_step"] == 2
    assert not (wd / "eval_report.json").exists()  # no report from a stopped fine-tune
    assert [r["step"] for r in _rows(wd / "finetune" / "metrics.jsonl")] == [1, 2]
    # eval.* may change between runs, but not the fine-tune's training data under a checkpoint
    with pytest.raises(errors.CheckpointError, match=r"other training data.*eval\.label_fraction"):
        main_lib.run(_eurosat_smoke(synth_dir, **{"eval.label_fraction": 0.5}), str(wd))
    assert [r["step"] for r in _rows(wd / "finetune" / "metrics.jsonl")] == [1, 2]
    resumed = main_lib.run(_eurosat_smoke(synth_dir), str(wd))

    a = json.loads((tmp_path / "full" / "eval_report.json").read_text())["metrics"]
    b = json.loads((wd / "eval_report.json").read_text())["metrics"]
    for key in (
        "finetune_top1",
        "finetune_per_class",
        "finetune_confusion_matrix",
        "linear_top1",
        "knn_top1",
        "linear_confusion_matrix",
        "num_train",
        "num_test",
    ):
        assert a[key] == b[key], key
    assert resumed["finetune_top1"] == full["finetune_top1"]
    # the fine-tune's training curve is the uninterrupted one, step for step
    ra, rb = _rows(tmp_path / "full" / "finetune" / "metrics.jsonl"), _rows(wd / "finetune" / "metrics.jsonl")
    assert [r["step"] for r in rb] == [1, 2, 3]
    np.testing.assert_allclose([r["loss"] for r in rb], [r["loss"] for r in ra], rtol=1e-6)


def test_eurosat_finetune_refuses_nonfinite_steps(synth_dir, tmp_path, monkeypatch):
    from rsjax import main as main_lib

    monkeypatch.setenv("RSJAX_DEBUG_NONFINITE_FROM_STEP", "2")  # steps 2 and 3 get a NaN loss
    m = main_lib.run(_eurosat_smoke(synth_dir), str(tmp_path / "wd"))
    events = _rows(tmp_path / "wd" / "finetune" / "events.jsonl")
    assert [(e["step"], e["kind"]) for e in events] == [(2, "nonfinite"), (3, "nonfinite")]
    assert m["finetune_nonfinite_steps"] == 2
    rows = _rows(tmp_path / "wd" / "finetune" / "metrics.jsonl")
    assert rows[0]["step"] == 1 and np.isfinite(rows[0]["loss"])


def test_multilabel_smoke_with_finetune(synth_dir, tmp_path):
    from rsjax import main as main_lib

    config = load_config("eval_bigearthnet.py", "smoke")
    config.data.data_dir = synth_dir
    config.eval.max_train, config.eval.max_test, config.eval.linear_epochs = 32, 16, 5
    config.finetune.batch_size = 8
    m = main_lib.run(config, str(tmp_path / "wd"))
    report = json.loads((tmp_path / "wd" / "eval_report.json").read_text())
    assert report["task"] == "multilabel" and 0.0 <= m["linear_micro_map"] <= 1.0
    assert 0.0 <= m["finetune_micro_map"] <= 1.0 and m["num_train"] == 16  # label_fraction 0.5 of 32
    assert [r["step"] for r in _rows(tmp_path / "wd" / "finetune" / "metrics.jsonl")][-1] == 2


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("eval.knn_k", 0, r"config\.eval\.knn_k=0"),
        ("finetune.total_steps", -1, r"config\.finetune\.total_steps=-1"),
        ("eval.label_fraction", 1.5, r"config\.eval\.label_fraction=1\.5"),
        ("data.folder", "/nonexistent/eurosat", r"config\.data\.folder='/nonexistent/eurosat'"),
        ("finetune.optimizer.name", "adamx", r"config\.finetune\.optimizer\.name"),
        (
            "eval.evaluators",
            ("knn", "segmentation"),
            r"config\.eval\.evaluators=\('knn', 'segmentation'\): "
            r"\['segmentation'\] not usable here",
        ),
        ("eval.evaluators", ("linear_multilabel",), r"this job's frozen-feature evaluators are \('knn', 'linear'\)"),
    ],
)
def test_eval_config_errors_before_anything_is_written(tmp_path, key, value, match):
    from rsjax import errors
    from rsjax import main as main_lib

    config = load_config("eval_eurosat.py", "smoke")
    config.finetune.total_steps = 2  # the fine-tune's optimizer block is checked too
    *parents, name = key.split(".")
    block = config
    for p in parents:
        block = block[p]
    block[name] = value
    with pytest.raises(errors.ConfigError, match=match):
        main_lib.run(config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


# --------------------------------------------------------------------------------------
# Real data (../shared/data)
# --------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_eurosat_folder_linear_probe(shared_data, tmp_path):
    root = shared_data / "eurosat_rgb"
    tr, _, te, yte, names = folders.folder_split(str(root))
    assert (len(tr), len(te)) == (21600, 5400) and len(names) == 10
    config = load_config("eval_eurosat.py")
    config.data.folder = str(root)
    config.eval.max_train, config.eval.max_test = 240, 60  # fixed random subsets of the two splits
    config.model.name = "tiny"
    config.eval.batch_size = 64
    config.eval.linear_epochs = 100
    m = eval_classification.run(config, str(tmp_path / "wd"))
    assert (m["num_train"], m["num_test"]) == (240, 60)
    assert m["linear_top1"] > 0.2 and m["knn_top1"] > 0.15  # chance is 0.1
    for png in ("confusion_linear.png", "per_class_accuracy.png", "embedding_pca.png"):
        assert (tmp_path / "wd" / png).exists()


def _read_png(path, mode=None):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert(mode) if mode else im)


@pytest.mark.realdata
def test_levir_cd_crops(shared_data, tmp_path):
    from rsjax.data import registry
    from rsjax.jobs import change_detection

    root = shared_data / "levir_cd_samples"
    names = sorted(p.name for p in (root / "label").glob("*.png"))

    def arrays(files):
        return {
            "a": np.stack([_read_png(root / "A" / f, "RGB") for f in files]),
            "b": np.stack([_read_png(root / "B" / f, "RGB") for f in files]),
            "change": np.stack([(_read_png(root / "label" / f) > 127).astype(np.uint8) for f in files]),
        }

    train = arrays([n for n in names if not n.startswith("test")])
    test = arrays([n for n in names if n.startswith("test")][:4])
    config = load_config("cd_levir.py")
    config.model.name = "tiny"
    config.total_steps = 2
    config.batch_size = 8
    config.data.crop_size = 64
    config.eval.batch_size = 8
    m = change_detection.run(
        config, str(tmp_path / "wd"), data=(train, test), info=registry.get_config_info("levir_cd")
    )
    assert m["tp"] + m["fn"] == int(test["change"].sum()) > 0
    assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == 4 * 256 * 256
    assert 0.0 <= m["f1"] <= 1.0
    assert (tmp_path / "wd" / "change_overlay.png").stat().st_size > 10_000


@pytest.mark.realdata
def test_potsdam_vaihingen_segmentation_crops(shared_data, tmp_path):
    from rsjax.data import registry
    from rsjax.jobs import segmentation

    root = shared_data / "seg_samples_mmseg"
    images, masks = [], []
    for sub in ("potsdam", "vaihingen"):
        for f in sorted((root / sub / "img_dir").glob("*.png")):
            images.append(_read_png(f, "RGB"))
            masks.append(_read_png(root / sub / "ann_dir" / f.name))  # 0 = ignore, 1..6 (reduce_zero_label)
    data = {"image": np.stack(images), "mask": np.stack(masks)}
    info = registry.get_config_info("rs_segmentation", "potsdam")
    config = load_config("seg.py")
    assert info.mask_ignore_value == 0  # the registry's mask convention: stored 0 = ignore, v = class v - 1
    config.model.name = "tiny"
    config.model.decoder = "deeplabv3plus"
    config.total_steps = 2
    config.batch_size = 8
    config.data.crop_size = 64
    config.eval.batch_size = 8
    m = segmentation.run(config, str(tmp_path / "wd"), data=(data, data), info=info)
    assert m["num_pixels"] == int((data["mask"] != 0).sum())
    assert 0.0 <= m["miou"] <= 1.0 and m["output_stride"] == 16
    assert len(m["per_class_iou"]) == 6 and sum(m["confusion_matrix"][5]) == 0  # clutter: absent in these crops
    assert (tmp_path / "wd" / "segmentation_overlay.png").exists()
