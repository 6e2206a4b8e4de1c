"""THE image reader of rsjax: the TFDS builders (``tfds_builders._common`` re-exports it), the
class-folder readers of evaluation and the GPU-resident path (:mod:`rsjax.data.folders`) all
read files through it. Any decoding problem is a :class:`BadFileError` naming the file (PIL for
jpg / png / bmp, tifffile for tif; truncated images are errors, never silently padded)."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from PIL import Image

# THE image extension list of rsjax: the builders, the class-folder readers of evaluation and
# the GPU-resident path (``rsjax.data.folders.IMAGE_EXTS`` is this tuple) all use it.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class BadFileError(ValueError):
    """An input file is unreadable, truncated, missing or has the wrong size/contents.

    ``str(err)`` starts with the path of the offending file; ``err.path`` holds it.
    """

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# ------------------------------------------------------------------------------ readers


def read_pil(path, mode: Optional[str] = None) -> np.ndarray:
    """Decodes a jpg/png/bmp/tif with PIL into a numpy array (fully loaded, no lazy decode).

    Args:
      path: the file.
      mode: optional PIL mode to convert to (``"RGB"``, ``"L"``); None keeps the file's mode.

    Raises:
      BadFileError: the file is missing, not an image, truncated or otherwise undecodable.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadFileError(path, "file is missing")
    try:
        with Image.open(path) as im:
            im.load()  # raises OSError on truncated data (LOAD_TRUNCATED_IMAGES is off)
            if mode is not None and im.mode != mode:
                im = im.convert(mode)
            return np.array(im)
    except BadFileError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise BadFileError(path, f"cannot decode image ({type(e).__name__}: {e})") from e


def read_tif(path) -> np.ndarray:
    """Reads the first image series of a (Geo)TIFF with tifffile (all samples, native dtype):
    ``[H, W]``, ``[H, W, C]`` (contiguous samples) or ``[C, H, W]`` (separate planes / pages).

    Raises:
      BadFileError: missing, not a TIFF, truncated or undecodable.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadFileError(path, "file is missing")
    try:
        import tifffile  # only when a GeoTIFF is read
    except ImportError as e:  # pragma: no cover - tifffile is a dependency
        raise ImportError("reading .tif files needs `pip install tifffile`") from e
    try:
        arr = tifffile.imread(path)
    except Exception as e:  # noqa: BLE001 - tifffile/struct/zlib errors for corrupt files
        if "imagecodecs" in str(e):  # a compressed TIFF, not a bad one: never skip it
            raise ImportError(f"{path}: reading this compressed TIFF needs `pip install imagecodecs` ({e})") from e
        raise BadFileError(path, f"cannot decode TIFF ({type(e).__name__}: {e})") from e
    return np.asarray(arr)


def read_image(path, mode: Optional[str] = None) -> np.ndarray:
    """:func:`read_tif` for ``.tif``/``.tiff`` files, else :func:`read_pil` (with ``mode``)."""
    if str(path).lower().endswith((".tif", ".tiff")):
        return read_tif(path)
    return read_pil(path, mode)


def to_hwc(arr: np.ndarray, channels: int, path) -> np.ndarray:
    """Returns ``arr`` as ``[H, W, channels]``, accepting band-first ``[channels, H, W]`` too
    (GeoTIFFs written with separate planes) and ``[H, W]`` when ``channels == 1``.

    Raises:
      BadFileError: any other shape.
    """
    if arr.ndim == 2 and channels == 1:
        return arr[..., None]
    if arr.ndim == 3:
        if arr.shape[-1] == channels:
            return arr
        if arr.shape[0] == channels:
            return np.ascontiguousarray(np.moveaxis(arr, 0, -1))
    raise BadFileError(path, f"expected an image with {channels} bands, got array of shape {arr.shape}")


def as_uint16(arr: np.ndarray, path) -> np.ndarray:
    """Integer or float reflectance -> uint16 (floats are rounded); out-of-range is an error."""
    if arr.dtype == np.uint16:
        return arr
    if np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        a = arr.astype(np.float64) if np.issubdtype(arr.dtype, np.floating) else arr
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(a).all():
            raise BadFileError(path, "image contains NaN or infinite values")
        lo, hi = (a.min(), a.max()) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise BadFileError(path, f"values {lo}..{hi} do not fit uint16 reflectance")
        return np.rint(a).astype(np.uint16) if np.issubdtype(a.dtype, np.floating) else a.astype(np.uint16)
    raise BadFileError(path, f"unsupported pixel type {arr.dtype}")
