"""A colour-coded segmentation set read from its folder as it unpacks (``dubai_aerial_seg``):
``<Tile N>/images/*.jpg`` + ``<Tile N>/masks/*.png`` (RGB and palette PNGs), split by tile
(``data.test_scenes`` / ``data.val_scenes``: scene = tile number), cut into ``data.image_size`` crops, every bad file
named (``rsjax.data.tiles.read``).

The expected labels come from the class arrays the test draws and the colour table of the
dataset's description, written out here again (not read from the registry).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from dummy_data import DUBAI_DRAWN as DRAWN
from dummy_data import DUBAI_LABEL as LABEL
from dummy_data import DUBAI_RGB as RGB
from dummy_data import write_dubai_like
from PIL import Image

from configs import common
from rsjax.data import pipeline, registry, tiles
from rsjax.data import segmentation as SD
from rsjax.errors import ConfigError, DataError, MissingDataError

NAMES = ("water", "land", "road", "building", "vegetation")
S = 16  # crop side of the tests


@pytest.fixture
def dubai(tmp_path):
    return write_dubai_like(tmp_path)


def data_block(folder, **kw):
    return common.data_config(name="dubai_aerial_seg", folder=str(folder), **{"image_size": S, **kw})


def read(d, split, limit=None):
    """The tile folder's raw arrays through the one split reader."""
    return pipeline.read_split(d, split, fields={"image": "image", "mask": "mask", "scene_id": "scene_id"}, limit=limit)


def _crops(truth, keys):
    """Expected (images, labels, tiles) of the images ``keys`` cut into the S px grid."""
    ims, labs, tiles = [], [], []
    for tile, name in keys:
        image, cls = truth[tile, name]
        for y in range(0, cls.shape[0] - S + 1, S):
            for x in range(0, cls.shape[1] - S + 1, S):
                ims.append(image[y : y + S, x : x + S])
                labs.append(LABEL[cls[y : y + S, x : x + S]])
                tiles.append(tile)
    return np.stack(ims), np.stack(labs), np.asarray(tiles)


# --- reading -----------------------------------------------------------------------------
def test_labels_images_and_crops_follow_the_files(dubai):
    folder, truth = dubai
    data = SD.load_split(data_block(folder, test_scenes=(3,)), "train", image_size=S)
    keys = [(1, "image_part_001"), (1, "image_part_002"), (2, "image_part_001")]
    ims, labs, tiles = _crops(truth, keys)
    assert len(data) == 12  # 2 x 2 crops per image: the remainder (4 / 5 rows, 8 columns) dropped
    np.testing.assert_array_equal(data.labels, labs)
    np.testing.assert_array_equal(data.images, ims)
    np.testing.assert_array_equal(data.scene_id, tiles)  # scene = tile number
    assert data.class_names == NAMES and data.images.dtype == np.uint8
    assert data.class_names[data.labels[0, 1, 1]] == "water"  # the known pixel
    assert data.labels[3, 20 - S, 20 - S] == -1  # the no-data pixel, in the crop at (16, 16)
    assert set(np.unique(data.labels)) <= set(range(-1, 5))
    assert np.isfinite(data.prepare(data.images[:2])).all()


def test_palette_masks_read_as_their_colours(dubai):
    folder, _ = dubai
    pal = folder / "Semantic segmentation dataset" / "Tile 2" / "masks" / "image_part_001.png"
    assert Image.open(pal).mode == "P"
    arrays = read(data_block(folder), "train")
    t1, t2 = arrays["scene_id"] == 1, arrays["scene_id"] == 2
    np.testing.assert_array_equal(arrays["mask"][t2], arrays["mask"][t1][:4])  # same drawing, RGB vs palette
    np.testing.assert_array_equal(arrays["image"][t2], arrays["image"][t1][:4])


def test_split_by_tile(dubai):
    folder, truth = dubai
    d = data_block(folder, test_scenes=(3,), val_scenes=(2,))
    got = {s: read(d, s) for s in ("train", "test", "validation")}
    assert {s: sorted(set(a["scene_id"].tolist())) for s, a in got.items()} == {
        "train": [1],
        "test": [3],
        "validation": [2],
    }
    assert not np.isin(got["train"]["scene_id"], [2, 3]).any()
    np.testing.assert_array_equal(SD.masks_to_labels(got["test"]["mask"], 0), _crops(truth, [(3, "image_part_001")])[1])
    assert len(read(d, "test", limit=3)["image"]) == 3
    # what read_split reads, counted from the image headers (not the <Class>/<image> rule)
    assert {s: pipeline.num_records(d, s) for s in got} == {s: len(a["image"]) for s, a in got.items()}


def test_the_segmentation_job_reads_the_same_folder(dubai):
    from rsjax.evaluate import segmentation as seg

    folder, truth = dubai
    config = common.load("seg", "dubai", {"data.folder": str(folder), "data.image_size": S, "data.test_scenes": (3,)})
    train, test = seg.load_data(config)
    assert set(train) == set(test) == {"image", "mask"}
    np.testing.assert_array_equal(SD.masks_to_labels(test["mask"], 0), _crops(truth, [(3, "image_part_001")])[1])
    assert len(train["image"]) == 12


def test_colour_mask_exact_table():
    info = registry.get_config_info("dubai_aerial_seg")
    stored = tiles.colour_mask(RGB[np.arange(7)[None]], info, "m.png")
    np.testing.assert_array_equal(SD.masks_to_labels(stored, 0), [LABEL])
    near = RGB[[1]][None].copy()
    near[..., 0] += 1  # one step off a table colour (JPEG-like noise) is not read as that colour
    with pytest.raises(DataError, match="#8529F6 x 1"):
        tiles.colour_mask(near, info, "m.png")


def test_grid_drops_the_remainder():
    assert tiles.grid(36, 40, 16) == [(0, 0), (0, 16), (16, 0), (16, 16)]
    assert tiles.grid(15, 40, 16) == []
    im = np.arange(2 * 8 * 12).reshape(2, 8, 12, 1)
    ims, labs, sc = SD.tile(im, im[..., 0], np.array([4, 5]), 4)  # rectangular images
    np.testing.assert_array_equal(labs[7], im[1, :4, 4:8, 0])
    assert ims.shape == (12, 4, 4, 1)
    np.testing.assert_array_equal(ims[5], im[0, 4:, 8:])
    np.testing.assert_array_equal(sc, [4] * 6 + [5] * 6)


# --- errors, each naming what to fix ------------------------------------------------------
def _tile(folder, n):
    return folder / "Semantic segmentation dataset" / f"Tile {n}"


def test_unknown_colour_names_the_file_the_colour_and_the_count(dubai):
    folder, truth = dubai
    path = _tile(folder, 3) / "masks" / "image_part_001.png"
    rgb = RGB[truth[3, "image_part_001"][1]]
    rgb[5, :7] = (0x12, 0x34, 0x56)
    Image.fromarray(rgb).save(path)
    with pytest.raises(DataError, match=r"image_part_001\.png.*7 pixels.*#123456 x 7"):
        read(data_block(folder, test_scenes=(3,)), "test")


def test_mask_of_another_size_names_the_mask(dubai):
    folder, truth = dubai
    path = _tile(folder, 1) / "masks" / "image_part_002.png"
    Image.fromarray(RGB[truth[1, "image_part_002"][1][:-1]]).save(path)
    with pytest.raises(DataError, match=r"Tile 1/masks/image_part_002\.png' is 40 x 36 px.*40 x 37"):
        read(data_block(folder), "train")


def test_image_without_mask_and_mask_without_image(dubai):
    folder, _ = dubai
    os.remove(_tile(folder, 1) / "masks" / "image_part_002.png")
    with pytest.raises(DataError, match=r"Tile 1/images/image_part_002\.jpg' has no mask"):
        read(data_block(folder), "train")
    os.remove(_tile(folder, 1) / "images" / "image_part_002.jpg")
    Image.new("RGB", (40, 36)).save(_tile(folder, 1) / "masks" / "image_part_009.png")
    with pytest.raises(DataError, match=r"masks/image_part_009\.png' has no image"):
        read(data_block(folder), "train")


@pytest.mark.parametrize(
    "kw,split,match",
    [
        (
            {"test_scenes": (6,)},
            "test",
            r"config.data.test_scenes=\(6,\): no scene 6 in the tile folder .*its scenes: 1, 2, 3",
        ),
        (
            {"test_scenes": (3,), "val_scenes": (3,)},
            "train",
            r"test_scenes and config.data.val_scenes both hold scene 3",
        ),
        (
            {"test_scenes": (1, 2, 3)},
            "train",
            r"config.data.train_split / analysis.split / transfer.split='train': no scene",
        ),
        ({}, "test", r"'test': no scene .*data.test_scenes"),
        ({"test_scenes": (3,)}, "val", r"'val': splits cut by scene are train .* validation"),
        ({"test_scenes": (3,), "image_size": 34}, "test", r"image_size=34 is larger than image .*Tile 3.*33 x 32"),
    ],
)
def test_config_errors_name_the_key(dubai, kw, split, match):
    folder, _ = dubai
    with pytest.raises(ConfigError, match=match):
        SD.load_split(data_block(folder, **kw), split, image_size=kw.get("image_size", S))


def test_folder_and_dataset_must_go_together(dubai, tmp_path):
    folder, _ = dubai
    with pytest.raises(ConfigError, match="set config.data.folder"):
        SD.load_split(common.data_config(name="dubai_aerial_seg"), "train", image_size=S)
    with pytest.raises(
        ConfigError,
        match=r"<Class>/<image> tree of 'rs_synthetic': it has image, label, scene_id, "
        r"not mask",
    ):
        SD.load_split(common.data_config(name="rs_synthetic", folder=str(folder)), "train", image_size=S)
    with pytest.raises(MissingDataError, match="does not exist"):
        SD.load_split(data_block(tmp_path / "nowhere"), "train", image_size=S)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(MissingDataError, match="no tile folders"):
        SD.load_split(data_block(tmp_path / "empty"), "train", image_size=S)
    os.rename(_tile(folder, 2), _tile(folder, 2).parent / "Tile two")
    with pytest.raises(DataError, match="Tile two' has no number"):
        SD.load_split(data_block(folder), "train", image_size=S)


def test_registry_colour_tables_are_checked():
    info = registry.get_config_info("dubai_aerial_seg")
    assert info.class_names == NAMES and info.mask_ignore_value == 0
    assert {c for c, _ in DRAWN} == {c for _, c in info.mask_colours}
    import dataclasses

    for bad in [
        info.mask_colours[1:],  # a class without a colour
        info.mask_colours[:-1] + (("no_data", "#8429F6"),),  # one colour twice
        info.mask_colours[:-1] + (("no_data", "black"),),
    ]:  # not #RRGGBB
        with pytest.raises(ValueError, match="mask_colours"):
            dataclasses.replace(info, mask_colours=bad)
    with pytest.raises(ValueError, match="mask_ignore_value=0"):
        dataclasses.replace(info, mask_ignore_value=None)


# --- the real folder (skipped when ../shared/data is absent) ------------------------------
@pytest.mark.realdata
def test_real_dubai_folder(shared_data):
    folder = shared_data / "dubai_aerial_seg"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    meta = json.loads((folder / "Semantic segmentation dataset" / "classes.json").read_text())
    titles = [c["title"].split(" ")[0].lower() for c in meta["classes"]]
    assert titles == [*NAMES, "unlabeled"]  # the class order is classes.json's
    d = common.load("seg", "dubai", {"data.folder": str(folder)}).data
    train = SD.load_split(d, "train", image_size=128)  # every colour of every mask is in the table
    test = SD.load_split(d, "test", image_size=128)
    assert (len(train), len(test)) == (3402, 1809)
    assert sorted(set(train.scene_id.tolist())) == [1, 2, 4, 5, 7] and sorted(set(test.scene_id.tolist())) == [3, 8]
    for split in (train, test):
        shares = np.bincount(split.labels[split.labels >= 0], minlength=5) / split.labels.size
        assert (shares > 0.05).all(), shares
