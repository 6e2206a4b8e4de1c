"""``levir_cd`` on generated dummy data (tests/builder_testing.py)."""

import dummy_data
import numpy as np
from builder_testing import DatasetBuilderTestCase, as_str


class TestLevirCD(DatasetBuilderTestCase):
    DATASET_NAME = "levir_cd"
    # split from the name prefix; the 512 px tile train_9 gives 4 crops
    SPLITS = {None: {"train": 5, "validation": 1, "test": 2}}

    def make_dummy_data(self, root, config):
        return root, dummy_data.levir_cd(root)

    def check_examples(self, config, examples, truth, info):
        root, labels = truth
        for e in (e for exs in examples.values() for e in exs):
            name = as_str(e["filename"])
            # offsets in the source tile: from the crop's name, plus the crop grid
            y0, x0 = (0, 0) if name == "train_9.png" else map(int, name[:-4].split("_")[2:])
            y, x = int(e["crop_y"]) - y0, int(e["crop_x"]) - x0
            np.testing.assert_array_equal(e["change"] * 255, labels[name][y : y + 256, x : x + 256])
            np.testing.assert_array_equal(
                e["image_b"], dummy_data.read_rgb(root / "B" / name)[y : y + 256, x : x + 256]
            )
        test = examples["test"]
        assert {as_str(e["tile"]) for e in test} == {"test_2"}
        assert len({int(e["scene_id"]) for e in test}) == 1  # two crops of one tile
        tile9 = [e for e in examples["train"] if as_str(e["tile"]) == "train_9"]
        assert sorted((int(e["crop_y"]), int(e["crop_x"])) for e in tile9) == [(0, 0), (0, 256), (256, 0), (256, 256)]
        scenes = {as_str(e["tile"]): int(e["scene_id"]) for exs in examples.values() for e in exs}
        assert len(set(scenes.values())) == len(scenes) == 4
        assert info.metadata["gsd_m"] == [0.5] * 3 and info.metadata["crop_size"] == 256


def test_jpg_images_with_png_labels_build(tmp_path):
    """Any extension of the shared image list: jpg images in A/ and B/ beside png labels (same
    stem), split from the name prefix."""
    from builder_testing import build_quietly, read_all
    from PIL import Image

    rng = np.random.default_rng(1)
    labels, images_b = {}, {}
    for stem in ("train_1", "test_2"):
        for d in ("A", "B", "label"):
            (tmp_path / "src" / d).mkdir(parents=True, exist_ok=True)
        Image.fromarray(dummy_data.smooth_rgb(rng, 256, 256)).save(tmp_path / "src" / "A" / f"{stem}.jpg")
        Image.fromarray(dummy_data.smooth_rgb(rng, 256, 256)).save(tmp_path / "src" / "B" / f"{stem}.JPG")
        labels[stem] = (rng.random((256, 256)) < 0.3).astype(np.uint8) * 255
        Image.fromarray(labels[stem], mode="L").save(tmp_path / "src" / "label" / f"{stem}.png")
        images_b[stem] = dummy_data.read_rgb(tmp_path / "src" / "B" / f"{stem}.JPG")
    build_quietly("levir_cd", tmp_path / "tfds", tmp_path / "src")
    examples = read_all("levir_cd", tmp_path / "tfds")
    assert {s: len(v) for s, v in examples.items()} == {"train": 1, "test": 1}
    for split, stem in (("train", "train_1"), ("test", "test_2")):
        e = examples[split][0]
        assert as_str(e["filename"]) == f"{stem}.jpg"
        np.testing.assert_array_equal(e["change"] * 255, labels[stem])
        np.testing.assert_array_equal(e["image_b"], images_b[stem])
