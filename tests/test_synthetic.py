"""Procedural generator, dataset registry and the rs_synthetic TFDS builder (no TensorFlow)."""

import importlib.util
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from rsjax.data import registry, synthetic

# ------------------------------------------------------------------------------- generator


def test_generate_shapes_dtypes_and_labels():
    d = synthetic.generate(3, tile_size=64, crop_size=32, seed=5, scene_offset=10)
    n = 3 * 4
    assert d["image"].shape == (n, 32, 32, 13) and d["image"].dtype == np.uint16
    assert d["image2"].shape == (n, 32, 32, 13) and d["image2"].dtype == np.uint16
    assert d["mask"].shape == (n, 32, 32) and d["mask"].dtype == np.uint8
    assert d["change"].shape == (n, 32, 32) and d["change"].dtype == np.uint8
    assert d["label"].dtype == np.int32 and d["scene_id"].dtype == np.int32
    assert d["image"].max() <= 10000 and d["image2"].max() <= 10000
    assert set(np.unique(d["change"])) <= {0, 1}
    assert d["mask"].max() < synthetic.NUM_CLASSES
    # adjacent crops of one tile share the scene id (tile index + offset)
    np.testing.assert_array_equal(d["scene_id"], np.repeat(np.arange(10, 13), 4))
    for i in range(n):  # label = dominant class of the crop's mask
        assert d["label"][i] == np.bincount(d["mask"][i].ravel(), minlength=6).argmax()
    # the crops tile the tile: re-assemble tile 0 and compare with generate_tile
    tile = synthetic.generate_tile(0, tile_size=64, seed=5)
    top = np.concatenate([d["image"][0], d["image"][1]], axis=1)
    bottom = np.concatenate([d["image"][2], d["image"][3]], axis=1)
    np.testing.assert_array_equal(np.concatenate([top, bottom], axis=0), tile["image"])
    # change map = where the class differs between the two dates
    np.testing.assert_array_equal(tile["change"], (tile["mask"] != tile["mask2"]).astype(np.uint8))


def test_generate_deterministic_by_seed_and_prefix_stable():
    a = synthetic.generate(3, tile_size=64, crop_size=32, seed=1)
    b = synthetic.generate(3, tile_size=64, crop_size=32, seed=1)
    c = synthetic.generate(3, tile_size=64, crop_size=32, seed=2)
    small = synthetic.generate(2, tile_size=64, crop_size=32, seed=1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(small[k], a[k][:8])
    assert not np.array_equal(a["image"], c["image"])


def test_band_subsets():
    for nb in (3, 4, 12, 13):
        d = synthetic.generate(1, tile_size=32, crop_size=32, bands=nb)
        assert d["image"].shape[-1] == nb == len(synthetic.band_names(nb))
    with pytest.raises(ValueError, match="bands=5"):
        synthetic.band_names(5)


def test_spectra_are_physically_plausible():
    d = synthetic.generate(8, tile_size=128, crop_size=128, seed=0)
    img = d["image"].reshape(-1, 13).astype(np.float64)
    mask = d["mask"].ravel()
    b = {name: i for i, name in enumerate(registry.S2_BANDS)}

    def mean(cls, band):
        return img[mask == cls, b[band]].mean()

    # water: NIR far below red/green; vegetation: strong red edge, NIR >> red
    assert mean(synthetic.WATER, "B08") < 0.6 * mean(synthetic.WATER, "B03")
    for veg in (synthetic.FOREST, synthetic.CROPLAND):
        assert mean(veg, "B08") > 2.5 * mean(veg, "B04")
        assert mean(veg, "B07") > 1.5 * mean(veg, "B05")
    # bare soil rises into the SWIR
    assert mean(synthetic.BARE_SOIL, "B11") > mean(synthetic.BARE_SOIL, "B04")


def test_class_is_learnable_but_not_trivial():
    d = synthetic.generate(24, tile_size=128, crop_size=32, seed=3)
    x = d["image"].reshape(len(d["label"]), -1, 13).astype(np.float32)
    feat = np.concatenate([x.mean(1), x.std(1)], axis=1)
    train = d["scene_id"] < 16  # split by tile: no leakage of a tile's crops
    mu, sd = feat[train].mean(0), feat[train].std(0) + 1e-6
    f = (feat - mu) / sd
    y = d["label"]
    centres = np.stack([f[train & (y == c)].mean(0) for c in range(6)])
    pred = np.argmin(((f[~train][:, None] - centres[None]) ** 2).sum(-1), axis=1)
    acc = (pred == y[~train]).mean()
    chance = np.bincount(y[~train]).max() / (~train).sum()
    assert acc > max(0.5, chance + 0.25), (acc, chance)
    # a single pixel's spectrum alone is a clearly weaker cue than it would be for 6 fixed
    # spectra (which would give ~100%): per-tile illumination/haze and per-parcel variation.
    px = d["image"][:, 16, 16].astype(np.float32)
    pl = d["mask"][:, 16, 16]
    pmu, psd = px[train].mean(0), px[train].std(0)
    pz = (px - pmu) / psd
    pc = np.stack([pz[train & (pl == c)].mean(0) for c in range(6)])
    pacc = (np.argmin(((pz[~train][:, None] - pc[None]) ** 2).sum(-1), 1) == pl[~train]).mean()
    assert pacc < 0.97


def test_generator_is_fast():
    t = time.perf_counter()
    synthetic.generate(64, tile_size=128, crop_size=32)
    dt = time.perf_counter() - t
    print(f"generate(64 tiles of 128 px, 1024 crops): {dt:.2f} s")
    assert dt < 10.0  # ~0.5 s on an idle core; loose bound for a shared 2-core machine


def test_registry_statistics_match_generator():
    info = registry.get_config_info("rs_synthetic")
    mean, std = synthetic.band_statistics(24)
    np.testing.assert_allclose(mean, info.mean, rtol=0.2, atol=0.002)
    np.testing.assert_allclose(std, info.std, rtol=0.25, atol=0.002)


# -------------------------------------------------------------------------------- registry


def test_registry_entries_and_errors():
    for name in ("rs_synthetic", "eurosat_rgb", "eurosat_ms", "bigearthnet", "ssl4eo_s12", "levir_cd"):
        info = registry.get_config_info(name)
        assert len(info.bands) == len(info.mean) == len(info.std) == len(info.wavelengths_nm)
        assert info.scale in (255.0, 10000.0)
    assert registry.get_config_info("rs_synthetic").num_bands == 13
    assert registry.get_config_info("bigearthnet").num_bands == 12
    assert "B10" not in registry.get_config_info("bigearthnet").bands
    assert registry.get_config_info("eurosat_rgb").num_bands == 3
    assert registry.get_config_info("rs_synthetic/tiny").name == "rs_synthetic"
    with pytest.raises(ValueError, match="known datasets: .*eurosat_rgb"):
        registry.get_config_info("imagenet")
    with pytest.raises(ValueError, match="no band 'B99'"):
        registry.get_config_info("eurosat_ms").band_index("B99")


def test_normalize_formula_and_band_check():
    info = registry.get_config_info("eurosat_rgb")
    x = np.random.default_rng(0).integers(0, 256, (4, 5, 5, 3)).astype(np.uint8)
    y = registry.normalize(x, info)
    assert y.dtype == np.float32 and y.shape == x.shape
    ref = (x / 255.0 - np.asarray(info.mean)) / np.asarray(info.std)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(registry.denormalize(y, info), x / 255.0, atol=1e-5)
    with pytest.raises(ValueError, match="has 3 bands"):
        registry.normalize(np.zeros((2, 2, 13)), info)


# --------------------------------------------------------------------------- TFDS builder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rsjax.data import build

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    t = time.perf_counter()
    path = build.build_dataset("rs_synthetic", data_dir, config="tiny", progress=False)
    print(f"built rs_synthetic/tiny in {time.perf_counter() - t:.2f} s")
    assert os.path.isdir(path)
    return data_dir


def test_builder_without_tensorflow_reads_back(tiny_dir):
    import tensorflow_datasets as tfds

    import tfds_builders.rs_synthetic  # noqa: F401 - registers the builder

    if importlib.util.find_spec("tensorflow") is None:
        assert "tensorflow" not in sys.modules
    ds = tfds.data_source("rs_synthetic/tiny", data_dir=tiny_dir, download=False)
    train, test = ds["train"], ds["test"]
    assert len(train) == 8 * 4 and len(test) == 4 * 4
    ex = train[0]
    assert ex["image"].shape == (32, 32, 13) and ex["image"].dtype == np.uint16
    assert ex["image2"].shape == (32, 32, 13) and ex["image2"].dtype == np.uint16
    assert ex["mask"].shape == (32, 32) and ex["mask"].dtype == np.uint8
    assert ex["change"].shape == (32, 32) and ex["change"].dtype == np.uint8
    assert 0 <= int(ex["label"]) < 6
    assert ex["label"] == np.bincount(ex["mask"].ravel(), minlength=6).argmax()
    tr_scenes = np.asarray([int(train[i]["scene_id"]) for i in range(len(train))])
    te_scenes = np.asarray([int(test[i]["scene_id"]) for i in range(len(test))])
    assert set(tr_scenes).isdisjoint(te_scenes)
    assert sorted(np.bincount(tr_scenes)[np.unique(tr_scenes)]) == [4] * 8  # 4 crops per tile
    ids = {train[i]["id"] for i in range(len(train))}
    assert len(ids) == len(train)


def test_builder_metadata_and_atomic_layout(tiny_dir):
    from rsjax.data import build

    builder = build.get_builder("rs_synthetic", tiny_dir, "tiny")
    assert builder.is_prepared()
    md = builder.info.metadata
    info = registry.get_config_info("rs_synthetic")
    assert list(md["bands"]) == list(info.bands)
    assert list(md["mean"]) == pytest.approx(list(info.mean))
    assert md["crop_size"] == 32 and md["tile_size"] == 64
    assert "B8A" in builder.info.description
    assert builder.info.features["label"].names == list(info.class_names)
    # nothing half-written is left around, and a second build reuses the dataset
    root = os.path.join(tiny_dir, "rs_synthetic", "tiny")
    assert os.listdir(root) == ["1.0.0"]
    t = time.perf_counter()
    assert build.build_dataset("rs_synthetic", tiny_dir, config="tiny") == builder.data_dir
    assert time.perf_counter() - t < 5.0


def test_ensure_built_and_errors(tmp_path):
    from rsjax.data import build

    path = build.ensure_built("rs_synthetic", str(tmp_path), "tiny")
    assert os.path.isfile(os.path.join(path, "dataset_info.json"))
    assert build.ensure_built("rs_synthetic", str(tmp_path), "tiny") == path
    with pytest.raises(ValueError, match="no TFDS builder for dataset 'no_such_set'"):
        build.ensure_built("no_such_set", str(tmp_path))
    with pytest.raises(ValueError, match="known configs: default, tiny"):
        build.get_builder("rs_synthetic", str(tmp_path), "huge")


@pytest.mark.slow
def test_build_command_line(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsjax.data.build",
            "rs_synthetic",
            "--config=tiny",
            f"--data_dir={tmp_path}",
            f"--manual_dir={tmp_path}",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rs_synthetic: ready" in out.stdout
    assert os.path.isdir(tmp_path / "rs_synthetic" / "tiny" / "1.0.0")


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    from rsjax.data import build

    real = synthetic.generate_tile

    def flaky(i, **kw):
        if i == 3:
            raise OSError("disk on fire")
        return real(i, **kw)

    monkeypatch.setattr(synthetic, "generate_tile", flaky)
    with pytest.raises(OSError, match="disk on fire"):
        build.build_dataset("rs_synthetic", str(tmp_path), config="tiny", progress=False)
    config_dir = tmp_path / "rs_synthetic" / "tiny"
    assert not config_dir.exists() or os.listdir(config_dir) == []
    monkeypatch.setattr(synthetic, "generate_tile", real)
    path = build.build_dataset("rs_synthetic", str(tmp_path), config="tiny", progress=False)
    assert os.listdir(config_dir) == ["1.0.0"] and os.path.isdir(path)
