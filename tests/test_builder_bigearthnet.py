"""``bigearthnet`` on generated dummy data (tests/builder_testing.py)."""

import dummy_data
import numpy as np
from builder_testing import DatasetBuilderTestCase, as_str

from rsjax.data import registry

PATCHES = {  # the first two are cut from one Sentinel-2 product (one scene)
    "S2A_MSIL2A_20170613T101031_1_2": ["Non-irrigated arable land", "Sea and ocean"],
    "S2A_MSIL2A_20170613T101031_3_4": ["Coniferous forest", "Transitional woodland/shrub"],
    "S2B_MSIL2A_20180204T94161_5_6": ["Airports"],  # no 19-class counterpart
    "S2B_MSIL2A_20180204T94161_7_8": ["Pastures"],  # listed, but cloudy: excluded
}


class TestBigEarthNet(DatasetBuilderTestCase):
    DATASET_NAME = "bigearthnet"
    SPLITS = {None: {"train": 2, "test": 1}}

    def make_dummy_data(self, root, config):
        bands = dummy_data.bigearthnet(root / "BigEarthNet-v1.0", PATCHES)
        names = list(PATCHES)
        (root / "train.csv").write_text(f"{names[0]}\n{names[1]}\n{names[3]}\n")
        (root / "test.csv").write_text(f"{names[2]}\n")
        (root / "patches_with_cloud_and_shadow.csv").write_text(f"{names[3]}\n")
        return bands

    def check_examples(self, config, examples, bands, info):
        from tfds_builders._common import resize_bilinear
        from tfds_builders.bigearthnet import BEN19_FROM_43, BEN43_CLASSES

        names19 = registry.BIGEARTHNET19_CLASSES
        order = registry.get_config_info("bigearthnet").bands
        exs = {as_str(e["patch"]): e for split in examples.values() for e in split}
        assert [as_str(e["patch"]) for e in examples["test"]] == [list(PATCHES)[2]]
        for name, e in exs.items():
            for i, b in enumerate(order):  # 20 / 60 m bands upsampled bilinearly
                np.testing.assert_array_equal(e["image"][..., i], resize_bilinear(bands[name][b], 120, 120))
            got43 = {BEN43_CLASSES[j] for j in np.nonzero(e["labels_43"])[0]}
            assert got43 == set(PATCHES[name])
            want19 = {n for n, srcs in BEN19_FROM_43.items() if set(srcs) & got43}
            assert {names19[j] for j in np.nonzero(e["labels_19"])[0]} == want19
            np.testing.assert_array_equal(e["label"], e["labels_19"])
        a, b, c = (exs[n] for n in list(PATCHES)[:3])
        assert int(a["scene_id"]) == int(b["scene_id"]) != int(c["scene_id"])
        assert not c["labels_19"].any()
        assert {names19[j] for j in np.nonzero(a["labels_19"])[0]} == {"Arable land", "Marine waters"}
        assert info.metadata["num_excluded"] == 1 and info.metadata["num_unlisted"] == 0
        assert len(info.metadata["class_names_43"]) == 43


def test_19_class_conversion_is_a_partition_of_32_classes():
    from tfds_builders.bigearthnet import BEN19_FROM_43, BEN43_CLASSES

    mapped = [n for srcs in BEN19_FROM_43.values() for n in srcs]
    assert len(mapped) == len(set(mapped)) == 32 and set(mapped) <= set(BEN43_CLASSES)
    assert set(BEN19_FROM_43) == set(registry.BIGEARTHNET19_CLASSES)
