"""``ssl4eo_s12``: SSL4EO-S12 (Wang et al. 2022) Sentinel-2 L1C, 4 seasons per location.

Reads ``--manual_dir`` (nothing is downloaded). Layout of the released archive:
``s2c/<location>/<season>/B1.tif .. B12.tif`` (plus ``B8A.tif``; ``B01`` style names are also
accepted; ``--manual_dir`` may be the ``s2c`` folder itself or any folder above it). The 10 m
bands are 264 x 264 px; bands stored at 20 m (132 px) or 60 m (44 px) are upsampled to
264 x 264 bilinearly (half-pixel centres, ``_common.resize_bilinear``). A 10 m band of another
size is an error naming the file.

Every season folder is one example (``image`` uint16 ``[264, 264, 13]``, band order
``registry.S2_BANDS``). ``scene_id`` is the location: ``int(location)`` when all location
folder names are numbers (the archive's ``0000000`` style), else the index of the location in
the sorted names; the seasons of a location are different dates of one scene. ``season`` is the
index of the season folder among its location's sorted season folders, ``season_name`` its
name (``<acquisition>_<tile>``), ``location`` the location folder name. One split: ``train``.
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from rsjax.data import registry
from tfds_builders import _common

_INFO = registry.get_config_info("ssl4eo_s12")
SIZE = _INFO.image_size  # 264
_TEN_M = tuple(b for b in _INFO.bands if registry.S2_GSD_M[b] == 10.0)


def _is_s2c(d: pathlib.Path) -> bool:
    return d.name == "s2c"


class Builder(_common.ManualDataMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for ssl4eo_s12."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Georeferencing of the 10 m grid (B02): `crs`, `transform`."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass --manual_dir=DIR holding s2c/<location>/<season>/B*.tif (SSL4EO-S12 L1C)."

    def _info(self) -> tfds.core.DatasetInfo:
        nb = _INFO.num_bands
        metadata = tfds.core.MetadataDict(
            **_INFO.as_metadata(),
            **_common.skip_metadata(),
            resampling="20 m / 60 m bands upsampled to 264 x 264 bilinearly (half-pixel "
            "centres) when stored at native resolution",
        )
        return self.dataset_info_from_configs(
            description=(
                "SSL4EO-S12 Sentinel-2 L1C: 264 x 264 px patches, 13 bands (uint16 reflectance "
                "x 1e4), four seasons per location; the location is the scene."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(SIZE, SIZE, nb), dtype=np.uint16, encoding="bytes"),
                    "scene_id": tfds.features.Scalar(dtype=np.int32),
                    "season": tfds.features.Scalar(dtype=np.int32),
                    "season_name": tfds.features.Text(),
                    "location": tfds.features.Text(),
                    **_common.georef_features(),
                }
            ),
            homepage="https://github.com/zhu-xlab/SSL4EO-S12",
            citation="""@article{wang2022ssl4eo,
  title={SSL4EO-S12: A Large-Scale Multi-Modal, Multi-Temporal Dataset for Self-Supervised
         Learning in Earth Observation},
  author={Wang, Yi and Braham, Nassim Ait Ali and Xiong, Zhitong and Liu, Chenying and
          Albrecht, Conrad M and Zhu, Xiao Xiang}, journal={arXiv:2211.07044}, year={2022}}""",
            metadata=metadata,
        )

    def _split_generators(self, dl_manager):
        root = _common.manual_dir(dl_manager, self.name, "s2c/<location>/<season>/B*.tif")
        s2c = _common.find_dir(root, _is_s2c, max_depth=4)
        if s2c is None:
            raise FileNotFoundError(f"{root}: no s2c/ folder (s2c/<location>/<season>/B*.tif)")
        locations = sorted(p for p in s2c.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not locations:
            raise FileNotFoundError(f"{s2c}: no location folders")
        numeric = all(p.name.isdigit() and int(p.name) < 2**31 for p in locations)
        items = []
        for i, loc in enumerate(locations):
            sid = int(loc.name) if numeric else i
            seasons = sorted(p for p in loc.iterdir() if p.is_dir() and not p.name.startswith("."))
            items.extend((loc, sid, k, season) for k, season in enumerate(seasons))
        return {"train": self._generate_examples(root, "train", items)}

    def _generate_examples(self, root, split, items):
        def one(item):
            loc, sid, k, season = item
            files = _common.s2_band_files(season)
            missing = [b for b in _INFO.bands if b not in files]
            if missing:
                raise _common.BadFileError(season / f"{missing[0]}.tif", f"band file missing ({', '.join(missing)})")
            img = np.empty((SIZE, SIZE, _INFO.num_bands), np.uint16)
            for i, b in enumerate(_INFO.bands):
                arr = _common.read_tif(files[b])
                if arr.ndim == 3 and arr.shape[-1] == 1:
                    arr = arr[..., 0]
                if arr.ndim != 2:
                    raise _common.BadFileError(files[b], f"expected one band, got {arr.shape}")
                if b in _TEN_M and arr.shape != (SIZE, SIZE):
                    raise _common.BadFileError(files[b], f"10 m band should be {SIZE} x {SIZE}, got {arr.shape}")
                img[..., i] = _common.resize_bilinear(_common.as_uint16(arr, files[b]), SIZE, SIZE)
            yield (
                f"{loc.name}/{season.name}",
                {
                    "image": img,
                    "scene_id": np.int32(sid),
                    "season": np.int32(k),
                    "season_name": season.name,
                    "location": loc.name,
                    **_common.read_georef(files["B02"]).features(),  # the 10 m grid all bands are on
                },
            )

        yield from _common.iter_with_skip(self, items, one, root)
        self._report_skipped(split)
