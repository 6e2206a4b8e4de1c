"""``dynamic_world``: Sentinel-2 patches with 9-class Dynamic World labels (Brown et al. 2022),
for noisy-label (task-specific) pretraining.

Reads ``--manual_dir`` (nothing is downloaded). Accepted layout (anywhere below
``--manual_dir``): pairs of GeoTIFFs in one folder

* ``<id>_s2.tif``: 13 Sentinel-2 L1C bands in ``registry.S2_BANDS`` order (B01 .. B8A, B09,
  B10, B11, B12) on a common 10 m grid, uint16 reflectance x 1e4 (band-last or band-first);
* ``<id>_label.tif``: one band, same height and width, the Dynamic World class of each pixel.

Label encodings (builder config):

* ``default``: 0 = no label, 1..9 = water, trees, grass, flooded_vegetation, crops,
  shrub_and_scrub, built, bare, snow_and_ice (the annotation tiles' convention);
* ``product``: the Dynamic World product's ``label`` band, 0..8 = the same classes; any other
  value (e.g. a 255 no-data fill) = no label.

Stored ``mask`` (uint8): 0 = ignore / no label, ``v`` in 1..9 = class
``registry.DYNAMIC_WORLD_CLASSES[v - 1]`` (the same "0 = ignore" convention as
``rs_segmentation``). In the ``default`` config a value above 9 is an error naming the file.

``<split>`` ancestor folders named train / val / validation / test give the TFDS split (else
``train``). Patches are cut into ``crop_size`` (256) crops on a regular grid whose last crop is
aligned to the border (a 510 px tile gives crops at 0 and 254); crops of one patch share
``scene_id`` (index of the patch in the sorted ``<split>/<relative path>`` list).

Features: ``image`` uint16 ``[S, S, 13]``, ``mask`` uint8 ``[S, S]``, ``scene_id`` int32,
``filename`` (relative path of the ``_s2.tif``), ``crop_y``, ``crop_x`` int32.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from rsjax.data import registry
from tfds_builders import _common

_INFO = registry.get_config_info("dynamic_world")
_K = _INFO.num_classes  # 9


@dataclasses.dataclass
class DynamicWorldConfig(tfds.core.BuilderConfig):
    crop_size: int = 256
    label_encoding: str = "annotation"  # "annotation" (0 = none, 1..9) | "product" (0..8)


def read_label(path: pathlib.Path, encoding: str) -> np.ndarray:
    lab = _common.read_tif(path)
    if lab.ndim == 3 and 1 in (lab.shape[0], lab.shape[-1]):
        lab = lab.reshape(lab.shape[1:] if lab.shape[0] == 1 else lab.shape[:2])
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise _common.BadFileError(path, f"expected a single-band integer label, got {lab.dtype} {lab.shape}")
    if encoding == "product":
        return np.where((lab >= 0) & (lab < _K), lab + 1, 0).astype(np.uint8)
    if lab.size and (lab.min() < 0 or lab.max() > _K):
        raise _common.BadFileError(path, f"label values must be 0..{_K} (0 = no label), found {lab.min()}..{lab.max()}")
    return lab.astype(np.uint8)


class Builder(_common.ManualDataMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for dynamic_world."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Georeferencing of each crop (image GeoTIFF): `crs`, `transform`.",
    }
    BUILDER_CONFIGS = [
        DynamicWorldConfig(
            name="default",
            description="Annotation labels: 0 = no label, 1..9 classes; 256 px crops.",
            label_encoding="annotation",
        ),
        DynamicWorldConfig(
            name="product",
            description="Dynamic World product labels 0..8 (other values = no label); 256 px crops.",
            label_encoding="product",
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass --manual_dir=DIR holding <id>_s2.tif (13 bands) + <id>_label.tif pairs, "
        "optionally in train/ val/ test/ folders."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        s, nb = cfg.crop_size, _INFO.num_bands
        metadata = tfds.core.MetadataDict(
            **_INFO.as_metadata(),
            **_common.skip_metadata(),
            crop_size=s,
            ignore_value=0,
            label_encoding=cfg.label_encoding,
            mask_values={"0": "ignore", **{str(i + 1): n for i, n in enumerate(_INFO.class_names)}},
        )
        metadata["image_size"] = s
        return self.dataset_info_from_configs(
            description=(
                "Sentinel-2 L1C patches (13 bands, uint16 reflectance x 1e4) with 9-class "
                "Dynamic World land-cover labels (mask 0 = no label), cut into fixed-size "
                "crops sharing their patch as scene_id; for noisy-label pretraining."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(s, s, nb), dtype=np.uint16, encoding="bytes"),
                    "mask": tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding="bytes"),
                    "scene_id": tfds.features.Scalar(dtype=np.int32),
                    "filename": tfds.features.Text(),
                    "crop_y": tfds.features.Scalar(dtype=np.int32),
                    "crop_x": tfds.features.Scalar(dtype=np.int32),
                    **_common.georef_features(),
                }
            ),
            supervised_keys=("image", "mask"),
            homepage="https://dynamicworld.app",
            citation="""@article{brown2022dynamic,
  title={Dynamic World, Near real-time global 10 m land use land cover mapping},
  author={Brown, Christopher F and Brumby, Steven P and Guzder-Williams, Brookie and others},
  journal={Scientific Data}, volume={9}, number={1}, pages={251}, year={2022}}""",
            metadata=metadata,
        )

    def _split_generators(self, dl_manager):
        root = _common.manual_dir(dl_manager, self.name, "<id>_s2.tif + <id>_label.tif pairs")
        pairs = []
        for img in sorted(root.rglob("*_s2.tif")):
            rel = img.relative_to(root)
            split = "train"
            for part in rel.parts[:-1]:
                split = _common.split_name(part) or split
            label = img.with_name(img.name[: -len("_s2.tif")] + "_label.tif")
            pairs.append((split, img, label, str(rel)))
        if not pairs:
            raise FileNotFoundError(f"{root}: no <id>_s2.tif files")
        keys = sorted(f"{s}/{rel}" for s, _, _, rel in pairs)
        scene_of = {k: i for i, k in enumerate(keys)}
        items: dict[str, list] = {"train": [], "validation": [], "test": []}
        for s, img, lab, rel in pairs:
            items[s].append((img, lab, rel, scene_of[f"{s}/{rel}"]))
        return {s: self._generate_examples(root, s, its) for s, its in items.items() if its}

    def _generate_examples(self, root, split, items):
        cfg = self.builder_config
        crop = cfg.crop_size

        def one(item):
            img_path, lab_path, rel, sid = item
            img = _common.as_uint16(_common.to_hwc(_common.read_tif(img_path), _INFO.num_bands, img_path), img_path)
            if not lab_path.is_file():
                raise _common.BadFileError(lab_path, "label file is missing")
            mask = read_label(lab_path, cfg.label_encoding)
            if mask.shape != img.shape[:2]:
                raise _common.BadFileError(lab_path, f"wrong-size mask: {mask.shape} but the image is {img.shape[:2]}")
            geo = _common.read_georef(img_path)
            for y, x in _common.crop_grid(img.shape[0], img.shape[1], crop):
                yield (
                    f"{split}/{rel}/{y}_{x}",
                    {
                        **geo.window(y, x).features(),
                        "image": _common.take_crop(img, y, x, crop),
                        "mask": _common.take_crop(mask, y, x, crop),
                        "scene_id": np.int32(sid),
                        "filename": rel,
                        "crop_y": np.int32(y),
                        "crop_x": np.int32(x),
                    },
                )

        yield from _common.iter_with_skip(self, items, one, root)
        self._report_skipped(split)
