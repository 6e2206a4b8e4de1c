"""``dynamic_world`` on generated dummy data (tests/builder_testing.py)."""

import dummy_data
import numpy as np
from builder_testing import DatasetBuilderTestCase, as_str


class TestDynamicWorld(DatasetBuilderTestCase):
    DATASET_NAME = "dynamic_world"
    # 260 x 257 px patches, 256 px crops: 4 per patch; 2 train patches, 1 test
    SPLITS = {None: {"train": 8, "test": 4}, "product": {"train": 8, "test": 4}}

    def make_dummy_data(self, root, config):
        return dummy_data.dynamic_world(root)

    def check_examples(self, config, examples, truth, info):
        for e in (e for exs in examples.values() for e in exs):
            img, lab = truth[as_str(e["filename"])]
            y, x = int(e["crop_y"]), int(e["crop_x"])
            np.testing.assert_array_equal(e["image"], img[y : y + 256, x : x + 256])
            # annotation labels are stored as they are (0 = none); product labels 0..8 -> 1..9,
            # anything else (here 9) -> 0 = ignore
            want = lab if config is None else np.where(lab < 9, lab + 1, 0)
            np.testing.assert_array_equal(e["mask"], want[y : y + 256, x : x + 256])
        assert len({int(e["scene_id"]) for e in examples["train"]}) == 2
        assert info.metadata["ignore_value"] == 0
