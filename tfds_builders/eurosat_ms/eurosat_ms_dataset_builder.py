"""``eurosat_ms``: EuroSAT multispectral (Helber et al. 2019), 13-band Sentinel-2 L1C GeoTIFFs.

Reads ``--manual_dir`` (nothing is downloaded): ``<Class>/<Class>_<n>.tif`` with the ten class
folders (as in ``EuroSATallBands.zip``, ``ds/images/remote_sensing/otherDatasets/sentinel_2/
tif/``; wrapping folders are found automatically). Each tif holds 13 bands in Sentinel-2 order
B01 .. B08, B8A, B09, B10, B11, B12 (band-last or band-first planes are both accepted), uint16
reflectance x 1e4. Same split rule as ``eurosat_rgb`` (``tfds_builders/_eurosat.py``), so the
two datasets split the same image names the same way.

Features: ``image`` uint16 ``[64, 64, 13]``, ``label`` ClassLabel (10), ``scene_id`` int32
(global index), ``filename`` (``<Class>/<Class>_<n>.tif``).
"""

from __future__ import annotations

import numpy as np

from tfds_builders import _common, _eurosat


class Builder(_eurosat.EuroSATBuilderBase):
    """DatasetBuilder for eurosat_ms."""

    REGISTRY_NAME = "eurosat_ms"
    EXTENSION = ".tif"
    DTYPE = np.uint16
    DESCRIPTION = (
        "EuroSAT MS: 27,000 Sentinel-2 L1C patches (64 x 64 px, 13 bands, uint16 reflectance "
        "x 1e4) in 10 land-use / land-cover classes, read from the original class folders. "
        "Stratified 80/20 train/test split with a fixed seed (optional validation config). "
        "Normalize as (image / 10000 - mean) / std with the per-band statistics in the "
        "metadata.")

    def _load(self, path):
        arr = _common.to_hwc(_common.read_tif(path), 13, path)
        return _common.as_uint16(arr, path)
