"""``oscd``: Onera Satellite Change Detection (Daudt et al. 2018), 13-band Sentinel-2 pairs.

Reads ``--manual_dir`` (nothing is downloaded). Layout: one folder per city (found anywhere
below ``--manual_dir``) holding

* ``imgs_1_rect/`` and ``imgs_2_rect/`` (all 13 bands co-registered on the 10 m grid), or
  ``imgs_1/`` and ``imgs_2/`` (native band resolutions): one tif per band, named ``B01.tif``
  or ``<anything>_B01.tif`` (B01 .. B08, B8A, B09 .. B12; B1 .. B9 without the zero also
  accepted). The ``_rect`` folders are preferred. Bands smaller than the 10 m band B02 are
  upsampled to its size (bilinear, half-pixel centres, ``_common.resize_bilinear``).
* ``cm/cm.png`` (change = white / non-zero) or ``cm/<city>-cm.tif`` (1 = no change,
  2 = change; {0, 1} also accepted): the change map, same size as the images. The OSCD label
  archives ship ``<city>/cm/`` separately: merge them into the city folders.

Splits: ``train.txt`` / ``test.txt`` at the top of ``--manual_dir`` (or of the folder holding
the cities), each a comma-separated list of city names as in the OSCD images archive, give
``train`` / ``test``; cities in neither list (or all, without the files) go to ``train``.

Crops: each city is cut into ``crop_size`` (128) crops on a regular grid whose last crop of a
row / column is aligned to the image border (``_common.crop_grid``); a side shorter than
``crop_size`` is zero-padded (change 0). ``scene_id`` = index of the city in the sorted city
names; all crops of a city share it.

Features: ``image_a``, ``image_b`` uint16 ``[S, S, 13]`` (reflectance x 1e4, band order
``registry.S2_BANDS``), ``change`` uint8 ``[S, S]`` {0, 1}, ``scene_id`` int32, ``city``,
``crop_y``, ``crop_x`` int32.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from rsjax.data import registry
from tfds_builders import _common

_INFO = registry.get_config_info("oscd")


@dataclasses.dataclass
class OSCDConfig(tfds.core.BuilderConfig):
    crop_size: int = 128


def read_bands(folder: pathlib.Path, bands) -> np.ndarray:
    """``[H, W, len(bands)]`` uint16 on the grid of B02 (other sizes resampled bilinearly).

    Raises:
      BadFileError: a band file is missing or unreadable.
    """
    files = _common.s2_band_files(folder)
    missing = [b for b in bands if b not in files]
    if missing:
        raise _common.BadFileError(folder / f"{missing[0]}.tif",
                                   f"band file missing (no {', '.join(missing)} in {folder})")
    ref = _common.read_tif(files["B02"]) if "B02" in files else None
    h, w = (ref.shape[:2] if ref is not None else _common.read_tif(files[bands[0]]).shape[:2])
    out = np.empty((h, w, len(bands)), np.uint16)
    for i, b in enumerate(bands):
        arr = _common.read_tif(files[b])
        if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
            arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:2])
        if arr.ndim != 2:
            raise _common.BadFileError(files[b], f"expected one band, got shape {arr.shape}")
        out[..., i] = _common.resize_bilinear(_common.as_uint16(arr, files[b]), h, w)
    return out


def grid_georef(folder: pathlib.Path, bands) -> _common.GeoRef:
    """The georeference of the grid :func:`read_bands` resamples onto (B02's, else the first
    band's file); empty when the files carry no GeoTIFF tags."""
    files = _common.s2_band_files(folder)
    ref = files.get("B02") or files.get(bands[0])
    return _common.read_georef(ref) if ref is not None else _common.GeoRef()


def read_change_map(cm_dir: pathlib.Path, city: str) -> tuple[np.ndarray, pathlib.Path]:
    """(uint8 {0, 1} change map, its file)."""
    png = cm_dir / "cm.png"
    if png.is_file():
        a = _common.read_pil(png)
        if a.ndim == 3:
            a = a[..., :3].max(axis=-1)
        return ((a > 127) if a.max() > 1 else (a > 0)).astype(np.uint8), png
    tifs = sorted(cm_dir.glob("*cm*.tif")) if cm_dir.is_dir() else []
    if not tifs:
        raise _common.BadFileError(png, f"change map missing for city {city!r} (cm/cm.png or "
                                   "cm/<city>-cm.tif)")
    a = _common.read_tif(tifs[0])
    a = a.reshape(a.shape[:2]) if a.ndim == 3 and a.shape[-1] == 1 else a
    vals = set(np.unique(a).tolist())
    if vals <= {1, 2}:
        return (a == 2).astype(np.uint8), tifs[0]
    if vals <= {0, 1}:
        return a.astype(np.uint8), tifs[0]
    raise _common.BadFileError(tifs[0], f"change map values must be {{1, 2}} or {{0, 1}}, "
                               f"found {sorted(vals)[:10]}")


def _image_dirs(city: pathlib.Path):
    for a, b in (("imgs_1_rect", "imgs_2_rect"), ("imgs_1", "imgs_2")):
        if (city / a).is_dir():
            return city / a, city / b
    return None


def _read_city_list(path: pathlib.Path) -> list[str]:
    return [c.strip() for c in path.read_text().replace("\n", ",").split(",") if c.strip()]


class Builder(_common.ManualDataMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for oscd."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "Georeferencing of each crop (date-1 10 m grid): `crs`, `transform`."}
    BUILDER_CONFIGS = [OSCDConfig(name="default", description="128 x 128 crops.",
                                  crop_size=128)]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass --manual_dir=DIR with one folder per city holding imgs_1[_rect]/, imgs_2[_rect]/ "
        "band tifs and cm/cm.png; optional train.txt / test.txt city lists.")

    def _info(self) -> tfds.core.DatasetInfo:
        s, nb = self.builder_config.crop_size, _INFO.num_bands
        metadata = tfds.core.MetadataDict(**_INFO.as_metadata(), **_common.skip_metadata(),
                                          crop_size=s,
                                          resampling="bands smaller than B02 upsampled "
                                                     "bilinearly (half-pixel centres)")
        metadata["image_size"] = s
        return self.dataset_info_from_configs(
            description=(
                "OSCD: bi-temporal Sentinel-2 L1C image pairs (13 bands, 10 m grid) of 24 "
                "cities with urban change maps, cut into fixed-size crops sharing the city "
                "as scene_id."),
            features=tfds.features.FeaturesDict({
                "image_a": tfds.features.Tensor(shape=(s, s, nb), dtype=np.uint16,
                                                encoding="bytes"),
                "image_b": tfds.features.Tensor(shape=(s, s, nb), dtype=np.uint16,
                                                encoding="bytes"),
                "change": tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding="bytes"),
                "scene_id": tfds.features.Scalar(dtype=np.int32),
                "city": tfds.features.Text(),
                "crop_y": tfds.features.Scalar(dtype=np.int32),
                "crop_x": tfds.features.Scalar(dtype=np.int32),
                **_common.georef_features(),
            }),
            homepage="https://rcdaudt.github.io/oscd/",
            citation="""@inproceedings{daudt2018oscd,
  title={Urban Change Detection for Multispectral Earth Observation Using Convolutional Neural
         Networks},
  author={Daudt, Rodrigo Caye and Le Saux, Bertrand and Boulch, Alexandre and Gousseau, Yann},
  booktitle={IGARSS}, year={2018}}""",
            metadata=metadata,
        )

    def _split_generators(self, dl_manager):
        root = _common.manual_dir(dl_manager, self.name, "OSCD city folders")
        cities = []
        for d in sorted(p for p in root.rglob("*") if p.is_dir()):
            if _image_dirs(d) is not None:
                cities.append(d)
        if not cities:
            raise FileNotFoundError(f"{root}: no OSCD city folders (<city>/imgs_1[_rect]/)")
        cities.sort(key=lambda p: p.name)
        split_of = {}
        for base in sorted({root, cities[0].parent}):
            for split in ("train", "test"):
                p = base / f"{split}.txt"
                if p.is_file():
                    for c in _read_city_list(p):
                        split_of[c] = split
        scene_of = {c.name: i for i, c in enumerate(cities)}
        items = {"train": [], "test": []}
        for c in cities:
            items[split_of.get(c.name, "train")].append(c)
        return {s: self._generate_examples(root, s, its, scene_of)
                for s, its in items.items() if its}

    def _generate_examples(self, root, split, cities, scene_of):
        crop = self.builder_config.crop_size

        def one(city: pathlib.Path):
            d1, d2 = _image_dirs(city)
            a = read_bands(d1, _INFO.bands)
            b = read_bands(d2, _INFO.bands)
            if b.shape != a.shape:
                raise _common.BadFileError(d2, f"date-2 image is {b.shape[:2]} but date 1 is "
                                           f"{a.shape[:2]}")
            cm, cm_path = read_change_map(city / "cm", city.name)
            if cm.shape != a.shape[:2]:
                raise _common.BadFileError(cm_path, f"wrong-size change map {cm.shape}, "
                                           f"images are {a.shape[:2]}")
            geo = grid_georef(d1, _INFO.bands)
            for y, x in _common.crop_grid(a.shape[0], a.shape[1], crop):
                yield f"{city.name}/{y}_{x}", {
                    **geo.window(y, x).features(),
                    "image_a": _common.take_crop(a, y, x, crop),
                    "image_b": _common.take_crop(b, y, x, crop),
                    "change": _common.take_crop(cm, y, x, crop),
                    "scene_id": np.int32(scene_of[city.name]),
                    "city": city.name, "crop_y": np.int32(y), "crop_x": np.int32(x),
                }

        yield from _common.iter_with_skip(self, cities, one, root)
        self._report_skipped(split)
