"""Reading data straight from folders, and the silent surprises of issue 14 (faults 1-3).

* Fault 1: one image reader (the builders', naming files) for evaluation class folders and the
  GPU-resident path: a truncated jpg, a 32 x 32 or a grayscale image among 64 x 64 RGB ones
  -> DataError naming THAT file and its shape vs the others'.
* Fault 2: a LEVIR-layout change-detection folder without split information gets a seeded
  split by tile (announced, recorded as ``split_rule``); a missing split names the keys that
  select it (``eval.train_split`` / ``eval.test_split``), and those keys work.
* Fault 3: ``data.image_size`` above the stored size warns; exploding features / losses /
  weights warn before evaluation.
* One mask convention: the registry's ``mask_ignore_value`` -> in-memory ignore label -1.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from rsjax.data import folders, registry
from rsjax.errors import ConfigError, DataError


def _rgb(rng, size=64):
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_eurosat_like(root, per_class=5, seed=0, classes=registry.EUROSAT_CLASSES):
    """``<Class>/<Class>_<i>.jpg`` 64 x 64 RGB files, ``i`` = 1..per_class."""
    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(root / c)
        for i in range(1, per_class + 1):
            Image.fromarray(_rgb(rng)).save(root / c / f"{c}_{i}.jpg", quality=95)
    return root


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _no_warning(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kw)


# --------------------------------------------------------------------------------------
# Fault 1: one reader, files named
# --------------------------------------------------------------------------------------
def test_one_extension_list_and_reader():
    from tfds_builders import _common

    assert folders.IMAGE_EXTS == _common.IMAGE_EXTENSIONS
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"} == set(folders.IMAGE_EXTS)


def test_read_images_all_extensions_and_hidden_files(tmp_path):
    import tifffile

    rng = np.random.default_rng(1)
    a = _rgb(rng, 8)
    root = tmp_path / "A"
    root.mkdir()
    Image.fromarray(a).save(root / "x1.png")
    Image.fromarray(a).save(root / "x2.bmp")
    tifffile.imwrite(root / "x3.tif", a)
    Image.fromarray(a).save(root / "x4.PNG")
    (root / "._x5.png").write_bytes(b"\x00resource fork")  # macOS metadata: never an image
    (root / "notes.txt").write_text("not an image")
    classes, files = folders.class_folder_files(str(tmp_path))
    assert classes == ["A"] and files == [["x1.png", "x2.bmp", "x3.tif", "x4.PNG"]]
    x = folders.read_images([str(root / f) for f in files[0]])
    assert x.shape == (4, 8, 8, 3) and x.dtype == np.uint8
    for im in x:  # lossless formats: the pixels as written
        np.testing.assert_array_equal(im, a)


def test_truncated_jpg_is_named(tmp_path):
    root = write_eurosat_like(tmp_path / "eurosat", per_class=2)
    bad = root / "Forest" / "Forest_2.jpg"
    truncate(bad)
    files = [str(p) for p in sorted((root / "Forest").iterdir())]
    with pytest.raises(DataError, match=r"Forest_2\.jpg.*(truncated|cannot decode)"):
        folders.read_images(files)


@pytest.mark.parametrize("odd", ["small", "gray"])
def test_odd_image_is_named_not_the_first_file(tmp_path, odd):
    root = write_eurosat_like(tmp_path / "eurosat", per_class=3)
    # the odd file is neither first nor last in the listing
    bad = root / "Forest" / "Forest_2.jpg"
    rng = np.random.default_rng(5)
    if odd == "small":
        Image.fromarray(_rgb(rng, 32)).save(bad)
        shape = r"\(32, 32, 3\)"
    else:
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), mode="L").save(bad)
        shape = r"\(64, 64, 1\)"
    tr, _, te, _, _ = folders.folder_split(str(root), test_fraction=0.0)
    assert str(bad) in tr and tr[0] != str(bad)
    with pytest.raises(DataError, match=rf"Forest_2\.jpg' has shape {shape} .*expected \(64, 64, 3\)") as e:
        folders.read_images(tr)
    assert "AnnualCrop_1" not in str(e.value)
    # ...also when it IS the first file: the majority shape is the expectation
    first = root / "AnnualCrop" / "AnnualCrop_1.jpg"
    os.replace(bad, first)
    Image.fromarray(_rgb(rng)).save(bad)
    with pytest.raises(DataError, match=rf"AnnualCrop_1\.jpg' has shape {shape}"):
        folders.read_images(tr)


def _device_cfg(root, **kw):
    from configs.common import data_config

    return data_config(name="eurosat_rgb", folder=str(root), folder_seed=0, cache_dir="", **kw)


def test_device_path_reads_the_class_folder_and_names_bad_files(tmp_path):
    from rsjax.data import pipeline

    def read(**kw):
        out = pipeline.read_split(_device_cfg(root), "train", **kw)
        return out["image"], out["label"], out["scene_id"]

    root = write_eurosat_like(tmp_path / "eurosat", per_class=5)
    images, labels, scenes = read()
    # the split recipe written out independently: one generator over the sorted classes
    rng = np.random.default_rng(0)
    exp = []
    for ci, c in enumerate(sorted(registry.EUROSAT_CLASSES)):
        perm = rng.permutation(5)
        test = set(perm[: round(0.2 * 5)].tolist())
        exp += [(ci, f"{c}_{i + 1}.jpg") for i in range(5) if i not in test]
    assert labels.tolist() == [ci for ci, _ in exp] and images.shape == (len(exp), 64, 64, 3)
    with Image.open(root / registry.EUROSAT_CLASSES[0] / exp[0][1]) as im:
        np.testing.assert_array_equal(images[0], np.asarray(im))
    np.testing.assert_array_equal(scenes, np.arange(len(exp)))
    sub, sub_y, _ = read(limit=7)
    keep = np.sort(np.random.default_rng(0).permutation(len(exp))[:7])  # the documented subset
    np.testing.assert_array_equal(sub, images[keep])
    np.testing.assert_array_equal(sub_y, labels[keep])
    # fault 1 on the device path: the odd file is named, not "all input arrays must have the same shape"
    name = exp[3][1]
    Image.fromarray(_rgb(np.random.default_rng(2), 32)).save(root / name.split("_")[0] / name)
    with pytest.raises(DataError, match=rf"{name}' has shape \(32, 32, 3\)"):
        read()
    truncate(root / name.split("_")[0] / name)
    with pytest.raises(DataError, match=rf"{name}"):
        read()


def test_eval_folder_names_the_odd_file(tmp_path):
    from conftest import load_config

    from rsjax.evaluate import classifier as clf

    root = write_eurosat_like(tmp_path / "eurosat", per_class=5)
    config = load_config("eval_eurosat", "smoke")
    config.data.name, config.data.builder_config = "eurosat_rgb", None
    config.data.folder = str(root)
    x_tr, y_tr, x_te, y_te, names = clf.load_data(config)
    assert names == list(registry.EUROSAT_CLASSES) and len(y_tr) == 40 and len(y_te) == 10
    assert x_tr.dtype == np.float32 and x_tr.shape[1:] == (config.data.image_size,) * 2 + (3,)
    bad = root / "River" / "River_4.jpg"
    Image.fromarray(np.zeros((64, 64), np.uint8), mode="L").save(bad)
    with pytest.raises(DataError, match=r"River_4\.jpg' has shape \(64, 64, 1\)"):
        clf.load_data(config)
    truncate(bad)
    with pytest.raises(DataError, match=r"River_4\.jpg"):
        clf.load_data(config)


# --------------------------------------------------------------------------------------
# Fault 2: folders without split information; the keys that select splits
# --------------------------------------------------------------------------------------
def test_fraction_split_recipe():
    names = [f"t{i}" for i in range(10)]
    got = folders.fraction_split(names[::-1], test_fraction=0.3, seed=4)
    perm = np.random.default_rng(4).permutation(10)  # over the SORTED names
    assert {n for n, s in got.items() if s == "test"} == {sorted(names)[i] for i in perm[:3]}
    assert folders.fraction_split(["a", "b"], test_fraction=0.2) in (
        {"a": "test", "b": "train"},
        {"a": "train", "b": "test"},
    )
    assert folders.fraction_split(["a"], test_fraction=0.2) == {"a": "train"}


def write_levir_unsplit(root, n_tiles=5, side=32, seed=0):
    """LEVIR layout A/, B/, label/ with names carrying no split prefix and no list/ files."""
    rng = np.random.default_rng(seed)
    for d in ("A", "B", "label"):
        os.makedirs(root / d)
    for i in range(n_tiles):
        name = f"tile{i}.png"
        Image.fromarray(_rgb(rng, side)).save(root / "A" / name)
        Image.fromarray(_rgb(rng, side)).save(root / "B" / name)
        Image.fromarray((rng.random((side, side)) < 0.3).astype(np.uint8) * 255, mode="L").save(root / "label" / name)


def _build_levir(manual, out):
    from rsjax.data import build

    return build.build_dataset("levir_cd", str(out), str(manual), None, progress=False)


@pytest.fixture(scope="module")
def levir_unsplit(tmp_path_factory):
    import logging

    tmp = tmp_path_factory.mktemp("levir")
    write_levir_unsplit(tmp / "m", n_tiles=5, side=256)
    records = []

    class H(logging.Handler):
        def emit(self, r):
            records.append(r.getMessage())

    h = H(level=logging.WARNING)
    logging.getLogger("tfds_builders").addHandler(h)
    try:
        _build_levir(tmp / "m", tmp / "o")
    finally:
        logging.getLogger("tfds_builders").removeHandler(h)
    return tmp / "o", records


def test_levir_folder_without_split_information_is_split_by_tile(levir_unsplit):
    import tensorflow_datasets as tfds

    from rsjax.data import build

    out, logs = levir_unsplit
    split = folders.fraction_split([f"tile{i}" for i in range(5)], test_fraction=0.2, seed=0)
    exp_test = sorted(t for t, s in split.items() if s == "test")
    assert len(exp_test) == 1  # round(0.2 * 5)
    got = {}
    for s in ("train", "test"):
        src = tfds.data_source("levir_cd", split=s, data_dir=str(out), download=False)
        got[s] = sorted(
            str(src[i]["tile"], "utf-8") if isinstance(src[i]["tile"], bytes) else str(src[i]["tile"])
            for i in range(len(src))
        )
    assert got["test"] == exp_test and sorted(set(got["train"])) == sorted(set(split) - set(exp_test))
    md = build.get_builder("levir_cd", str(out)).info.metadata
    assert "seeded fraction" in md["split_rule"] and "4 train / 1 test tiles" in md["split_rule"]
    assert any("carry no split" in m for m in logs)  # announced in the build output


def test_missing_split_names_the_eval_keys_and_they_work(levir_unsplit, tmp_path):
    from conftest import load_config

    from rsjax.evaluate import change_detection as cd

    out, _ = levir_unsplit
    config = load_config("cd_levir")
    config.data.data_dir = str(out)
    config.eval.test_split = "validation"  # the build has train and test only
    with pytest.raises(ConfigError, match=r"no split 'validation' \(config key eval\.test_split\).*'train'.*'test'"):
        cd.load_data(config)
    config.eval.test_split = "train"
    config.eval.train_split = "nope"
    with pytest.raises(ConfigError, match=r"config key eval\.train_split"):
        cd.load_data(config)
    config.eval.train_split, config.eval.test_split = "test", "train"  # the keys select the splits
    train, test = cd.load_data(config)
    assert len(train["a"]) == 1 and len(test["a"]) == 4


# --------------------------------------------------------------------------------------
# Fault 3: warnings on silent surprises
# --------------------------------------------------------------------------------------
def test_upsampling_warns():
    from rsjax.data import pipeline

    info = registry.get_config_info("eurosat_rgb")
    raw = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.warns(UserWarning, match=r"image_size=128 is larger than the stored images .*32 x 32.*4x"):
        x = pipeline.prepare(raw, info, image_size=128)
    assert x.shape == (2, 128, 128, 3)
    _no_warning(pipeline.prepare, raw, info, image_size=32)
    _no_warning(pipeline.prepare, raw, info, image_size=16)  # downsampling is fine
    assert not registry.warn_if_upsampling(0, 32, what="x")


def test_exploding_values_warn():
    from rsjax.evaluate import classification as cls

    ok = np.ones((4, 3)) * 1e3
    assert not _no_warning(cls.warn_if_exploding, ok, "f")
    with pytest.warns(UserWarning, match=r"1 of 4 with norm > 1e\+06 \(largest 3\.5e\+24\)"):
        cls.warn_if_exploding(np.concatenate([ok[:3], [[3.5e24, 0, 0]]]), "f")
    with pytest.warns(UserWarning, match=r"2 of 3 non-finite"):
        cls.warn_if_exploding([1.0, None, float("inf")], "losses")


def test_frozen_eval_warns_on_exploded_features():
    import ml_collections

    from rsjax.evaluate import classification as cls

    rng = np.random.default_rng(0)
    x_tr, x_te = rng.normal(size=(12, 4, 4, 2)).astype(np.float32), rng.normal(size=(6, 4, 4, 2)).astype(np.float32)
    y_tr, y_te = np.arange(12) % 3, np.arange(6) % 3
    ec = ml_collections.ConfigDict({"batch_size": 8, "knn_k": 3, "knn_temperature": 0.5, "linear_epochs": 2})
    v = {"w": np.full((2, 5), 1e24, np.float32)}  # what lr=1e6 leaves behind
    with pytest.warns(UserWarning, match=r"numerical blow-up in the frozen encoder features"):
        cls.frozen_eval(lambda v, x: x.mean((1, 2)) @ v["w"] + 1e24, v, x_tr, y_tr, x_te, y_te, eval_config=ec, seed=0)
    v = {"w": np.full((2, 5), 0.1, np.float32)}
    _no_warning(
        cls.frozen_eval, lambda v, x: x.mean((1, 2)) @ v["w"], v, x_tr, y_tr, x_te, y_te, eval_config=ec, seed=0
    )


def test_dense_jobs_warn_on_diverged_training(tmp_path):
    import ml_collections

    from rsjax.evaluate import dense
    from rsjax.workdir import Workdir

    with Workdir(str(tmp_path / "wd"), ml_collections.ConfigDict({"job": "t"})) as wd:
        for step, loss in ((1, 2.0), (2, 1.5)):
            wd.log_metrics(step, {"loss": loss})
        good = {"params": {"w": np.ones((3, 3), np.float32)}}
        assert not _no_warning(dense.warn_if_diverged, wd, good)
        wd.log_metrics(3, {"loss": 4e7})
        with pytest.warns(UserWarning, match=r"last logged training losses"):
            dense.warn_if_diverged(wd, good)
    with Workdir(str(tmp_path / "wd2"), ml_collections.ConfigDict({"job": "t"})) as wd:
        wd.log_metrics(1, {"loss": 1.0})
        with pytest.warns(UserWarning, match=r"trained weights"):
            dense.warn_if_diverged(wd, {"params": {"w": np.full((3,), np.nan, np.float32)}})
    # A null (non-finite) loss of a step the loop refused was never applied: no warning; the
    # same null loss on a step that was applied is one.
    with Workdir(str(tmp_path / "wd3"), ml_collections.ConfigDict({"job": "t"})) as wd:
        wd.log_metrics(1, {"loss": 1.0})
        wd.log_metrics(2, {"loss": float("nan")})
        wd.log_event(2, "nonfinite", "step refused")
        assert not _no_warning(dense.warn_if_diverged, wd, good)
        wd.log_metrics(3, {"loss": float("nan")})
        with pytest.warns(UserWarning, match=r"1 of 2 non-finite"):
            dense.warn_if_diverged(wd, good)


# --------------------------------------------------------------------------------------
# One mask convention: the registry's stored ignore value -> -1 in memory
# --------------------------------------------------------------------------------------
def test_mask_convention_from_the_registry():
    from rsjax.data import segmentation as segdata
    from rsjax.evaluate import change_detection as cd
    from rsjax.evaluate import segmentation as seg

    assert registry.get_config_info("rs_segmentation", "potsdam").mask_ignore_value == 0
    assert registry.get_config_info("dynamic_world").mask_ignore_value == 0
    assert registry.get_config_info("rs_synthetic").mask_ignore_value is None
    assert registry.get_config_info("levir_cd").mask_ignore_value is None
    stored = np.array([[[0, 1, 6], [255, 3, 2]]], np.uint8)
    # reduce_zero_label written out by hand: 0 / 255 -> ignore (-1), v -> v - 1
    exp = np.array([[[-1, 0, 5], [-1, 2, 1]]], np.int32)
    potsdam = registry.get_config_info("rs_segmentation", "potsdam")
    got = seg.labels({"image": None, "mask": stored}, potsdam)["mask"]
    assert got.dtype == np.int32 and np.array_equal(got, exp)
    synth = registry.get_config_info("rs_synthetic")
    np.testing.assert_array_equal(seg.labels({"mask": stored[..., :2] % 6}, synth)["mask"], stored[..., :2] % 6)
    ch = np.array([[[0, 1], [1, 0]]], np.uint8)
    np.testing.assert_array_equal(cd.labels({"change": ch}, registry.get_config_info("levir_cd"))["change"], ch)

    class Src:  # a build whose metadata disagrees with the registry
        class builder:
            class info:
                metadata = {"ignore_value": 255}

    with pytest.raises(DataError, match=r"mask_ignore_value"):
        segdata.mask_ignore_value(potsdam, Src)
    assert segdata.mask_ignore_value(potsdam) == 0


def test_segmentation_check_names_the_convention():
    import ml_collections

    from rsjax.evaluate import segmentation as seg

    info = registry.get_config_info("rs_segmentation", "potsdam")
    config = ml_collections.ConfigDict({"model": {"num_classes": 6, "in_channels": 3}})
    arrays = seg.labels(
        {"image": np.zeros((1, 2, 2, 3), np.uint8), "mask": np.array([[[1, 2], [8, 0]]], np.uint8)}, info
    )
    with pytest.raises(DataError, match=r"stored mask values \[8\] .*mask_ignore_value=0"):
        seg.check(arrays, info, config, "train")


def test_pretraining_input_warns_on_upsampling(tmp_path):
    """Fault 3 as reported: ``--config.data.image_size=128`` on the 32 px synthetic data."""
    from configs.common import data_config
    from rsjax.data import input as input_lib

    cfg = data_config(
        name="rs_synthetic",
        builder_config="tiny",
        data_dir=str(tmp_path),
        auto_build=True,
        train_split="train",
        crops_as_scenes=0,
        image_size=128,
    )
    with pytest.warns(UserWarning, match=r"image_size=128 is larger than the stored images .*32 x 32.*4x"):
        input_lib._warn_if_upsampling(cfg)
    cfg.image_size = 32
    _no_warning(input_lib._warn_if_upsampling, cfg)
    cfg.crops_as_scenes = 2  # views from 16 px sub-crops: upsampled by design, not warned about
    _no_warning(input_lib._warn_if_upsampling, cfg)
