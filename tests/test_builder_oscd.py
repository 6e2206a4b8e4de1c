"""``oscd`` on generated dummy data (tests/builder_testing.py): the official archives as they
unpack (images and labels in sibling folders), the merged layout, and every input the builder
must refuse or leave out."""

import logging
import re
import shutil

import dummy_data
import numpy as np
import pytest
import tifffile
from builder_testing import DatasetBuilderTestCase, as_str, build_quietly, read_all
from dummy_data import OSCD_IMAGES, OSCD_TEST_LABELS, OSCD_TRAIN_LABELS
from PIL import Image

from rsjax.data import build, registry
from rsjax.errors import DataError
from tfds_builders._common import resize_bilinear

BANDS = registry.S2_BANDS
TEN_M = [BANDS.index(b) for b in ("B02", "B03", "B04", "B08")]
# abudhabi's date 2 is 4 x 4 px smaller than date 1 and its label (as OSCD's hongkong)
H, W, H2, W2 = 200, 150, 196, 146


def _ramp(y, x):
    """Date-2 B04 of abudhabi: linear, so its bilinear resampling is known in closed form."""
    return 1000.0 + 5.0 * y + 3.0 * x


def _resampled_ramp():
    """:func:`_ramp` (on the 196 x 146 grid) read at date 1's 200 x 150 pixel centres, written
    out independently of the builder: half-pixel centres, clamped to the border."""
    sy = np.clip((np.arange(H) + 0.5) * H2 / H - 0.5, 0, H2 - 1)
    sx = np.clip((np.arange(W) + 0.5) * W2 / W - 0.5, 0, W2 - 1)
    return _ramp(sy[:, None], sx[None, :])


class TestOSCD(DatasetBuilderTestCase):
    DATASET_NAME = "oscd"
    # abudhabi 200 x 150 (date 2: 196 x 146) and beirut 130 x 140 px, 128 px crops on a
    # border-aligned grid: 4 crops each. brasilia is a test city without labels (no test
    # split); nantes and rio are listed but absent.
    SPLITS = {None: {"train": 8}}

    def make_dummy_data(self, root, config):
        truth = dummy_data.oscd_archives(
            root,
            {"abudhabi": (H, W, (H2, W2), True), "beirut": (130, 140, None, True), "brasilia": (130, 130, None, False)},
            train=("abudhabi", "beirut", "nantes"),
            test=("brasilia", "rio"),
        )
        yy, xx = np.mgrid[0:H2, 0:W2]
        tifffile.imwrite(
            root / OSCD_IMAGES / "abudhabi" / "imgs_2" / "S2A_OPER_MSI_L1C_B04.tif", _ramp(yy, xx).astype(np.uint16)
        )
        return truth, root

    def check_examples(self, config, examples, truth, info):
        truth, root = truth
        imgs, cm = truth["abudhabi"]
        train = examples["train"]
        assert set(examples) == {"train"}
        by_city = {}
        for e in train:
            by_city.setdefault(as_str(e["city"]), []).append((int(e["crop_y"]), int(e["crop_x"])))
        # the crop grid of a 200 x 150 image: date 1's size, not date 2's
        assert sorted(by_city["abudhabi"]) == [(0, 0), (0, 22), (72, 0), (72, 22)]
        assert sorted(by_city["beirut"]) == [(0, 0), (0, 12), (2, 0), (2, 12)]
        assert {int(e["scene_id"]) for e in train if as_str(e["city"]) == "beirut"} == {1}
        e = next(
            x for x in train if as_str(x["city"]) == "abudhabi" and (int(x["crop_y"]), int(x["crop_x"])) == (72, 22)
        )
        win = np.s_[72:200, 22:150]
        np.testing.assert_array_equal(e["image_a"][..., TEN_M], np.stack([imgs[1][i] for i in TEN_M], -1)[win])
        np.testing.assert_array_equal(e["change"], cm[win])  # the 1 / 2 tif, as 0 / 1
        # date 2 on date 1's grid: the ramp band in closed form, the bottom-right pixel too
        b04 = e["image_b"][..., BANDS.index("B04")].astype(np.float64)
        assert np.abs(b04 - _resampled_ramp()[win]).max() <= 0.5 + 1e-9
        assert b04[-1, -1] == round(_ramp(H2 - 1, W2 - 1))
        # every date-2 band resampled once, straight from its file (20 m, 60 m and 10 m)
        d2 = root / OSCD_IMAGES / "abudhabi" / "imgs_2"
        for b in ("B02", "B05", "B01"):
            src = tifffile.imread(d2 / f"S2A_OPER_MSI_L1C_{b}.tif")
            assert src.shape == {"B02": (H2, W2), "B05": (98, 73), "B01": (33, 25)}[b]
            np.testing.assert_array_equal(e["image_b"][..., BANDS.index(b)], resize_bilinear(src, H, W)[win])
        md = info.metadata
        assert md["cities"]["abudhabi"] == {
            "split": "train",
            "size": [H, W],
            "date_2_size": [H2, W2],
            "change_fraction": round(float(cm.mean()), 6),
        }
        assert md["cities"]["beirut"]["date_2_size"] == [130, 140]
        assert md["absent_cities"] == {"train": ["nantes"], "test": ["rio"]}
        assert list(md["unlabelled_cities"]) == ["brasilia"]
        assert md["num_skipped"] == 0


def _cities(data_dir):
    return {s: sorted({as_str(e["city"]) for e in v}) for s, v in read_all("oscd", data_dir).items()}


def test_merged_layout_labels_in_the_city_folders(tmp_path):
    """The layout earlier versions required (each city's cm/ inside its folder, lists at the top)
    still builds; ``<city>-cm.tif`` wins over a disagreeing ``cm.png``."""
    m = tmp_path / "m"
    imgs, cm = dummy_data.oscd_city(m, "abudhabi", 200, 150, rect=True, label="tif")
    dummy_data.oscd_city(m, "beirut", 130, 140, rect=False, seed=1)  # native band sizes, png
    Image.fromarray(255 - cm * 255).save(m / "abudhabi" / "cm" / "cm.png")  # the inverse
    (m / "train.txt").write_text("abudhabi")
    (m / "test.txt").write_text("beirut")
    build_quietly("oscd", tmp_path / "o", m)
    got = read_all("oscd", tmp_path / "o")
    train, test = got["train"], got["test"]
    assert sorted((int(e["crop_y"]), int(e["crop_x"])) for e in train) == [(0, 0), (0, 22), (72, 0), (72, 22)]
    assert {as_str(e["city"]) for e in test} == {"beirut"}
    assert {int(e["scene_id"]) for e in train} == {0} and {int(e["scene_id"]) for e in test} == {1}
    e = next(x for x in train if (int(x["crop_y"]), int(x["crop_x"])) == (72, 22))
    np.testing.assert_array_equal(e["image_a"], np.stack(imgs[1], -1)[72:200, 22:150])
    np.testing.assert_array_equal(e["image_b"], np.stack(imgs[2], -1)[72:200, 22:150])
    np.testing.assert_array_equal(e["change"], cm[72:200, 22:150])


def test_archives_behind_links_and_zip_debris(tmp_path):
    """Archive folders reached through symbolic links; a ``__MACOSX`` copy of a city (what a
    zip made on a Mac leaves) is not a second city."""
    dummy_data.oscd_archives(tmp_path / "real", {"bercy": (130, 130, None, True)}, train=("bercy",))
    m = tmp_path / "m"
    m.mkdir()
    for name in (OSCD_IMAGES, OSCD_TRAIN_LABELS):
        (m / name).symlink_to(tmp_path / "real" / name, target_is_directory=True)
    (m / "__MACOSX" / OSCD_IMAGES / "bercy" / "imgs_1").mkdir(parents=True)
    (m / "__MACOSX" / OSCD_IMAGES / "bercy" / "imgs_1" / "._B02.tif").write_bytes(b"\0")
    build_quietly("oscd", tmp_path / "o", m)
    assert _cities(tmp_path / "o") == {"train": ["bercy"]}


def test_missing_train_label_is_refused_naming_the_city_then_skipped(tmp_path):
    dummy_data.oscd_archives(
        tmp_path / "m",
        {"aguasclaras": (130, 130, None, True), "bercy": (130, 130, None, False)},
        train=("aguasclaras", "bercy"),
    )
    bercy = tmp_path / "m" / OSCD_IMAGES / "bercy"
    looked = tmp_path / "m" / OSCD_TRAIN_LABELS / "bercy" / "cm"
    with pytest.raises(
        DataError,
        match=re.escape(f"{bercy}: city 'bercy' (train split) has images but no change map")
        + ".*"
        + re.escape(str(looked)),
    ):
        build_quietly("oscd", tmp_path / "o", tmp_path / "m")
    build_quietly("oscd", tmp_path / "o", tmp_path / "m", skip_bad=True)
    assert _cities(tmp_path / "o") == {"train": ["aguasclaras"]}
    md = build.get_builder("oscd", str(tmp_path / "o")).info.metadata
    assert (md["num_skipped"], list(md["skipped_files"])) == (1, [f"{OSCD_IMAGES}/bercy"])


def test_test_labels_archive_makes_test_a_labelled_split(tmp_path, caplog):
    """With the test labels of one test city unpacked, every present test city needs one;
    cities the lists name but that are absent are left out with one warning."""
    m = tmp_path / "m"
    dummy_data.oscd_archives(
        m,
        {"aguasclaras": (130, 130, None, True), "brasilia": (130, 130, None, True), "rio": (130, 130, None, False)},
        train=("aguasclaras", "nantes"),
        test=("brasilia", "rio"),
        test_labels=("brasilia",),
    )
    assert (m / OSCD_TEST_LABELS / "brasilia" / "cm" / "brasilia-cm.tif").is_file()
    with pytest.raises(DataError, match=r"rio: city 'rio' \(test split\) has images but no "):
        build_quietly("oscd", tmp_path / "o", m)
    shutil.rmtree(m / OSCD_IMAGES / "rio")
    with caplog.at_level(logging.WARNING):
        build_quietly("oscd", tmp_path / "o", m)
    assert _cities(tmp_path / "o") == {"train": ["aguasclaras"], "test": ["brasilia"]}
    assert "cities listed but not found" in caplog.text
    assert "train: nantes; test: rio" in caplog.text
    md = build.get_builder("oscd", str(tmp_path / "o")).info.metadata
    assert md["absent_cities"] == {"train": ["nantes"], "test": ["rio"]}


def test_change_map_without_images_is_refused_then_skipped(tmp_path):
    m = tmp_path / "m"
    dummy_data.oscd_archives(m, {"aguasclaras": (130, 130, None, True)}, train=("aguasclaras",))
    orphan = m / OSCD_TRAIN_LABELS / "nantes" / "cm" / "nantes-cm.tif"
    orphan.parent.mkdir(parents=True)
    tifffile.imwrite(orphan, np.ones((130, 130), np.uint8))
    with pytest.raises(DataError, match=re.escape(f"{orphan}: change map of city 'nantes', which has no image folder")):
        build_quietly("oscd", tmp_path / "o", m)
    build_quietly("oscd", tmp_path / "o", m, skip_bad=True)
    assert _cities(tmp_path / "o") == {"train": ["aguasclaras"]}
    md = build.get_builder("oscd", str(tmp_path / "o")).info.metadata
    assert list(md["skipped_files"]) == [f"{OSCD_TRAIN_LABELS}/nantes/cm/nantes-cm.tif"]


def test_date2_of_other_size_needs_the_same_ground(tmp_path, caplog):
    """10 % smaller date 2: refused without georeference; resampled when both B02 files say
    they cover the same ground; refused when their footprints are 3 px apart."""
    m = tmp_path / "m"
    dummy_data.oscd_archives(m, {"hongkong": (130, 120, (117, 108), True)}, train=("hongkong",))
    d1, d2 = (m / OSCD_IMAGES / "hongkong" / f"imgs_{t}" / "S2A_OPER_MSI_L1C_B02.tif" for t in (1, 2))
    with pytest.raises(
        DataError,
        match=re.escape(f"{d2}: date 2 is 117 x 108 px, date 1 (S2A_OPER_MSI_L1C_B02.tif) 130 x 120 px: over 5% apart"),
    ):
        build_quietly("oscd", tmp_path / "o1", m)
    dummy_data.geotag(d1, 400000.0, 2500000.0, 10.0)
    dummy_data.geotag(d2, 400000.0, 2500000.0, (10.0 * 120 / 108, 10.0 * 130 / 117))
    with caplog.at_level(logging.INFO):
        build_quietly("oscd", tmp_path / "o2", m)
    assert "hongkong: date 2 is 117 x 108 px, resampled onto date 1's 130 x 120 px grid" in caplog.text
    exs = read_all("oscd", tmp_path / "o2")["train"]
    assert len(exs) == 2 and all(e["image_b"].shape == (128, 128, 13) for e in exs)
    assert build.get_builder("oscd", str(tmp_path / "o2")).info.metadata["cities"]["hongkong"]["date_2_size"] == [
        117,
        108,
    ]
    dummy_data.geotag(d2, 400030.0, 2500000.0, (10.0 * 120 / 108, 10.0 * 130 / 117))
    with pytest.raises(
        DataError, match=re.escape(f"{d2}: date 2 (117 x 108 px) lies 3.0 date-1 pixels off the ground of date 1")
    ):
        build_quietly("oscd", tmp_path / "o3", m)


def test_city_listed_in_both_splits_is_refused(tmp_path):
    m = tmp_path / "m"
    dummy_data.oscd_archives(m, {"paris": (130, 130, None, True)}, train=("paris",), test=("bercy", "paris"))
    with pytest.raises(DataError, match=re.escape(f"{m / OSCD_IMAGES / 'test.txt'}: city 'paris' is also listed in")):
        build_quietly("oscd", tmp_path / "o", m)
