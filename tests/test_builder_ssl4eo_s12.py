"""``ssl4eo_s12`` on generated dummy data (tests/builder_testing.py)."""

import dummy_data
import numpy as np
from builder_testing import DatasetBuilderTestCase, as_str


class TestSSL4EOS12(DatasetBuilderTestCase):
    DATASET_NAME = "ssl4eo_s12"
    SPLITS = {None: {"train": 4}}  # 2 locations x 2 seasons

    def make_dummy_data(self, root, config):
        return dummy_data.ssl4eo_s12(root)

    def check_examples(self, config, examples, bands, info):
        from tfds_builders._common import resize_bilinear

        for e in examples["train"]:
            loc, season = as_str(e["location"]), as_str(e["season_name"])
            assert int(e["scene_id"]) == int(loc)  # numeric location folders
            assert int(e["season"]) == dummy_data.SSL4EO_SEASONS.index(season)
            want = np.stack([resize_bilinear(a, 264, 264) for a in bands[(loc, season)]], -1)
            np.testing.assert_array_equal(e["image"], want)
