"""``eurosat_rgb`` on generated dummy data (tests/builder_testing.py)."""

import os

import dummy_data
import numpy as np
from builder_testing import DatasetBuilderTestCase, as_str

from rsjax.data import registry

# Per class (5, 4, 6, 3, 5, 2, 4, 7, 3, 5) images; test = round(0.2 n) = 1 except the class of
# 2 (round(0.4) = 0): 9; validation = round(0.1 n) = 1 for n = 6, 7 only (round(0.5) = 0): 2.
SPLITS = {None: {"train": 35, "test": 9}, "with_validation": {"train": 33, "validation": 2, "test": 9}}


class TestEuroSATRGB(DatasetBuilderTestCase):
    DATASET_NAME = "eurosat_rgb"
    SPLITS = SPLITS

    def make_dummy_data(self, root, config):
        return dummy_data.eurosat_rgb(root)

    def check_examples(self, config, examples, class_root, info):
        split_of = {as_str(e["filename"]): s for s, exs in examples.items() for e in exs}
        ref = dummy_data.reference_eurosat_split(class_root, ".jpg")
        if config is None:
            assert split_of == ref
        else:  # same test split; validation taken from train by the second generator
            assert {f for f, s in split_of.items() if s == "test"} == {f for f, s in ref.items() if s == "test"}
            vrng = np.random.default_rng(1)
            want_val = set()
            for c, n in zip(registry.EUROSAT_CLASSES, dummy_data.EUROSAT_COUNTS):
                files = sorted(os.listdir(class_root / c))
                train = [i for i, f in enumerate(files) if ref[f"{c}/{f}"] == "train"]
                want_val |= {f"{c}/{files[i]}" for i in vrng.permutation(train)[: round(0.1 * n)]}
            assert {f for f, s in split_of.items() if s == "validation"} == want_val
        # scene_id = global index in (class, file name) order; label from the class folder
        order = [f"{c}/{f}" for c in registry.EUROSAT_CLASSES for f in sorted(os.listdir(class_root / c))]
        for e in (e for exs in examples.values() for e in exs):
            fn = as_str(e["filename"])
            assert order[int(e["scene_id"])] == fn
            assert registry.EUROSAT_CLASSES[int(e["label"])] == fn.split("/")[0]
            np.testing.assert_array_equal(e["image"], dummy_data.read_rgb(class_root / fn))
        md = info.metadata
        assert md["scale"] == 255.0 and md["num_skipped"] == 0 and "default_rng(0)" in md["split_rule"]
        assert info.features["label"].names == list(registry.EUROSAT_CLASSES)
