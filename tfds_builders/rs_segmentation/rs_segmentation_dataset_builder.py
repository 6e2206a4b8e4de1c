"""``rs_segmentation``: aerial / satellite semantic segmentation tiles cut into fixed-size crops.

Reads ``--manual_dir`` (nothing is downloaded). One builder config per dataset layout:

==============  ========================================================================
config          accepted layout (``--manual_dir`` or a folder below it)
==============  ========================================================================
``potsdam``     mmsegmentation style ``img_dir[/<split>]/<name>.png|tif`` (RGB) +
                ``ann_dir[/<split>]/<name>.png|tif``
``vaihingen``   same, images are IRRG false colour (NIR, R, G)
``loveda``      same (mmseg style), or the original ``<Split>/<Urban|Rural>/images_png/`` +
                ``masks_png/`` layout
``deepglobe``   ``[<split>/]<id>_sat.jpg`` + ``<id>_mask.png`` in the same folder
``nyc4band``    mmseg style with 4-band NIR-R-G-B uint8 GeoTIFF orthophotos (band-last or
                band-first planes) and index masks
==============  ========================================================================

``<split>`` folders named train / val / validation / test map to TFDS splits ``train`` /
``validation`` / ``test``; without them every tile goes to ``train``. A mask may have the
image's file stem, or the stem with ``_RGB`` / ``_IRRG`` / ``_RGBIR`` / ``_sat`` replaced by
``_label`` / ``_mask`` (``top_potsdam_2_10_RGB.tif`` -> ``top_potsdam_2_10_label.tif``).

Masks (stored ``mask`` uint8): value 0 = ignore, value ``v`` in 1..K = class
``class_names[v - 1]`` (``metadata["class_names"]``, ``metadata["mask_values"]``):

* single-channel masks are class-index masks in that encoding (mmseg Potsdam / Vaihingen
  with ``reduce_zero_label``: 0 = eroded boundary / ignore, 1..6; LoveDA raw codes: 0 =
  no-data, 1..7; NYC: 0 = no data, 1..8); 255 is also read as ignore; any other value above K
  is an error naming the file;
* RGB masks are colour-coded and decoded with the config's palette after thresholding each
  channel at 128 (all palette colours are 0/255 combinations): the ISPRS palette for
  Potsdam / Vaihingen (black = boundary -> ignore) and the DeepGlobe palette (black = unknown
  -> ignore). A colour outside the palette is an error naming the file.

Crops: every tile is cut into ``crop_size`` crops on a regular grid whose last crop of a row /
column is aligned to the tile border (``_common.crop_grid``); a side shorter than
``crop_size`` is padded (image 0, mask 0 = ignore). All crops of one tile share ``scene_id``
(index of the tile in the sorted ``<split>/<relative path>`` list of the whole dataset).

Features: ``image`` uint8 ``[S, S, C]``, ``mask`` uint8 ``[S, S]``, ``scene_id`` int32,
``filename`` (image path relative to its image folder), ``crop_y``, ``crop_x`` int32.
A mask whose size differs from its image is an error naming the mask file.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from rsjax.data import registry
from tfds_builders import _common

log = logging.getLogger(__name__)

# ISPRS 2D semantic labelling colour code -> stored value (0 = ignore: black = eroded
# boundary in the *_noBoundary / eroded label files).
ISPRS_PALETTE: tuple[tuple[tuple[int, int, int], int], ...] = (
    ((0, 0, 0), 0),
    ((255, 255, 255), 1),  # impervious surfaces
    ((0, 0, 255), 2),  # building
    ((0, 255, 255), 3),  # low vegetation
    ((0, 255, 0), 4),  # tree
    ((255, 255, 0), 5),  # car
    ((255, 0, 0), 6),  # clutter / background
)
# DeepGlobe Land Cover Classification colour code -> stored value (unknown -> ignore).
DEEPGLOBE_PALETTE: tuple[tuple[tuple[int, int, int], int], ...] = (
    ((0, 0, 0), 0),  # unknown
    ((0, 255, 255), 1),  # urban land
    ((255, 255, 0), 2),  # agriculture land
    ((255, 0, 255), 3),  # rangeland
    ((0, 255, 0), 4),  # forest land
    ((0, 0, 255), 5),  # water
    ((255, 255, 255), 6),  # barren land
)

_IMAGE_SUFFIXES = ("_RGB", "_IRRG", "_RGBIR", "_sat")
_MASK_SUFFIXES = ("_label", "_mask", "")
_MASK_EXTS = (".png", ".tif", ".tiff", ".bmp")


@dataclasses.dataclass
class SegmentationConfig(tfds.core.BuilderConfig):
    """One dataset layout: crop size, bands, classes, palette (as data)."""

    crop_size: int = 256
    layout: str = "mmseg"  # "mmseg" | "deepglobe"
    palette: tuple = ()  # ((r, g, b), value) pairs for colour-coded masks
    image_extensions: tuple = (".png", ".tif", ".tiff", ".jpg")

    @property
    def dataset_info(self) -> registry.DatasetInfo:
        return registry.get_config_info("rs_segmentation", self.name)


def _cfg(name, description, **kw):
    info = registry.get_config_info("rs_segmentation", name)
    return SegmentationConfig(name=name, description=description, crop_size=info.image_size, **kw)


CONFIGS = [
    _cfg(
        "potsdam",
        "ISPRS Potsdam RGB (5 cm), 256 px crops; index masks 0 = ignore, 1..6 (mmseg) or ISPRS colour masks.",
        palette=ISPRS_PALETTE,
    ),
    _cfg(
        "vaihingen",
        "ISPRS Vaihingen IRRG (9 cm), 256 px crops; index masks 0 = ignore, 1..6 (mmseg) or ISPRS colour masks.",
        palette=ISPRS_PALETTE,
    ),
    _cfg("loveda", "LoveDA RGB (0.3 m), 512 px crops; index masks 0 = no-data, 1..7."),
    _cfg(
        "deepglobe",
        "DeepGlobe Land Cover RGB (0.5 m), 612 px crops (a quarter of a 2448 px tile); colour masks, unknown = ignore.",
        layout="deepglobe",
        palette=DEEPGLOBE_PALETTE,
        image_extensions=(".jpg",),
    ),
    _cfg(
        "nyc4band",
        "NYC 4-band NIR-R-G-B orthophotos (6 inch), 256 px crops; index masks 0 = no data, 1..8 (NYC 2017 land cover).",
        image_extensions=(".tif", ".tiff"),
    ),
]


def decode_colour_mask(rgb: np.ndarray, palette, path) -> np.ndarray:
    """Colour-coded ``[H, W, 3(+)]`` mask -> uint8 values via ``palette`` (channels thresholded
    at 128). Raises BadFileError naming ``path`` for colours outside the palette."""
    bits = (rgb[..., :3] >= 128).astype(np.uint8)
    code = bits[..., 0] * 4 + bits[..., 1] * 2 + bits[..., 2]
    lut = np.full(8, -1, np.int16)
    for (r, g, b), v in palette:
        lut[(r >= 128) * 4 + (g >= 128) * 2 + (b >= 128)] = v
    out = lut[code]
    bad = out < 0
    if bad.any():
        y, x = np.argwhere(bad)[0]
        raise _common.BadFileError(
            path,
            f"{int(bad.sum())} mask pixels have colours outside the palette, e.g. "
            f"{tuple(int(c) for c in rgb[y, x, :3])} at ({y}, {x})",
        )
    return out.astype(np.uint8)


def read_mask(path: pathlib.Path, num_classes: int, palette) -> np.ndarray:
    """Index or colour mask file -> uint8 ``[H, W]`` (0 = ignore, 1..num_classes)."""
    m = _common.read_image(path)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim == 3:
        if not palette:
            raise _common.BadFileError(
                path, f"colour mask {m.shape} but this config has no palette (expected a single-channel index mask)"
            )
        return decode_colour_mask(m, palette, path)
    if m.ndim != 2:
        raise _common.BadFileError(path, f"unexpected mask shape {m.shape}")
    if m.dtype == bool:
        m = m.astype(np.uint8)
    if not np.issubdtype(m.dtype, np.integer):
        raise _common.BadFileError(path, f"mask must hold integers, got {m.dtype}")
    m = np.where(m == 255, 0, m)
    if m.size and (m.max() > num_classes or m.min() < 0):
        raise _common.BadFileError(path, f"mask values must be 0..{num_classes} (0 = ignore), found max {m.max()}")
    return m.astype(np.uint8)


def _find_mask(ann_dir: pathlib.Path, stem: str):
    stems = [stem]
    for suf in _IMAGE_SUFFIXES:
        if stem.endswith(suf):
            stems += [stem[: -len(suf)] + rep for rep in _MASK_SUFFIXES]
    for s in stems:
        for ext in _MASK_EXTS:
            p = ann_dir / f"{s}{ext}"
            if p.is_file():
                return p
    return ann_dir / f"{stem}.png"  # missing: reported when the tile is read


def _split_of(rel_parts, default="train") -> str:
    for part in rel_parts:
        s = _common.split_name(part)
        if s:
            return s
    return default


class Builder(_common.ManualDataMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for rs_segmentation."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Georeferencing of each crop (GeoTIFF tiles; empty for png / jpg): `crs`, `transform`.",
    }
    BUILDER_CONFIGS = CONFIGS
    DEFAULT_CONFIG_NAME = "potsdam"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass --manual_dir=DIR with img_dir/ + ann_dir/ (mmseg style; potsdam, vaihingen, "
        "loveda, nyc4band), the LoveDA Train/Val folders, or DeepGlobe <id>_sat.jpg + "
        "<id>_mask.png files; pick the layout with --config."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        info = cfg.dataset_info
        s, c = cfg.crop_size, info.num_bands
        metadata = tfds.core.MetadataDict(
            **info.as_metadata(),
            **_common.skip_metadata(),
            crop_size=s,
            ignore_value=0,
            mask_values={"0": "ignore", **{str(i + 1): n for i, n in enumerate(info.class_names)}},
            palette=[[list(rgb), v] for rgb, v in cfg.palette],
            layout=cfg.layout,
        )
        metadata["image_size"] = s
        return self.dataset_info_from_configs(
            description=(
                f"{cfg.description} Semantic segmentation tiles cut into {s} x {s} crops that "
                "keep their tile as scene_id; mask 0 = ignore, v = class_names[v - 1]."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(s, s, c), dtype=np.uint8, encoding="bytes"),
                    "mask": tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding="bytes"),
                    "scene_id": tfds.features.Scalar(dtype=np.int32),
                    "filename": tfds.features.Text(),
                    "crop_y": tfds.features.Scalar(dtype=np.int32),
                    "crop_x": tfds.features.Scalar(dtype=np.int32),
                    **_common.georef_features(),
                }
            ),
            supervised_keys=("image", "mask"),
            metadata=metadata,
        )

    # ------------------------------------------------------------------ discovery

    def _pairs_mmseg(self, root: pathlib.Path):
        cfg = self.builder_config
        base = _common.find_dir(root, lambda d: (d / "img_dir").is_dir() and (d / "ann_dir").is_dir(), max_depth=4)
        if base is None:
            return None
        img_root, ann_root = base / "img_dir", base / "ann_dir"
        out = []
        subdirs = [d for d in sorted(img_root.iterdir()) if d.is_dir() and _common.split_name(d.name)]
        folders = [(_common.split_name(d.name), d, ann_root / d.name) for d in subdirs]
        if _common.list_files(img_root, cfg.image_extensions):
            folders.insert(0, ("train", img_root, ann_root))
        for split, idir, adir in folders:
            for img in _common.list_files(idir, cfg.image_extensions):
                out.append((split, img, _find_mask(adir, img.stem), str(img.relative_to(img_root))))
        return out

    def _pairs_loveda_original(self, root: pathlib.Path):
        out = []
        for idir in sorted(root.rglob("images_png")):
            mdir = idir.parent / "masks_png"
            rel = idir.relative_to(root).parts
            if not mdir.is_dir():
                log.warning("%s: %s has no masks_png/ sibling; skipped (unlabelled split)", self.name, idir)
                continue
            for img in _common.list_files(idir, (".png",)):
                out.append((_split_of(rel), img, mdir / img.name, str(img.relative_to(root))))
        return out

    def _pairs_deepglobe(self, root: pathlib.Path):
        out = []
        by_dir: dict[pathlib.Path, list[pathlib.Path]] = {}
        for img in sorted(root.rglob("*_sat.jpg")):
            by_dir.setdefault(img.parent, []).append(img)
        for d, imgs in sorted(by_dir.items()):
            masks = [d / (i.name[: -len("_sat.jpg")] + "_mask.png") for i in imgs]
            if not any(m.is_file() for m in masks):
                log.warning(
                    "%s: %s has no *_mask.png files; its %d images are skipped (unlabelled split)",
                    self.name,
                    d,
                    len(imgs),
                )
                continue
            rel = d.relative_to(root).parts
            for img, m in zip(imgs, masks):
                out.append((_split_of(rel), img, m, str(img.relative_to(root))))
        return out

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        root = _common.manual_dir(dl_manager, self.name, f"the {cfg.name} tiles")
        if cfg.layout == "deepglobe":
            pairs = self._pairs_deepglobe(root)
        else:
            pairs = self._pairs_mmseg(root)
            if pairs is None and cfg.name == "loveda":
                pairs = self._pairs_loveda_original(root)
            if pairs is None:
                raise FileNotFoundError(f"{root}: no img_dir/ + ann_dir/ folders for rs_segmentation/{cfg.name}")
        if not pairs:
            raise FileNotFoundError(f"{root}: no image / mask pairs for rs_segmentation/{cfg.name}")
        keys = sorted(f"{s}/{rel}" for s, _, _, rel in pairs)
        scene_of = {k: i for i, k in enumerate(keys)}
        items: dict[str, list] = {"train": [], "validation": [], "test": []}
        for s, img, mask, rel in pairs:
            items[s].append((img, mask, rel, scene_of[f"{s}/{rel}"]))
        return {s: self._generate_examples(root, s, its) for s, its in items.items() if its}

    def _generate_examples(self, root, split, items):
        cfg = self.builder_config
        info = cfg.dataset_info
        crop, nb = cfg.crop_size, info.num_bands

        def one(item):
            img_path, mask_path, rel, sid = item
            img = _common.to_hwc(_common.read_image(img_path), nb, img_path)
            if img.dtype != np.uint8:
                raise _common.BadFileError(img_path, f"expected 8-bit pixels, got {img.dtype}")
            if not mask_path.is_file():
                raise _common.BadFileError(mask_path, "mask file is missing")
            mask = read_mask(mask_path, info.num_classes, cfg.palette)
            if mask.shape != img.shape[:2]:
                raise _common.BadFileError(
                    mask_path, f"wrong-size mask: {mask.shape} but image {img_path.name} is {img.shape[:2]}"
                )
            geo = _common.read_georef(img_path)  # empty for png / jpg tiles
            for y, x in _common.crop_grid(img.shape[0], img.shape[1], crop):
                yield (
                    f"{split}/{rel}/{y}_{x}",
                    {
                        **geo.window(y, x).features(),
                        "image": _common.take_crop(img, y, x, crop),
                        "mask": _common.take_crop(mask, y, x, crop),
                        "scene_id": np.int32(sid),
                        "filename": rel,
                        "crop_y": np.int32(y),
                        "crop_x": np.int32(x),
                    },
                )

        yield from _common.iter_with_skip(self, items, one, root)
        self._report_skipped(split)
