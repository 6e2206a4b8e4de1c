"""Helpers shared by the TFDS builders of real datasets (files read from ``--manual_dir``).

* The image reader of rsjax, re-exported from :mod:`rsjax.data.images` (``read_image``,
  ``IMAGE_EXTENSIONS``, ``BadFileError``, ...): the builders import the library, never the
  other way round.
* :class:`ManualDataMixin`: the ``skip_bad`` contract of ``rsjax.data.build`` (a ``skip_bad``
  constructor argument / attribute; a bad input either stops the build with an error naming the
  file or is skipped, logged and counted in the dataset metadata as ``num_skipped`` /
  ``skipped_files``).
* Bilinear resampling (used for the 20 m / 60 m Sentinel-2 bands) and the crop grid used to
  cut large tiles into fixed-size crops.
* Georeferencing (:class:`GeoRef`, :func:`read_georef`, :func:`georef_features`): the CRS and
  geotransform of a GeoTIFF, kept by the builders that read .tif in every example as ``crs`` /
  ``transform`` (of the example's own crop), empty / NaN when the source has none; and
  :func:`footprint_offset_px`, whether two rasters of different pixel size cover one ground.
* :func:`walk_dirs` / :func:`find_dir`: the folder search of the builders that find their
  layout anywhere below ``--manual_dir``.

Nothing in here downloads anything.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

# THE image reader of rsjax lives in the library (rsjax.data.images); the builders use it from here.
from rsjax.data.images import (  # noqa: E402,F401  (re-exported for the builders)
    IMAGE_EXTENSIONS,
    BadFileError,
    as_uint16,
    read_image,
    read_pil,
    read_tif,
    to_hwc,
)

# ----------------------------------------------------------------------- georeferencing

NO_TRANSFORM = (float("nan"),) * 6


class GeoRef:
    """Where a raster lies on the ground, as GeoTIFF tags state it.

    ``crs``: ``"EPSG:<code>"`` (projected CRS, else geographic), ``""`` when the file names none
    or a user-defined one. ``transform``: the GDAL geotransform ``(x0, dx_col, dx_row, y0,
    dy_col, dy_row)`` of the top-left corner of pixel (0, 0) (GDAL / rasterio convention: map
    ``x = x0 + col * dx_col + row * dx_row``, ``y = y0 + col * dy_col + row * dy_row``; north-up
    rasters have ``dy_row < 0``), NaN x 6 when the file is not georeferenced.
    """

    __slots__ = ("crs", "transform")

    def __init__(self, crs: str = "", transform: Sequence[float] = NO_TRANSFORM):
        self.crs = str(crs)
        self.transform = tuple(float(v) for v in transform)
        if len(self.transform) != 6:
            raise ValueError(f"a geotransform has 6 numbers, got {len(self.transform)}")

    def window(self, y: int, x: int) -> "GeoRef":
        """The georeference of the crop whose top-left pixel is ``(y, x)`` of this raster."""
        x0, a, b, y0, d, e = self.transform
        return GeoRef(self.crs, (x0 + x * a + y * b, a, b, y0 + x * d + y * e, d, e))

    def features(self) -> dict:
        """The example entries of :func:`georef_features`."""
        return {"crs": self.crs, "transform": np.asarray(self.transform, np.float64)}

    def __repr__(self):
        return f"GeoRef({self.crs!r}, {self.transform})"


def footprint_offset_px(
    ref: GeoRef, ref_shape: Sequence[int], other: GeoRef, other_shape: Sequence[int]
) -> float | None:
    """How far apart two rasters' footprints lie, in pixels of ``ref``: the larger of the
    distances between their top-left corners and between their bottom-right corners (map
    units), divided by ``ref``'s smaller pixel side. ``shape``: ``(h, w, ...)``.

    None when it cannot be told: either raster lacks a transform or a CRS, or the CRSs
    differ (no reprojection here). Two grids of different pixel size over the same ground
    give ~0: that is what makes resampling one onto the other right.
    """
    if not ref.crs or ref.crs != other.crs or np.isnan(ref.transform + other.transform).any():
        return None

    def corners(g, shape):
        h, w = shape[:2]
        x0, a, b, y0, d, e = g.transform
        return np.array([[x0, y0], [x0 + w * a + h * b, y0 + w * d + h * e]])

    _, a, b, _, d, e = ref.transform
    pixel = min(np.hypot(a, d), np.hypot(b, e))
    gap = np.hypot(*(corners(ref, ref_shape) - corners(other, other_shape)).T)
    return float(gap.max() / pixel)


def georef_features() -> dict:
    """TFDS features holding an example's georeference (see :class:`GeoRef`): ``crs`` (Text,
    ``""`` when unknown) and ``transform`` (float64 ``[6]``, NaN when unknown)."""
    import tensorflow_datasets as tfds

    return {"crs": tfds.features.Text(), "transform": tfds.features.Tensor(shape=(6,), dtype=np.float64)}


def read_georef(path) -> GeoRef:
    """The :class:`GeoRef` of a (Geo)TIFF's first page, from the tags tifffile decodes
    (``ModelPixelScale`` + ``ModelTiepoint``, or ``ModelTransformation``; ``PixelIsPoint``
    rasters shifted by half a pixel as GDAL does). A TIFF without GeoTIFF tags, or any other
    file, gives an empty GeoRef.

    Raises:
      BadFileError: the file is missing or not a readable TIFF.
    """
    path = os.fspath(path)
    if not path.lower().endswith((".tif", ".tiff")):
        return GeoRef()
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].geotiff_tags or {}
    except Exception as e:  # noqa: BLE001 - unreadable TIFF: name the file
        raise BadFileError(path, f"cannot read TIFF tags ({type(e).__name__}: {e})") from e
    if not tags:
        return GeoRef()
    crs = ""
    for key in ("ProjectedCSTypeGeoKey", "GeographicTypeGeoKey"):
        code = tags.get(key)
        if code is not None and 1024 <= int(code) < 32767:  # 32767: user-defined
            crs = f"EPSG:{int(code)}"
            break
    transform = NO_TRANSFORM
    m = tags.get("ModelTransformation")
    scale, tie = tags.get("ModelPixelScale"), tags.get("ModelTiepoint")
    if m is not None:
        m = np.asarray(m, np.float64).reshape(4, 4)
        transform = (m[0, 3], m[0, 0], m[0, 1], m[1, 3], m[1, 0], m[1, 1])
    elif scale is not None and tie is not None and len(tie) >= 6:
        i, j, _, x, y, _ = (float(v) for v in tie[:6])
        sx, sy = float(scale[0]), float(scale[1])
        transform = (x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy)
    if int(tags.get("GTRasterTypeGeoKey", 1) or 1) == 2 and not np.isnan(transform[0]):  # PixelIsPoint
        x0, a, b, y0, d, e = transform
        transform = (x0 - 0.5 * (a + b), a, b, y0 - 0.5 * (d + e), d, e)
    return GeoRef(crs, transform)


# --------------------------------------------------------------------------- resampling


def resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of ``[H, W]`` or ``[H, W, C]`` to ``[out_h, out_w(, C)]``, same dtype.

    Half-pixel-centre convention (``align_corners=False``, as ``cv2.INTER_LINEAR`` and
    ``torch.nn.functional.interpolate(mode="bilinear")``): output pixel ``i`` samples the input
    at ``(i + 0.5) * H / out_h - 0.5``, clamped to the border; no antialiasing (used for
    upsampling coarse Sentinel-2 bands onto the 10 m grid). Integer outputs are rounded to the
    nearest integer.
    """
    img = np.asarray(img)
    h, w = img.shape[:2]
    if (h, w) == (out_h, out_w):
        return img

    def axis(n_in, n_out):
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0.0, n_in - 1)
        i0 = np.floor(x).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, x - i0

    y0, y1, fy = axis(h, out_h)
    x0, x1, fx = axis(w, out_w)
    a = img.astype(np.float64)
    extra = (None,) * (a.ndim - 2)
    fy = fy[(slice(None), None) + extra]
    fx = fx[(None, slice(None)) + extra]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    out = top * (1 - fy) + bottom * fy
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(img.dtype)


# -------------------------------------------------------------------------------- crops


def crop_offsets(size: int, crop: int) -> list[int]:
    """Start offsets of ``crop``-sized windows covering ``[0, size)`` on a regular grid.

    Windows start every ``crop`` pixels; when ``size`` is not a multiple of ``crop`` the last
    window is shifted back to end exactly at the border (it overlaps its neighbour), so no
    pixel is lost and no padding is needed. ``size < crop`` gives ``[0]`` (the caller pads).
    """
    if size <= crop:
        return [0]
    offs = list(range(0, size - crop + 1, crop))
    if offs[-1] + crop < size:
        offs.append(size - crop)
    return offs


def crop_grid(h: int, w: int, crop: int) -> list[tuple[int, int]]:
    """Row-major ``(y, x)`` offsets of :func:`crop_offsets` in both axes."""
    return [(y, x) for y in crop_offsets(h, crop) for x in crop_offsets(w, crop)]


def take_crop(arr: np.ndarray, y: int, x: int, crop: int, fill=0) -> np.ndarray:
    """``arr[y:y+crop, x:x+crop]`` as a contiguous array, padded with ``fill`` at the bottom /
    right when the image is smaller than ``crop``."""
    out = arr[y : y + crop, x : x + crop]
    if out.shape[0] < crop or out.shape[1] < crop:
        pad = [(0, crop - out.shape[0]), (0, crop - out.shape[1])] + [(0, 0)] * (out.ndim - 2)
        out = np.pad(out, pad, constant_values=fill)
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------------------- files


def natural_key(s: str):
    """Sort key that orders embedded numbers numerically (``img_2`` < ``img_10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def list_files(folder, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[pathlib.Path]:
    """Files directly in ``folder`` with one of ``extensions`` (case-insensitive), sorted by name
    (python ``sorted`` of the names); hidden files are ignored."""
    folder = pathlib.Path(folder)
    exts = tuple(e.lower() for e in extensions)
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(exts)),
        key=lambda p: p.name,
    )


def walk_dirs(root, max_depth: int = 4) -> Iterator[pathlib.Path]:
    """``root`` and the folders below it, breadth-first down to ``max_depth`` levels, each
    level in sorted order. Symbolic links are followed (a data folder is often a link; the depth
    bound stops a link loop); hidden folders and ``__MACOSX`` (zip resource forks) are not
    entered."""
    level = [pathlib.Path(root)]
    for _ in range(max_depth + 1):
        nxt = []
        for d in level:
            yield d
            try:
                nxt.extend(
                    sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX")
                )
            except OSError:
                continue
        level = nxt


def find_dir(root, predicate, max_depth: int = 4) -> Optional[pathlib.Path]:
    """The first folder of :func:`walk_dirs` where ``predicate(path)`` is true; None when
    there is none."""
    return next((d for d in walk_dirs(root, max_depth) if predicate(d)), None)


def split_name(folder_name: str) -> Optional[str]:
    """Canonical TFDS split name of a folder / prefix name, or None (``val`` -> ``validation``)."""
    n = folder_name.lower()
    return {
        "train": "train",
        "training": "train",
        "val": "validation",
        "valid": "validation",
        "validation": "validation",
        "test": "test",
        "testing": "test",
    }.get(n)


def manual_dir(dl_manager, dataset: str, expect: str) -> pathlib.Path:
    """``dl_manager.manual_dir`` as a pathlib.Path, with an error explaining ``--manual_dir``."""
    try:
        d = pathlib.Path(os.fspath(dl_manager.manual_dir))
    except (AssertionError, ValueError) as e:
        raise FileNotFoundError(
            f"{dataset} is built from local files: pass --manual_dir=DIR (config: the folder "
            f"holding {expect}); nothing is downloaded. ({e})"
        ) from None
    if not d.is_dir():
        raise FileNotFoundError(f"{dataset}: --manual_dir {d} is not a directory")
    return d


# ---------------------------------------------------------------------------- skip_bad


class ManualDataMixin:
    """``skip_bad`` handling for builders of real datasets (mix in before the TFDS base).

    Use :meth:`_bad_file` in ``except BadFileError`` blocks: it re-raises unless ``skip_bad``
    is set, in which case it logs the file, counts it and returns (the caller skips the
    example). :meth:`_report_skipped` at the end of each split writes ``num_skipped`` and
    ``skipped_files`` into the dataset metadata (saved in ``metadata.json`` when the build
    completes) and logs the count.
    """

    def __init__(self, *args, skip_bad: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if kwargs.get("file_format") is None:
            default_to_array_record(self)
        self.skip_bad = bool(skip_bad)
        self.skipped_files: list[str] = []

    def _bad_file(self, err: BadFileError, root=None) -> None:
        if not getattr(self, "skip_bad", False):
            raise err
        path = err.path
        if root is not None:
            try:
                path = os.path.relpath(err.path, os.fspath(root))
            except ValueError:
                pass
        if not hasattr(self, "skipped_files"):
            self.skipped_files = []
        if path not in self.skipped_files:
            self.skipped_files.append(path)
        log.warning("%s: skipping bad input %s (%s)", self.name, path, err.reason)

    def _report_skipped(self, split: str) -> None:
        skipped = list(getattr(self, "skipped_files", []))
        md = self.info.metadata
        if md is not None:
            md["num_skipped"] = len(skipped)
            md["skipped_files"] = skipped
        if skipped:
            log.warning("%s: %d bad input file(s) skipped so far (after split %r)", self.name, len(skipped), split)


def default_to_array_record(builder) -> None:
    """Makes a builder that was given no ``file_format`` write array_record, not TFRecord.

    rsjax reads datasets by random access (``tfds.data_source``), which TFRecord does not
    offer; TFDS's own default (``tfds build`` without ``--file_format``) is TFRecord. A dataset
    already prepared on disk keeps the format it was written in (its ``dataset_info.json``
    fixes it; TFDS refuses to change it, and rsjax's loader then says how to rebuild).
    """
    try:
        builder.info.set_file_format("array_record", override=True)
    except RuntimeError:  # info restored from an existing build: keep its format
        pass


def skip_metadata() -> dict:
    """Initial metadata entries updated by :meth:`ManualDataMixin._report_skipped`."""
    return {"num_skipped": 0, "skipped_files": []}


def iter_with_skip(builder: ManualDataMixin, items: Iterable, fn, root=None) -> Iterator:
    """Yields from ``fn(item)`` (a generator of ``(key, example)``) for every item, routing
    :class:`BadFileError` through ``builder._bad_file`` (raise, or skip the item).

    Examples of an item are collected before being yielded so that a bad file found in the
    middle of an item (e.g. the mask of the third crop's tile) skips the whole item.
    """
    for item in items:
        try:
            out = list(fn(item))
        except BadFileError as e:
            builder._bad_file(e, root)
            continue
        yield from out


# ----------------------------------------------------------------------- Sentinel-2 files

_S2_BAND_FILE = re.compile(r"(?:^|_)B(\d{1,2}|8A)\.tiff?$", re.IGNORECASE)


def s2_band_files(folder) -> dict[str, pathlib.Path]:
    """``{band name: file}`` of the single-band Sentinel-2 tifs in ``folder``: files named
    ``B01.tif`` / ``B1.tif`` / ``B8A.tif`` or ``<anything>_B01.tif``; band names are normalized
    to the ``registry.S2_BANDS`` spelling (``B01`` .. ``B12``, ``B8A``)."""
    out = {}
    for p in list_files(folder, (".tif", ".tiff")):
        m = _S2_BAND_FILE.search(p.name)
        if m:
            tok = m.group(1).upper()
            out["B8A" if tok == "8A" else f"B{int(tok):02d}"] = p
    return out
