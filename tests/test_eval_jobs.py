"""Downstream evaluation jobs: the binary BCE + Dice loss against a numpy loop, the EuroSAT
folder split, pretrained-encoder plug-in and its refusal of mismatching checkpoints, a
segmentation job end to end on synthetic data with a pretrained encoder, and small runs on
real data (EuroSAT jpgs, LEVIR-CD crops, Potsdam / Vaihingen crops) when ../shared/data exists.

The :smoke variant of every eval config also runs end to end in tests/test_train.py.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax import losses
from rsjax.evaluate import classification_job as cjob
from rsjax.evaluate import common
from rsjax.evaluate import multilabel_job
from rsjax.models import resnet as R
from rsjax.workdir import Workdir

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str, variant: str | None = None):
    spec = importlib.util.spec_from_file_location(f"cfg_{name[:-3]}", REPO / "configs" / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(variant)


# --------------------------------------------------------------------------------------
# bce_dice
# --------------------------------------------------------------------------------------
def ref_bce_dice(logits, labels, ignore_index, dice_weight):
    out = []
    for b in range(logits.shape[0]):
        bce = inter = sp = sy = 0.0
        n = 0
        for l, y in zip(logits[b].ravel().tolist(), labels[b].ravel().tolist()):
            if ignore_index is not None and y == ignore_index:
                continue
            p = 1.0 / (1.0 + math.exp(-l))
            bce += -(y * math.log(p) + (1 - y) * math.log(1 - p))
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
    tr, ytr, te, yte, names = cjob.folder_split(str(tmp_path))
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
    assert cjob.read_images(te[:2]).shape == (2, 4, 4, 3)


def test_label_subset_and_mask_targets():
    keep = cjob.label_subset(100, 0.1, 0)
    assert len(keep) == 10 and np.array_equal(keep, cjob.label_subset(100, 0.1, 0))
    assert len(cjob.label_subset(50, 0.01, 0)) == 1 and len(cjob.label_subset(5, 1.0, 0)) == 5
    with pytest.raises(ValueError, match="label_fraction"):
        cjob.label_subset(5, 0.0, 0)
    mask = np.array([[[0, 0], [2, 2]], [[1, 1], [1, 1]]])
    np.testing.assert_array_equal(multilabel_job.targets_from_mask(mask, 3), [[1, 0, 1], [0, 1, 0]])


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
    loaded = common.load_pretrained(config)
    assert loaded[2]["step"] == 5 and loaded[2]["arch"] == "tiny"
    _, variables, _ = cjob.build_encoder(config, 13, loaded)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(v)):
        np.testing.assert_array_equal(a, b)
    assert common.pretrained_summary(loaded)["init"] == "pretrained"


@pytest.mark.parametrize("key,value,match", [
    ("model.name", "resnet18", r"architecture 'tiny' \(checkpoint\) vs config.model.name='resnet18'"),
    ("model.in_channels", 3, r"13 input bands .* vs config.model.in_channels=3"),
    ("model.stem", "cifar", r"stem 'standard' \(checkpoint\) vs config.model.stem='cifar'"),
])
def test_mismatching_checkpoint_is_refused(pretrained_run, tmp_path, key, value, match):
    config = load_config("seg.py", "smoke")
    config.pretrained = pretrained_run[0]
    section, name = key.split(".")
    config[section][name] = value
    from rsjax import main as main_lib

    with pytest.raises(ValueError, match=match):
        main_lib.run(config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()  # refused before anything was written


def test_segmentation_job_with_pretrained_encoder(pretrained_run, tmp_path):
    from rsjax.data import build
    from rsjax import main as main_lib

    data_dir = str(tmp_path / "tfds")
    build.ensure_built("rs_synthetic", data_dir, config="tiny")
    config = load_config("seg.py", "smoke")
    config.data.data_dir = data_dir
    config.pretrained = pretrained_run[0]
    config.model.decoder = "pspnet"
    config.train.freeze_encoder = True
    config.train.steps = 1
    m = main_lib.run(config, str(tmp_path / "wd"))
    report = json.loads((tmp_path / "wd" / "eval_report.json").read_text())
    assert report["task"] == "segmentation" and report["config"]["model"]["decoder"] == "pspnet"
    assert report["metrics"]["encoder"]["init"] == "pretrained" and report["metrics"]["output_stride"] == 8
    assert 0.0 <= m["miou"] <= 1.0 and 0.0 <= m["overall_accuracy"] <= 1.0
    assert set(m["per_class_iou"]) == {"water", "forest", "cropland", "grassland", "urban", "bare_soil"}
    for png in ("segmentation_overlay.png", "per_class_iou.png", "loss_curve.png"):
        assert (tmp_path / "wd" / png).stat().st_size > 1000


# --------------------------------------------------------------------------------------
# Real data (../shared/data)
# --------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_eurosat_folder_linear_probe(shared_data, tmp_path):
    root = shared_data / "eurosat_rgb"
    tr, _, te, yte, names = cjob.folder_split(str(root))
    assert (len(tr), len(te)) == (21600, 5400) and len(names) == 10
    config = load_config("eval_eurosat.py")
    config.data.folder = str(root)
    config.data.max_per_class = 30
    config.model.name = "tiny"
    config.eval.batch_size = 64
    config.eval.linear_epochs = 100
    m = cjob.run(config, str(tmp_path / "wd"))
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
    from rsjax.evaluate import change_detection

    root = shared_data / "levir_cd_samples"
    names = sorted(p.name for p in (root / "label").glob("*.png"))

    def arrays(files):
        return {"a": np.stack([_read_png(root / "A" / f, "RGB") for f in files]),
                "b": np.stack([_read_png(root / "B" / f, "RGB") for f in files]),
                "change": np.stack([(_read_png(root / "label" / f) > 127).astype(np.uint8) for f in files])}

    train = arrays([n for n in names if not n.startswith("test")])
    test = arrays([n for n in names if n.startswith("test")][:4])
    config = load_config("cd_levir.py")
    config.model.name = "tiny"
    config.train.steps = 2
    config.train.batch_size = 8
    config.train.crop_size = 64
    config.eval.batch_size = 8
    wd = Workdir(str(tmp_path / "wd"), config)
    m = change_detection.evaluate_arrays(config, wd, train, test, info=registry.get_dataset_info("levir_cd"))
    assert m["tp"] + m["fn"] == int(test["change"].sum()) > 0
    assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == 4 * 256 * 256
    assert 0.0 <= m["f1"] <= 1.0
    assert (tmp_path / "wd" / "change_overlay.png").stat().st_size > 10_000


@pytest.mark.realdata
def test_potsdam_vaihingen_segmentation_crops(shared_data, tmp_path):
    from rsjax.data import registry
    from rsjax.evaluate import segmentation

    root = shared_data / "seg_samples_mmseg"
    images, masks = [], []
    for sub in ("potsdam", "vaihingen"):
        for f in sorted((root / sub / "img_dir").glob("*.png")):
            images.append(_read_png(f, "RGB"))
            masks.append(_read_png(root / sub / "ann_dir" / f.name))  # 0 = ignore, 1..6 (reduce_zero_label)
    data = {"image": np.stack(images), "mask": np.stack(masks)}
    info = registry.get_config_info("rs_segmentation", "potsdam")
    config = load_config("seg.py")
    assert config.data.reduce_zero_label and config.data.ignore_index == 255
    config.model.name = "tiny"
    config.model.decoder = "deeplabv3plus"
    config.train.steps = 2
    config.train.batch_size = 8
    config.train.crop_size = 64
    config.eval.batch_size = 8
    wd = Workdir(str(tmp_path / "wd"), config)
    m = segmentation.evaluate_arrays(config, wd, data, data, info=info)
    assert m["num_pixels"] == int((data["mask"] != 0).sum())
    assert 0.0 <= m["miou"] <= 1.0 and m["output_stride"] == 16
    assert len(m["per_class_iou"]) == 6 and sum(m["confusion_matrix"][5]) == 0  # clutter: absent in these crops
    assert (tmp_path / "wd" / "segmentation_overlay.png").exists()
