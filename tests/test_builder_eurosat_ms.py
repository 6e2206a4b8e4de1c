"""``eurosat_ms`` on generated dummy data (tests/builder_testing.py)."""

import dummy_data
import numpy as np
from builder_testing import DatasetBuilderTestCase, as_str

from rsjax.data import registry


class TestEuroSATMS(DatasetBuilderTestCase):
    DATASET_NAME = "eurosat_ms"
    # counts (2, 3, 2, 2, 2, 1, 2, 3, 2, 2): round(0.2 n) = 1 only for the two classes of 3
    SPLITS = {None: {"train": 19, "test": 2}}

    def make_dummy_data(self, root, config):
        return root, dummy_data.eurosat_ms(root)

    def check_examples(self, config, examples, truth, info):
        root, images = truth
        ref = dummy_data.reference_eurosat_split(root, ".tif")  # same rule as eurosat_rgb
        got = {}
        for split, exs in examples.items():
            for e in exs:
                fn = as_str(e["filename"])
                got[fn] = split
                np.testing.assert_array_equal(e["image"], images[fn])  # band-first too
                assert registry.EUROSAT_CLASSES[int(e["label"])] == fn.split("/")[0]
                assert as_str(e["crs"]) == "" and np.isnan(e["transform"]).all()
        assert got == ref
        assert info.metadata["scale"] == 10000.0 and len(info.metadata["wavelengths_nm"]) == 13
