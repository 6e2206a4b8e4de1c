"""``oscd``: Onera Satellite Change Detection (Daudt et al. 2018), 13-band Sentinel-2 pairs.

Reads ``--manual_dir`` (nothing is downloaded): the folder the official archives were unpacked
into, as they unpack::

    Onera Satellite Change Detection dataset - Images/
        train.txt, test.txt           the official split: comma-separated city names
        <city>/imgs_1/, imgs_2/       the two dates, one tif per band at native resolution
        <city>/imgs_1_rect/, ...      (full archive) all bands on the 10 m grid; preferred
    Onera Satellite Change Detection dataset - Train Labels/
        <city>/cm/<city>-cm.tif       the change map: 1 = no change, 2 = change (its README: 0 / 1)
        <city>/cm/cm.png              the same as a picture (0 / 255)
    Onera Satellite Change Detection dataset - Test Labels/   (optional, published later)

Why the builder pairs by city: the images and their labels come in separate archives that
unpack into sibling folders, and asking users to merge them by hand was the first thing a new
user tripped over. Folder names are not matched (unzip tools and mirrors rename them): a *city
folder* is any folder below ``--manual_dir`` (5 levels deep at most, links followed,
``__MACOSX`` ignored: ``_common.walk_dirs``) holding ``imgs_1[_rect]/``, a *label folder* is
any ``<city>/cm/`` holding a change map. The label of a city is its own ``cm/`` (a merged layout, as
earlier versions required, keeps working) or else the one ``<anything>/<city>/cm/``;
:func:`pair_cities` does the pairing.

Bands: one tif per band, named ``B01.tif`` or ``<anything>_B01.tif`` (B01 .. B08, B8A, B09 ..
B12; ``B1`` .. ``B9`` also accepted). Every band is resampled onto the 10 m grid of date 1's
B02 (bilinear, half-pixel centres, ``_common.resize_bilinear``): the 20 m / 60 m bands, and
date 2 as a whole when its grid has another size. The change map is ``<city>-cm.tif`` (else any
``*cm*.tif``; values {1, 2}, or {0, 1}), else ``cm/cm.png`` (change = non-zero; 0 / 255 pictures
thresholded at 127): the tif is the label, the png a picture of it (anti-aliased for
aguasclaras). It must have date 1's size: the authors put labels on the older image's grid.

Date 2 smaller than date 1 and the label (hongkong: 2 px, saclay_e: 8 / 9 px in the official
``imgs_2``): resampled, not cropped or padded. The GeoTIFF tags of those files show date 2
covers exactly the ground of date 1 with slightly larger pixels (identical corners), so a
top-left crop would shift date 2 against date 1 by up to the whole difference at the
bottom-right (on saclay_e the two dates' B02 in the bottom-right 128 px then correlate at 0.07,
against 0.49 after resampling), and padding would add the same misregistration plus empty
pixels. The date-2 size of each city is kept in the metadata (``cities``, with the size and
change fraction of the city) and logged when it differs. When both dates are georeferenced in
one CRS their footprints must agree to half a pixel (whatever the sizes); otherwise the sizes
may differ by at most ``MAX_UNREFERENCED_MISMATCH`` (5 %) per side. Anything else is a wrong
pair and is refused, naming the date-2 file.

Splits: ``train.txt`` / ``test.txt`` beside the city folders or at the top of ``--manual_dir``
give ``train`` / ``test``; cities in neither list (all of them, without the files) go to
``train``; a city in both is refused. Every city of an emitted split needs a change map:

* ``train`` is labelled (the Train Labels archive): a train city without a change map is
  refused, naming its image folder (``--skip_bad`` leaves it out and counts it).
* ``test`` is labelled when at least one present test city has a change map (the Test Labels
  archive is unpacked too); then the same rule holds. Otherwise its cities are left out with
  one warning (metadata ``unlabelled_cities``) and no ``test`` split is written.
* Cities a list names but that have no image folder (the lists name all 24 cities; a partial
  copy lacks some) are left out with one warning (metadata ``absent_cities``).
* A change map whose city has no image folder is refused, naming it (``--skip_bad``: skipped).

Crops: each city is cut into ``crop_size`` (128) crops on a regular grid whose last crop of a
row / column is aligned to the image border (``_common.crop_grid``); a side shorter than
``crop_size`` is zero-padded (change 0). ``scene_id`` = index of the city in the sorted names
of the city folders found; all crops of a city share it.

Features: ``image_a``, ``image_b`` uint16 ``[S, S, 13]`` (reflectance x 1e4, band order
``registry.S2_BANDS``), ``change`` uint8 ``[S, S]`` {0, 1}, ``scene_id`` int32, ``city``,
``crop_y``, ``crop_x`` int32, ``crs`` / ``transform`` of the crop on date 1's grid.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from rsjax.data import registry
from tfds_builders import _common

_INFO = registry.get_config_info("oscd")
SPLITS = ("train", "test")
# The largest relative size difference per side between the two dates accepted without a
# georeference showing they cover the same ground (OSCD's own differences are under 1.5 %).
MAX_UNREFERENCED_MISMATCH = 0.05
# How far apart (date-1 pixels) the georeferenced footprints of the two dates may lie.
MAX_FOOTPRINT_OFFSET_PX = 0.5


@dataclasses.dataclass
class OSCDConfig(tfds.core.BuilderConfig):
    crop_size: int = 128


# ------------------------------------------------------------------------------- bands


def _one_band(path: pathlib.Path) -> np.ndarray:
    arr = _common.read_tif(path)
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:2])
    if arr.ndim != 2:
        raise _common.BadFileError(path, f"expected one band, got shape {arr.shape}")
    return arr


def band_files(folder: pathlib.Path, bands: Sequence[str]) -> dict[str, pathlib.Path]:
    """``{band: file}`` of ``bands`` in ``folder`` (``_common.s2_band_files``).

    Raises:
      BadFileError: a band file is missing.
    """
    files = _common.s2_band_files(folder)
    missing = [b for b in bands if b not in files]
    if missing:
        raise _common.BadFileError(
            folder / f"{missing[0]}.tif", f"band file missing (no {', '.join(missing)} in {folder})"
        )
    return {b: files[b] for b in bands}


def grid_file(files: dict[str, pathlib.Path]) -> pathlib.Path:
    """The file of :func:`band_files` whose grid the bands are stacked on: B02 (10 m), else
    the first band."""
    return files.get("B02", next(iter(files.values())))


def read_bands(files: dict[str, pathlib.Path], size: tuple[int, int] | None = None) -> np.ndarray:
    """The bands of :func:`band_files` as ``[h, w, len(files)]`` uint16 on the grid of
    :func:`grid_file`, or resampled onto ``size = (h, w)`` (bilinear; every band resampled
    once, straight from its own size).

    Raises:
      BadFileError: a band file is unreadable or holds more than one band.
    """
    h, w = size or _one_band(grid_file(files)).shape
    out = np.empty((h, w, len(files)), np.uint16)
    for i, path in enumerate(files.values()):
        out[..., i] = _common.resize_bilinear(_common.as_uint16(_one_band(path), path), h, w)
    return out


def check_same_ground(date1: pathlib.Path, size1: tuple[int, int], date2: pathlib.Path, size2: tuple[int, int]) -> None:
    """Refuses a date-2 grid file that does not cover date 1's ground, so cannot be resampled
    onto date 1's grid (sizes ``(h, w)``): footprints more than ``MAX_FOOTPRINT_OFFSET_PX``
    apart when both files are georeferenced in one CRS, else sizes more than
    ``MAX_UNREFERENCED_MISMATCH`` apart on a side.

    Raises:
      BadFileError: naming ``date2``.
    """
    offset = _common.footprint_offset_px(_common.read_georef(date1), size1, _common.read_georef(date2), size2)
    if offset is not None:
        if offset > MAX_FOOTPRINT_OFFSET_PX:
            raise _common.BadFileError(
                date2,
                f"date 2 ({size2[0]} x {size2[1]} px) lies {offset:.1f} date-1 pixels off "
                f"the ground of date 1 ({date1.name}, {size1[0]} x {size1[1]} px): not a pair "
                "of one city; check the imgs_1 / imgs_2 folders",
            )
        return
    worst = max(abs(a - b) / a for a, b in zip(size1, size2))
    if worst > MAX_UNREFERENCED_MISMATCH:
        raise _common.BadFileError(
            date2,
            f"date 2 is {size2[0]} x {size2[1]} px, date 1 ({date1.name}) "
            f"{size1[0]} x {size1[1]} px: over {MAX_UNREFERENCED_MISMATCH:.0%} apart and no "
            "common georeference shows they cover the same ground; check the pairing",
        )


# ------------------------------------------------------------------------------ labels


def label_file(cm_dir: pathlib.Path, city: str) -> pathlib.Path | None:
    """The change map in ``cm_dir``: ``<city>-cm.tif``, else the first ``*cm*.tif``, else
    ``cm.png``; None when there is none."""
    if not cm_dir.is_dir():
        return None
    tifs = sorted(cm_dir.glob("*cm*.tif"), key=lambda p: (p.name != f"{city}-cm.tif", p.name))
    if tifs:
        return tifs[0]
    png = cm_dir / "cm.png"
    return png if png.is_file() else None


def read_change_map(path: pathlib.Path) -> np.ndarray:
    """uint8 {0, 1} change map of a :func:`label_file`."""
    if path.suffix.lower() == ".png":
        a = _common.read_pil(path)
        if a.ndim == 3:
            a = a[..., :3].max(axis=-1)
        return ((a > 127) if a.max() > 1 else (a > 0)).astype(np.uint8)
    a = _common.read_tif(path)
    a = a.reshape(a.shape[:2]) if a.ndim == 3 and a.shape[-1] == 1 else a
    vals = set(np.unique(a).tolist())
    if vals <= {1, 2}:
        return (a == 2).astype(np.uint8)
    if vals <= {0, 1}:
        return a.astype(np.uint8)
    raise _common.BadFileError(path, f"change map values must be {{1, 2}} or {{0, 1}}, found {sorted(vals)[:10]}")


# ----------------------------------------------------------------------------- pairing


def image_dirs(city: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path] | None:
    """``(date-1 folder, date-2 folder)`` of a city folder (``_rect`` preferred), or None."""
    for a, b in (("imgs_1_rect", "imgs_2_rect"), ("imgs_1", "imgs_2")):
        if (city / a).is_dir():
            return city / a, city / b
    return None


@dataclasses.dataclass(frozen=True)
class City:
    name: str
    folder: pathlib.Path  # holds imgs_1[_rect]/, imgs_2[_rect]/
    split: str
    label: pathlib.Path | None  # the change map; None when none was found


@dataclasses.dataclass(frozen=True)
class Pairing:
    """What :func:`pair_cities` found below ``--manual_dir``."""

    cities: list[City]  # every city folder, sorted by name
    absent: dict[str, list[str]]  # split -> cities its list names without a folder
    orphan_labels: list[pathlib.Path]  # change maps of cities without a folder
    label_roots: list[pathlib.Path]  # folders holding <city>/cm/ apart from the images


def _read_city_list(path: pathlib.Path) -> list[str]:
    return [c.strip() for c in path.read_text().replace("\n", ",").split(",") if c.strip()]


def split_lists(bases: Sequence[pathlib.Path]) -> dict[str, tuple[str, pathlib.Path]]:
    """``{city: (split, list file)}`` from the ``train.txt`` / ``test.txt`` in ``bases``.

    Raises:
      BadFileError: a city is listed in two splits (naming both files).
    """
    out: dict[str, tuple[str, pathlib.Path]] = {}
    for base in bases:
        for split in SPLITS:
            path = base / f"{split}.txt"
            if not path.is_file():
                continue
            for c in _read_city_list(path):
                if out.get(c, (split,))[0] != split:
                    raise _common.BadFileError(path, f"city {c!r} is also listed in {out[c][1]}: one split per city")
                out[c] = (split, path)
    return out


def pair_cities(root: pathlib.Path) -> Pairing:
    """Finds the city folders below ``root``, the change map of each (its own ``cm/`` first,
    else the one ``<anything>/<city>/cm/``) and its split.

    Raises:
      FileNotFoundError: no city folder below ``root``.
      BadFileError: two city folders of one name, two change maps of one city outside its
        folder, or a city listed in two splits.
    """
    dirs = list(_common.walk_dirs(root, max_depth=5))
    folders: dict[str, pathlib.Path] = {}
    for d in dirs:
        if image_dirs(d) is not None:
            if d.name in folders:
                raise _common.BadFileError(
                    d, f"a second image folder of city {d.name!r} (the first: {folders[d.name]}); keep one"
                )
            folders[d.name] = d
    if not folders:
        raise FileNotFoundError(
            f"{root}: no OSCD city folders (<city>/imgs_1[_rect]/); pass the "
            "folder the OSCD images archive was unpacked into"
        )
    outside: dict[str, list[pathlib.Path]] = {}
    for cm in (d for d in dirs if d.name == "cm"):
        city = cm.parent.name
        path = label_file(cm, city)
        if path is not None and folders.get(city) != cm.parent:
            outside.setdefault(city, []).append(path)
    lists = split_lists(sorted({root, *(f.parent for f in folders.values())}))
    cities = []
    for name in sorted(folders):
        label = label_file(folders[name] / "cm", name)
        found = outside.get(name, [])
        if label is None and len(found) > 1:
            raise _common.BadFileError(
                found[1], f"a second change map of city {name!r} (the first: {found[0]}); keep one"
            )
        cities.append(City(name, folders[name], lists.get(name, ("train",))[0], label or (found[0] if found else None)))
    absent = {s: sorted(c for c, (split, _) in lists.items() if split == s and c not in folders) for s in SPLITS}
    orphans = [p for c, ps in sorted(outside.items()) if c not in folders for p in ps]
    roots = sorted({p.parent.parent.parent for ps in outside.values() for p in ps})
    return Pairing(cities, absent, orphans, roots)


def labelled_splits(cities: Sequence[City]) -> set[str]:
    """The splits whose cities must all have a change map: ``train``, and ``test`` when any
    of its cities has one (its labels archive is at hand)."""
    return {"train"} | {c.split for c in cities if c.label is not None}


# ----------------------------------------------------------------------------- builder


class Builder(_common.ManualDataMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for oscd."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Georeferencing of each crop (date-1 10 m grid): `crs`, `transform`.",
        "1.2.0": "Reads the images and labels archives as they unpack (labels paired by city); "
        "a date-2 grid of another size (hongkong, saclay_e) is resampled onto date 1's; "
        "`<city>-cm.tif` preferred over `cm.png`; metadata `cities`, `absent_cities`, "
        "`unlabelled_cities`.",
    }
    BUILDER_CONFIGS = [OSCDConfig(name="default", description="128 x 128 crops.", crop_size=128)]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Unpack the OSCD images archive and the train labels archive (and the test labels "
        "archive, if you have it) into one folder and pass it as --manual_dir; city folders "
        "holding their own cm/ also work."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        s, nb = self.builder_config.crop_size, _INFO.num_bands
        metadata = tfds.core.MetadataDict(
            **_INFO.as_metadata(),
            **_common.skip_metadata(),
            crop_size=s,
            resampling="bands smaller than B02, and a date-2 grid of another size than date "
            "1's, resampled bilinearly (half-pixel centres) onto date 1's B02 grid",
            cities={},
            absent_cities={},
            unlabelled_cities=[],
        )
        metadata["image_size"] = s
        return self.dataset_info_from_configs(
            description=(
                "OSCD: bi-temporal Sentinel-2 L1C image pairs (13 bands, 10 m grid) of 24 "
                "cities with urban change maps, cut into fixed-size crops sharing the city "
                "as scene_id."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image_a": tfds.features.Tensor(shape=(s, s, nb), dtype=np.uint16, encoding="bytes"),
                    "image_b": tfds.features.Tensor(shape=(s, s, nb), dtype=np.uint16, encoding="bytes"),
                    "change": tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding="bytes"),
                    "scene_id": tfds.features.Scalar(dtype=np.int32),
                    "city": tfds.features.Text(),
                    "crop_y": tfds.features.Scalar(dtype=np.int32),
                    "crop_x": tfds.features.Scalar(dtype=np.int32),
                    **_common.georef_features(),
                }
            ),
            homepage="https://rcdaudt.github.io/oscd/",
            citation="""@inproceedings{daudt2018oscd,
  title={Urban Change Detection for Multispectral Earth Observation Using Convolutional Neural
         Networks},
  author={Daudt, Rodrigo Caye and Le Saux, Bertrand and Boulch, Alexandre and Gousseau, Yann},
  booktitle={IGARSS}, year={2018}}""",
            metadata=metadata,
        )

    def _split_generators(self, dl_manager):
        root = _common.manual_dir(dl_manager, self.name, "the unpacked OSCD archives")
        found = pair_cities(root)
        md = self.info.metadata
        for path in found.orphan_labels:
            self._bad_file(
                _common.BadFileError(
                    path,
                    f"change map of city {path.parent.parent.name!r}, which has no image "
                    "folder (<city>/imgs_1/) below --manual_dir; unpack its images or remove it",
                ),
                root,
            )
        absent = {s: names for s, names in found.absent.items() if names}
        if absent:
            md["absent_cities"] = absent
            _common.log.warning(
                "%s: cities listed but not found below %s, left out: %s",
                self.name,
                root,
                "; ".join(f"{s}: {', '.join(n)}" for s, n in absent.items()),
            )
        labelled = labelled_splits(found.cities)
        unlabelled = [c.name for c in found.cities if c.split not in labelled]
        if unlabelled:
            md["unlabelled_cities"] = unlabelled
            _common.log.warning(
                "%s: no change map for any %s city, left out (no such split is written; "
                "unpack the OSCD test labels archive beside the others to build it): %s",
                self.name,
                "/".join(sorted({c.split for c in found.cities} - labelled)),
                ", ".join(unlabelled),
            )
        items = {s: [c for c in found.cities if c.split == s and s in labelled] for s in SPLITS}
        if not any(items.values()):
            raise FileNotFoundError(
                f"{root}: none of the {len(found.cities)} OSCD cities is in "
                "a labelled split; unpack the labels archive beside the images"
            )
        scene_of = {c.name: i for i, c in enumerate(found.cities)}
        return {
            s: self._generate_examples(root, s, its, scene_of, found.label_roots) for s, its in items.items() if its
        }

    def _generate_examples(self, root, split, cities, scene_of, label_roots):
        crop = self.builder_config.crop_size
        md = self.info.metadata

        def one(city: City):
            if city.label is None:
                where = ", ".join(str(r / city.name / "cm") for r in label_roots)
                raise _common.BadFileError(
                    city.folder,
                    f"city {city.name!r} ({split} split) has images but no change "
                    f"map (<city>-cm.tif or cm.png) in its cm/{' or in ' + where if where else ''}"
                    "; unpack the OSCD labels archive beside the images archive, or --skip_bad",
                )
            d1, d2 = image_dirs(city.folder)
            if not d2.is_dir():
                raise _common.BadFileError(d2, f"date-2 folder of city {city.name!r} missing")
            f1, f2 = band_files(d1, _INFO.bands), band_files(d2, _INFO.bands)
            g1, g2 = grid_file(f1), grid_file(f2)
            a = read_bands(f1)
            size1, size2 = a.shape[:2], _one_band(g2).shape
            check_same_ground(g1, size1, g2, size2)
            if size2 != size1:
                _common.log.info(
                    "%s: %s: date 2 is %d x %d px, resampled onto date 1's %d x %d px grid",
                    self.name,
                    city.name,
                    *size2,
                    *size1,
                )
            b = read_bands(f2, size=size1)
            cm = read_change_map(city.label)
            if cm.shape != size1:
                raise _common.BadFileError(city.label, f"wrong-size change map {cm.shape}, date-1 images are {size1}")
            md["cities"][city.name] = {
                "split": split,
                "size": list(size1),
                "date_2_size": list(size2),
                "change_fraction": round(float(cm.mean()), 6),
            }
            geo = _common.read_georef(g1)
            for y, x in _common.crop_grid(size1[0], size1[1], crop):
                yield (
                    f"{city.name}/{y}_{x}",
                    {
                        **geo.window(y, x).features(),
                        "image_a": _common.take_crop(a, y, x, crop),
                        "image_b": _common.take_crop(b, y, x, crop),
                        "change": _common.take_crop(cm, y, x, crop),
                        "scene_id": np.int32(scene_of[city.name]),
                        "city": city.name,
                        "crop_y": np.int32(y),
                        "crop_x": np.int32(x),
                    },
                )

        yield from _common.iter_with_skip(self, cities, one, root)
        self._report_skipped(split)
