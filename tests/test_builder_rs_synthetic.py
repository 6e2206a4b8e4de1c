"""``rs_synthetic`` (config ``tiny``) through the same builder checks (tests/builder_testing.py);
its contents are tested in tests/test_synthetic.py."""

from builder_testing import DatasetBuilderTestCase


class TestRsSynthetic(DatasetBuilderTestCase):
    DATASET_NAME = "rs_synthetic"
    SKIP_MANUAL_DIR_TESTS = True
    test_bad_manual_dir_is_refused_and_leaves_nothing = None  # --manual_dir is ignored
    # 8 train + 4 test tiles of 64 px, 32 px crops: 4 per tile
    SPLITS = {"tiny": {"train": 32, "test": 16}}

    def make_dummy_data(self, root, config):
        return None
