"""Segmentation splits in host memory: masks -> labels, tiling, label noise, downstream tasks.

Used by the noisy-label jobs (``rsjax.jobs.noisy_label`` / ``noisy_label_study``) and offered to
every dense job that holds a split as arrays.

Mask -> label convention (ONE for every dense job). In memory, labels are int32 class ids
``0..K-1`` and :data:`IGNORE_INDEX` (= -1) marks pixels that count nowhere (no data / no label):
``jax.nn.one_hot(-1, K)`` is all zeros (so the Fisher statistics and the soft Dice skip them
for free), ``-1`` can never collide with a class id, and it is independent of the storage
dtype. How the *stored* masks encode "ignore" is a property of the dataset, stated by its
registry entry ``DatasetInfo.mask_ignore_value`` (:func:`mask_ignore_value`; the TFDS builders
write the same value into their metadata as ``ignore_value``):

* ``0`` (``rs_segmentation``, ``dynamic_world``; mmsegmentation's ``reduce_zero_label``):
  stored 0 and 255 -> ignore, ``v`` in 1..254 -> class ``v - 1``;
* another value ``u``: stored ``u`` -> ignore, every other value is the class id as stored;
* ``None`` (``rs_synthetic``, the change maps of ``levir_cd`` / ``oscd``): every stored value
  is a class id.

Images larger than ``data.image_size`` are cut into a grid of ``image_size`` tiles
(:func:`tile`, :func:`rsjax.data.tiles.grid`: row-major from the top-left corner, the remainder at the bottom and
right that makes no whole tile is dropped, never padded). A split is held in its stored dtype
(uint8 / uint16) and normalised per batch.

Where a split comes from: :func:`rsjax.data.pipeline.read_split` (the one reader): the TFDS
dataset ``data.name``, or, for a dataset whose registry entry has a colour table
(``DatasetInfo.mask_colours``: ``dubai_aerial_seg``), its folder ``data.folder`` read as it
unpacks, split by tile (:mod:`rsjax.data.tiles`).

Label noise (``config.noise``; pure numpy in :mod:`rsjax.data.label_noise`) is added by
:func:`noisy_labels`. The transfer task (``config.transfer``, :func:`downstream_data`) is the
``transfer.split`` of the dataset divided by scene into a labelled train part and a test part,
with the classes remapped by ``transfer.class_map``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rsjax.data import label_noise, ops, pipeline, registry
from rsjax.data.tiles import grid
from rsjax.errors import ConfigError, DataError

IGNORE_INDEX = -1

SYNTHETIC_MERGE_MAP = (0, 1, 1, 1, 2, 2)  # water | forest, cropland, grassland | urban, bare soil


@dataclasses.dataclass
class SegData:
    """A segmentation split in host memory: raw images, int32 labels (-1 = ignore), scenes."""

    images: np.ndarray  # [N, S, S, C] stored dtype (uint16 / uint8)
    labels: np.ndarray  # [N, S, S] int32
    scene_id: np.ndarray  # [N] int64
    info: registry.DatasetInfo
    class_names: tuple[str, ...]
    recipe: str = ops.DEFAULT_PP_DENSE  # config.data.pp_dense: how the images become model inputs

    def __len__(self):
        return len(self.images)

    def subset(self, idx) -> "SegData":
        return dataclasses.replace(self, images=self.images[idx], labels=self.labels[idx], scene_id=self.scene_id[idx])

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """``images`` (stored units, any leading axes) as model inputs: the dense recipe."""
        return ops.dense_recipe(self.recipe, "numpy").image(images, None, ops.Context(info=self.info))


def masks_to_labels(mask: np.ndarray, ignore_value) -> np.ndarray:
    """Stored masks -> int32 labels with :data:`IGNORE_INDEX` = -1 (see the module docstring).

    ``ignore_value`` 0: ``0, 255 -> -1``, ``v -> v - 1``; another value ``u``: ``u -> -1``;
    None: unchanged. The ``ignore`` op of :mod:`rsjax.data.ops` (numpy backend)."""
    value = None if ignore_value is None else int(ignore_value)
    return ops.apply(f"ignore({value!r})", {"mask": mask})["mask"]


def mask_ignore_value(info: registry.DatasetInfo, source=None):
    """The stored ignore value of ``info``'s masks (``DatasetInfo.mask_ignore_value``). With a
    TFDS ``source`` whose builder metadata states an ``ignore_value``, the two must agree
    (DataError naming both otherwise: the registry entry or the build is stale)."""
    value = info.mask_ignore_value
    meta = (source.builder.info.metadata or {}) if source is not None else {}
    if "ignore_value" in meta and meta["ignore_value"] != value:
        raise DataError(
            f"dataset {info.name!r}: the build's metadata says stored mask value "
            f"{meta['ignore_value']!r} = ignore, the registry (DatasetInfo.mask_ignore_value) says "
            f"{value!r}; rebuild the dataset or fix the registry entry"
        )
    return value


def tile(images: np.ndarray, labels: np.ndarray, scene: np.ndarray, size: int):
    """Cuts every ``H x W`` example into its :func:`grid` of ``size`` tiles (example-major: the
    tiles of one image stay adjacent, in row-major order)."""
    h, w = images.shape[1:3]
    if size > min(h, w):
        raise ConfigError(f"config.data.image_size={size} is larger than the stored images ({h} x {w} px)")
    if size == h == w:
        return images, labels, scene
    offsets = grid(h, w, size)
    stack = (
        lambda a: np.stack([a[:, y : y + size, x : x + size] for y, x in offsets], 1).reshape(  # noqa: E731
            (-1, size, size) + a.shape[3:]
        )
    )
    return stack(images), stack(labels), np.repeat(scene, len(offsets))


def load_split(cfg, split: str, *, image_size: int, max_examples: int | None = None) -> SegData:
    """Reads ``image`` + ``mask`` (+ ``scene_id``) of a split as a :class:`SegData`; ``cfg`` is the
    complete ``config.data`` block (``configs.common.data_config``): the TFDS dataset, or its
    tile folder (:func:`rsjax.data.pipeline.read_split`)."""
    info = registry.data_info(cfg)
    fields = {"image": "image", "mask": "mask"}
    if cfg.folder or info.mask_colours:  # a tile folder (read_split says when data.folder is missing)
        fields["scene_id"] = "scene_id"
        ignore = info.mask_ignore_value
    else:
        source = pipeline.open_source(cfg, split)
        if "scene_id" in source.features():
            fields["scene_id"] = "scene_id"
        ignore = mask_ignore_value(info, source)
    arrays = pipeline.read_split(
        cfg, split, fields=fields, limit=max_examples, split_key="data.train_split / analysis.split / transfer.split"
    )
    labels = masks_to_labels(arrays["mask"], ignore)
    bad = (labels < IGNORE_INDEX) | (labels >= info.num_classes)
    if bad.any():
        raise DataError(
            f"dataset {cfg.name!r} split {split!r}: mask values {np.unique(arrays['mask'][bad])[:5]} "
            f"outside the {info.num_classes} classes {info.class_names}"
        )
    scene = arrays.get("scene_id", np.arange(len(labels))).astype(np.int64)
    images, labels, scene = tile(arrays["image"], labels, scene, int(image_size))
    if images.shape[-1] != info.num_bands:
        raise DataError(f"dataset {cfg.name!r} images have {images.shape[-1]} bands, registry says {info.bands}")
    return SegData(images, labels, scene, info, tuple(info.class_names), cfg.get("pp_dense") or ops.DEFAULT_PP_DENSE)


def remap(labels: np.ndarray, class_map) -> np.ndarray:
    """``class_map[label]`` for every valid label (-1 stays -1; ``class_map`` entries of -1 ignore):
    the ``remap`` op of :mod:`rsjax.data.ops`."""
    return ops.apply(f"remap({tuple(int(c) for c in class_map)!r})", {"mask": labels})["mask"]


def noise_class_map(config) -> tuple[int, ...]:
    """``config.noise.class_map`` (clean class -> class of the noisy labels' coarser legend), or
    () when the noisy labels keep the clean classes."""
    return tuple(int(c) for c in (config.noise.get("class_map", ()) or ()))


def noise_num_classes(config, num_classes: int) -> int:
    """The number of classes of the noisy labels: ``max(noise.class_map) + 1``, else ``num_classes``."""
    cmap = noise_class_map(config)
    return max(cmap) + 1 if cmap else int(num_classes)


def noisy_labels(config, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``labels`` with the noise of ``config.noise`` (a pure function of ``noise.seed``): the
    classes remapped to the coarser legend ``noise.class_map`` (when set), then
    :func:`rsjax.data.label_noise.apply_label_noise` (coarse labels by ``noise.pool_factor``,
    flips, boundary noise) with :func:`noise_num_classes` classes."""
    n = config.noise
    cmap = noise_class_map(config)
    if cmap:
        if len(cmap) != num_classes:
            raise ConfigError(f"config.noise.class_map has {len(cmap)} entries for {num_classes} classes")
        labels = remap(labels, cmap)
    return label_noise.apply_label_noise(
        labels,
        num_classes=noise_num_classes(config, num_classes),
        flip_rate=float(n.flip_rate),
        flip_mode=n.get("flip_mode", "regions"),
        erosion=int(n.get("erosion", 0)),
        erosion_class=int(n.get("erosion_class", -1)),
        blob_radius=float(n.get("blob_radius", 6.0)),
        pool_factor=int(n.get("pool_factor", 1) or 1),
        seed=int(n.get("seed", 0)),
        ignore_index=IGNORE_INDEX,
    )


def noise_agreement(config, clean: np.ndarray, noisy: np.ndarray) -> dict:
    """:func:`rsjax.data.label_noise.agreement` of ``noisy`` (from :func:`noisy_labels`) with the
    clean labels in the noisy labels' legend (remapped by ``noise.class_map`` when set)."""
    cmap = noise_class_map(config)
    return label_noise.agreement(remap(clean, cmap) if cmap else clean, noisy, IGNORE_INDEX)


def holdout_split(n: int, fraction: float, seed: int, *, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted indices: ``round(n * fraction)`` (at least one) of ``n`` examples
    held out by a permutation seeded with ``(seed, 17)``; ``fraction = 0`` holds out none.
    ``key`` names the config key in the error."""
    if not fraction:
        return np.arange(n), np.arange(0)
    n_val = max(1, int(round(n * fraction)))
    if not 0.0 < fraction < 1.0 or n_val >= n:
        raise ConfigError(f"config.{key}={fraction}: must hold out between 1 and {n - 1} of the {n} examples")
    perm = np.random.default_rng([int(seed), 17]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def downstream_data(config) -> tuple[SegData, SegData, tuple[str, ...]]:
    """(train, test, class names) of the transfer task ``config.transfer`` (module docstring)."""
    t = config.transfer
    data_block = t.get("data", None) or config.data
    data = load_split(
        data_block, t.split, image_size=config.data.image_size, max_examples=t.get("max_examples", 0) or None
    )
    class_map = tuple(t.class_map) if t.get("class_map", None) else tuple(range(data.info.num_classes))
    if len(class_map) != data.info.num_classes:
        raise ConfigError(
            f"config.transfer.class_map has {len(class_map)} entries; dataset "
            f"{data.info.name!r} has {data.info.num_classes} classes {data.class_names}"
        )
    k = max(class_map) + 1
    names = tuple(t.class_names) if t.get("class_names", None) else tuple(f"class_{i}" for i in range(k))
    if len(names) != k:
        raise ConfigError(f"config.transfer.class_names has {len(names)} names for {k} downstream classes")
    data = dataclasses.replace(data, labels=remap(data.labels, class_map), class_names=names)
    scenes = np.unique(data.scene_id)
    n_train = max(1, int(round(len(scenes) * float(t.train_scene_fraction))))
    if n_train >= len(scenes):
        raise ConfigError(
            f"config.transfer.train_scene_fraction={t.train_scene_fraction} leaves no test scene "
            f"({len(scenes)} scenes in split {t.split!r})"
        )
    is_train = np.isin(data.scene_id, scenes[:n_train])
    train_idx, test_idx = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    if t.get("max_train_images", 0):
        train_idx = train_idx[: int(t.max_train_images)]
    return data.subset(train_idx), data.subset(test_idx), names
