"""TFDS builders on the real files in ../shared/data (skipped when that folder is absent).

EuroSAT RGB (27,000 JPEGs) is built once per session (about a minute on 2 cores); its build
time is printed (``pytest -s``) and written to ``<tmp>/eurosat_build_seconds.txt``.
"""

import json
import os
import time

import numpy as np
import pytest

from rsjax.data import build, registry

pytestmark = pytest.mark.realdata

EUROSAT_COUNTS = {
    "AnnualCrop": 3000,
    "Forest": 3000,
    "HerbaceousVegetation": 3000,
    "Highway": 2500,
    "Industrial": 2500,
    "Pasture": 2000,
    "PermanentCrop": 2500,
    "Residential": 3000,
    "River": 2500,
    "SeaLake": 3000,
}


def _s(x):
    return x.decode() if isinstance(x, bytes) else str(x)


def _columns(builder, split, keys):
    """Some features of a whole split (lists), without decoding the images."""
    import tensorflow_datasets as tfds

    skip = {k: tfds.decode.SkipDecoding() for k in builder.info.features.keys() if k not in keys}
    src = builder.as_data_source(split=split, decoders=skip)
    n = len(src)
    out = {k: [] for k in keys}
    for s in range(0, n, 1024):
        for r in src.__getitems__(list(range(s, min(n, s + 1024)))):
            for k in keys:
                out[k].append(r[k])
    return out


@pytest.fixture(scope="session")
def eurosat_real(shared_data, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("eurosat_real"))
    t = time.perf_counter()
    build.build_dataset("eurosat_rgb", data_dir, str(shared_data / "eurosat_rgb"), progress=False)
    dt = time.perf_counter() - t
    print(f"\nbuilt eurosat_rgb (27,000 images) in {dt:.1f} s")
    with open(os.path.join(data_dir, "eurosat_build_seconds.txt"), "w") as f:
        f.write(f"{dt:.1f}\n")
    return data_dir


def test_eurosat_rgb_real_counts_and_split(eurosat_real, shared_data):
    b = build.get_builder("eurosat_rgb", eurosat_real)
    assert b.info.splits["train"].num_examples == 21600
    assert b.info.splits["test"].num_examples == 5400
    names = b.info.features["label"].names
    assert names == sorted(EUROSAT_COUNTS) == list(registry.EUROSAT_CLASSES)
    counts = np.zeros(10, np.int64)
    files = {}
    for split in ("train", "test"):
        cols = _columns(b, split, ("label", "filename"))
        labels = np.asarray([int(x) for x in cols["label"]])
        counts += np.bincount(labels, minlength=10)
        files[split] = {_s(x) for x in cols["filename"]}
    assert counts.tolist() == [EUROSAT_COUNTS[c] for c in names]
    assert not files["train"] & files["test"]
    assert len(files["train"] | files["test"]) == 27000
    # independent re-implementation of the split rule on the real file names
    rng = np.random.default_rng(0)
    want_test = set()
    for c in sorted(EUROSAT_COUNTS):
        fs = sorted(os.listdir(shared_data / "eurosat_rgb" / c))
        want_test |= {f"{c}/{f}" for f in rng.permutation(np.array(fs, dtype=object))[: round(0.2 * len(fs))]}
    assert files["test"] == want_test
    ex = b.as_data_source(split="test")[0]
    assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
    assert b.info.metadata["num_skipped"] == 0


def test_eurosat_rgb_real_pretrain_pipeline_scene_batches(eurosat_real):
    from rsjax.data import pipeline

    cfg = pipeline.default_data_config()
    cfg.name = "eurosat_rgb"
    cfg.builder_config = "default"
    cfg.data_dir = eurosat_real
    cfg.num_threads = 1
    cfg.crops_as_scenes = 2
    cfg.scenes_per_batch = 16
    cfg.samples_per_scene = 4
    it = pipeline.make_pretrain_iterator(cfg, global_batch_size=64, seed=0, image_size=32)
    assert it.steps_per_epoch == 21600 // 16
    for _ in range(3):
        b = next(it)
        assert b["view1"].shape == (64, 32, 32, 3) and np.isfinite(b["view1"]).all()
        sc = b["scene_id"].reshape(16, 4)
        assert (sc == sc[:, :1]).all() and len(set(sc[:, 0].tolist())) == 16
        lab = b["label"].reshape(16, 4)
        assert (lab == lab[:, :1]).all() and ((lab >= 0) & (lab < 10)).all()
    it.close()


def test_levir_cd_real_samples(shared_data, tmp_path):
    build.build_dataset("levir_cd", str(tmp_path), str(shared_data / "levir_cd_samples"), progress=False)
    b = build.get_builder("levir_cd", str(tmp_path))
    assert {k: v.num_examples for k, v in b.info.splits.items()} == {"train": 3, "validation": 1, "test": 7}
    exs = {}
    for split in ("train", "validation", "test"):
        src = b.as_data_source(split=split)
        for i in range(len(src)):
            e = src[i]
            assert e["image_a"].shape == e["image_b"].shape == (256, 256, 3)
            assert e["image_a"].dtype == e["change"].dtype == np.uint8
            assert e["change"].shape == (256, 256) and set(np.unique(e["change"])) <= {0, 1}
            exs[_s(e["filename"])] = e
    assert len(exs) == 11
    assert not exs["train_386_0512_0768.png"]["change"].any()  # the genuine no-change crop
    fracs = [float(e["change"].mean()) for e in exs.values()]
    assert 0.1 < np.mean(fracs) < 0.2 and max(fracs) <= 0.26
    a, c = exs["test_2_0000_0000.png"], exs["test_2_0000_0512.png"]
    assert int(a["scene_id"]) == int(c["scene_id"]) and _s(a["tile"]) == "test_2"
    assert (int(c["crop_y"]), int(c["crop_x"])) == (0, 512)
    assert len({int(e["scene_id"]) for e in exs.values()}) == 10


def test_dsifn_cd_real_samples_with_levir_builder(shared_data, tmp_path):
    """Ten 256 px pairs named ``<n>_<m>.png``: no split folder, list file or prefix, so the
    documented seeded split by tile applies (levir_cd builder docstring)."""
    root = shared_data / "dsifn_cd_samples"
    build.build_dataset("levir_cd", str(tmp_path), str(root), progress=False)
    b = build.get_builder("levir_cd", str(tmp_path))
    got = {}
    for split in b.info.splits:
        src = b.as_data_source(split=split)
        for i in range(len(src)):
            got[_s(src[i]["filename"])] = split
            assert set(np.unique(src[i]["change"])) <= {0, 1}
    # independent re-implementation: sorted tiles, default_rng(0) permutation, first
    # round(0.2 * n) tiles -> test
    tiles = sorted(f for f in os.listdir(root / "A") if f.endswith(".png"))
    perm = np.random.default_rng(0).permutation(len(tiles))
    test = {tiles[i] for i in perm[: round(0.2 * len(tiles))]}
    assert got == {t: "test" if t in test else "train" for t in tiles}
    assert "split_seed=0" in b.info.metadata["split_rule"]


def test_bigearthnet_real_samples(shared_data, tmp_path):
    from tfds_builders.bigearthnet import BEN43_CLASSES

    root = shared_data / "bigearthnet_s2_examples"
    build.build_dataset("bigearthnet", str(tmp_path), str(root), progress=False)
    b = build.get_builder("bigearthnet", str(tmp_path))
    src = b.as_data_source(split="train")
    assert len(src) == 6
    scenes = {}
    info = registry.get_config_info("bigearthnet")
    for i in range(6):
        e = src[i]
        name = _s(e["patch"])
        assert e["image"].shape == (120, 120, 12) and e["image"].dtype == np.uint16
        meta = json.loads((root / name / f"{name}_labels_metadata.json").read_text())
        assert {BEN43_CLASSES[j] for j in np.nonzero(e["labels_43"])[0]} == set(meta["labels"])
        assert e["labels_19"].any() and set(np.unique(e["labels_19"])) <= {0, 1}
        b02 = e["image"][..., info.bands.index("B02")]
        assert 0 < b02.mean() < 10000
        scenes[name] = int(e["scene_id"])
    assert scenes["S2A_MSIL2A_20170617T113321_36_85"] == scenes["S2A_MSIL2A_20170617T113321_4_55"]
    assert len(set(scenes.values())) == 5


@pytest.mark.parametrize(
    "config,n_crops,values",
    [
        ("potsdam", 4, set(range(0, 6))),
        ("vaihingen", 4, set(range(0, 6))),
        ("loveda", 12, {1, 2, 3, 4, 6, 7}),
    ],
)
def test_segmentation_real_crops(shared_data, tmp_path, config, n_crops, values):
    build.build_dataset(
        "rs_segmentation", str(tmp_path), str(shared_data / "seg_samples_mmseg" / config), config, progress=False
    )
    b = build.get_builder("rs_segmentation", str(tmp_path), config)
    src = b.as_data_source(split="train")
    assert len(src) == n_crops
    info = registry.get_config_info("rs_segmentation", config)
    seen = set()
    by_tile = {}
    for i in range(len(src)):
        e = src[i]
        s = info.image_size
        assert e["image"].shape == (s, s, 3) and e["image"].dtype == np.uint8
        assert e["mask"].shape == (s, s) and e["mask"].dtype == np.uint8
        seen |= set(np.unique(e["mask"]).tolist())
        by_tile.setdefault(_s(e["filename"]), set()).add(int(e["scene_id"]))
    assert seen == values
    assert all(len(v) == 1 for v in by_tile.values())
    assert len(by_tile) == len({next(iter(v)) for v in by_tile.values()})


def test_oscd_real_archives_as_they_unpack(shared_data, tmp_path):
    """The images and train-labels archives side by side (section 8 of the data README): labels
    paired by city; hongkong's and saclay_e's smaller date 2 resampled onto date 1's grid."""
    import tifffile

    root = shared_data / "oscd_s2_subset"
    build.build_dataset("oscd", str(tmp_path), str(root), progress=False)
    b = build.get_builder("oscd", str(tmp_path))
    assert {k: v.num_examples for k, v in b.info.splits.items()} == {"train": 128}
    md = b.info.metadata
    sizes = {c: (tuple(r["size"]), tuple(r["date_2_size"])) for c, r in md["cities"].items()}
    assert sizes == {
        "aguasclaras": ((471, 525),) * 2,
        "bercy": ((395, 360),) * 2,
        "bordeaux": ((517, 461),) * 2,
        "hongkong": ((695, 540), (693, 538)),
        "paris": ((408, 390),) * 2,
        "saclay_e": ((639, 688), (631, 679)),
    }
    assert {"nantes", "rennes"} <= set(md["absent_cities"]["train"])
    assert len(md["absent_cities"]["test"]) == 10 and md["num_skipped"] == 0
    cm = tifffile.imread(
        root / "Onera Satellite Change Detection dataset - Train Labels" / "saclay_e" / "cm" / "saclay_e-cm.tif"
    )
    assert md["cities"]["saclay_e"]["change_fraction"] == round(float((cm == 2).mean()), 6)
    src = b.as_data_source(split="train")
    e = next(
        src[i]
        for i in range(len(src))
        if _s(src[i]["city"]) == "saclay_e" and (int(src[i]["crop_y"]), int(src[i]["crop_x"])) == (511, 560)
    )
    np.testing.assert_array_equal(e["change"], (cm == 2)[511:, 560:])
    # the bottom-right corner: date 2 registered on date 1 (a top-left crop gives r ~ 0.07)
    a, b2 = (e[k][..., registry.S2_BANDS.index("B02")].astype(float) for k in ("image_a", "image_b"))
    assert np.corrcoef(a.ravel(), b2.ravel())[0, 1] > 0.4
