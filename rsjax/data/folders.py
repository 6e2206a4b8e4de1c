"""Datasets read straight from their original folders into memory (no TFDS needed).

``config.data.folder`` (with ``data.folder_seed``) names a ``<Class>/<image>`` tree that the
evaluation jobs and the GPU-resident input path read directly instead of the TFDS dataset
``data.name`` (``data.manual_dir`` is something else: the original files of a TFDS build).

* Images are read by THE image reader of rsjax, :mod:`rsjax.data.images` (the builders use it
  too: PIL for jpg / png / bmp, tifffile for tif; a truncated or undecodable file is an error) with THE extension list :data:`IMAGE_EXTS`; any problem is a
  :class:`rsjax.errors.DataError` naming the file, and an image whose shape differs from the
  others' is named with both shapes (:func:`read_images`).
* Class-folder split, fixed by the project (and used by the ``eurosat_rgb`` TFDS builder): for
  each class in sorted class-name order, with ONE generator ``rng =
  numpy.random.default_rng(seed)`` shared across classes, ``perm = rng.permutation(n_class)``
  over that class's files sorted by name; the first ``round(test_fraction * n_class)`` go to
  ``test``, the rest to ``train`` (:func:`split_assignments`).
* Tile folders (segmentation images with colour-coded masks, as the Dubai aerial set unpacks):
  ``<root>[/<one or two folders>]/<Tile N>/images/<stem>.jpg`` with ``<Tile N>/masks/<stem>.png``
  (:func:`tile_folders`, :func:`tile_pairs`). A tile is named by the last number in its folder's
  name (``Tile 3`` -> 3), so configs can split by tile (``data.test_scenes``, scene = tile number); the masks are decoded
  and cut by :func:`rsjax.data.tiles.read`. An image without its mask, a mask
  without its image, two tiles with one number are DataErrors naming the files.
* Folders whose files carry no split information (e.g. a change-detection folder in the
  LEVIR layout without ``train_`` / ``test_`` prefixes or ``list/`` files) are split by
  :func:`fraction_split`: the sorted unit names (tiles), ``perm =
  numpy.random.default_rng(seed).permutation(n)``, the first ``round(test_fraction * n)`` to
  ``test`` (at least one when ``n >= 2``), the rest to ``train``.
* Subsets (``eval.max_train``, ``transfer.max_examples``, ...): ONE rule for every split reader
  of rsjax, class folders and TFDS alike (:func:`subset_indices`): ``limit`` records drawn
  with ``numpy.random.default_rng(0)``, kept in record order. A prefix would be the first
  classes of a tree listed class by class.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from rsjax.data import images
from rsjax.errors import DataError, MissingDataError

# THE extension list of image files (builders, evaluation folders, the GPU-resident path).
IMAGE_EXTS: tuple[str, ...] = tuple(images.IMAGE_EXTENSIONS)


def subset_indices(n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """The subset rule of every split reader: indices of ``limit`` of ``n`` records drawn with
    ``numpy.random.default_rng(seed)`` (0 for every reader; a study's labelled fraction draws one
    subset per study seed), in record order; all ``n`` when ``limit`` is None, 0 or >= n."""
    if not limit or int(limit) >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(int(seed)).permutation(n)[: int(limit)])


def class_folder_files(root: str, exts: Sequence[str] = IMAGE_EXTS) -> tuple[list[str], list[list[str]]]:
    """(sorted class names, per class the sorted file names) of a ``<Class>/<file>`` folder."""
    if not os.path.isdir(root):
        raise MissingDataError(f"dataset folder {root!r} does not exist")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise MissingDataError(f"dataset folder {root!r} has no class sub-folders (expected <Class>/<image>)")
    # Hidden files (macOS ``._x.jpg``) are never images.
    files = [
        sorted(
            f
            for f in os.listdir(os.path.join(root, c))
            if f.lower().endswith(tuple(e.lower() for e in exts))
            and not f.startswith(".")
            and os.path.isfile(os.path.join(root, c, f))
        )
        for c in classes
    ]
    for c, fs in zip(classes, files):
        if not fs:
            raise MissingDataError(f"class folder {os.path.join(root, c)!r} holds no image files ({', '.join(exts)})")
    return classes, files


def tile_folders(root: str, max_depth: int = 3) -> dict[int, str]:
    """``{tile number: folder}`` of the tile folders at or below ``root`` (module docstring): the
    folders, up to ``max_depth`` levels down, that hold an ``images/`` folder. MissingDataError when
    there is none; DataError naming a tile folder without a number, or two with the same one."""
    if not os.path.isdir(root):
        raise MissingDataError(f"dataset folder {root!r} does not exist")
    found: dict[int, str] = {}
    level = [root]
    for _ in range(max_depth + 1):
        below = []
        for d in level:
            if os.path.isdir(os.path.join(d, "images")):
                numbers = re.findall(r"\d+", os.path.basename(os.path.normpath(d)))
                if not numbers:
                    raise DataError(f"tile folder {d!r} has no number in its name (expected e.g. 'Tile 3')")
                n = int(numbers[-1])
                if n in found:
                    raise DataError(f"tile folders {found[n]!r} and {d!r} are both tile {n}")
                found[n] = d
                continue  # a tile's own sub-folders are images/ and masks/, not tiles
            below += sorted(
                os.path.join(d, e) for e in os.listdir(d) if not e.startswith(".") and os.path.isdir(os.path.join(d, e))
            )
        level = below
    if not found:
        raise MissingDataError(
            f"dataset folder {root!r} has no tile folders (expected <Tile N>/images/ "
            f"+ <Tile N>/masks/, at most {max_depth} levels down)"
        )
    return dict(sorted(found.items()))


def tile_pairs(tile_dir: str, exts: Sequence[str] = IMAGE_EXTS) -> list[tuple[str, str]]:
    """``(image, mask)`` paths of one tile folder, in image-name order: ``images/<stem>.<ext>`` with
    ``masks/<stem>.<ext>`` (any of ``exts``). DataError naming an image without a mask, a mask
    without an image, or an empty ``images/``."""

    def listing(sub):
        d = os.path.join(tile_dir, sub)
        names = (
            sorted(
                f
                for f in os.listdir(d)
                if f.lower().endswith(tuple(e.lower() for e in exts))
                and not f.startswith(".")
                and os.path.isfile(os.path.join(d, f))
            )
            if os.path.isdir(d)
            else []
        )
        by_stem: dict[str, str] = {}
        for f in names:
            stem = os.path.splitext(f)[0]
            if stem in by_stem:
                raise DataError(
                    f"{os.path.join(d, by_stem[stem])!r} and {os.path.join(d, f)!r} share the "
                    f"name {stem!r}: keep one of them"
                )
            by_stem[stem] = f
        return d, by_stem

    image_dir, image_files = listing("images")
    mask_dir, mask_files = listing("masks")
    if not image_files:
        raise DataError(f"tile folder {image_dir!r} holds no image files ({', '.join(exts)})")
    for stem, f in image_files.items():
        if stem not in mask_files:
            raise DataError(
                f"image {os.path.join(image_dir, f)!r} has no mask (expected {os.path.join(mask_dir, stem + '.png')!r})"
            )
    for stem, f in mask_files.items():
        if stem not in image_files:
            raise DataError(f"mask {os.path.join(mask_dir, f)!r} has no image in {image_dir!r}")
    return [(os.path.join(image_dir, image_files[s]), os.path.join(mask_dir, mask_files[s])) for s in image_files]


def split_assignments(
    counts: Sequence[int],
    *,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    validation_fraction: float = 0.0,
    validation_seed: int = 1,
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
        a[perm[: round(test_fraction * n)]] = 1
        assign.append(a)
    if validation_fraction > 0:
        vrng = np.random.default_rng(validation_seed)
        for a, n in zip(assign, counts):
            train_idx = np.nonzero(a == 0)[0]
            perm = vrng.permutation(train_idx)
            a[perm[: round(validation_fraction * n)]] = 2
    return assign


def fraction_split(names: Sequence[str], *, test_fraction: float = 0.2, seed: int = 0) -> dict[str, str]:
    """``{name: "train" | "test"}`` for units without split information (module docstring):
    ``names`` sorted, ``perm = default_rng(seed).permutation(n)``, the first ``round(test_fraction
    * n)`` (at least 1 when ``n >= 2`` and ``test_fraction > 0``) are ``test``."""
    names = sorted(set(names))
    n = len(names)
    k = int(round(test_fraction * n))
    if test_fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    test = {names[i] for i in perm[:k]}
    return {nm: ("test" if nm in test else "train") for nm in names}


def stratified_split(counts: Sequence[int], *, test_fraction: float = 0.2, seed: int = 0) -> list[np.ndarray]:
    """Per class a boolean array ``is_test`` (index = position in the name-sorted file list)."""
    return [a == 1 for a in split_assignments(counts, test_fraction=test_fraction, split_seed=seed)]


def read_image(path: str, mode: str | None = None) -> np.ndarray:
    """One image file as ``[H, W, C]`` in its stored dtype, with the builders' reader
    (:func:`rsjax.data.images.read_image`: PIL for jpg / png / bmp, tifffile for tif; truncated or
    undecodable files are errors); ``mode`` a PIL mode to convert to (``"RGB"`` turns a palette
    PNG into its colours). Raises :class:`rsjax.errors.DataError` naming the file."""
    try:
        a = images.read_image(path, mode)
    except images.BadFileError as e:
        raise DataError(f"cannot read image {e.path!r}: {e.reason}") from None
    return a[..., None] if a.ndim == 2 else a


def check_shapes(shapes: Sequence[tuple], files: Sequence[str], expected: tuple | None = None) -> tuple:
    """The common ``[H, W, C]`` shape of ``files``; DataError naming the first file that differs.

    ``expected`` None: the most frequent shape (ties: the first file's), so that a single odd
    image is blamed, not the file that happens to come first."""
    if expected is None:
        counts: dict = {}
        for s in shapes:
            counts[s] = counts.get(s, 0) + 1
        expected = max(counts, key=lambda s: counts[s])  # dicts keep insertion order: ties -> first
    bad = [i for i, s in enumerate(shapes) if s != expected]
    if bad:
        i = bad[0]
        raise DataError(
            f"image {files[i]!r} has shape {shapes[i]} (H, W, bands), expected {tuple(expected)} like "
            f"{len(shapes) - len(bad)} of the {len(shapes)} images"
            + (f" ({len(bad) - 1} more differ)" if len(bad) > 1 else "")
            + "; resize or convert it, or remove it from the folder"
        )
    return tuple(expected)


def read_images(
    files: Sequence[str], *, desc: str = "images", expected_shape: tuple | None = None, threads: int | None = None
) -> np.ndarray:
    """Reads image files (:func:`read_image`, the builders' reader) into one array
    ``[N, H, W, C]`` in their stored dtype, decoding on ``threads`` threads (default: up to 8).

    Raises DataError naming the file that cannot be read, or that differs in shape from
    ``expected_shape`` (default: the shape most of the files have; :func:`check_shapes`)."""
    files = list(files)
    if not files:
        raise DataError("no image files to read")
    threads = threads or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as ex:
        out = list(tqdm(ex.map(read_image, files), total=len(files), desc=desc, leave=False))
    check_shapes([a.shape for a in out], files, expected_shape)
    return np.stack(out)


def load_class_folder(
    root: str,
    split: str,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    cache_dir: str | None = None,
    limit: int | None = None,
):
    """Decoded ``split`` ('train' | 'test' | 'all') of a class-folder tree (:func:`folder_split`).

    Returns (images [N, H, W, C] in their stored dtype, labels int32 [N], class names), class
    by class. ``limit`` keeps the subset of :func:`subset_indices`. Decoding 27,000 EuroSAT jpgs takes ~10-20 s; with ``cache_dir`` the
    arrays are cached as ``.npz`` keyed by the folder listing, split rule and split.
    """
    if split not in ("all", "test", "train"):
        raise ValueError(f"split {split!r}: expected train, test or all")
    tr_f, tr_y, te_f, te_y, classes = folder_split(root, test_fraction=test_fraction, seed=seed)
    if split == "all":  # class by class, files in name order
        _, files = class_folder_files(root)
        paths = [os.path.join(root, c, f) for c, fs in zip(classes, files) for f in fs]
        labels = np.repeat(np.arange(len(classes)), [len(fs) for fs in files])
    else:
        paths, labels = (tr_f, tr_y) if split == "train" else (te_f, te_y)
    keep = subset_indices(len(paths), limit)
    paths, labels = [paths[i] for i in keep], np.asarray(labels)[keep]
    key = hashlib.sha1(repr((paths, test_fraction, seed)).encode()).hexdigest()[:16]
    cache = os.path.join(cache_dir, f"classfolder_{split}_{key}.npz") if cache_dir else None
    if cache and os.path.exists(cache):
        with np.load(cache) as z:
            return z["images"], z["labels"], classes
    images = read_images(paths, desc=f"read {split}")
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
    indices into the sorted class-folder names, files listed class by class in name order.
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
            test, train = test[:k_test], train[: max_per_class - k_test]
        te_f += test
        te_y += [c] * len(test)
        tr_f += train
        tr_y += [c] * len(train)
    return tr_f, np.asarray(tr_y, np.int32), te_f, np.asarray(te_y, np.int32), classes
