"""``rs_segmentation`` (one config per layout) on generated dummy data
(tests/builder_testing.py)."""

import dummy_data
import numpy as np
from builder_testing import DatasetBuilderTestCase, as_str

from rsjax.data import registry


class TestRsSegmentation(DatasetBuilderTestCase):
    DATASET_NAME = "rs_segmentation"
    SPLITS = {
        "potsdam": {"train": 4, "validation": 2},  # 300 x 256 tiles, 256 px crops: 2 each
        "vaihingen": {"train": 2},  # 256 x 300: x in {0, 44}
        "loveda": {"train": 1, "validation": 1},  # the unlabelled Test folder is skipped
        "deepglobe": {"train": 4},  # 620 px, 612 px crops at 0 and 8
        "nyc4band": {"train": 2},  # 300 x 256: y in {0, 44}
    }

    def make_dummy_data(self, root, config):
        return dummy_data.rs_segmentation(root, config)

    def check_examples(self, config, examples, masks, info):
        s = info.metadata["crop_size"]
        scene_of = {}
        for e in (e for exs in examples.values() for e in exs):
            y, x = int(e["crop_y"]), int(e["crop_x"])
            fn = as_str(e["filename"])
            np.testing.assert_array_equal(e["mask"], masks[fn][y : y + s, x : x + s])
            if config == "nyc4band":
                np.testing.assert_array_equal(e["image"], masks["image"][y : y + s, x : x + s])
            scene_of.setdefault(fn, set()).add(int(e["scene_id"]))
        assert all(len(v) == 1 for v in scene_of.values())  # one scene per tile
        assert len({min(v) for v in scene_of.values()}) == len(scene_of)
        md = info.metadata
        assert md["ignore_value"] == 0
        if config == "potsdam":
            assert md["class_names"] == list(registry.ISPRS_CLASSES)
            assert md["mask_values"]["2"] == "building" and md["gsd_m"] == [0.05] * 3
        if config == "vaihingen":
            assert md["bands"] == ["NIR", "R", "G"]
