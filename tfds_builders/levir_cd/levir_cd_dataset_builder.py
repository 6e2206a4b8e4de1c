"""``levir_cd``: LEVIR-CD building change detection (Chen & Shi 2020), 0.5 m Google Earth pairs.

Reads ``--manual_dir`` (nothing is downloaded). Accepted layouts (image files of
``tfds_builders._common.IMAGE_EXTENSIONS``: png as released, jpg, tif, bmp; the same file name in
the three folders, where ``B/`` and ``label/`` may use another extension of that list, e.g. png
labels beside jpg images):

1. the official release: ``{train,val,test}/A/*.png``, ``.../B/*.png``, ``.../label/*.png``
   (1024 x 1024 tiles ``train_1.png`` ...); the split is the parent folder;
2. one set of folders ``A/``, ``B/``, ``label/`` (e.g. the 256 x 256 crops of BIT_CD /
   ChangeFormer, named ``<split>_<idx>_<y>_<x>.png``). The split of a file is, in order: the
   list file ``list/{train,val,test}.txt`` naming it (other list files such as ``demo.txt``
   are ignored), else its ``train_`` / ``val_`` / ``test_`` name prefix, else ``train`` when
   split lists exist. Files with none of these (a folder with no split information) are
   split by source tile with
   ``rsjax.data.folders.fraction_split``: the sorted tile names, ``perm =
   numpy.random.default_rng(split_seed).permutation(n)`` (``split_seed = 0``), the first
   ``round(test_fraction * n)`` tiles (``test_fraction = 0.2``, at least one) to ``test``, the
   rest to ``train``; the build log announces it and the dataset metadata records it as
   ``split_rule``.

Labels are single-channel images with values {0, 255} (255 = changed building; {0, 1} is also
accepted); any other value is an error naming the file. ``change`` = 1 where the label is
non-zero.

Crops: every image larger than ``crop_size`` (256) is cut into ``crop_size`` crops on a
regular grid (``tfds_builders._common.crop_grid``: the last crop of a row / column is aligned
to the border when the side is not a multiple). All crops of one original 1024 px tile share
``scene_id``. Files that are already crops named ``<split>_<idx>_<y>_<x>.png`` are parsed: their
source tile is ``<split>_<idx>`` (so ``test_2_0000_0000`` and ``test_2_0000_0512`` share a
scene) and ``crop_y`` / ``crop_x`` are the offsets from the name. ``scene_id`` is the index of
the tile in the sorted list of ``<split>/<tile>`` names of the whole dataset (unique across
splits).

Features: ``image_a``, ``image_b`` uint8 ``[S, S, 3]`` (RGB, times 1 and 2), ``change`` uint8
``[S, S]`` in {0, 1}, ``scene_id`` int32, ``tile`` (source tile name), ``filename`` (file name
of the pair), ``crop_y``, ``crop_x`` int32 (offset of the crop in its source tile).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from rsjax.data import folders, registry
from tfds_builders import _common

_INFO = registry.get_config_info("levir_cd")
_CROP_NAME = re.compile(r"^(?P<tile>(?:[A-Za-z]+_)?\d+)_(?P<y>\d+)_(?P<x>\d+)$")
_SPLIT_PREFIX = re.compile(r"^(train|val|test)_", re.IGNORECASE)
_SPLIT_ORDER = ("train", "validation", "test")


@dataclasses.dataclass
class LevirCDConfig(tfds.core.BuilderConfig):
    crop_size: int = 256
    test_fraction: float = 0.2  # of the tiles of a folder without split information
    split_seed: int = 0


def read_change_label(path) -> np.ndarray:
    """A {0, 255} (or {0, 1}) label image -> uint8 {0, 1}; other values raise BadFileError."""
    lab = _common.read_image(path)
    if lab.ndim == 3:  # RGB(A) label files: all colour channels must agree
        if not (lab[..., :3] == lab[..., :1]).all():
            raise _common.BadFileError(path, "label has differing colour channels")
        lab = lab[..., 0]
    lab = np.asarray(lab)
    if lab.dtype == bool:
        return lab.astype(np.uint8)
    vals = np.unique(lab)
    if not (set(vals.tolist()) <= {0, 255} or set(vals.tolist()) <= {0, 1}):
        raise _common.BadFileError(path, f"label values must be {{0, 255}} or {{0, 1}}, found {vals[:10].tolist()}")
    return (lab > 0).astype(np.uint8)


def _partner(folder: pathlib.Path, name: str) -> pathlib.Path:
    """The file of ``name`` (a file of ``A/``) in ``folder`` (``B/`` or ``label/``): the same name,
    else the same stem with another image extension; the same name when neither exists (reading
    it then fails naming the missing file)."""
    same = folder / name
    if same.is_file():
        return same
    stem = pathlib.Path(name).stem
    for ext in _common.IMAGE_EXTENSIONS:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return same


def _find_sets(root: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    """(split or '', folder holding A/, B/, label/) pairs."""

    def is_set(d):
        return (d / "A").is_dir() and (d / "B").is_dir() and (d / "label").is_dir()

    sets = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        s = _common.split_name(child.name)
        if s and is_set(child):
            sets.append((s, child))
    if sets:
        return sets
    d = _common.find_dir(root, is_set, max_depth=3)
    if d is None:
        raise FileNotFoundError(f"{root}: expected LEVIR-CD folders A/, B/, label/ (or train|val|test/A|B|label)")
    return [("", d)]


class Builder(_common.ManualDataMixin, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for levir_cd."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [LevirCDConfig(name="default", description="256 x 256 crops.", crop_size=256)]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass --manual_dir=DIR with LEVIR-CD image files in A/, B/, label/ (optionally under "
        "train/, val/, test/) and an optional list/{train,val,test}.txt."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.crop_size
        metadata = tfds.core.MetadataDict(**_INFO.as_metadata(), **_common.skip_metadata(), crop_size=s)
        metadata["image_size"] = s
        return self.dataset_info_from_configs(
            description=(
                "LEVIR-CD: bi-temporal 0.5 m Google Earth RGB images with building-change "
                "masks, cut into fixed-size crops that keep their source tile as scene_id."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image_a": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8, encoding="bytes"),
                    "image_b": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8, encoding="bytes"),
                    "change": tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding="bytes"),
                    "scene_id": tfds.features.Scalar(dtype=np.int32),
                    "tile": tfds.features.Text(),
                    "filename": tfds.features.Text(),
                    "crop_y": tfds.features.Scalar(dtype=np.int32),
                    "crop_x": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            homepage="https://justchenhao.github.io/LEVIR/",
            citation="""@article{chen2020levircd,
  title={A Spatial-Temporal Attention-Based Method and a New Dataset for Remote Sensing Image
         Change Detection},
  author={Chen, Hao and Shi, Zhenwei}, journal={Remote Sensing}, volume={12}, number={10},
  pages={1662}, year={2020}}""",
            metadata=metadata,
        )

    def _split_generators(self, dl_manager):
        root = _common.manual_dir(dl_manager, self.name, "A/, B/ and label/ image folders")
        items = {s: [] for s in _SPLIT_ORDER}
        unsplit = []  # files with no split information: split by tile below
        for set_split, d in _find_sets(root):
            lists = {}
            for s, fname in (("train", "train.txt"), ("validation", "val.txt"), ("test", "test.txt")):
                p = d / "list" / fname
                if p.is_file():
                    for line in p.read_text().split():
                        lists[pathlib.Path(line.strip()).stem] = s
            for a in _common.list_files(d / "A"):
                stem = a.stem
                m_pre = _SPLIT_PREFIX.match(stem)
                split = (
                    set_split
                    or lists.get(stem)
                    or (_common.split_name(m_pre.group(1)) if m_pre else None)
                    or ("train" if lists else None)
                )  # split lists given: unlisted = train
                m = _CROP_NAME.match(stem)
                if m:
                    tile, oy, ox = m.group("tile"), int(m.group("y")), int(m.group("x"))
                else:
                    tile, oy, ox = stem, 0, 0
                if split is None:
                    unsplit.append((d, a.name, tile, oy, ox))
                else:
                    items[split].append((d, a.name, f"{split}/{tile}", tile, oy, ox))
        if unsplit:
            cfg = self.builder_config
            assign = folders.fraction_split(
                [t for _, _, t, _, _ in unsplit], test_fraction=cfg.test_fraction, seed=cfg.split_seed
            )
            for d, name, tile, oy, ox in unsplit:
                items[assign[tile]].append((d, name, f"{assign[tile]}/{tile}", tile, oy, ox))
            n_test = sum(v == "test" for v in assign.values())
            rule = (
                f"{len(unsplit)} file(s) of {len(assign)} tile(s) carry no split (no train/val/test folder, "
                f"list/ file or name prefix): split by tile, seeded fraction (test_fraction="
                f"{cfg.test_fraction}, split_seed={cfg.split_seed}, rsjax.data.folders.fraction_split): "
                f"{len(assign) - n_test} train / {n_test} test tiles"
            )
            _common.log.warning("%s: %s", self.name, rule)
            if self.info.metadata is not None:
                self.info.metadata["split_rule"] = rule
        tiles = sorted({it[2] for its in items.values() for it in its})
        scene_of = {t: i for i, t in enumerate(tiles)}
        if not tiles:
            raise FileNotFoundError(f"{root}: no image files ({', '.join(_common.IMAGE_EXTENSIONS)}) in A/")
        return {s: self._generate_examples(root, s, its, scene_of) for s, its in items.items() if its}

    def _generate_examples(self, root, split, items, scene_of):
        crop = self.builder_config.crop_size

        def one(item):
            d, name, key, tile, oy, ox = item
            pa, pb, pl = d / "A" / name, _partner(d / "B", name), _partner(d / "label", name)
            a = _common.to_hwc(_common.read_image(pa, "RGB"), 3, pa)
            b = _common.to_hwc(_common.read_image(pb, "RGB"), 3, pb)
            if b.shape != a.shape:
                raise _common.BadFileError(pb, f"image B is {b.shape[:2]} but A is {a.shape[:2]}")
            lab = read_change_label(pl)
            if lab.shape != a.shape[:2]:
                raise _common.BadFileError(
                    pl, f"wrong-size mask: label is {lab.shape} but the images are {a.shape[:2]}"
                )
            for y, x in _common.crop_grid(a.shape[0], a.shape[1], crop):
                yield (
                    f"{key}/{name}/{y}_{x}",
                    {
                        "image_a": _common.take_crop(a, y, x, crop),
                        "image_b": _common.take_crop(b, y, x, crop),
                        "change": _common.take_crop(lab, y, x, crop),
                        "scene_id": np.int32(scene_of[key]),
                        "tile": tile,
                        "filename": name,
                        "crop_y": np.int32(oy + y),
                        "crop_x": np.int32(ox + x),
                    },
                )

        yield from _common.iter_with_skip(self, items, one, root)
        self._report_skipped(split)
