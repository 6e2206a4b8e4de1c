"""``oscd`` on generated dummy data (tests/builder_testing.py)."""

import numpy as np

import dummy_data
from builder_testing import DatasetBuilderTestCase, as_str


class TestOSCD(DatasetBuilderTestCase):
    DATASET_NAME = "oscd"
    # 200 x 150 and 130 x 140 px cities, 128 px crops on a border-aligned grid: 4 crops each
    SPLITS = {None: {"train": 4, "test": 4}}

    def make_dummy_data(self, root, config):
        imgs, cm = dummy_data.oscd_city(root, "abudhabi", 200, 150, rect=True)
        dummy_data.oscd_city(root, "beirut", 130, 140, rect=False, seed=1)  # native band sizes
        (root / "train.txt").write_text("abudhabi")
        (root / "test.txt").write_text("beirut")
        return imgs, cm

    def check_examples(self, config, examples, truth, info):
        imgs, cm = truth
        train, test = examples["train"], examples["test"]
        assert sorted((int(e["crop_y"]), int(e["crop_x"])) for e in train) == [
            (0, 0), (0, 22), (72, 0), (72, 22)]
        assert {as_str(e["city"]) for e in test} == {"beirut"}
        assert {int(e["scene_id"]) for e in train} == {0}  # city index in sorted names
        assert {int(e["scene_id"]) for e in test} == {1}
        e = next(x for x in train if (int(x["crop_y"]), int(x["crop_x"])) == (72, 22))
        np.testing.assert_array_equal(e["image_a"], np.stack(imgs[1], -1)[72:200, 22:150])
        np.testing.assert_array_equal(e["image_b"], np.stack(imgs[2], -1)[72:200, 22:150])
        np.testing.assert_array_equal(e["change"], cm[72:200, 22:150])
