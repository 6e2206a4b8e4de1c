"""TFDS builders of the real datasets on tiny generated fixtures (no real data needed).

Every fixture is written into tmp_path in the dataset's original file layout (small jpg / png /
tif files), built with rsjax.data.build (array_record, no TensorFlow) and read back through
tfds.data_source.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rsjax.data import build, registry

tifffile = pytest.importorskip("tifffile")

EUROSAT_COUNTS = (5, 4, 6, 3, 5, 2, 4, 7, 3, 5)  # per class, sorted class order


# ------------------------------------------------------------------------------ helpers

def _rng(seed=0):
    return np.random.default_rng(seed)


def _smooth_rgb(rng, h, w):
    """A smooth-ish RGB image (compresses well as JPEG, so decoding is exact to compare)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(30, 200, 3)
    img = base + 40 * np.sin(yy[..., None] / rng.uniform(3, 9) + xx[..., None] / 7.0)
    return np.clip(img + rng.integers(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _read(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _source(name, data_dir, split, config=None):
    import tensorflow_datasets as tfds

    full = name if config is None else f"{name}/{config}"
    return tfds.data_source(full, split=split, data_dir=data_dir, download=False)


def _all(src):
    return [src[i] for i in range(len(src))]


def _s(x):
    return x.decode() if isinstance(x, bytes) else str(x)


def _build(name, data_dir, manual_dir, config=None, **kw):
    return build.build_dataset(name, str(data_dir), str(manual_dir), config, progress=False,
                               **kw)


def _assert_no_dataset(data_dir, name, config=None):
    d = os.path.join(data_dir, name, config) if config else os.path.join(data_dir, name)
    if os.path.isdir(d):
        left = [f for f in os.listdir(d) if not f.startswith(".")]
        assert not any(x[0].isdigit() for x in left), left  # no version folder (complete)
        for x in left:  # and nothing half-written either
            assert "incomplete" not in x, left


# --------------------------------------------------------------------------- EuroSAT

def write_eurosat_rgb(root, counts=EUROSAT_COUNTS, seed=0):
    rng = _rng(seed)
    for c, n in zip(registry.EUROSAT_CLASSES, counts):
        os.makedirs(root / c, exist_ok=True)
        for i in range(1, n + 1):
            Image.fromarray(_smooth_rgb(rng, 64, 64)).save(root / c / f"{c}_{i}.jpg", quality=95)
    return root


def reference_eurosat_split(root, ext, test_fraction=0.2, seed=0):
    """Independent re-implementation of the documented rule: {relative path: split}."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in sorted(os.listdir(root)):
        names = sorted(f for f in os.listdir(root / c) if f.endswith(ext))
        shuffled = rng.permutation(np.array(names, dtype=object))
        k = round(test_fraction * len(names))
        for j, name in enumerate(shuffled):
            out[f"{c}/{name}"] = "test" if j < k else "train"
    return out


@pytest.fixture(scope="module")
def eurosat(tmp_path_factory):
    base = tmp_path_factory.mktemp("eurosat")
    manual = write_eurosat_rgb(base / "manual" / "2750")  # a wrapping folder is found
    data_dir = base / "tfds"
    _build("eurosat_rgb", data_dir, base / "manual")
    return manual, str(data_dir)


def test_eurosat_rgb_reads_back_with_labels_and_split(eurosat):
    manual, data_dir = eurosat
    ref = reference_eurosat_split(manual, ".jpg")
    got = {}
    n_total = sum(EUROSAT_COUNTS)
    for split in ("train", "test"):
        exs = _all(_source("eurosat_rgb", data_dir, split))
        for ex in exs:
            assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
            fn = _s(ex["filename"])
            cls = fn.split("/")[0]
            assert int(ex["label"]) == registry.EUROSAT_CLASSES.index(cls)
            np.testing.assert_array_equal(ex["image"], _read(manual / fn))
            got[fn] = split
            assert 0 <= int(ex["scene_id"]) < n_total
    assert got == ref
    assert sum(v == "test" for v in got.values()) == sum(round(0.2 * n) for n in EUROSAT_COUNTS)
    # scene_id = global index in (class, sorted file name) order
    order = [f"{c}/{f}" for c in registry.EUROSAT_CLASSES
             for f in sorted(os.listdir(manual / c))]
    for split in ("train", "test"):
        for ex in _all(_source("eurosat_rgb", data_dir, split)):
            assert order[int(ex["scene_id"])] == _s(ex["filename"])
    b = build.get_builder("eurosat_rgb", data_dir)
    md = b.info.metadata
    info = registry.get_dataset_info("eurosat_rgb")
    assert list(md["bands"]) == ["R", "G", "B"] and list(md["mean"]) == pytest.approx(info.mean)
    assert list(md["gsd_m"]) == [10.0] * 3 and md["scale"] == 255.0
    assert md["num_skipped"] == 0 and "default_rng(0)" in md["split_rule"]
    assert b.info.features["label"].names == list(registry.EUROSAT_CLASSES)


def test_eurosat_with_validation_config(eurosat, tmp_path):
    manual, default_dir = eurosat
    _build("eurosat_rgb", tmp_path, manual, "with_validation")
    names = {s: {_s(e["filename"]) for e in _all(_source("eurosat_rgb", str(tmp_path), s,
                                                         "with_validation"))}
             for s in ("train", "validation", "test")}
    default_test = {_s(e["filename"]) for e in _all(_source("eurosat_rgb", default_dir, "test"))}
    assert names["test"] == default_test
    assert not names["train"] & names["validation"]
    assert len(names["validation"]) == sum(round(0.1 * n) for n in EUROSAT_COUNTS)
    # re-implementation of the validation rule
    ref = reference_eurosat_split(manual, ".jpg")
    vrng = np.random.default_rng(1)
    expect_val = set()
    for c, n in zip(registry.EUROSAT_CLASSES, EUROSAT_COUNTS):
        files = sorted(os.listdir(manual / c))
        train_idx = [i for i, f in enumerate(files) if ref[f"{c}/{f}"] == "train"]
        expect_val |= {f"{c}/{files[i]}" for i in vrng.permutation(train_idx)[:round(0.1 * n)]}
    assert names["validation"] == expect_val


def test_eurosat_split_rule_matches_full_dataset_counts():
    from tfds_builders import _eurosat

    counts = [3000, 3000, 3000, 2500, 2500, 2000, 2500, 3000, 2500, 3000]
    a = _eurosat.stratified_split(counts)
    assert sum(int((x == 1).sum()) for x in a) == 5400
    assert sum(int((x == 0).sum()) for x in a) == 21600
    v = _eurosat.stratified_split(counts, validation_fraction=0.1)
    assert sum(int((x == 2).sum()) for x in v) == 2700
    for x, y in zip(a, v):
        np.testing.assert_array_equal(x == 1, y == 1)  # same test split


def test_eurosat_corrupt_file_error_skip_bad_and_atomicity(tmp_path):
    manual = write_eurosat_rgb(tmp_path / "m", counts=(3,) * 10)
    bad = manual / "Forest" / "Forest_2.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated JPEG: the header is intact
    out = tmp_path / "tfds"
    with pytest.raises(ValueError, match=r"Forest_2\.jpg.*(truncated|decode)"):
        _build("eurosat_rgb", out, manual)
    _assert_no_dataset(str(out), "eurosat_rgb", "default")
    assert not build.is_built(build.get_builder("eurosat_rgb", str(out)))
    # --skip_bad: skipped, counted in the metadata, the other 29 images are there
    _build("eurosat_rgb", out, manual, skip_bad=True)
    b = build.get_builder("eurosat_rgb", str(out))
    assert b.info.metadata["num_skipped"] == 1
    assert list(b.info.metadata["skipped_files"]) == ["Forest/Forest_2.jpg"]
    n = sum(len(_source("eurosat_rgb", str(out), s)) for s in ("train", "test"))
    assert n == 29


def test_eurosat_wrong_size_image_is_an_error(tmp_path):
    manual = write_eurosat_rgb(tmp_path / "m", counts=(1,) * 10)
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(manual / "River" / "River_1.jpg")
    with pytest.raises(ValueError, match=r"River_1\.jpg: expected 64 x 64"):
        _build("eurosat_rgb", tmp_path / "o", manual)
    with pytest.raises(FileNotFoundError, match="missing class folders"):
        _build("eurosat_rgb", tmp_path / "o", tmp_path / "m" / "River")


def test_eurosat_ms(tmp_path):
    rng = _rng(1)
    counts = (2, 3, 2, 2, 2, 1, 2, 3, 2, 2)
    manual = tmp_path / "tif"
    images = {}
    for k, (c, n) in enumerate(zip(registry.EUROSAT_CLASSES, counts)):
        os.makedirs(manual / c)
        for i in range(1, n + 1):
            img = rng.integers(0, 12000, (64, 64, 13)).astype(np.uint16)
            images[f"{c}/{c}_{i}.tif"] = img
            # one class stored band-first (separate planes), the others band-last
            if k == 0:
                tifffile.imwrite(manual / c / f"{c}_{i}.tif", np.moveaxis(img, -1, 0),
                                 photometric="minisblack", planarconfig="separate")
            else:
                tifffile.imwrite(manual / c / f"{c}_{i}.tif", img, photometric="minisblack",
                                 planarconfig="contig")
    _build("eurosat_ms", tmp_path / "o", manual)
    ref = reference_eurosat_split(manual, ".tif")
    got = {}
    for split in ("train", "test"):
        for ex in _all(_source("eurosat_ms", str(tmp_path / "o"), split)):
            assert ex["image"].shape == (64, 64, 13) and ex["image"].dtype == np.uint16
            fn = _s(ex["filename"])
            np.testing.assert_array_equal(ex["image"], images[fn])
            assert registry.EUROSAT_CLASSES[int(ex["label"])] == fn.split("/")[0]
            got[fn] = split
    assert got == ref
    md = build.get_builder("eurosat_ms", str(tmp_path / "o")).info.metadata
    assert list(md["bands"]) == list(registry.S2_BANDS) and md["scale"] == 10000.0
    assert len(md["wavelengths_nm"]) == 13 and len(md["std"]) == 13
    # a truncated GeoTIFF is an error naming the file
    bad = manual / "Forest" / "Forest_2.tif"
    bad.write_bytes(bad.read_bytes()[:-5000])
    with pytest.raises(ValueError, match=r"Forest_2\.tif: cannot decode TIFF"):
        _build("eurosat_ms", tmp_path / "o2", manual)
    _assert_no_dataset(str(tmp_path / "o2"), "eurosat_ms", "default")


def test_pretrain_pipeline_on_eurosat_crops_as_scenes(eurosat):
    from rsjax.data import pipeline

    _, data_dir = eurosat
    cfg = pipeline.default_data_config()
    cfg.name = "eurosat_rgb"
    cfg.builder_config = "default"
    cfg.data_dir = data_dir
    cfg.num_threads = 1
    cfg.crops_as_scenes = 2
    cfg.scenes_per_batch = 4
    cfg.samples_per_scene = 2
    it = pipeline.make_pretrain_iterator(cfg, global_batch_size=8, seed=0, image_size=16)
    n_train = len(_source("eurosat_rgb", data_dir, "train"))
    assert it.steps_per_epoch == n_train * 2 // 4  # 4 crops -> 2 groups of 2 per image
    for _ in range(3):
        b = next(it)
        assert b["view1"].shape == (8, 16, 16, 3) and b["view1"].dtype == np.float32
        scenes, counts = np.unique(b["scene_id"], return_counts=True)
        assert len(scenes) == 4 and (counts == 2).all()
        assert (b["scene_id"][0::2] == b["scene_id"][1::2]).all()  # same-scene members
        assert ((b["label"] >= 0) & (b["label"] < 10)).all()
        # members of one scene come from one image: same label
        assert (b["label"][0::2] == b["label"][1::2]).all()
    it.close()


def test_throughput_presets_on_eurosat(eurosat):
    from rsjax.data import pipeline, throughput

    _, data_dir = eurosat
    for name in ("eurosat_rgb", "eurosat_rgb_scenes"):
        preset = throughput.PRESETS[name]
        assert preset["name"] == "eurosat_rgb" and preset["image_size"] == 64
        cfg = pipeline.default_data_config()
        cfg.data_dir = data_dir
        cfg.num_threads = 1
        cfg.name, cfg.builder_config = preset["name"], preset["config"]
        for key in ("crops_as_scenes", "scenes_per_batch", "samples_per_scene"):
            if key in preset:
                setattr(cfg, key, preset[key] if key != "scenes_per_batch" else 2)
        r = throughput.measure(cfg, batch_size=8, image_size=preset["image_size"], batches=2)
        assert r["images_per_s"] > 0 and r["first_batch_s"] > 0


# ----------------------------------------------------------------------- BigEarthNet

_BEN_SIDES = {"B01": 20, "B09": 20, "B05": 60, "B06": 60, "B07": 60, "B8A": 60, "B11": 60,
              "B12": 60, "B02": 120, "B03": 120, "B04": 120, "B08": 120}


def write_bigearthnet(root, patches, seed=0):
    rng = _rng(seed)
    bands = {}
    for name, labels in patches.items():
        d = root / name
        os.makedirs(d)
        bands[name] = {}
        for b, side in _BEN_SIDES.items():
            arr = rng.integers(0, 10000, (side, side)).astype(np.uint16)
            bands[name][b] = arr
            tifffile.imwrite(d / f"{name}_{b}.tif", arr)
        (d / f"{name}_labels_metadata.json").write_text(json.dumps(
            {"labels": labels, "acquisition_date": "2017-06-13 10:10:31"}))
    return bands


def test_bigearthnet(tmp_path):
    from tfds_builders.bigearthnet import BEN19_FROM_43, BEN43_CLASSES
    from tfds_builders._common import resize_bilinear

    patches = {
        "S2A_MSIL2A_20170613T101031_1_2": ["Non-irrigated arable land", "Sea and ocean"],
        "S2A_MSIL2A_20170613T101031_3_4": ["Coniferous forest", "Transitional woodland/shrub"],
        "S2B_MSIL2A_20180204T94161_5_6": ["Airports"],  # no 19-class counterpart
    }
    bands = write_bigearthnet(tmp_path / "m" / "BigEarthNet-v1.0", patches)
    _build("bigearthnet", tmp_path / "o", tmp_path / "m")
    exs = {_s(e["patch"]): e for e in _all(_source("bigearthnet", str(tmp_path / "o"), "train"))}
    assert set(exs) == set(patches)
    info = registry.get_dataset_info("bigearthnet")
    names19 = registry.BIGEARTHNET19_CLASSES
    for name, e in exs.items():
        assert e["image"].shape == (120, 120, 12) and e["image"].dtype == np.uint16
        for i, b in enumerate(info.bands):
            np.testing.assert_array_equal(e["image"][..., i],
                                          resize_bilinear(bands[name][b], 120, 120))
        np.testing.assert_array_equal(e["image"][..., info.bands.index("B02")],
                                      bands[name]["B02"])
        got43 = {BEN43_CLASSES[j] for j in np.nonzero(e["labels_43"])[0]}
        assert got43 == set(patches[name])
        want19 = {n19 for n19, srcs in BEN19_FROM_43.items() if set(srcs) & got43}
        assert {names19[j] for j in np.nonzero(e["labels_19"])[0]} == want19
        np.testing.assert_array_equal(e["label"], e["labels_19"])
        assert e["labels_43"].dtype == np.uint8 and e["labels_19"].shape == (19,)
    a, b_, c = (exs[n] for n in patches)
    assert int(a["scene_id"]) == int(b_["scene_id"]) != int(c["scene_id"])  # same product
    assert not c["labels_19"].any()
    assert {names19[j] for j in np.nonzero(a["labels_19"])[0]} == {"Arable land",
                                                                   "Marine waters"}
    # the mapping is complete: 32 of the 43 classes map, each to exactly one 19-class name
    mapped = [n for srcs in BEN19_FROM_43.values() for n in srcs]
    assert len(mapped) == len(set(mapped)) == 32 and set(mapped) <= set(BEN43_CLASSES)
    assert set(BEN19_FROM_43) == set(names19)
    md = build.get_builder("bigearthnet", str(tmp_path / "o")).info.metadata
    assert len(md["class_names_43"]) == 43 and list(md["bands"]) == list(info.bands)


def test_bigearthnet_resampling_is_bilinear_half_pixel():
    from tfds_builders._common import resize_bilinear

    ramp = np.arange(20, dtype=np.uint16)[None, :].repeat(20, 0) * 60  # 0, 60, ..., 1140
    up = resize_bilinear(ramp, 120, 120)
    assert up.shape == (120, 120) and up.dtype == np.uint16
    # output pixel i samples input x = (i + 0.5) / 6 - 0.5, clamped at the borders
    x = np.clip((np.arange(120) + 0.5) / 6 - 0.5, 0, 19)
    np.testing.assert_array_equal(up[0], np.rint(x * 60).astype(np.uint16))
    assert (up == up[0]).all()
    const = np.full((60, 60), 1234, np.uint16)
    assert (resize_bilinear(const, 120, 120) == 1234).all()


def test_bigearthnet_missing_band_and_splits(tmp_path):
    patches = {f"S2A_MSIL2A_20170613T101031_{i}_{i}": ["Pastures"] for i in range(3)}
    write_bigearthnet(tmp_path / "m", patches)
    names = sorted(patches)
    (tmp_path / "m" / "train.csv").write_text(f"{names[0]}\n{names[1]}\n")
    (tmp_path / "m" / "test.csv").write_text(f"{names[2]}\n")
    os.remove(tmp_path / "m" / names[1] / f"{names[1]}_B8A.tif")
    with pytest.raises(ValueError, match=rf"{names[1]}_B8A\.tif: file is missing"):
        _build("bigearthnet", tmp_path / "o", tmp_path / "m")
    _assert_no_dataset(str(tmp_path / "o"), "bigearthnet")
    _build("bigearthnet", tmp_path / "o", tmp_path / "m", skip_bad=True)
    assert [_s(e["patch"]) for e in _all(_source("bigearthnet", str(tmp_path / "o"), "train"))
            ] == [names[0]]
    assert [_s(e["patch"]) for e in _all(_source("bigearthnet", str(tmp_path / "o"), "test"))
            ] == [names[2]]
    md = build.get_builder("bigearthnet", str(tmp_path / "o")).info.metadata
    assert md["num_skipped"] == 1 and names[1] in md["skipped_files"][0]


# -------------------------------------------------------------------------- LEVIR-CD

def write_levir(root, seed=0):
    """Pre-cut crops named <split>_<idx>_<y>_<x>.png (two of one tile) and one 512 px tile."""
    rng = _rng(seed)
    for d in ("A", "B", "label"):
        os.makedirs(root / d)
    files = {"test_2_0000_0000.png": 256, "test_2_0000_0512.png": 256,
             "train_5_0256_0768.png": 256, "val_3_0000_0000.png": 256, "train_9.png": 512}
    labels = {}
    for name, side in files.items():
        Image.fromarray(_smooth_rgb(rng, side, side)).save(root / "A" / name)
        Image.fromarray(_smooth_rgb(rng, side, side)).save(root / "B" / name)
        lab = (rng.random((side, side)) < 0.2).astype(np.uint8) * 255
        Image.fromarray(lab, mode="L").save(root / "label" / name)
        labels[name] = lab
    os.makedirs(root / "list")
    (root / "list" / "demo.txt").write_text("test_2_0000_0000.png\n")  # not a split list
    return labels


def test_levir_cd(tmp_path):
    labels = write_levir(tmp_path / "m")
    _build("levir_cd", tmp_path / "o", tmp_path / "m")
    d = str(tmp_path / "o")
    train, val, test = (_all(_source("levir_cd", d, s)) for s in ("train", "validation", "test"))
    assert len(train) == 1 + 4 and len(val) == 1 and len(test) == 2
    for e in train + val + test:
        assert e["image_a"].shape == e["image_b"].shape == (256, 256, 3)
        assert e["image_a"].dtype == np.uint8 and e["change"].dtype == np.uint8
        assert e["change"].shape == (256, 256) and set(np.unique(e["change"])) <= {0, 1}
        name = _s(e["filename"])
        y0, x0 = (0, 0) if name == "train_9.png" else (int(name.split("_")[2]),
                                                      int(name.split("_")[3][:4]))
        y, x = int(e["crop_y"]) - y0, int(e["crop_x"]) - x0
        np.testing.assert_array_equal(e["change"] * 255, labels[name][y:y + 256, x:x + 256])
        np.testing.assert_array_equal(
            e["image_b"], _read(tmp_path / "m" / "B" / name)[y:y + 256, x:x + 256])
    assert len({int(e["scene_id"]) for e in test}) == 1  # two crops of tile test_2
    assert {_s(e["tile"]) for e in test} == {"test_2"}
    tile9 = [e for e in train if _s(e["tile"]) == "train_9"]
    assert len(tile9) == 4 and len({int(e["scene_id"]) for e in tile9}) == 1
    assert sorted((int(e["crop_y"]), int(e["crop_x"])) for e in tile9) == [
        (0, 0), (0, 256), (256, 0), (256, 256)]
    all_scenes = {_s(e["tile"]): int(e["scene_id"]) for e in train + val + test}
    assert len(set(all_scenes.values())) == len(all_scenes) == 4
    md = build.get_builder("levir_cd", d).info.metadata
    assert md["gsd_m"] == [0.5] * 3 and md["crop_size"] == 256


def test_levir_cd_bad_label_and_wrong_size(tmp_path):
    write_levir(tmp_path / "m")
    lab = tmp_path / "m" / "label" / "val_3_0000_0000.png"
    Image.fromarray(np.zeros((128, 256), np.uint8), mode="L").save(lab)
    with pytest.raises(ValueError, match=r"val_3_0000_0000\.png: wrong-size mask"):
        _build("levir_cd", tmp_path / "o", tmp_path / "m")
    _assert_no_dataset(str(tmp_path / "o"), "levir_cd", "default")
    Image.fromarray(np.full((256, 256), 7, np.uint8), mode="L").save(lab)
    with pytest.raises(ValueError, match=r"val_3_0000_0000\.png: label values"):
        _build("levir_cd", tmp_path / "o", tmp_path / "m")


def test_levir_cd_official_layout_and_list_files(tmp_path):
    rng = _rng(3)
    for split in ("train", "test"):
        for d in ("A", "B", "label"):
            os.makedirs(tmp_path / "m" / split / d)
        name = f"{split}_1.png"
        for d in ("A", "B"):
            Image.fromarray(_smooth_rgb(rng, 512, 512)).save(tmp_path / "m" / split / d / name)
        Image.fromarray(np.zeros((512, 512), np.uint8), mode="L").save(
            tmp_path / "m" / split / "label" / name)
    _build("levir_cd", tmp_path / "o", tmp_path / "m")
    for split in ("train", "test"):
        exs = _all(_source("levir_cd", str(tmp_path / "o"), split))
        assert len(exs) == 4 and len({int(e["scene_id"]) for e in exs}) == 1
    # flat layout with list/<split>.txt deciding the split of unprefixed names
    flat = tmp_path / "flat"
    for d in ("A", "B", "label"):
        os.makedirs(flat / d)
    for name in ("a.png", "b.png"):
        for d in ("A", "B"):
            Image.fromarray(_smooth_rgb(rng, 256, 256)).save(flat / d / name)
        Image.fromarray(np.zeros((256, 256), np.uint8), mode="L").save(flat / "label" / name)
    os.makedirs(flat / "list")
    (flat / "list" / "test.txt").write_text("b.png\n")
    _build("levir_cd", tmp_path / "o2", flat)
    assert [_s(e["filename"]) for e in _all(_source("levir_cd", str(tmp_path / "o2"), "test"))
            ] == ["b.png"]
    assert [_s(e["filename"]) for e in _all(_source("levir_cd", str(tmp_path / "o2"), "train"))
            ] == ["a.png"]


# ------------------------------------------------------------------------------ OSCD

def write_oscd_city(root, city, h, w, rect=True, seed=0):
    rng = _rng(seed)
    imgs = {}
    for t in (1, 2):
        d = root / city / (f"imgs_{t}_rect" if rect else f"imgs_{t}")
        os.makedirs(d)
        stack = []
        for b in registry.S2_BANDS:
            gsd = registry.S2_GSD_M[b]
            if rect or gsd == 10.0:
                arr = rng.integers(0, 5000, (h, w)).astype(np.uint16)
                full = arr
            else:  # native 20 m / 60 m grid (sizes as in OSCD: ceil of the 10 m size)
                f = int(gsd // 10)
                arr = rng.integers(0, 5000, (-(-h // f), -(-w // f))).astype(np.uint16)
                full = None
            fname = f"{b}.tif" if rect else f"S2A_OPER_MSI_L1C_{b}.tif"
            tifffile.imwrite(d / fname, arr)
            stack.append(full)
        imgs[t] = stack
    os.makedirs(root / city / "cm")
    cm = (rng.random((h, w)) < 0.1).astype(np.uint8)
    Image.fromarray(cm * 255, mode="L").save(root / city / "cm" / "cm.png")
    return imgs, cm


def test_oscd(tmp_path):
    m = tmp_path / "m"
    imgs, cm = write_oscd_city(m, "abudhabi", 200, 150, rect=True)
    _, cm2 = write_oscd_city(m, "beirut", 130, 140, rect=False, seed=1)
    (m / "train.txt").write_text("abudhabi")
    (m / "test.txt").write_text("beirut")
    _build("oscd", tmp_path / "o", m)
    d = str(tmp_path / "o")
    train, test = _all(_source("oscd", d, "train")), _all(_source("oscd", d, "test"))
    # 200 x 150 with 128 px crops: y in {0, 72}, x in {0, 22}
    assert sorted((int(e["crop_y"]), int(e["crop_x"])) for e in train) == [
        (0, 0), (0, 22), (72, 0), (72, 22)]
    assert len(test) == 4 and {_s(e["city"]) for e in test} == {"beirut"}
    for e in train + test:
        assert e["image_a"].shape == e["image_b"].shape == (128, 128, 13)
        assert e["image_a"].dtype == np.uint16 and e["change"].dtype == np.uint8
    assert {int(e["scene_id"]) for e in train} == {0} and {int(e["scene_id"]) for e in test} == {1}
    e = next(x for x in train if (int(x["crop_y"]), int(x["crop_x"])) == (72, 22))
    ref_a = np.stack(imgs[1], -1)[72:200, 22:150]
    np.testing.assert_array_equal(e["image_a"], ref_a)
    np.testing.assert_array_equal(e["change"], cm[72:200, 22:150])
    md = build.get_builder("oscd", d).info.metadata
    assert list(md["bands"]) == list(registry.S2_BANDS) and md["gsd_m"] == [10.0] * 13


def test_oscd_missing_band_skip_bad_and_wrong_size_map(tmp_path):
    m = tmp_path / "m"
    write_oscd_city(m, "aguasclaras", 130, 130)
    write_oscd_city(m, "bercy", 130, 130, seed=2)
    os.remove(m / "bercy" / "imgs_2_rect" / "B11.tif")
    with pytest.raises(ValueError, match=r"bercy/imgs_2_rect/B11\.tif: band file missing"):
        _build("oscd", tmp_path / "o", m)
    _assert_no_dataset(str(tmp_path / "o"), "oscd", "default")
    _build("oscd", tmp_path / "o", m, skip_bad=True)
    assert {_s(e["city"]) for e in _all(_source("oscd", str(tmp_path / "o"), "train"))} == {
        "aguasclaras"}
    assert build.get_builder("oscd", str(tmp_path / "o")).info.metadata["num_skipped"] == 1
    Image.fromarray(np.zeros((100, 130), np.uint8), mode="L").save(
        m / "aguasclaras" / "cm" / "cm.png")
    with pytest.raises(ValueError, match=r"aguasclaras/cm/cm\.png: wrong-size change map"):
        _build("oscd", tmp_path / "o2", m, skip_bad=False)


# ------------------------------------------------------------------------ SSL4EO-S12

def test_ssl4eo_s12(tmp_path):
    from tfds_builders._common import resize_bilinear

    rng = _rng(4)
    ref = {}
    for loc in ("0000003", "0000010"):
        for season in ("20200305T101021_T32TQM", "20200610T101031_T32TQM"):
            d = tmp_path / "m" / "s2c" / loc / season
            os.makedirs(d)
            stack = []
            for b in registry.S2_BANDS:
                side = {10.0: 264, 20.0: 132, 60.0: 44}[registry.S2_GSD_M[b]]
                arr = rng.integers(0, 8000, (side, side)).astype(np.uint16)
                name = "B8A" if b == "B8A" else f"B{int(b[1:])}"  # archive names: B1 .. B12
                tifffile.imwrite(d / f"{name}.tif", arr)
                stack.append(resize_bilinear(arr, 264, 264))
            ref[(loc, season)] = np.stack(stack, -1)
    _build("ssl4eo_s12", tmp_path / "o", tmp_path / "m")
    exs = _all(_source("ssl4eo_s12", str(tmp_path / "o"), "train"))
    assert len(exs) == 4
    for e in exs:
        assert e["image"].shape == (264, 264, 13) and e["image"].dtype == np.uint16
        loc, season = _s(e["location"]), _s(e["season_name"])
        assert int(e["scene_id"]) == int(loc)
        assert int(e["season"]) == ["20200305T101021_T32TQM",
                                    "20200610T101031_T32TQM"].index(season)
        np.testing.assert_array_equal(e["image"], ref[(loc, season)])
    # a 10 m band of the wrong size is an error naming the file
    tifffile.imwrite(tmp_path / "m" / "s2c" / "0000010" / "20200610T101031_T32TQM" / "B4.tif",
                     np.zeros((200, 264), np.uint16))
    with pytest.raises(ValueError, match=r"0000010/20200610T101031_T32TQM/B4\.tif: 10 m band"):
        _build("ssl4eo_s12", tmp_path / "o2", tmp_path / "m")


# ------------------------------------------------------------------- rs_segmentation

def _isprs_colour(index_mask):
    from tfds_builders.rs_segmentation.rs_segmentation_dataset_builder import ISPRS_PALETTE

    rgb = np.zeros(index_mask.shape + (3,), np.uint8)
    for colour, v in ISPRS_PALETTE:
        rgb[index_mask == v] = colour
    return rgb


def test_rs_segmentation_potsdam_index_masks_and_splits(tmp_path):
    rng = _rng(5)
    m = tmp_path / "m"
    masks = {}
    for split, names in (("train", ("2_10_0_0_512_512", "2_11_0_0_512_512")), ("val", ("3_1",))):
        os.makedirs(m / "img_dir" / split)
        os.makedirs(m / "ann_dir" / split)
        for n in names:
            Image.fromarray(_smooth_rgb(rng, 384, 512)).save(m / "img_dir" / split / f"{n}.png")
            mask = rng.integers(0, 7, (384, 512)).astype(np.uint8)
            Image.fromarray(mask, mode="L").save(m / "ann_dir" / split / f"{n}.png")
            masks[f"{split}/{n}.png"] = mask
    _build("rs_segmentation", tmp_path / "o", m, "potsdam")
    d = str(tmp_path / "o")
    train = _all(_source("rs_segmentation", d, "train", "potsdam"))
    val = _all(_source("rs_segmentation", d, "validation", "potsdam"))
    # 384 x 512 tiles, 256 px crops: y in {0, 128}, x in {0, 256}
    assert len(train) == 8 and len(val) == 4
    for e in train + val:
        assert e["image"].shape == (256, 256, 3) and e["image"].dtype == np.uint8
        assert e["mask"].shape == (256, 256) and e["mask"].dtype == np.uint8
        y, x = int(e["crop_y"]), int(e["crop_x"])
        np.testing.assert_array_equal(e["mask"], masks[_s(e["filename"])][y:y + 256, x:x + 256])
    scenes = {}
    for e in train + val:
        scenes.setdefault(_s(e["filename"]), set()).add(int(e["scene_id"]))
    assert all(len(v) == 1 for v in scenes.values())
    assert len({next(iter(v)) for v in scenes.values()}) == 3
    md = build.get_builder("rs_segmentation", d, "potsdam").info.metadata
    assert md["class_names"] == list(registry.ISPRS_CLASSES) and md["ignore_value"] == 0
    assert md["mask_values"]["2"] == "building" and md["gsd_m"] == [0.05] * 3


def test_rs_segmentation_vaihingen_colour_masks_and_errors(tmp_path):
    rng = _rng(6)
    m = tmp_path / "m"
    os.makedirs(m / "img_dir")
    os.makedirs(m / "ann_dir")
    idx = rng.integers(0, 7, (256, 300)).astype(np.uint8)
    Image.fromarray(_smooth_rgb(rng, 256, 300)).save(m / "img_dir" / "area1_IRRG.png")
    Image.fromarray(_isprs_colour(idx)).save(m / "ann_dir" / "area1_label.png")
    _build("rs_segmentation", tmp_path / "o", m, "vaihingen")
    exs = _all(_source("rs_segmentation", str(tmp_path / "o"), "train", "vaihingen"))
    assert len(exs) == 2
    for e in exs:
        x = int(e["crop_x"])
        np.testing.assert_array_equal(e["mask"], idx[:, x:x + 256])
    md = build.get_builder("rs_segmentation", str(tmp_path / "o"), "vaihingen").info.metadata
    assert md["bands"] == ["NIR", "R", "G"]
    # a colour outside the ISPRS palette (magenta) is an error naming the mask
    bad = _isprs_colour(idx)
    bad[5, 7] = (255, 0, 255)
    Image.fromarray(bad).save(m / "ann_dir" / "area1_label.png")
    with pytest.raises(ValueError, match=r"area1_label\.png: 1 mask pixels have colours"):
        _build("rs_segmentation", tmp_path / "o2", m, "vaihingen")
    # wrong-size mask
    Image.fromarray(_isprs_colour(idx[:200])).save(m / "ann_dir" / "area1_label.png")
    with pytest.raises(ValueError, match=r"area1_label\.png: wrong-size mask"):
        _build("rs_segmentation", tmp_path / "o2", m, "vaihingen")
    _assert_no_dataset(str(tmp_path / "o2"), "rs_segmentation", "vaihingen")


def test_rs_segmentation_loveda_original_layout(tmp_path):
    rng = _rng(7)
    m = tmp_path / "m"
    for split, domain in (("Train", "Urban"), ("Val", "Rural")):
        os.makedirs(m / split / domain / "images_png")
        os.makedirs(m / split / domain / "masks_png")
        Image.fromarray(_smooth_rgb(rng, 512, 512)).save(m / split / domain / "images_png" /
                                                         "1.png")
        Image.fromarray(rng.integers(0, 8, (512, 512)).astype(np.uint8), mode="L").save(
            m / split / domain / "masks_png" / "1.png")
    os.makedirs(m / "Test" / "Urban" / "images_png")  # unlabelled: skipped with a warning
    Image.fromarray(_smooth_rgb(rng, 512, 512)).save(m / "Test" / "Urban" / "images_png" /
                                                     "9.png")
    _build("rs_segmentation", tmp_path / "o", m, "loveda")
    b = build.get_builder("rs_segmentation", str(tmp_path / "o"), "loveda")
    assert set(b.info.splits.keys()) == {"train", "validation"}
    e = _source("rs_segmentation", str(tmp_path / "o"), "validation", "loveda")[0]
    assert e["image"].shape == (512, 512, 3) and int(e["mask"].max()) <= 7
    # out-of-range index value
    Image.fromarray(np.full((512, 512), 9, np.uint8), mode="L").save(
        m / "Train" / "Urban" / "masks_png" / "1.png")
    with pytest.raises(ValueError, match=r"masks_png/1\.png: mask values must be 0\.\.7"):
        _build("rs_segmentation", tmp_path / "o2", m, "loveda")


def test_rs_segmentation_deepglobe_and_nyc4band(tmp_path):
    from tfds_builders.rs_segmentation.rs_segmentation_dataset_builder import DEEPGLOBE_PALETTE

    rng = _rng(8)
    m = tmp_path / "dg"
    os.makedirs(m / "train")
    os.makedirs(m / "valid")
    idx = rng.integers(0, 7, (700, 700)).astype(np.uint8)
    rgb = np.zeros((700, 700, 3), np.uint8)
    for colour, v in DEEPGLOBE_PALETTE:
        rgb[idx == v] = colour
    noisy = np.clip(rgb.astype(int) + rng.integers(-40, 40, rgb.shape), 0, 255).astype(np.uint8)
    Image.fromarray(_smooth_rgb(rng, 700, 700)).save(m / "train" / "119_sat.jpg")
    Image.fromarray(noisy).save(m / "train" / "119_mask.png")  # off-palette noise: thresholded
    Image.fromarray(_smooth_rgb(rng, 700, 700)).save(m / "valid" / "5_sat.jpg")  # no masks
    _build("rs_segmentation", tmp_path / "o", m, "deepglobe")
    exs = _all(_source("rs_segmentation", str(tmp_path / "o"), "train", "deepglobe"))
    assert len(exs) == 4  # 700 px, 612 px crops at 0 and 88
    for e in exs:
        assert e["image"].shape == (612, 612, 3)
        y, x = int(e["crop_y"]), int(e["crop_x"])
        np.testing.assert_array_equal(e["mask"], idx[y:y + 612, x:x + 612])
    # nyc4band: 4-band uint8 tif, band-first, index masks as tif
    n = tmp_path / "nyc"
    os.makedirs(n / "img_dir")
    os.makedirs(n / "ann_dir")
    img = rng.integers(0, 256, (4, 300, 256)).astype(np.uint8)
    mask = rng.integers(0, 9, (300, 256)).astype(np.uint8)
    tifffile.imwrite(n / "img_dir" / "tile_1.tif", img, photometric="minisblack",
                     planarconfig="separate")
    tifffile.imwrite(n / "ann_dir" / "tile_1.tif", mask)
    _build("rs_segmentation", tmp_path / "o", n, "nyc4band")
    exs = _all(_source("rs_segmentation", str(tmp_path / "o"), "train", "nyc4band"))
    assert len(exs) == 2
    for e in exs:
        y = int(e["crop_y"])
        assert e["image"].shape == (256, 256, 4)
        np.testing.assert_array_equal(e["image"], np.moveaxis(img, 0, -1)[y:y + 256])
        np.testing.assert_array_equal(e["mask"], mask[y:y + 256])
    md = build.get_builder("rs_segmentation", str(tmp_path / "o"), "nyc4band").info.metadata
    assert md["bands"] == ["NIR", "R", "G", "B"] and len(md["std"]) == 4


# ---------------------------------------------------------------------- Dynamic World

def test_dynamic_world(tmp_path):
    rng = _rng(9)
    m = tmp_path / "m"
    os.makedirs(m / "train")
    os.makedirs(m / "test")
    imgs = {}
    for split, pid in (("train", "a1"), ("train", "b2"), ("test", "c3")):
        img = rng.integers(0, 10000, (300, 280, 13)).astype(np.uint16)
        lab = rng.integers(0, 10, (300, 280)).astype(np.uint8)
        tifffile.imwrite(m / split / f"{pid}_s2.tif", img, photometric="minisblack",
                         planarconfig="contig")
        tifffile.imwrite(m / split / f"{pid}_label.tif", lab)
        imgs[f"{split}/{pid}_s2.tif"] = (img, lab)
    _build("dynamic_world", tmp_path / "o", m)
    d = str(tmp_path / "o")
    train = _all(_source("dynamic_world", d, "train"))
    test = _all(_source("dynamic_world", d, "test"))
    assert len(train) == 8 and len(test) == 4
    for e in train + test:
        assert e["image"].shape == (256, 256, 13) and e["image"].dtype == np.uint16
        assert e["mask"].shape == (256, 256) and e["mask"].dtype == np.uint8
        img, lab = imgs[_s(e["filename"])]
        y, x = int(e["crop_y"]), int(e["crop_x"])
        np.testing.assert_array_equal(e["image"], img[y:y + 256, x:x + 256])
        np.testing.assert_array_equal(e["mask"], lab[y:y + 256, x:x + 256])
    assert len({int(e["scene_id"]) for e in train}) == 2
    # product encoding: 0..8 -> 1..9, anything else -> 0 (ignore)
    _build("dynamic_world", tmp_path / "o", m, "product")
    e = _source("dynamic_world", d, "test", "product")[0]
    _, lab = imgs["test/c3_s2.tif"]
    y, x = int(e["crop_y"]), int(e["crop_x"])
    want = np.where(lab < 9, lab + 1, 0)[y:y + 256, x:x + 256]
    np.testing.assert_array_equal(e["mask"], want)
    # wrong-size label
    tifffile.imwrite(m / "test" / "c3_label.tif", np.zeros((300, 200), np.uint8))
    with pytest.raises(ValueError, match=r"c3_label\.tif: wrong-size mask"):
        _build("dynamic_world", tmp_path / "o2", m)


# --------------------------------------------------------------------- all builders

def test_every_builder_package_and_metadata():
    names = set(build.available_builders())
    assert {"eurosat_rgb", "eurosat_ms", "bigearthnet", "levir_cd", "oscd", "ssl4eo_s12",
            "rs_segmentation", "dynamic_world", "rs_synthetic"} <= names
    for name in names - {"rs_synthetic"}:
        cls = build.get_builder_class(name)
        assert cls.name == name
        import inspect

        assert "skip_bad" in inspect.signature(cls.__init__).parameters
        for cfg in cls.BUILDER_CONFIGS or [None]:
            info = registry.get_config_info(name, cfg.name if cfg else None)
            assert len(info.bands) == len(info.wavelengths_nm) == len(info.mean) == len(
                info.std) == len(info.gsd_m)


def test_command_line_skip_bad_reports_count(tmp_path):
    write_levir(tmp_path / "m")
    (tmp_path / "m" / "A" / "train_5_0256_0768.png").write_bytes(b"not a png at all")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "rsjax.data.build", "levir_cd", f"--manual_dir={tmp_path / 'm'}",
           f"--data_dir={tmp_path / 'o'}"]
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "train_5_0256_0768.png" in out.stderr
    out = subprocess.run(cmd + ["--skip_bad"], cwd=repo, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "levir_cd: ready" in out.stdout
    assert "skipped 1 bad input file" in out.stderr and "A/train_5_0256_0768.png" in out.stderr


# ------------------------------------------------------------------ file format (issue 15)

def test_builders_default_to_array_record_and_tfrecord_build_is_refused(eurosat, tmp_path):
    """`tfds build` without --file_format writes what the builder's info says: array_record for
    rsjax's builders; a dataset stored only as TFRecord is refused in one line saying how to
    rebuild (TFDS's own error names no remedy rsjax users can apply)."""
    import shutil

    from tensorflow_datasets.core import file_adapters

    from tfds_builders import _common

    real = [n for n in build.available_builders()
            if issubclass(build.get_builder_class(n), _common.ManualDataMixin)]
    assert len(real) >= 8  # rs_synthetic is built only by rsjax.data.build (array_record)
    for name in real:
        b = build.get_builder_class(name)(data_dir=str(tmp_path / "fresh"))
        assert b.info.file_format == file_adapters.FileFormat.ARRAY_RECORD, name
    explicit = build.get_builder_class("eurosat_ms")(data_dir=str(tmp_path / "x"), file_format="tfrecord")
    assert explicit.info.file_format == file_adapters.FileFormat.TFRECORD  # an explicit choice stays

    # The built EuroSAT copied and its dataset_info.json rewritten as a TFRecord build would be.
    _, data_dir = eurosat
    copy = tmp_path / "tfrecord_dir"
    shutil.copytree(data_dir, copy)
    infos = [os.path.join(r, f) for r, _, fs in os.walk(copy) for f in fs if f == "dataset_info.json"]
    assert len(infos) == 1
    with open(infos[0]) as f:
        info = json.load(f)
    assert info["fileFormat"] == "array_record"
    info["fileFormat"] = "tfrecord"
    with open(infos[0], "w") as f:
        json.dump(info, f)
    assert build.get_builder("eurosat_rgb", data_dir).info.file_format == file_adapters.FileFormat.ARRAY_RECORD
    with pytest.raises(ValueError) as err:
        build.get_builder("eurosat_rgb", str(copy))
    msg = str(err.value)
    assert "\n" not in msg and "tfrecord" in msg and "--file_format=array_record" in msg, msg
    with pytest.raises(ValueError, match="--file_format=array_record"):
        from rsjax.data import pipeline

        src = pipeline.DataSource("eurosat_rgb", "train", "", str(copy), False)
        len(src)


# ------------------------------------------------------------------- georeferencing (issue 15)

def _geokeys(epsg, pixel_is_point=False):
    """A GeoKeyDirectory (GeoTIFF 1.0, 3 keys): projected model, raster type, projected CRS."""
    return [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 2 if pixel_is_point else 1, 3072, 0, 1, epsg]


def _geotag(path, x0, y0, gsd, epsg=32632, tie_pixel=(0.0, 0.0)):
    """Rewrites a fixture TIFF with the same pixels plus GeoTIFF tags: the pixel ``tie_pixel``
    (col, row) has its top-left corner at map (x0 + col * gsd, y0 - row * gsd)."""
    arr = tifffile.imread(path)
    i, j = tie_pixel
    geokeys = _geokeys(epsg)
    kw = dict(photometric="minisblack", planarconfig="contig") if arr.ndim == 3 else {}
    tifffile.imwrite(path, arr, extratags=[
        (33550, "d", 3, (gsd, gsd, 0.0)),
        (33922, "d", 6, (i, j, 0.0, x0 + i * gsd, y0 - j * gsd, 0.0)),
        (34735, "H", len(geokeys), geokeys)], **kw)


def test_read_georef_conventions(tmp_path):
    from tfds_builders._common import read_georef

    img = np.zeros((6, 5), np.uint16)
    p = tmp_path / "scale_tie.tif"
    tifffile.imwrite(p, img)
    _geotag(p, 500000.0, 4600000.0, 10.0, tie_pixel=(2.0, 3.0))  # tie point not at the corner
    g = read_georef(p)
    assert g.crs == "EPSG:32632"
    assert g.transform == (500000.0, 10.0, 0.0, 4600000.0, 0.0, -10.0)
    # a crop at row 4, column 1: its corner is 1 column east and 4 rows south
    assert g.window(4, 1).transform == (500010.0, 10.0, 0.0, 4599960.0, 0.0, -10.0)
    # ModelTransformation (rotated grid) in geographic WGS 84, pixel-is-point
    m = [0.5, 0.1, 0, 7.0, 0.2, -0.5, 0, 46.0, 0, 0, 0, 0, 0, 0, 0, 1]
    keys = [1, 1, 0, 2, 1025, 0, 1, 2, 2048, 0, 1, 4326]
    q = tmp_path / "matrix.tif"
    tifffile.imwrite(q, img, extratags=[(34264, "d", 16, m), (34735, "H", len(keys), keys)])
    gq = read_georef(q)
    assert gq.crs == "EPSG:4326"
    # GDAL: the point of pixel (0, 0) is its centre, so the corner is half a pixel back
    assert gq.transform == pytest.approx((7.0 - 0.5 * (0.5 + 0.1), 0.5, 0.1, 46.0 - 0.5 * (0.2 - 0.5), 0.2, -0.5))
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, img)
    assert read_georef(plain).crs == "" and all(np.isnan(read_georef(plain).transform))
    assert read_georef(tmp_path / "x.png").crs == ""


def test_builders_keep_georeferencing(tmp_path):
    # SSL4EO-S12: one season georeferenced on its 10 m band B2, the other without tags.
    rng = _rng(11)
    root = tmp_path / "ssl" / "s2c" / "0000005"
    for season in ("20200101T000000_T32TQM", "20200601T000000_T32TQM"):
        os.makedirs(root / season)
        for b in registry.S2_BANDS:
            side = {10.0: 264, 20.0: 132, 60.0: 44}[registry.S2_GSD_M[b]]
            name = "B8A" if b == "B8A" else f"B{int(b[1:])}"
            tifffile.imwrite(root / season / f"{name}.tif", rng.integers(0, 9000, (side, side)).astype(np.uint16))
    _geotag(root / "20200101T000000_T32TQM" / "B2.tif", 600000.0, 5000000.0, 10.0, epsg=32633)
    _build("ssl4eo_s12", tmp_path / "o1", tmp_path / "ssl")
    exs = {_s(e["season_name"]): e for e in _all(_source("ssl4eo_s12", str(tmp_path / "o1"), "train"))}
    geo = exs["20200101T000000_T32TQM"]
    assert _s(geo["crs"]) == "EPSG:32633"
    np.testing.assert_array_equal(geo["transform"], [600000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0])
    bare = exs["20200601T000000_T32TQM"]
    assert _s(bare["crs"]) == "" and np.isnan(bare["transform"]).all()

    # Dynamic World: every crop carries its own corner.
    m = tmp_path / "dw"
    os.makedirs(m / "train")
    tifffile.imwrite(m / "train" / "a_s2.tif", rng.integers(0, 9000, (300, 280, 13)).astype(np.uint16),
                     photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(m / "train" / "a_label.tif", rng.integers(0, 10, (300, 280)).astype(np.uint8))
    _geotag(m / "train" / "a_s2.tif", 300000.0, 6000000.0, 10.0, epsg=32631, tie_pixel=(7.0, 9.0))
    _build("dynamic_world", tmp_path / "o2", m)
    crops = _all(_source("dynamic_world", str(tmp_path / "o2"), "train"))
    assert len(crops) == 4
    for e in crops:
        y, x = int(e["crop_y"]), int(e["crop_x"])
        assert _s(e["crs"]) == "EPSG:32631"
        np.testing.assert_array_equal(e["transform"], [300000.0 + 10 * x, 10.0, 0.0, 6000000.0 - 10 * y, 0.0, -10.0])

    # OSCD: crops georeferenced from the date-1 B02 grid.
    o = tmp_path / "oscd"
    write_oscd_city(o, "abudhabi", 200, 150, rect=True)
    _geotag(o / "abudhabi" / "imgs_1_rect" / "B02.tif", 200000.0, 2700000.0, 10.0, epsg=32640)
    _build("oscd", tmp_path / "o3", o)
    for e in _all(_source("oscd", str(tmp_path / "o3"), "train")):
        y, x = int(e["crop_y"]), int(e["crop_x"])
        assert _s(e["crs"]) == "EPSG:32640"
        np.testing.assert_array_equal(e["transform"], [200000.0 + 10 * x, 10.0, 0.0, 2700000.0 - 10 * y, 0.0, -10.0])

    # EuroSAT MS and BigEarthNet: the patch's own tags.
    ms = tmp_path / "ms"
    for c in registry.EUROSAT_CLASSES:
        os.makedirs(ms / c)
        tifffile.imwrite(ms / c / f"{c}_1.tif", rng.integers(0, 9000, (64, 64, 13)).astype(np.uint16),
                         photometric="minisblack", planarconfig="contig")
    _geotag(ms / "Forest" / "Forest_1.tif", 410000.0, 5300000.0, 10.0, epsg=32632)
    _build("eurosat_ms", tmp_path / "o4", ms)
    rows = [e for sp in build.get_builder("eurosat_ms", str(tmp_path / "o4")).info.splits
            for e in _all(_source("eurosat_ms", str(tmp_path / "o4"), sp))]
    byname = {_s(e["filename"]): e for e in rows}
    assert _s(byname["Forest/Forest_1.tif"]["crs"]) == "EPSG:32632"
    np.testing.assert_array_equal(byname["Forest/Forest_1.tif"]["transform"], [410000.0, 10.0, 0.0, 5300000.0, 0.0, -10.0])
    assert _s(byname["River/River_1.tif"]["crs"]) == "" and np.isnan(byname["River/River_1.tif"]["transform"]).all()

    ben = tmp_path / "ben"
    write_bigearthnet(ben, {"S2A_MSIL2A_20170613T101031_0_45": ["Coniferous forest"]})
    (pdir,) = [p for p in ben.rglob("*_B02.tif")]
    _geotag(pdir, 500040.0, 4400040.0, 10.0, epsg=32634)
    _build("bigearthnet", tmp_path / "o5", ben)
    (e,) = _all(_source("bigearthnet", str(tmp_path / "o5"), "train"))
    assert _s(e["crs"]) == "EPSG:32634"
    np.testing.assert_array_equal(e["transform"], [500040.0, 10.0, 0.0, 4400040.0, 0.0, -10.0])
