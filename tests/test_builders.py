"""Builder behaviour beyond the per-builder checks of tests/test_builder_<name>.py.

The TFDS-style checks (split sizes, feature specs, contents, nothing left behind after a
failure) run per builder and config on generated dummy data (tests/builder_testing.py,
tests/dummy_data.py). Here: bad input files named in the error and skipped with ``skip_bad``,
split rules and layouts, palettes, resampling, georeferencing, the build lock and clean-up,
the command line, the file format, and the grain pipeline on a built EuroSAT.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

import dummy_data
import numpy as np
import pytest
from builder_testing import as_str, build_quietly, read_all, tree
from dummy_data import geotag as _geotag
from PIL import Image

from rsjax.data import build

tifffile = pytest.importorskip("tifffile")


def _source(name, data_dir, split, config=None):
    b = build.get_builder(name, str(data_dir), config)
    src = b.as_data_source(split=split)
    return [src[i] for i in range(len(src))]


def test_every_builder_has_its_tfds_style_test():
    here = os.path.dirname(os.path.abspath(__file__))
    names = set(build.available_builders())
    assert {
        "eurosat_rgb",
        "eurosat_ms",
        "bigearthnet",
        "levir_cd",
        "oscd",
        "ssl4eo_s12",
        "rs_segmentation",
        "dynamic_world",
        "rs_synthetic",
    } <= names
    missing = [n for n in names if not os.path.isfile(os.path.join(here, f"test_builder_{n}.py"))]
    assert not missing, f"builders without tests/test_builder_<name>.py: {missing}"


# ------------------------------------------------------------------------------ EuroSAT


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


def test_eurosat_bad_files_are_named_and_skipped_with_skip_bad(tmp_path):
    manual = dummy_data.eurosat_rgb(tmp_path / "m", counts=(3,) * 10)
    bad = manual / "Forest" / "Forest_2.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated JPEG: the header is intact
    out = tmp_path / "tfds"
    with pytest.raises(ValueError, match=r"Forest_2\.jpg.*(truncated|decode)"):
        build_quietly("eurosat_rgb", out, manual)
    assert not out.exists()
    build_quietly("eurosat_rgb", out, manual, skip_bad=True)
    b = build.get_builder("eurosat_rgb", str(out))
    assert b.info.metadata["num_skipped"] == 1
    assert list(b.info.metadata["skipped_files"]) == ["Forest/Forest_2.jpg"]
    assert sum(s.num_examples for s in b.info.splits.values()) == 29
    # wrong size: named, with the expected size; no class folders: the layout is explained
    bad.unlink()
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(manual / "River" / "River_1.jpg")
    with pytest.raises(ValueError, match=r"River_1\.jpg: expected 64 x 64"):
        build_quietly("eurosat_rgb", tmp_path / "o2", manual)
    with pytest.raises(FileNotFoundError, match="missing class folders"):
        build_quietly("eurosat_rgb", tmp_path / "o2", manual / "River")
    # a truncated GeoTIFF of EuroSAT MS
    ms = tmp_path / "ms"
    dummy_data.eurosat_ms(ms, counts=(1,) * 10)
    t = ms / "Forest" / "Forest_1.tif"
    t.write_bytes(t.read_bytes()[:-5000])
    with pytest.raises(ValueError, match=r"Forest_1\.tif: cannot decode TIFF"):
        build_quietly("eurosat_ms", tmp_path / "o3", ms)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_eurosat_rgb_reads_png_copies_and_reports_files_it_does_not_read(tmp_path, caplog):
    """Issue 27 fault 7: a png among the jpgs is read like them (the shared image reader takes it;
    its file name sorts into the split order like any other); a file that is no image is not
    dropped silently: counted and named in the metadata and in a warning."""
    manual = dummy_data.eurosat_rgb(tmp_path / "m", counts=(2,) * 10)
    jpg = manual / "Forest" / "Forest_2.jpg"
    Image.open(jpg).save(manual / "Forest" / "Forest_3.png")
    (manual / "River" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        build_quietly("eurosat_rgb", tmp_path / "out", manual)
    b = build.get_builder("eurosat_rgb", str(tmp_path / "out"))
    assert sum(s.num_examples for s in b.info.splits.values()) == 21
    assert b.info.metadata["num_ignored"] == 1 and list(b.info.metadata["ignored_files"]) == ["River/notes.txt"]
    assert "River/notes.txt" in caplog.text and "not read" in caplog.text
    ds = b.as_data_source()
    names = {
        str(e["filename"], "utf-8") if isinstance(e["filename"], bytes) else e["filename"]: e
        for split in ds.values()
        for e in split
    }
    np.testing.assert_array_equal(names["Forest/Forest_3.png"]["image"], names["Forest/Forest_2.jpg"]["image"])


# -------------------------------------------------------------------------- BigEarthNet


def test_bigearthnet_resampling_is_bilinear_half_pixel():
    from tfds_builders._common import resize_bilinear

    ramp = np.arange(20, dtype=np.uint16)[None, :].repeat(20, 0) * 60  # 0, 60, ..., 1140
    up = resize_bilinear(ramp, 120, 120)
    assert up.shape == (120, 120) and up.dtype == np.uint16
    # output pixel i samples input x = (i + 0.5) / 6 - 0.5, clamped at the borders
    x = np.clip((np.arange(120) + 0.5) / 6 - 0.5, 0, 19)
    np.testing.assert_array_equal(up[0], np.rint(x * 60).astype(np.uint16))
    assert (up == up[0]).all()
    assert (resize_bilinear(np.full((60, 60), 1234, np.uint16), 120, 120) == 1234).all()


def test_bigearthnet_missing_band_named_and_skipped(tmp_path):
    patches = {f"S2A_MSIL2A_20170613T101031_{i}_{i}": ["Pastures"] for i in range(3)}
    dummy_data.bigearthnet(tmp_path / "m", patches)
    names = sorted(patches)
    (tmp_path / "m" / "train.csv").write_text(f"{names[0]}\n{names[1]}\n")
    (tmp_path / "m" / "test.csv").write_text(f"{names[2]}\n")
    os.remove(tmp_path / "m" / names[1] / f"{names[1]}_B8A.tif")
    with pytest.raises(ValueError, match=rf"{names[1]}_B8A\.tif: file is missing"):
        build_quietly("bigearthnet", tmp_path / "o", tmp_path / "m")
    build_quietly("bigearthnet", tmp_path / "o", tmp_path / "m", skip_bad=True)
    got = read_all("bigearthnet", tmp_path / "o")
    assert {s: [as_str(e["patch"]) for e in v] for s, v in got.items()} == {"train": [names[0]], "test": [names[2]]}
    md = build.get_builder("bigearthnet", str(tmp_path / "o")).info.metadata
    assert md["num_skipped"] == 1 and names[1] in md["skipped_files"][0]


# ----------------------------------------------------------------------------- LEVIR-CD


def test_levir_cd_bad_label_and_wrong_size_named(tmp_path):
    dummy_data.levir_cd(tmp_path / "m", files={"val_3_0000_0000.png": 256})
    lab = tmp_path / "m" / "label" / "val_3_0000_0000.png"
    Image.fromarray(np.zeros((128, 256), np.uint8), mode="L").save(lab)
    with pytest.raises(ValueError, match=r"val_3_0000_0000\.png: wrong-size mask"):
        build_quietly("levir_cd", tmp_path / "o", tmp_path / "m")
    Image.fromarray(np.full((256, 256), 7, np.uint8), mode="L").save(lab)
    with pytest.raises(ValueError, match=r"val_3_0000_0000\.png: label values"):
        build_quietly("levir_cd", tmp_path / "o", tmp_path / "m")
    # the only file of a split skipped: said so, not TFDS's bare "No examples were yielded"
    with pytest.raises(
        ValueError,
        match=r"split \"validation\".*every file of that split was "
        r"skipped",
    ):
        build_quietly("levir_cd", tmp_path / "o", tmp_path / "m", skip_bad=True)
    assert not (tmp_path / "o").exists()


def test_levir_cd_official_layout_and_list_files(tmp_path):
    rng = np.random.default_rng(3)

    def pair(d, name, side):
        for sub in ("A", "B"):
            os.makedirs(d / sub, exist_ok=True)
            Image.fromarray(dummy_data.smooth_rgb(rng, side, side)).save(d / sub / name)
        os.makedirs(d / "label", exist_ok=True)
        Image.fromarray(np.zeros((side, side), np.uint8), mode="L").save(d / "label" / name)

    for split in ("train", "test"):  # official release: the split is the parent folder
        pair(tmp_path / "m" / split, f"{split}_1.png", 512)
    build_quietly("levir_cd", tmp_path / "o", tmp_path / "m")
    for split, exs in read_all("levir_cd", tmp_path / "o").items():
        assert len(exs) == 4 and len({int(e["scene_id"]) for e in exs}) == 1
    flat = tmp_path / "flat"  # unprefixed names: list/<split>.txt decides
    pair(flat, "a.png", 256)
    pair(flat, "b.png", 256)
    os.makedirs(flat / "list")
    (flat / "list" / "test.txt").write_text("b.png\n")
    build_quietly("levir_cd", tmp_path / "o2", flat)
    got = read_all("levir_cd", tmp_path / "o2")
    assert {s: [as_str(e["filename"]) for e in v] for s, v in got.items()} == {"train": ["a.png"], "test": ["b.png"]}


# --------------------------------------------------------------------------------- OSCD


def test_oscd_missing_band_skip_bad_and_wrong_size_map(tmp_path):
    m = tmp_path / "m"
    dummy_data.oscd_city(m, "aguasclaras", 130, 130)
    dummy_data.oscd_city(m, "bercy", 130, 130, seed=2)
    os.remove(m / "bercy" / "imgs_2_rect" / "B11.tif")
    with pytest.raises(ValueError, match=r"bercy/imgs_2_rect/B11\.tif: band file missing"):
        build_quietly("oscd", tmp_path / "o", m)
    build_quietly("oscd", tmp_path / "o", m, skip_bad=True)
    assert {as_str(e["city"]) for e in _source("oscd", tmp_path / "o", "train")} == {"aguasclaras"}
    assert build.get_builder("oscd", str(tmp_path / "o")).info.metadata["num_skipped"] == 1
    Image.fromarray(np.zeros((100, 130), np.uint8), mode="L").save(m / "aguasclaras" / "cm" / "cm.png")
    with pytest.raises(ValueError, match=r"aguasclaras/cm/cm\.png: wrong-size change map"):
        build_quietly("oscd", tmp_path / "o2", m)


# ----------------------------------------------- SSL4EO-S12, Dynamic World: bad sizes named


def test_wrong_size_band_and_label_named(tmp_path):
    dummy_data.ssl4eo_s12(tmp_path / "ssl", locations=("0000010",))
    tifffile.imwrite(
        tmp_path / "ssl" / "s2c" / "0000010" / dummy_data.SSL4EO_SEASONS[1] / "B4.tif", np.zeros((200, 264), np.uint16)
    )
    with pytest.raises(ValueError, match=r"0000010/20200610T101031_T32TQM/B4\.tif: 10 m band"):
        build_quietly("ssl4eo_s12", tmp_path / "o", tmp_path / "ssl")
    dummy_data.dynamic_world(tmp_path / "dw")
    tifffile.imwrite(tmp_path / "dw" / "test" / "c3_label.tif", np.zeros((300, 200), np.uint8))
    with pytest.raises(ValueError, match=r"c3_label\.tif: wrong-size mask"):
        build_quietly("dynamic_world", tmp_path / "o", tmp_path / "dw")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- rs_segmentation


def test_rs_segmentation_palette_and_mask_errors_named(tmp_path):
    from tfds_builders.rs_segmentation.rs_segmentation_dataset_builder import (
        ISPRS_PALETTE,
    )

    m = tmp_path / "v"
    idx = dummy_data.rs_segmentation(m, "vaihingen")["area1_IRRG.png"]
    bad = dummy_data.palette_colours(idx, ISPRS_PALETTE)
    bad[5, 7] = (255, 0, 255)  # magenta is no ISPRS colour
    Image.fromarray(bad).save(m / "ann_dir" / "area1_label.png")
    with pytest.raises(ValueError, match=r"area1_label\.png: 1 mask pixels have colours"):
        build_quietly("rs_segmentation", tmp_path / "o", m, "vaihingen")
    Image.fromarray(dummy_data.palette_colours(idx[:200], ISPRS_PALETTE)).save(m / "ann_dir" / "area1_label.png")
    with pytest.raises(ValueError, match=r"area1_label\.png: wrong-size mask"):
        build_quietly("rs_segmentation", tmp_path / "o", m, "vaihingen")
    # an index mask value above the class count (LoveDA: 0..7)
    lv = tmp_path / "lv"
    dummy_data.rs_segmentation(lv, "loveda")
    Image.fromarray(np.full((512, 512), 9, np.uint8), mode="L").save(lv / "Train" / "Urban" / "masks_png" / "1.png")
    with pytest.raises(ValueError, match=r"masks_png/1\.png: mask values must be 0\.\.7"):
        build_quietly("rs_segmentation", tmp_path / "o", lv, "loveda")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------ lock, clean-up, command line


def test_build_lock_excludes_and_leaves_no_file(tmp_path):
    """The lock file is deleted on release; a waiter that locked the deleted file notices and
    locks the new one, so at most one holder at any time."""
    holders, most = [0], [0]
    guard = threading.Lock()

    def work():
        for _ in range(5):
            with build._build_lock(str(tmp_path), "x"):
                with guard:
                    holders[0] += 1
                    most[0] = max(most[0], holders[0])
                time.sleep(0.002)
                with guard:
                    holders[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1
    assert os.listdir(tmp_path) == []


def test_interrupted_build_leaves_nothing_and_a_killed_ones_leftovers_are_removed(tmp_path, monkeypatch):
    from tfds_builders.eurosat_rgb import Builder

    dummy_data.eurosat_rgb(tmp_path / "m", counts=(1,) * 10)
    out = tmp_path / "tfds"
    original = Builder._generate_examples

    def interrupted(self, *args, **kwargs):
        it = original(self, *args, **kwargs)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(Builder, "_generate_examples", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_quietly("eurosat_rgb", out, tmp_path / "m")
    assert not out.exists()
    monkeypatch.undo()
    # what a SIGKILLed build leaves (TFDS's incomplete.<random>_<version> folder)
    stale = out / "eurosat_rgb" / "default" / "incomplete.ABC123_1.0.0"
    stale.mkdir(parents=True)
    (stale / "eurosat_rgb-train.array_record-00000-of-00001").write_bytes(b"half")
    build_quietly("eurosat_rgb", out, tmp_path / "m")
    assert sorted(os.listdir(out / "eurosat_rgb" / "default")) == ["1.0.0"]
    assert sorted(os.listdir(out)) == ["eurosat_rgb"]  # no lock file either


def test_command_line_failure_leaves_nothing_and_skip_bad_reports_count(tmp_path):
    dummy_data.levir_cd(tmp_path / "m", files={"train_5_0256_0768.png": 256, "train_6.png": 256})
    (tmp_path / "m" / "A" / "train_5_0256_0768.png").write_bytes(b"not a png at all")
    os.makedirs(tmp_path / "o")
    (tmp_path / "o" / "other.txt").write_text("a user's file")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [
        sys.executable,
        "-m",
        "rsjax.data.build",
        "levir_cd",
        f"--manual_dir={tmp_path / 'm'}",
        f"--data_dir={tmp_path / 'o'}",
    ]
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "train_5_0256_0768.png" in out.stderr
    assert tree(tmp_path / "o") == {"other.txt": b"a user's file"}  # fault 4 (issue 14)
    out = subprocess.run(cmd + ["--skip_bad"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "levir_cd: ready" in out.stdout
    assert "skipped 1 bad input file" in out.stderr and "A/train_5_0256_0768.png" in out.stderr


# ------------------------------------------------------------------ a built EuroSAT RGB


@pytest.fixture(scope="module")
def eurosat(tmp_path_factory):
    base = tmp_path_factory.mktemp("eurosat")
    dummy_data.eurosat_rgb(base / "manual")
    build_quietly("eurosat_rgb", base / "tfds", base / "manual")
    return str(base / "tfds")


def test_tfrecord_build_is_refused_in_one_line(eurosat, tmp_path):
    """A dataset stored only as TFRecord (``tfds build`` of a builder without rsjax's default,
    or from before it) is refused in one line saying how to rebuild."""
    from tensorflow_datasets.core import file_adapters

    from rsjax.data import pipeline

    explicit = build.get_builder_class("eurosat_ms")(data_dir=str(tmp_path / "x"), file_format="tfrecord")
    assert explicit.info.file_format == file_adapters.FileFormat.TFRECORD  # explicit choice
    copy = tmp_path / "tfrecord_dir"
    shutil.copytree(eurosat, copy)
    (info_path,) = copy.rglob("dataset_info.json")
    info = json.loads(info_path.read_text())
    assert info["fileFormat"] == "array_record"
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError) as err:
        build.get_builder("eurosat_rgb", str(copy))
    msg = str(err.value)
    assert "\n" not in msg and "tfrecord" in msg and "--file_format=array_record" in msg, msg
    with pytest.raises(ValueError, match="--file_format=array_record"):
        len(pipeline.DataSource("eurosat_rgb", "train", "", str(copy), False))


def test_pretrain_pipeline_on_eurosat_crops_as_scenes(eurosat):
    from rsjax.data import pipeline

    cfg = pipeline.default_data_config()
    cfg.name, cfg.builder_config, cfg.data_dir = "eurosat_rgb", "default", eurosat
    cfg.num_threads = 1
    cfg.crops_as_scenes, cfg.scenes_per_batch, cfg.samples_per_scene = 2, 4, 2
    it = pipeline.make_pretrain_iterator(cfg, global_batch_size=8, seed=0, image_size=16)
    n_train = build.get_builder("eurosat_rgb", eurosat).info.splits["train"].num_examples
    assert it.steps_per_epoch == n_train * 2 // 4  # 4 crops -> 2 groups of 2 per image
    for _ in range(3):
        b = next(it)
        assert b["view1"].shape == (8, 16, 16, 3) and b["view1"].dtype == np.float32
        scenes, counts = np.unique(b["scene_id"], return_counts=True)
        assert len(scenes) == 4 and (counts == 2).all()
        assert (b["scene_id"][0::2] == b["scene_id"][1::2]).all()  # same-scene members
        assert (b["label"][0::2] == b["label"][1::2]).all()  # ... from one image
    it.close()


def test_throughput_presets_on_eurosat(eurosat):
    from rsjax.data import pipeline, throughput

    for name in ("eurosat_rgb", "eurosat_rgb_scenes"):
        preset = throughput.PRESETS[name]
        assert preset["name"] == "eurosat_rgb" and preset["image_size"] == 64
        cfg = pipeline.default_data_config()
        cfg.data_dir, cfg.num_threads = eurosat, 1
        cfg.name, cfg.builder_config = preset["name"], preset["config"]
        for key in ("crops_as_scenes", "scenes_per_batch", "samples_per_scene"):
            if key in preset:
                setattr(cfg, key, preset[key] if key != "scenes_per_batch" else 2)
        r = throughput.measure(cfg, batch_size=8, image_size=preset["image_size"], batches=2)
        assert r["images_per_s"] > 0 and r["first_batch_s"] > 0


# ------------------------------------------------------------------- georeferencing


def test_footprint_offset_px():
    from tfds_builders._common import GeoRef, footprint_offset_px

    g = GeoRef("EPSG:32632", (500000.0, 10.0, 0.0, 4600000.0, 0.0, -10.0))
    coarse = GeoRef("EPSG:32632", (500000.0, 20.0, 0.0, 4600000.0, 0.0, -20.0))
    assert footprint_offset_px(g, (100, 60), coarse, (50, 30)) == 0.0  # same ground
    assert footprint_offset_px(g, (100, 60), coarse, (50, 31)) == 2.0  # 20 m too far east
    assert footprint_offset_px(g, (100, 60), GeoRef("EPSG:32633", coarse.transform), (50, 30)) is None
    assert footprint_offset_px(g, (100, 60), GeoRef(), (50, 30)) is None


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
    def corner(e):
        return as_str(e["crs"]), list(e["transform"])

    # SSL4EO-S12: one season georeferenced on its 10 m band B2, the other without tags
    dummy_data.ssl4eo_s12(tmp_path / "ssl", locations=("0000005",))
    _geotag(
        tmp_path / "ssl" / "s2c" / "0000005" / dummy_data.SSL4EO_SEASONS[0] / "B2.tif",
        600000.0,
        5000000.0,
        10.0,
        epsg=32633,
    )
    build_quietly("ssl4eo_s12", tmp_path / "o1", tmp_path / "ssl")
    exs = {as_str(e["season_name"]): e for e in _source("ssl4eo_s12", tmp_path / "o1", "train")}
    assert corner(exs[dummy_data.SSL4EO_SEASONS[0]]) == ("EPSG:32633", [600000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0])
    bare = exs[dummy_data.SSL4EO_SEASONS[1]]
    assert as_str(bare["crs"]) == "" and np.isnan(bare["transform"]).all()

    # Dynamic World: every crop carries its own corner (tie point not at pixel (0, 0))
    dummy_data.dynamic_world(tmp_path / "dw")
    _geotag(tmp_path / "dw" / "train" / "a1_s2.tif", 300000.0, 6000000.0, 10.0, epsg=32631, tie_pixel=(7.0, 9.0))
    build_quietly("dynamic_world", tmp_path / "o2", tmp_path / "dw")
    crops = [
        e for e in _source("dynamic_world", tmp_path / "o2", "train") if as_str(e["filename"]) == "train/a1_s2.tif"
    ]
    assert len(crops) == 4
    for e in crops:
        y, x = int(e["crop_y"]), int(e["crop_x"])
        assert corner(e) == ("EPSG:32631", [300000.0 + 10 * x, 10.0, 0.0, 6000000.0 - 10 * y, 0.0, -10.0])

    # OSCD: crops georeferenced from the date-1 B02 grid
    dummy_data.oscd_city(tmp_path / "oscd", "abudhabi", 200, 150, rect=True)
    _geotag(tmp_path / "oscd" / "abudhabi" / "imgs_1_rect" / "B02.tif", 200000.0, 2700000.0, 10.0, epsg=32640)
    build_quietly("oscd", tmp_path / "o3", tmp_path / "oscd")
    for e in _source("oscd", tmp_path / "o3", "train"):
        y, x = int(e["crop_y"]), int(e["crop_x"])
        assert corner(e) == ("EPSG:32640", [200000.0 + 10 * x, 10.0, 0.0, 2700000.0 - 10 * y, 0.0, -10.0])

    # EuroSAT MS and BigEarthNet: the patch's own tags (BigEarthNet: the 10 m band B02)
    dummy_data.eurosat_ms(tmp_path / "ms", counts=(1,) * 10)
    _geotag(tmp_path / "ms" / "Forest" / "Forest_1.tif", 410000.0, 5300000.0, 10.0)
    build_quietly("eurosat_ms", tmp_path / "o4", tmp_path / "ms")
    rows = {as_str(e["filename"]): e for exs in read_all("eurosat_ms", tmp_path / "o4").values() for e in exs}
    assert corner(rows["Forest/Forest_1.tif"]) == ("EPSG:32632", [410000.0, 10.0, 0.0, 5300000.0, 0.0, -10.0])
    assert as_str(rows["River/River_1.tif"]["crs"]) == ""
    name = "S2A_MSIL2A_20170613T101031_0_45"
    dummy_data.bigearthnet(tmp_path / "ben", {name: ["Coniferous forest"]})
    _geotag(tmp_path / "ben" / name / f"{name}_B02.tif", 500040.0, 4400040.0, 10.0, epsg=32634)
    build_quietly("bigearthnet", tmp_path / "o5", tmp_path / "ben")
    (e,) = _source("bigearthnet", tmp_path / "o5", "train")
    assert corner(e) == ("EPSG:32634", [500040.0, 10.0, 0.0, 4400040.0, 0.0, -10.0])
