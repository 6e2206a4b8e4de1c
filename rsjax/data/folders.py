"""Datasets read straight from their original folders into memory (no TFDS needed).

Used by the GPU-resident input path and the EuroSAT study, which want the whole decoded
dataset as one array. The split rule is the one fixed by the project (and used by the
``eurosat_rgb`` TFDS builder): for each class in sorted class-name order, with ONE generator
``rng = numpy.random.default_rng(seed)`` shared across classes, ``perm =
rng.permutation(n_class)`` over that class's files sorted by name; the first
``round(test_fraction * n_class)`` go to ``test``, the rest to ``train``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from typing import Sequence

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def class_folder_files(root: str, exts: Sequence[str] = IMAGE_EXTS) -> tuple[list[str], list[list[str]]]:
    """(sorted class names, per class the sorted file names) of a ``<Class>/<file>`` folder."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder {root!r} does not exist")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise FileNotFoundError(f"dataset folder {root!r} has no class sub-folders")
    files = [sorted(f for f in os.listdir(os.path.join(root, c)) if f.lower().endswith(tuple(exts)))
             for c in classes]
    for c, fs in zip(classes, files):
        if not fs:
            raise FileNotFoundError(f"class folder {os.path.join(root, c)!r} holds no image files")
    return classes, files


def split_assignments(counts: Sequence[int], *, test_fraction: float = 0.2, split_seed: int = 0,
                     validation_fraction: float = 0.0, validation_seed: int = 1
                     ) -> list[np.ndarray]:
    """Split of every class's indices (see the module docstring).

    Args:
      counts: number of images of each class, in class order.

    Returns:
      one int array per class: 0 = train, 1 = test, 2 = validation for each index ``0..n-1``.
    """
    rng = np.random.default_rng(split_seed)
    assign = []
    for n in counts:
        perm = rng.permutation(n)
        a = np.zeros(n, np.int64)
        a[perm[:round(test_fraction * n)]] = 1
        assign.append(a)
    if validation_fraction > 0:
        vrng = np.random.default_rng(validation_seed)
        for a, n in zip(assign, counts):
            train_idx = np.nonzero(a == 0)[0]
            perm = vrng.permutation(train_idx)
            a[perm[:round(validation_fraction * n)]] = 2
    return assign


def stratified_split(counts: Sequence[int], *, test_fraction: float = 0.2, seed: int = 0) -> list[np.ndarray]:
    """Per class a boolean array ``is_test`` (index = position in the name-sorted file list)."""
    return [a == 1 for a in split_assignments(counts, test_fraction=test_fraction, split_seed=seed)]


def _decode(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), np.uint8)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot decode image {path!r}: {e}") from None


def load_class_folder(root: str, split: str, *, test_fraction: float = 0.2, seed: int = 0,
                      cache_dir: str | None = None, max_per_class: int | None = None):
    """Decoded ``split`` ('train' | 'test' | 'all') of a class-folder RGB dataset.

    Returns (images uint8 [N, H, W, 3], labels int32 [N], class names). Decoding 27,000
    EuroSAT jpgs takes ~10-20 s; with ``cache_dir`` the arrays are cached as ``.npz`` keyed by
    the folder listing, split rule and split.
    """
    classes, files = class_folder_files(root)
    is_test = stratified_split([len(f) for f in files], test_fraction=test_fraction, seed=seed)
    paths, labels = [], []
    for ci, (c, fs, t) in enumerate(zip(classes, files, is_test)):
        keep = np.ones(len(fs), bool) if split == "all" else (t if split == "test" else ~t)
        if split not in ("all", "test", "train"):
            raise ValueError(f"split {split!r}: expected train, test or all")
        sel = [os.path.join(root, c, f) for f, k in zip(fs, keep) if k]
        if max_per_class:
            sel = sel[:max_per_class]
        paths += sel
        labels += [ci] * len(sel)
    key = hashlib.sha1(repr((paths, test_fraction, seed)).encode()).hexdigest()[:16]
    cache = os.path.join(cache_dir, f"classfolder_{split}_{key}.npz") if cache_dir else None
    if cache and os.path.exists(cache):
        with np.load(cache) as z:
            return z["images"], z["labels"], classes
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as ex:
        images = np.stack(list(ex.map(_decode, paths)))
    labels = np.asarray(labels, np.int32)
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = cache + ".tmp.npz"
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cache)
    return images, labels, classes


def folder_split(root: str, *, test_fraction: float = 0.2, seed: int = 0, max_per_class: int | None = None):
    """File lists of the module's split of a class-folder tree (any of :data:`IMAGE_EXTS`).

    Returns ``(train_files, train_labels, test_files, test_labels, class_names)``; labels are
    indices into the sorted class-folder names, files listed class by class in permutation order.
    ``max_per_class`` keeps, per class, the first ``round(test_fraction * max_per_class)`` test
    and the first ``max_per_class - that`` train files (quick subsets for tests).
    """
    classes, files = class_folder_files(root, IMAGE_EXTS)
    assign = split_assignments([len(f) for f in files], test_fraction=test_fraction, split_seed=seed)
    tr_f: list[str] = []
    te_f: list[str] = []
    tr_y: list[int] = []
    te_y: list[int] = []
    for c, (name, fs, a) in enumerate(zip(classes, files, assign)):
        test = [os.path.join(root, name, f) for f, k in zip(fs, a) if k == 1]
        train = [os.path.join(root, name, f) for f, k in zip(fs, a) if k != 1]
        if max_per_class:
            k_test = int(round(test_fraction * max_per_class))
            test, train = test[:k_test], train[:max_per_class - k_test]
        te_f += test
        te_y += [c] * len(test)
        tr_f += train
        tr_y += [c] * len(train)
    return tr_f, np.asarray(tr_y, np.int32), te_f, np.asarray(te_y, np.int32), classes


def read_images(files: Sequence[str], *, desc: str = "images") -> np.ndarray:
    """Reads image files (PIL; tifs with tifffile when installed) into one array [N, H, W, C]
    in their stored dtype. Raises DataError naming the file that cannot be read or differs in shape."""
    from PIL import Image
    from tqdm.auto import tqdm

    from rsjax.errors import DataError

    out = []
    for f in tqdm(files, desc=desc, leave=False):
        try:
            if f.lower().endswith((".tif", ".tiff")):
                try:
                    import tifffile

                    a = tifffile.imread(f)
                except ImportError:
                    a = np.asarray(Image.open(f))
            else:
                with Image.open(f) as im:
                    a = np.asarray(im.convert("RGB") if im.mode in ("P", "RGBA", "CMYK") else im)
        except OSError as e:
            raise DataError(f"cannot read image {f!r}: {e}") from None
        out.append(a[..., None] if a.ndim == 2 else a)
    if not out:
        raise DataError("no image files to read")
    for a, f in zip(out, files):
        if a.shape != out[0].shape:
            raise DataError(f"images differ in shape: {f!r} is {a.shape}, {files[0]!r} is {out[0].shape}")
    return np.stack(out)
