"""``bigearthnet``: BigEarthNet-S2 v1.0 (Sumbul et al. 2019), 12-band multi-label patches.

Reads ``--manual_dir`` (nothing is downloaded). Layout of the original archive
(``BigEarthNet-S2-v1.0.tar.gz``): one folder per patch ``<patch>/`` holding
``<patch>_B01.tif .. <patch>_B12.tif`` (12 bands, no B10; uint16 L2A reflectance x 1e4) and
``<patch>_labels_metadata.json`` (CORINE labels in the 43-class nomenclature). Patch folders
are found anywhere below ``--manual_dir``.

Bands: the 10 m bands (B02, B03, B04, B08) are 120 x 120 px; the 20 m bands (B05, B06, B07,
B8A, B11, B12, 60 x 60 px) and 60 m bands (B01, B09, 20 x 20 px) are upsampled to 120 x 120 by
**bilinear** interpolation with half-pixel centres (``align_corners=False``, no antialiasing;
``tfds_builders._common.resize_bilinear``), rounded to uint16. Storage order is
``registry.get_config_info("bigearthnet").bands`` (B01 .. B8A, B09, B11, B12).

Labels: ``labels_43`` multi-hot over :data:`BEN43_CLASSES` (the order of the official
``label_indices.json`` ``original_labels``), ``labels_19`` multi-hot over the 19-class
nomenclature in the order of ``registry.BIGEARTHNET19_CLASSES`` (alphabetical), mapped with
:data:`BEN19_FROM_43`: the conversion of Sumbul et al., "BigEarthNet Deep Learning Models with
a New Class-Nomenclature for Remote Sensing Image Understanding" (arXiv:2001.06372, 2020),
Table I, as distributed in ``label_indices.json`` (``label_conversion``) of the BigEarthNet-19
models (GitLab ``rsim/bigearthnet-models``). Eleven 43-class labels have no 19-class
counterpart (road/rail, port, airport, mineral extraction, dump, construction, green urban,
sport/leisure, bare rock, burnt areas, intertidal flats); a patch with only such labels gets
an all-zero ``labels_19`` (it is kept). ``label`` = ``labels_19`` (for generic loaders).

Splits: when ``train.csv`` / ``val.csv`` / ``test.csv`` (the official BigEarthNet-19 split
files, first column = patch name) are present at the top of ``--manual_dir`` or in its
``splits/`` folder, they define ``train`` / ``validation`` / ``test`` and patches in none of
them are left out (counted in the metadata as ``num_unlisted``); otherwise every patch goes to
``train``. Patches named in ``patches_with_cloud_and_shadow.csv`` or
``patches_with_seasonal_snow.csv`` (same places) are left out (``num_excluded``).

``scene_id``: the Sentinel-2 product (the patch name without its ``_<col>_<row>`` suffix):
patches cut from one product (same tile and date) share a scene.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from rsjax.data import registry
from tfds_builders import _common

# The 43 CORINE Land Cover level-3 classes of BigEarthNet v1.0, in the order of
# `original_labels` in the official label_indices.json.
BEN43_CLASSES: tuple[str, ...] = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)

# 19-class name -> the 43-class names merged into it (Sumbul et al. 2020, Table I;
# label_indices.json `label_conversion`). 19-class names as in registry.BIGEARTHNET19_CLASSES.
BEN19_FROM_43: dict[str, tuple[str, ...]] = {
    "Urban fabric": ("Continuous urban fabric", "Discontinuous urban fabric"),
    "Industrial or commercial units": ("Industrial or commercial units",),
    "Arable land": ("Non-irrigated arable land", "Permanently irrigated land", "Rice fields"),
    "Permanent crops": (
        "Vineyards",
        "Fruit trees and berry plantations",
        "Olive groves",
        "Annual crops associated with permanent crops",
    ),
    "Pastures": ("Pastures",),
    "Complex cultivation patterns": ("Complex cultivation patterns",),
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
    ),
    "Agro-forestry areas": ("Agro-forestry areas",),
    "Broad-leaved forest": ("Broad-leaved forest",),
    "Coniferous forest": ("Coniferous forest",),
    "Mixed forest": ("Mixed forest",),
    "Natural grassland and sparsely vegetated areas": ("Natural grassland", "Sparsely vegetated areas"),
    "Moors, heathland and sclerophyllous vegetation": ("Moors and heathland", "Sclerophyllous vegetation"),
    "Transitional woodland, shrub": ("Transitional woodland/shrub",),
    "Beaches, dunes, sands": ("Beaches, dunes, sands",),
    "Inland wetlands": ("Inland marshes", "Peatbogs"),
    "Coastal wetlands": ("Salt marshes", "Salines"),
    "Inland waters": ("Water courses", "Water bodies"),
    "Marine waters": ("Coastal lagoons", "Estuaries", "Sea and ocean"),
}

_INFO = registry.get_config_info("bigearthnet")
BEN19_CLASSES = _INFO.class_names
# index in BEN43_CLASSES -> index in BEN19_CLASSES (-1 = no 19-class counterpart)
INDEX_43_TO_19 = np.full(len(BEN43_CLASSES), -1, np.int64)
for _j, _name19 in enumerate(BEN19_CLASSES):
    for _name43 in BEN19_FROM_43[_name19]:
        INDEX_43_TO_19[BEN43_CLASSES.index(_name43)] = _j
del _j, _name19, _name43

SIZE = _INFO.image_size  # 120
# Native side in pixels of a 120 px (1.2 km) patch per band ground resolution.
_NATIVE_SIDE = {10.0: 120, 20.0: 60, 60.0: 20}
_PATCH_SUFFIX = re.compile(r"_\d+_\d+$")
_SPLIT_FILES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
_EXCLUDE_FILES = ("patches_with_cloud_and_shadow.csv", "patches_with_seasonal_snow.csv")


def labels_to_multi_hot(names, path) -> tuple[np.ndarray, np.ndarray]:
    """43-class label names -> (multi-hot [43], multi-hot [19]) uint8.

    Raises:
      BadFileError: a name outside the 43-class nomenclature.
    """
    m43 = np.zeros(len(BEN43_CLASSES), np.uint8)
    for n in names:
        try:
            m43[BEN43_CLASSES.index(n)] = 1
        except ValueError:
            raise _common.BadFileError(path, f"unknown BigEarthNet label {n!r}") from None
    m19 = np.zeros(len(BEN19_CLASSES), np.uint8)
    j = INDEX_43_TO_19[m43.astype(bool)]
    m19[j[j >= 0]] = 1
    return m43, m19


def find_patches(root: pathlib.Path) -> list[pathlib.Path]:
    """Patch folders below ``root`` (folders holding ``<name>_labels_metadata.json`` or
    ``<name>_B02.tif``), sorted by name; patch folders are not descended into."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        name = os.path.basename(dirpath)
        files = set(filenames)
        if f"{name}_labels_metadata.json" in files or f"{name}_B02.tif" in files:
            out.append(pathlib.Path(dirpath))
            dirnames[:] = []
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(out, key=lambda p: p.name)


def _read_name_list(path: pathlib.Path) -> list[str]:
    with open(path, newline="") as f:
        return [row[0].strip() for row in csv.reader(f) if row and row[0].strip()]


def _find_list(root: pathlib.Path, name: str):
    for d in (root, root / "splits"):
        if (d / name).is_file():
            return d / name
    return None


class Builder(_common.ManualDataMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for bigearthnet."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Georeferencing of the 10 m grid (B02): `crs`, `transform`."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass --manual_dir=DIR where DIR holds the extracted BigEarthNet-S2 v1.0 patch folders "
        "<patch>/<patch>_B01.tif .. _B12.tif + <patch>_labels_metadata.json; optional "
        "train.csv / val.csv / test.csv split files at its top."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        nb = _INFO.num_bands
        metadata = tfds.core.MetadataDict(
            **_INFO.as_metadata(),
            **_common.skip_metadata(),
            class_names_43=list(BEN43_CLASSES),
            class_names_19=list(BEN19_CLASSES),
            label_conversion_43_to_19={k: list(v) for k, v in BEN19_FROM_43.items()},
            native_gsd_m=[registry.S2_GSD_M[b] for b in _INFO.bands],
            resampling="bilinear, half-pixel centres (align_corners=False), no antialiasing, "
            "rounded to uint16; 20 m and 60 m bands upsampled to 120 x 120",
            num_unlisted=0,
            num_excluded=0,
        )
        return self.dataset_info_from_configs(
            description=(
                "BigEarthNet-S2 v1.0: Sentinel-2 L2A patches of 1.2 x 1.2 km, 12 bands "
                "resampled to 120 x 120 px at 10 m (uint16 reflectance x 1e4), with CORINE "
                "multi-labels in the 43-class and the 19-class nomenclature (multi-hot)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(SIZE, SIZE, nb), dtype=np.uint16, encoding="bytes"),
                    "labels_43": tfds.features.Tensor(shape=(len(BEN43_CLASSES),), dtype=np.uint8),
                    "labels_19": tfds.features.Tensor(shape=(len(BEN19_CLASSES),), dtype=np.uint8),
                    "label": tfds.features.Tensor(shape=(len(BEN19_CLASSES),), dtype=np.uint8),
                    "scene_id": tfds.features.Scalar(dtype=np.int32),
                    "patch": tfds.features.Text(),
                    "acquisition_date": tfds.features.Text(),
                    **_common.georef_features(),
                }
            ),
            supervised_keys=("image", "labels_19"),
            homepage="https://bigearth.net",
            citation="""@inproceedings{sumbul2019bigearthnet,
  title={BigEarthNet: A Large-Scale Benchmark Archive for Remote Sensing Image Understanding},
  author={Sumbul, Gencer and Charfuelan, Marcela and Demir, Beg{\\\"u}m and Markl, Volker},
  booktitle={IGARSS}, year={2019}}""",
            metadata=metadata,
        )

    def _split_generators(self, dl_manager):
        root = _common.manual_dir(dl_manager, self.name, "BigEarthNet-S2 patch folders")
        patches = find_patches(root)
        if not patches:
            raise FileNotFoundError(
                f"{root}: no BigEarthNet patch folders (<patch>/<patch>_B02.tif + <patch>_labels_metadata.json) found"
            )
        excluded = set()
        for name in _EXCLUDE_FILES:
            p = _find_list(root, name)
            if p is not None:
                excluded.update(_read_name_list(p))
        lists = {s: _find_list(root, f) for s, f in _SPLIT_FILES.items()}
        by_name = {p.name: p for p in patches if p.name not in excluded}
        self.info.metadata["num_excluded"] = len(patches) - len(by_name)
        products = sorted({_PATCH_SUFFIX.sub("", n) for n in by_name})
        scene_of = {p: i for i, p in enumerate(products)}
        splits: dict[str, list] = {}
        if any(v is not None for v in lists.values()):
            listed = set()
            for split, p in lists.items():
                if p is None:
                    continue
                names = [n for n in _read_name_list(p) if n in by_name]
                listed.update(names)
                splits[split] = [by_name[n] for n in sorted(names)]
            self.info.metadata["num_unlisted"] = len(set(by_name) - listed)
        else:
            splits["train"] = [by_name[n] for n in sorted(by_name)]
        return {s: self._generate_examples(root, s, items, scene_of) for s, items in splits.items() if items}

    def _generate_examples(self, root, split, patches, scene_of):
        def one(pdir: pathlib.Path):
            name = pdir.name
            bands = []
            for b in _INFO.bands:
                path = pdir / f"{name}_{b}.tif"
                arr = _common.read_tif(path)
                side = _NATIVE_SIDE[registry.S2_GSD_M[b]]
                if arr.shape != (side, side):
                    raise _common.BadFileError(path, f"band {b} should be {side} x {side} px, got shape {arr.shape}")
                arr = _common.as_uint16(arr, path)
                bands.append(_common.resize_bilinear(arr, SIZE, SIZE))
            meta_path = pdir / f"{name}_labels_metadata.json"
            if not meta_path.is_file():
                raise _common.BadFileError(meta_path, "file is missing")
            try:
                meta = json.loads(meta_path.read_text())
                names = meta["labels"]
            except (ValueError, KeyError, TypeError) as e:
                raise _common.BadFileError(meta_path, f"not a BigEarthNet label file ({e})")
            m43, m19 = labels_to_multi_hot(names, meta_path)
            yield (
                name,
                {
                    "image": np.stack(bands, axis=-1),
                    "labels_43": m43,
                    "labels_19": m19,
                    "label": m19,
                    "scene_id": np.int32(scene_of[_PATCH_SUFFIX.sub("", name)]),
                    "patch": name,
                    "acquisition_date": str(meta.get("acquisition_date", "")),
                    **_common.read_georef(pdir / f"{name}_B02.tif").features(),  # the 10 m grid
                },
            )

        yield from _common.iter_with_skip(self, patches, one, root)
        self._report_skipped(split)
