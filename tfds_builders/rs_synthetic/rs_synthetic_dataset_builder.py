"""``rs_synthetic``: procedural Sentinel-2-like scenes (rsjax's embedded default dataset).

Nothing is downloaded and ``--manual_dir`` is ignored: examples come from
``rsjax.data.synthetic.generate``. Each example is one crop of a larger tile; crops of one tile
share ``scene_id``. ``train`` and ``test`` are generated from different seeds and carry
disjoint scene ids (test ids start after the last train id).

Build (no TensorFlow needed, array_record format)::

    python -m rsjax.data.build rs_synthetic --data_dir=~/tensorflow_datasets [--config=tiny]
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from rsjax.data import registry, synthetic
from tfds_builders import _common


@dataclasses.dataclass
class RsSyntheticConfig(tfds.core.BuilderConfig):
    """Sizes of one variant of the generated dataset."""

    train_tiles: int = 96
    test_tiles: int = 24
    tile_size: int = 128
    crop_size: int = 32
    train_seed: int = 0
    test_seed: int = 1

    @property
    def crops_per_tile(self) -> int:
        return (self.tile_size // self.crop_size) ** 2


_INFO = registry.get_config_info("rs_synthetic")


def _description() -> str:
    bands = ", ".join(f"{b} ({w:.0f} nm, {g:.0f} m)" for b, w, g in zip(_INFO.bands, _INFO.wavelengths_nm, _INFO.gsd_m))
    return (
        "Procedural multispectral land-cover scenes (13 Sentinel-2 bands, reflectance x 1e4 as "
        "uint16) painted by rsjax.data.synthetic: Voronoi land-cover regions with per-class "
        "spectra and textures (striped fields, forest speckle, buildings and roads, rivers), "
        "per-tile illumination/haze/noise. Each example is a crop of a larger tile; crops of "
        "one tile share `scene_id`. `image2` is the same crop at a second date with land-cover "
        "changes marked in `change`. Classes: "
        + ", ".join(_INFO.class_names)
        + ". Bands: "
        + bands
        + ". Normalize as (image / 10000 - mean) / std with the per-band mean/std in "
        "the dataset metadata (rsjax.data.registry)."
    )


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for rs_synthetic."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        RsSyntheticConfig(
            name="default",
            description="96 train + 24 test tiles of 128 px cut into 32 px crops (1536 + 384 examples).",
            train_tiles=96,
            test_tiles=24,
            tile_size=128,
            crop_size=32,
        ),
        RsSyntheticConfig(
            name="tiny",
            description="8 train + 4 test tiles of 64 px cut into 32 px crops (32 + 16 examples), for tests.",
            train_tiles=8,
            test_tiles=4,
            tile_size=64,
            crop_size=32,
        ),
        RsSyntheticConfig(
            name="large",
            description="512 train + 128 test tiles of 256 px cut into 64 px crops (8192 + 2048 examples).",
            train_tiles=512,
            test_tiles=128,
            tile_size=256,
            crop_size=64,
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if kwargs.get("file_format") is None:  # `tfds build` too writes array_record
            _common.default_to_array_record(self)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        s, nb = cfg.crop_size, len(_INFO.bands)
        metadata = tfds.core.MetadataDict(
            **_INFO.as_metadata(),
            tile_size=cfg.tile_size,
            crop_size=cfg.crop_size,
            crops_per_tile=cfg.crops_per_tile,
            train_seed=cfg.train_seed,
            test_seed=cfg.test_seed,
        )
        metadata["image_size"] = s
        return self.dataset_info_from_configs(
            description=_description(),
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "image": tfds.features.Tensor(shape=(s, s, nb), dtype=np.uint16, encoding="bytes"),
                    "image2": tfds.features.Tensor(shape=(s, s, nb), dtype=np.uint16, encoding="bytes"),
                    "label": tfds.features.ClassLabel(names=list(_INFO.class_names)),
                    "mask": tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding="bytes"),
                    "change": tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding="bytes"),
                    "scene_id": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/rsjax/rsjax",
            metadata=metadata,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download; no manual files
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.train_tiles, cfg.train_seed, 0),
            "test": self._generate_examples("test", cfg.test_tiles, cfg.test_seed, cfg.train_tiles),
        }

    def _generate_examples(self, split: str, num_tiles: int, seed: int, scene_offset: int):
        cfg = self.builder_config
        # Tile by tile keeps memory flat for large configs.
        for t in range(num_tiles):
            tile = synthetic.generate_tile(t, tile_size=cfg.tile_size, seed=seed)
            g, c = cfg.tile_size // cfg.crop_size, cfg.crop_size
            for cy in range(g):
                for cx in range(g):
                    sl = (slice(cy * c, (cy + 1) * c), slice(cx * c, (cx + 1) * c))
                    mask = np.ascontiguousarray(tile["mask"][sl])
                    key = f"{split}_{scene_offset + t:05d}_{cy:02d}_{cx:02d}"
                    label = np.bincount(mask.ravel(), minlength=len(_INFO.class_names)).argmax()
                    yield (
                        key,
                        {
                            "id": key,
                            "image": np.ascontiguousarray(tile["image"][sl]),
                            "image2": np.ascontiguousarray(tile["image2"][sl]),
                            "label": int(label),
                            "mask": mask,
                            "change": np.ascontiguousarray(tile["change"][sl]),
                            "scene_id": np.int32(scene_offset + t),
                        },
                    )
