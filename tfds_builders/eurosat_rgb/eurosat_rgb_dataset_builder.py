"""``eurosat_rgb``: EuroSAT RGB (Helber et al. 2019), 27,000 Sentinel-2 RGB JPEGs of 64 x 64 px.

Reads ``--manual_dir`` (nothing is downloaded): ``<Class>/<Class>_<n>.jpg`` with the ten class
folders (the layout of the original ``2750/`` archive; a wrapping folder is found
automatically). Split: stratified 80/20 with a fixed seed, see ``tfds_builders/_eurosat.py``.

Features:

* ``image``: uint8 ``[64, 64, 3]`` (R, G, B), the decoded JPEG pixels (PIL), stored raw.
* ``label``: ClassLabel, the ten classes in sorted order (``registry.EUROSAT_CLASSES``).
* ``scene_id``: int32, the image's global index (class order, then file-name order): every
  image is its own scene (use ``data.crops_as_scenes`` to form scenes from sub-crops).
* ``filename``: ``<Class>/<Class>_<n>.jpg``.

Build::

    python -m rsjax.data.build eurosat_rgb --manual_dir=shared/data/eurosat_rgb \
        --data_dir=~/tensorflow_datasets [--config=with_validation] [--skip_bad]
"""

from __future__ import annotations

import numpy as np

from tfds_builders import _common, _eurosat


class Builder(_eurosat.EuroSATBuilderBase):
    """DatasetBuilder for eurosat_rgb."""

    REGISTRY_NAME = "eurosat_rgb"
    # as released: .jpg; png / tif / bmp copies are read the same way (the shared image reader)
    EXTENSIONS = (".jpg", *(e for e in _common.IMAGE_EXTENSIONS if e != ".jpg"))
    DTYPE = np.uint8
    DESCRIPTION = (
        "EuroSAT RGB: 27,000 Sentinel-2 patches (64 x 64 px, 10 m, 8-bit RGB JPEG) in 10 "
        "land-use / land-cover classes, read from the original class folders. Stratified "
        "80/20 train/test split with a fixed seed (optional validation config). Normalize as "
        "(image / 255 - mean) / std with the per-band statistics in the metadata."
    )

    def _load(self, path):
        return _common.to_hwc(_common.read_pil(path), 3, path).astype(np.uint8, copy=False)
