"""Tile folders read as they unpack: segmentation images with colour-coded masks (Dubai aerial).

A tile folder (:func:`rsjax.data.folders.tile_folders`: ``<Tile N>/images/`` + ``masks/``) is
split by tile at run time: its tiles are areas whose images are neighbours (a split by image
would leak), there are only a handful, and which of them to hold out (``data.test_scenes`` /
``data.val_scenes``: a tile's scene id is its number; :mod:`rsjax.data.scenes`) and the crop side (``data.image_size``, what the CPU can afford) are choices
of the experiment, not of a build. Reading 63 JPEGs (92 Mpx) takes seconds. The colours become
stored masks of the registry's convention (0 = ignore, ``v`` = class ``v - 1``;
:func:`colour_mask`, exact colours of ``DatasetInfo.mask_colours``), so everything after the read
is shared with the TFDS datasets. :func:`rsjax.data.pipeline.read_split` reads a tile folder
for a dataset whose registry entry has a colour table (its one switch on ``data.folder``).
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np
import PIL.Image

from rsjax.data import folders, registry, scenes
from rsjax.data import images as images_lib
from rsjax.errors import ConfigError, DataError


def grid(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """Top-left ``(y, x)`` of the ``(h // size) x (w // size)`` tiles of an ``h x w`` image, row-major;
    the remainder at the bottom and right is dropped."""
    return [(y, x) for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]


def stitch(crops: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The inverse of cutting an image into its :func:`grid`: ``rows x cols`` crops ``[rows * cols,
    S, S, ...]`` in row-major order -> one ``[rows * S, cols * S, ...]`` array."""
    crops = np.asarray(crops)
    if len(crops) != rows * cols:
        raise ValueError(f"stitch: {len(crops)} crops for a grid of {rows} x {cols}")
    s = crops.shape[1]
    out = crops.reshape((rows, cols, s, s) + crops.shape[3:])
    return np.moveaxis(out, 2, 1).reshape((rows * s, cols * s) + crops.shape[3:])


def colour_mask(rgb: np.ndarray, info: registry.DatasetInfo, path: str) -> np.ndarray:
    """A colour-coded ``[H, W, 3]`` uint8 mask -> stored uint8 ``[H, W]`` by ``info.mask_colours``
    (exact colours: class ``i`` -> ``i + 1``, a colour named by no class -> 0 = ignore).

    Raises DataError naming ``path``, the unknown colours (most frequent first) and their pixel
    counts: a colour off the table is a defect of the file (or of the table), never guessed."""
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    table = sorted(
        (int(c[1:], 16), info.class_names.index(n) + 1 if n in info.class_names else 0) for n, c in info.mask_colours
    )
    keys = np.asarray([k for k, _ in table], np.int32)
    values = np.asarray([v for _, v in table], np.uint8)
    idx = np.minimum(np.searchsorted(keys, code), len(keys) - 1)
    known = keys[idx] == code
    if not known.all():
        colours, counts = np.unique(code[~known], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        shown = ", ".join(f"#{colours[i]:06X} x {counts[i]}" for i in order[:3])
        more = f" and {len(colours) - 3} more colours" if len(colours) > 3 else ""
        raise DataError(
            f"mask {path!r}: {int(counts.sum())} pixels of colours outside the colour table of "
            f"dataset {info.name!r} ({shown}{more}); the table "
            f"(registry DatasetInfo.mask_colours): " + ", ".join(f"{n} {c}" for n, c in info.mask_colours)
        )
    return values[idx]


def split_tiles(cfg, split: str, *, split_key: str = "data.train_split") -> list[int]:
    """The sorted tile numbers of run-time split ``split`` of the tile folder ``cfg.folder``: the one
    rule of :mod:`rsjax.data.scenes` (scene = tile number; ``data.test_scenes`` /
    ``data.val_scenes`` held out, ``train`` = every other tile). ConfigError naming the key."""
    numbers = list(folders.tile_folders(cfg.folder))
    return scenes.select(
        cfg, split, numbers, split_key=split_key, where=f"the tile folder {cfg.folder!r} (scene = tile number)"
    )


def crop_layout(cfg, split: str, *, split_key: str = "data.train_split") -> list[dict]:
    """Where :func:`read`'s crops of ``split`` (:func:`split_tiles`) come from, in its order: per
    image ``{"tile", "image" (path), "rows", "cols"}``; its crops are the next ``rows * cols`` rows
    of the arrays, row-major (:func:`grid`; :func:`stitch` puts them back together). Reads only the
    image headers."""
    dirs = folders.tile_folders(cfg.folder)
    size = int(cfg.image_size)
    out = []
    for t in split_tiles(cfg, split, split_key=split_key):
        for image, _ in folders.tile_pairs(dirs[t]):
            with PIL.Image.open(image) as im:
                w, h = im.size
            out.append({"tile": t, "image": image, "rows": h // size, "cols": w // size})
    return out


def read(cfg, tile_numbers) -> dict[str, np.ndarray]:
    """The tiles ``tile_numbers`` of the tile folder ``cfg.folder`` (``rsjax.data.folders``:
    ``<Tile N>/images/`` + ``masks/``) as raw arrays: ``image`` uint8 ``[N, S, S, C]``, ``mask`` uint8 ``[N, S, S]`` stored by
    the registry convention (:func:`colour_mask`), ``scene_id`` int64 ``[N]`` = the tile number
    (its images are neighbouring parts of one area), ``S = cfg.image_size`` (the images differ in
    size: they are cut when read).

    The tiles in the order given (which tiles form a split: :func:`split_tiles`, applied by
    :func:`rsjax.data.pipeline.read_split`), each image in name order cut into its :func:`grid` of
    crops (subsets: read_split's one rule). Masks are
    read as RGB (palette PNGs converted by PIL). DataError naming the file: unreadable, not 8-bit with the registry's
    bands, a mask of another size than its image, a colour off the table; ConfigError naming the
    image smaller than ``image_size``."""
    info = registry.data_info(cfg)
    dirs = folders.tile_folders(cfg.folder)
    size = int(cfg.image_size)
    pairs = [(t, image, mask) for t in tile_numbers for image, mask in folders.tile_pairs(dirs[t])]

    def one(pair):
        tile_number, image_path, mask_path = pair
        try:
            image = images_lib.to_hwc(folders.read_image(image_path), info.num_bands, image_path)
        except images_lib.BadFileError as e:
            raise DataError(f"image {e.path!r}: {e.reason}") from None
        if image.dtype != np.uint8:
            raise DataError(f"image {image_path!r} has {image.dtype} pixels; dataset {info.name!r} is 8-bit")
        mask = folders.read_image(mask_path, "RGB")
        if mask.shape[:2] != image.shape[:2]:
            raise DataError(
                f"mask {mask_path!r} is {mask.shape[1]} x {mask.shape[0]} px (W x H), its image "
                f"{os.path.basename(image_path)!r} {image.shape[1]} x {image.shape[0]}"
            )
        offsets = grid(*image.shape[:2], size)
        if not offsets:
            raise ConfigError(
                f"config.data.image_size={size} is larger than image {image_path!r} "
                f"({image.shape[1]} x {image.shape[0]} px)"
            )
        stored = colour_mask(mask, info, mask_path)
        return (
            np.stack([image[y : y + size, x : x + size] for y, x in offsets]),
            np.stack([stored[y : y + size, x : x + size] for y, x in offsets]),
            np.full(len(offsets), tile_number, np.int64),
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as ex:
        parts = list(ex.map(one, pairs))
    return {k: np.concatenate([p[i] for p in parts]) for i, k in enumerate(("image", "mask", "scene_id"))}
