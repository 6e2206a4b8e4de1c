"""Seeded generators of tiny datasets in their original file layouts (the builders' dummy data).

In the manner of TFDS's ``dummy_data/`` folders and torchgeo's ``tests/data/<name>/data.py``,
but written at test time into a temporary folder (no binary files in the repository). One
function per builder; each writes what ``--manual_dir`` would hold and returns the ground
truth a test compares the built examples with (pixels, masks, split of each file). Sizes are
the smallest the builders accept (their crop / patch sizes are fixed by the registry).
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from PIL import Image

from rsjax.data import registry

EUROSAT_COUNTS = (5, 4, 6, 3, 5, 2, 4, 7, 3, 5)  # images per class, sorted class order

_BEN_SIDES = {
    "B01": 20,
    "B09": 20,
    "B05": 60,
    "B06": 60,
    "B07": 60,
    "B8A": 60,
    "B11": 60,
    "B12": 60,
    "B02": 120,
    "B03": 120,
    "B04": 120,
    "B08": 120,
}


def _tifffile():
    import tifffile  # a dependency of the builders

    return tifffile


def smooth_rgb(rng, h, w):
    """A smooth-ish RGB image (compresses well as JPEG)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(30, 200, 3)
    img = base + 40 * np.sin(yy[..., None] / rng.uniform(3, 9) + xx[..., None] / 7.0)
    return np.clip(img + rng.integers(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def read_rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _save(arr, path, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr, **kw).save(path)


def _tif(arr, path, planar=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    kw = {} if planar is None else dict(photometric="minisblack", planarconfig=planar)
    _tifffile().imwrite(path, arr, **kw)


# ----------------------------------------------------------------------------- EuroSAT


def eurosat_rgb(root, counts=EUROSAT_COUNTS, seed=0) -> pathlib.Path:
    """``<Class>/<Class>_<n>.jpg`` (64 px) under ``root/2750`` (a wrapping folder, as in the
    archive); returns the class root."""
    rng = np.random.default_rng(seed)
    croot = pathlib.Path(root) / "2750"
    for c, n in zip(registry.EUROSAT_CLASSES, counts):
        for i in range(1, n + 1):
            os.makedirs(croot / c, exist_ok=True)
            Image.fromarray(smooth_rgb(rng, 64, 64)).save(croot / c / f"{c}_{i}.jpg", quality=95)
    return croot


def eurosat_ms(root, counts=(2, 3, 2, 2, 2, 1, 2, 3, 2, 2), seed=1) -> dict:
    """``<Class>/<Class>_<n>.tif`` (64 px, 13 bands; the first class stored band-first as
    separate planes, the others band-last); returns ``{relative path: image}``."""
    rng = np.random.default_rng(seed)
    images = {}
    for k, (c, n) in enumerate(zip(registry.EUROSAT_CLASSES, counts)):
        for i in range(1, n + 1):
            img = rng.integers(0, 12000, (64, 64, 13)).astype(np.uint16)
            images[f"{c}/{c}_{i}.tif"] = img
            path = pathlib.Path(root) / c / f"{c}_{i}.tif"
            if k == 0:
                _tif(np.moveaxis(img, -1, 0), path, "separate")
            else:
                _tif(img, path, "contig")
    return images


def reference_eurosat_split(class_root, ext, test_fraction=0.2, seed=0) -> dict[str, str]:
    """The documented EuroSAT split rule, written independently: ``{relative path: split}``."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in sorted(os.listdir(class_root)):
        names = sorted(f for f in os.listdir(os.path.join(class_root, c)) if f.endswith(ext))
        shuffled = rng.permutation(np.array(names, dtype=object))
        k = round(test_fraction * len(names))
        for j, name in enumerate(shuffled):
            out[f"{c}/{name}"] = "test" if j < k else "train"
    return out


# ------------------------------------------------------------------------- BigEarthNet


def bigearthnet(root, patches: dict, seed=0) -> dict:
    """One folder per patch with its 12 band tifs at native size and the label json;
    returns ``{patch: {band: array}}``."""
    rng = np.random.default_rng(seed)
    bands = {}
    for name, labels in patches.items():
        d = pathlib.Path(root) / name
        bands[name] = {}
        for b, side in _BEN_SIDES.items():
            arr = rng.integers(0, 10000, (side, side)).astype(np.uint16)
            bands[name][b] = arr
            _tif(arr, d / f"{name}_{b}.tif")
        (d / f"{name}_labels_metadata.json").write_text(
            json.dumps({"labels": labels, "acquisition_date": "2017-06-13 10:10:31"})
        )
    return bands


# ---------------------------------------------------------------------------- LEVIR-CD

LEVIR_FILES = {
    "test_2_0000_0000.png": 256,
    "test_2_0000_0512.png": 256,
    "train_5_0256_0768.png": 256,
    "val_3_0000_0000.png": 256,
    "train_9.png": 512,
}


def levir_cd(root, files=LEVIR_FILES, seed=0) -> dict:
    """Flat ``A/ B/ label/``: pre-cut crops named ``<split>_<idx>_<y>_<x>.png`` (two of one
    tile) and one 512 px tile; a ``list/demo.txt`` that is not a split list. Returns
    ``{file name: 0/255 label}``."""
    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)
    labels = {}
    for name, side in files.items():
        _save(smooth_rgb(rng, side, side), root / "A" / name)
        _save(smooth_rgb(rng, side, side), root / "B" / name)
        lab = (rng.random((side, side)) < 0.2).astype(np.uint8) * 255
        _save(lab, root / "label" / name, mode="L")
        labels[name] = lab
    os.makedirs(root / "list")
    (root / "list" / "demo.txt").write_text("test_2_0000_0000.png\n")
    return labels


# -------------------------------------------------------------------------------- OSCD

OSCD_IMAGES = "Onera Satellite Change Detection dataset - Images"
OSCD_TRAIN_LABELS = "Onera Satellite Change Detection dataset - Train Labels"
OSCD_TEST_LABELS = "Onera Satellite Change Detection dataset - Test Labels"


def oscd_city(root, city, h, w, rect=True, seed=0, *, date2_hw=None, label_root=None, label="png"):
    """``<city>/imgs_{1,2}[_rect]/`` band tifs (native 20 / 60 m sizes when not ``rect``) and
    the change map in ``<label_root or root>/<city>/cm/``: ``cm.png`` (0 / 255) for
    ``label="png"``, ``<city>-cm.tif`` (1 / 2, as OSCD ships it) and ``cm.png`` for ``"tif"``,
    nothing for None. ``date2_hw``: date 2's 10 m size when it differs from date 1's (OSCD's
    hongkong and saclay_e). Returns (``{date: [band arrays on that date's 10 m grid, None for
    a native 20 / 60 m band]}``, change map on date 1's grid)."""
    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)
    imgs = {}
    for t, (ht, wt) in ((1, (h, w)), (2, date2_hw or (h, w))):
        d = root / city / (f"imgs_{t}_rect" if rect else f"imgs_{t}")
        stack = []
        for b in registry.S2_BANDS:
            gsd = registry.S2_GSD_M[b]
            if rect or gsd == 10.0:
                arr = rng.integers(0, 5000, (ht, wt)).astype(np.uint16)
                full = arr
            else:  # native grid: sizes as in OSCD, ceil of the 10 m size
                f = int(gsd // 10)
                arr = rng.integers(0, 5000, (-(-ht // f), -(-wt // f))).astype(np.uint16)
                full = None
            _tif(arr, d / (f"{b}.tif" if rect else f"S2A_OPER_MSI_L1C_{b}.tif"))
            stack.append(full)
        imgs[t] = stack
    cm = (rng.random((h, w)) < 0.1).astype(np.uint8)
    cm_dir = pathlib.Path(label_root or root) / city / "cm"
    if label is not None:
        _save(cm * 255, cm_dir / "cm.png", mode="L")
    if label == "tif":
        _tif(cm + 1, cm_dir / f"{city}-cm.tif")
    return imgs, cm


def oscd_archives(root, cities, train=(), test=(), test_labels=()) -> dict:
    """The OSCD archives as they unpack under ``root``: ``<OSCD_IMAGES>/`` with ``train.txt`` /
    ``test.txt`` (the city lists ``train`` / ``test``, which may name absent cities) and the
    city folders (native band sizes), ``<OSCD_TRAIN_LABELS>/<city>/cm/<city>-cm.tif`` and
    ``cm.png``, and ``<OSCD_TEST_LABELS>/`` for the cities in ``test_labels``.

    ``cities``: ``{city: (h, w, date2_hw or None, labelled)}``. Returns ``{city: (imgs, cm)}``
    as :func:`oscd_city`.
    """
    root = pathlib.Path(root)
    images = root / OSCD_IMAGES
    out = {}
    for i, (city, (h, w, date2_hw, labelled)) in enumerate(sorted(cities.items())):
        labels = root / (OSCD_TEST_LABELS if city in test_labels else OSCD_TRAIN_LABELS)
        out[city] = oscd_city(
            images,
            city,
            h,
            w,
            rect=False,
            seed=10 + i,
            date2_hw=date2_hw,
            label_root=labels,
            label="tif" if labelled else None,
        )
    (images / "train.txt").write_text(",".join(train))
    (images / "test.txt").write_text(",".join(test))
    return out


def geokeys(epsg, pixel_is_point=False):
    """A GeoKeyDirectory (GeoTIFF 1.0, 3 keys): projected model, raster type, projected CRS."""
    return [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 2 if pixel_is_point else 1, 3072, 0, 1, epsg]


def geotag(path, x0, y0, gsd, epsg=32632, tie_pixel=(0.0, 0.0)):
    """Rewrites a TIFF with the same pixels plus GeoTIFF tags: pixel ``tie_pixel`` (col, row)
    has its top-left corner at map (x0 + col * gx, y0 - row * gy); ``gsd``: ``gx = gy``, or
    ``(gx, gy)``."""
    tifffile = _tifffile()
    arr = tifffile.imread(path)
    i, j = tie_pixel
    gx, gy = (gsd, gsd) if np.isscalar(gsd) else gsd
    keys = geokeys(epsg)
    kw = {"photometric": "minisblack", "planarconfig": "contig"} if arr.ndim == 3 else {}
    tifffile.imwrite(
        path,
        arr,
        extratags=[
            (33550, "d", 3, (gx, gy, 0.0)),
            (33922, "d", 6, (i, j, 0.0, x0 + i * gx, y0 - j * gy, 0.0)),
            (34735, "H", len(keys), keys),
        ],
        **kw,
    )


# -------------------------------------------------------------------------- SSL4EO-S12

SSL4EO_SEASONS = ("20200305T101021_T32TQM", "20200610T101031_T32TQM")


def ssl4eo_s12(root, locations=("0000003", "0000010"), seed=4) -> dict:
    """``s2c/<location>/<season>/B1.tif .. B12.tif`` at native sizes (264 / 132 / 44 px);
    returns ``{(location, season): [band arrays in registry order]}``."""
    rng = np.random.default_rng(seed)
    out = {}
    for loc in locations:
        for season in SSL4EO_SEASONS:
            d = pathlib.Path(root) / "s2c" / loc / season
            bands = []
            for b in registry.S2_BANDS:
                side = {10.0: 264, 20.0: 132, 60.0: 44}[registry.S2_GSD_M[b]]
                arr = rng.integers(0, 8000, (side, side)).astype(np.uint16)
                _tif(arr, d / ("B8A.tif" if b == "B8A" else f"B{int(b[1:])}.tif"))
                bands.append(arr)
            out[(loc, season)] = bands
    return out


# --------------------------------------------------------------------- rs_segmentation


def palette_colours(index_mask, palette) -> np.ndarray:
    rgb = np.zeros(index_mask.shape + (3,), np.uint8)
    for colour, v in palette:
        rgb[index_mask == v] = colour
    return rgb


def rs_segmentation(root, config, seed=5) -> dict:
    """The layout of one ``rs_segmentation`` config; returns ``{filename feature: index mask
    (0 = ignore, 1..K)}``, and for ``nyc4band`` also ``"image"``."""
    from tfds_builders.rs_segmentation.rs_segmentation_dataset_builder import (
        DEEPGLOBE_PALETTE,
        ISPRS_PALETTE,
    )

    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)
    masks = {}
    if config == "potsdam":  # mmseg, index masks, train/ + val/
        for split, names in (("train", ("2_10", "2_11")), ("val", ("3_1",))):
            for n in names:
                _save(smooth_rgb(rng, 300, 256), root / "img_dir" / split / f"{n}.png")
                mask = rng.integers(0, 7, (300, 256)).astype(np.uint8)
                _save(mask, root / "ann_dir" / split / f"{n}.png", mode="L")
                masks[f"{split}/{n}.png"] = mask
    elif config == "vaihingen":  # ISPRS colour masks, image / mask stems differ by suffix
        idx = rng.integers(0, 7, (256, 300)).astype(np.uint8)
        _save(smooth_rgb(rng, 256, 300), root / "img_dir" / "area1_IRRG.png")
        _save(palette_colours(idx, ISPRS_PALETTE), root / "ann_dir" / "area1_label.png")
        masks["area1_IRRG.png"] = idx
    elif config == "loveda":  # original layout; the Test split has no masks (skipped)
        for split, domain in (("Train", "Urban"), ("Val", "Rural")):
            d = root / split / domain
            _save(smooth_rgb(rng, 512, 512), d / "images_png" / "1.png")
            mask = rng.integers(0, 8, (512, 512)).astype(np.uint8)
            _save(mask, d / "masks_png" / "1.png", mode="L")
            masks[f"{split}/{domain}/images_png/1.png"] = mask
        _save(smooth_rgb(rng, 8, 8), root / "Test" / "Urban" / "images_png" / "9.png")
    elif config == "deepglobe":  # colour masks with off-palette noise (thresholded at 128)
        idx = rng.integers(0, 7, (620, 620)).astype(np.uint8)
        rgb = palette_colours(idx, DEEPGLOBE_PALETTE).astype(int)
        noisy = np.clip(rgb + rng.integers(-40, 40, rgb.shape), 0, 255).astype(np.uint8)
        _save(smooth_rgb(rng, 620, 620), root / "train" / "119_sat.jpg")
        _save(noisy, root / "train" / "119_mask.png")
        _save(smooth_rgb(rng, 8, 8), root / "valid" / "5_sat.jpg")  # unlabelled: skipped
        masks["train/119_sat.jpg"] = idx
    elif config == "nyc4band":  # 4-band uint8 GeoTIFF, band-first planes, tif index masks
        img = rng.integers(0, 256, (4, 300, 256)).astype(np.uint8)
        mask = rng.integers(0, 9, (300, 256)).astype(np.uint8)
        _tif(img, root / "img_dir" / "tile_1.tif", "separate")
        _tif(mask, root / "ann_dir" / "tile_1.tif")
        masks["tile_1.tif"] = mask
        masks["image"] = np.moveaxis(img, 0, -1)
    else:
        raise ValueError(f"no dummy data for rs_segmentation/{config}")
    return masks


# ------------------------------------------------------------------------ Dynamic World


def dynamic_world(root, seed=9) -> dict:
    """``train/{a1,b2}_s2.tif`` and ``test/c3_s2.tif`` (260 x 257, 13 bands) with
    ``*_label.tif`` (values 0..9); returns ``{relative path: (image, label)}``."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, pid in (("train", "a1"), ("train", "b2"), ("test", "c3")):
        img = rng.integers(0, 10000, (260, 257, 13)).astype(np.uint16)
        lab = rng.integers(0, 10, (260, 257)).astype(np.uint8)
        _tif(img, pathlib.Path(root) / split / f"{pid}_s2.tif", "contig")
        _tif(lab, pathlib.Path(root) / split / f"{pid}_label.tif")
        out[f"{split}/{pid}_s2.tif"] = (img, lab)
    return out


# --- dubai_aerial_seg (a tile folder, read as it unpacks: rsjax.data.tiles) ----------------
# drawn class index -> (colour in the masks, expected label): the dataset README's table,
# Unlabeled and black no-data ignored (-1); labels in the order of classes.json. Written out here
# again (not read from the registry), so the tests check the registry's table.
DUBAI_DRAWN = [
    ("#E2A929", 0),
    ("#8429F6", 1),
    ("#6EC1E4", 2),
    ("#3C1098", 3),
    ("#FEDD3A", 4),
    ("#9B9B9B", -1),
    ("#000000", -1),
]
DUBAI_RGB = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c, _ in DUBAI_DRAWN], np.uint8)
DUBAI_LABEL = np.array([lab for _, lab in DUBAI_DRAWN])
# tile -> image sizes (h, w) of the small default folder (tile 2 repeats tile 1's first image)
DUBAI_SIZES = {1: [(36, 40), (37, 40)], 2: [(36, 40)], 3: [(32, 33)]}


def _dubai_classes(rng, h, w, block=4):
    """A class-index map of ``block`` px squares; known pixels: water at the top left, no-data at (20, 20)."""
    c = np.kron(rng.integers(0, len(DUBAI_DRAWN), (h // block + 1, w // block + 1)), np.ones((block, block), np.int64))[
        :h, :w
    ]
    c[:4, :4] = 0
    c[20:24, 20:24] = 6
    return c


def _dubai_mask(path, cls, palette: bool):
    if not palette:
        Image.fromarray(DUBAI_RGB[cls]).save(path)
        return
    order = np.random.default_rng(5).permutation(len(DUBAI_DRAWN))  # palette indices unrelated to classes
    im = Image.fromarray(np.argsort(order)[cls].astype(np.uint8), mode="P")
    im.putpalette(DUBAI_RGB[order].reshape(-1).tolist())
    im.save(path)


def write_dubai_like(base, seed=0, sizes=None, block=4):
    """The Dubai layout as it unpacks, in ``base/dubai_aerial_seg``: ``Semantic segmentation
    dataset/Tile <n>/images/image_part_00<i>.jpg`` + ``masks/...png`` for the tiles and image
    sizes ``sizes`` (default :data:`DUBAI_SIZES`: tiles 1 (RGB masks, 40 x 36 and 40 x 37 px), 2
    (the first image of tile 1 again, its mask a palette PNG), 3 (33 x 32, RGB)); masks of random
    ``block`` px squares of the 7 colours; ``classes.json`` beside them. Returns ``(folder,
    {(tile, name): (image array as read back, class index map)})``."""
    rng = np.random.default_rng(seed)
    base = pathlib.Path(base)
    root = base / "dubai_aerial_seg" / "Semantic segmentation dataset"
    truth = {}
    first = None
    for tile, shapes in (sizes or DUBAI_SIZES).items():
        for sub in ("images", "masks"):
            os.makedirs(root / f"Tile {tile}" / sub)
        for i, (h, w) in enumerate(shapes, 1):
            name = f"image_part_{i:03d}"
            if tile == 2 and sizes is None:
                image, cls = first
            else:
                image, cls = rng.integers(0, 256, (h, w, 3), dtype=np.uint8), _dubai_classes(rng, h, w, block)
                first = first or (image, cls)
            Image.fromarray(image).save(root / f"Tile {tile}" / "images" / f"{name}.jpg", quality=95)
            _dubai_mask(root / f"Tile {tile}" / "masks" / f"{name}.png", cls, palette=tile == 2)
            truth[tile, name] = (np.asarray(Image.open(root / f"Tile {tile}" / "images" / f"{name}.jpg")), cls)
    (root / "classes.json").write_text(json.dumps({"classes": [{"title": "Water", "color": "#50E3C2"}]}))
    return base / "dubai_aerial_seg", truth
