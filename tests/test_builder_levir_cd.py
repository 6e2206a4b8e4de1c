"""``levir_cd`` on generated dummy data (tests/builder_testing.py)."""

import numpy as np

import dummy_data
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
            np.testing.assert_array_equal(e["change"] * 255, labels[name][y:y + 256, x:x + 256])
            np.testing.assert_array_equal(
                e["image_b"], dummy_data.read_rgb(root / "B" / name)[y:y + 256, x:x + 256])
        test = examples["test"]
        assert {as_str(e["tile"]) for e in test} == {"test_2"}
        assert len({int(e["scene_id"]) for e in test}) == 1  # two crops of one tile
        tile9 = [e for e in examples["train"] if as_str(e["tile"]) == "train_9"]
        assert sorted((int(e["crop_y"]), int(e["crop_x"])) for e in tile9) == [
            (0, 0), (0, 256), (256, 0), (256, 256)]
        scenes = {as_str(e["tile"]): int(e["scene_id"]) for exs in examples.values() for e in exs}
        assert len(set(scenes.values())) == len(scenes) == 4
        assert info.metadata["gsd_m"] == [0.5] * 3 and info.metadata["crop_size"] == 256
