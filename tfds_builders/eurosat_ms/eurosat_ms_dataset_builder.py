"""``eurosat_ms``: EuroSAT multispectral (Helber et al. 2019), 13-band Sentinel-2 L1C GeoTIFFs.

Reads ``--manual_dir`` (nothing is downloaded): ``<Class>/<Class>_<n>.tif`` with the ten class
folders (as in ``EuroSATallBands.zip``, ``ds/images/remote_sensing/otherDatasets/sentinel_2/
tif/``; wrapping folders are found automatically). Each tif holds 13 bands in Sentinel-2 order
B01 .. B08, B8A, B09, B10, B11, B12 (band-last or band-first planes are both accepted), uint16
reflectance x 1e4. Same split rule as ``eurosat_rgb`` (``tfds_builders/_eurosat.py``), so the
two datasets split the same image names the same way.

Features: ``image`` uint16 ``[64, 64, 13]``, ``label`` ClassLabel (10), ``scene_id`` int32
(global index), ``filename`` (``<Class>/<Class>_<n>.tif``), ``crs`` / ``transform`` (the
GeoTIFF's georeference, ``tfds_builders._common.GeoRef``; empty / NaN when absent).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import _common, _eurosat


class Builder(_eurosat.EuroSATBuilderBase):
    """DatasetBuilder for eurosat_ms."""

    REGISTRY_NAME = "eurosat_ms"
    EXTENSIONS = (".tif", ".tiff")  # 13 bands: GeoTIFF only
    DTYPE = np.uint16
    DESCRIPTION = (
        "EuroSAT MS: 27,000 Sentinel-2 L1C patches (64 x 64 px, 13 bands, uint16 reflectance "
        "x 1e4) in 10 land-use / land-cover classes, read from the original class folders. "
        "Stratified 80/20 train/test split with a fixed seed (optional validation config). "
        "Normalize as (image / 10000 - mean) / std with the per-band statistics in the "
        "metadata."
    )

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Georeferencing of each patch: `crs`, `transform`."}

    def _info(self) -> tfds.core.DatasetInfo:
        base = super()._info()
        return self.dataset_info_from_configs(
            description=base.description,
            features=tfds.features.FeaturesDict({**base.features, **_common.georef_features()}),
            supervised_keys=base.supervised_keys,
            homepage=base.homepage,
            citation=base.citation,
            metadata=base.metadata,
        )

    def _generate_examples(self, root, split, items):
        for key, example in super()._generate_examples(root, split, items):
            yield key, {**example, **_common.read_georef(root / example["filename"]).features()}

    def _load(self, path):
        arr = _common.to_hwc(_common.read_tif(path), 13, path)
        return _common.as_uint16(arr, path)
