"""The one input entry of the pretraining methods: ``config.data`` -> a data iterator.

``config.data`` is the complete block of :func:`configs.common.data_config` (every key of
:func:`rsjax.data.defaults.default_data_config`), read directly; an old workdir's config is
completed once, when read (:func:`rsjax.workdir.complete_config`). :func:`validate` refuses
keys no input path reads, a block that lacks keys, and out-of-range values (before anything is
written); :func:`make_iterator` decides ONCE between the host grain pipeline and the
GPU-resident path (``data.device_resident``) and returns the iterator together with the in-step
batch transform (``None`` on the host path, where the views are made per example).
:func:`rsjax.data.pipeline.eval_arrays` prepares evaluation images (the ``data.pp_eval`` recipe).
"""

from __future__ import annotations

import jax
import numpy as np

from rsjax import errors
from rsjax import sharding as shd
from rsjax.data import build, device_augment, device_data, ops, pipeline, registry
from rsjax.data.defaults import check_complete


def validate(config) -> None:
    """The ``config.data`` checks: every key is read by the input path the config selects, the
    batch layout fits ``batch_size``, and augmentation parameters are in range. Runs before the
    workdir is written. Both paths honour the same augmentation and batching keys (see
    rsjax.data.pipeline / device_data); refused are keys no path reads, a block that lacks keys
    (:func:`rsjax.data.defaults.check_complete`), and combinations one path cannot serve, naming
    both keys."""
    check_complete(config.data)  # unknown, former or missing keys, named
    d = config.data

    need = errors.checker(d, "data")

    spb, sps, g = d.scenes_per_batch or 0, d.samples_per_scene, d.crops_as_scenes or 0
    need(spb >= 0, "scenes_per_batch", "must be >= 0 (0 = no scene-aware batching)")
    need(sps >= 1, "samples_per_scene", "must be >= 1")
    need(g >= 0, "crops_as_scenes", "must be >= 0 (0 = whole images)")
    if spb:
        need(
            spb * sps == config.batch_size,
            "scenes_per_batch",
            f"scenes_per_batch x samples_per_scene ({spb} x {sps}) must equal batch_size {config.batch_size}",
        )
    elif g:
        need(
            config.batch_size % (g * g) == 0,
            "crops_as_scenes",
            f"with data.scenes_per_batch=0 every image brings all its {g * g} crops, so batch_size "
            f"{config.batch_size} must be a multiple of {g * g} (or set data.scenes_per_batch)",
        )
    # The view recipe, for the backend of the chosen path: unknown ops, bad arguments and ops
    # that backend lacks are refused here, naming config.data.augment.
    ops.view_recipe(d.augment, "jax" if d.device_resident else "numpy")
    if d.device_resident:
        need(
            not d.num_workers,
            "num_workers",
            "grain worker processes belong to the host pipeline; data.device_resident=True has none "
            "(set data.num_workers=0)",
        )
    else:
        need(
            not d.folder,
            "folder",
            "the class folder is read by the GPU-resident path only; with data.device_resident=False "
            "the host pipeline reads the TFDS dataset data.name (set data.device_resident=True, or "
            "build the dataset and clear data.folder)",
        )
        for key in ("test_scenes", "val_scenes", "pretrain_images"):
            need(
                not d[key],
                key,
                "read by the GPU-resident path only (rsjax.data.pipeline.read_split); the host "
                "pipeline reads the stored split as it is (set data.device_resident=True)",
            )


def make_batch_transform(config):
    """For device-resident data: raw ``image`` batch -> standardized ``view1``/``view2``, made
    inside the step from ``config.data.augment`` (jax backend of :mod:`rsjax.data.ops`) with
    the ``augment`` stream's key (see rsjax.data.device_augment)."""
    d = config.data
    info = registry.data_info(d)
    recipe = ops.view_recipe(d.augment, "jax")
    size = int(d.image_size)

    def transform(batch, key):
        v1, v2 = device_augment.two_views(
            key,
            batch["image"],
            recipe,
            out_size=size,
            scale=info.scale,
            mean=info.mean,
            std=info.std,
            regions=batch.get("region"),
        )
        out = {k: v for k, v in batch.items() if k not in ("image", "region")}
        return {**out, "view1": v1, "view2": v2}

    return transform


def pretrain_images(data_cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(images [M, H, W, C], labels [M], scenes [M], g)`` of the device-resident pretraining
    split (``data.train_split`` through :func:`rsjax.data.pipeline.read_split`, so
    ``data.test_scenes`` / ``val_scenes`` hold their scenes out); ``g``: the ``crops_as_scenes``
    still to apply to them. ``scenes`` is the scene of each image's units: with
    ``data.crops_as_scenes`` the source record (its ``g x g`` crops are one scene), else the
    record's ``scene_id`` (the record index when the dataset has none).

    ``data.pretrain_images = (f1, f2, ...)``: every record gives one image per feature (e.g. an
    OSCD crop at both dates, ``("image_a", "image_b")``), all ``f1`` images first, and the images
    of a record share its scene (with crops: the record, i.e. one place at every date); labels -1.
    Their ``crops_as_scenes`` crops are cut here (:func:`rsjax.data.pipeline.sub_crops`; ``g`` = 0
    is returned): the units and their order are those the crops' regions would give, the views
    are made from the crop alone, as on the host path, and cost ``g^2`` times less (a 13-band
    128 px OSCD crop resampled whole for every 32 px view cost more than the encoder's step).
    Otherwise the ``image`` feature, with its label (-1 where a record has none, or a multi-hot
    one: as the host path), crops left to the iterator's regions."""
    keys, g = tuple(data_cfg.pretrain_images), int(data_cfg.crops_as_scenes or 0)
    if keys:
        split = pipeline.read_split(
            data_cfg,
            data_cfg.train_split,
            split_key="data.train_split",
            fields={**{k: k for k in keys}, **({} if g else {"scene_id": "scene_id"})},
        )
        n = len(split[keys[0]])
        images = np.concatenate([split[k] for k in keys])
        scenes = np.tile(np.arange(n) if g else split["scene_id"], len(keys)).astype(np.int64)
        if g:
            images, scenes = pipeline.sub_crops(images, g), np.repeat(scenes, g * g)
        return images, np.full(len(images), -1, np.int32), scenes, 0
    split = pipeline.read_split(data_cfg, data_cfg.train_split, split_key="data.train_split")
    images = split["image"]
    labels = split.get("label")  # none in a tile folder; multi-hot -> -1, as the host path
    labels = labels if labels is not None and labels.ndim == 1 else np.full(len(images), -1, np.int32)
    scenes = np.arange(len(images)) if g else split["scene_id"]
    return images, labels, np.asarray(scenes, np.int64), g


def make_iterator(config, mesh=None):
    """``(iterator, batch_transform)`` of the pretraining data: the host grain pipeline (views made
    per example, ``batch_transform`` None) or, with ``data.device_resident``, the split held in
    device memory and augmented inside the jitted step by ``batch_transform(batch, key)``."""
    data_cfg = config.data
    if data_cfg.device_resident:
        images, labels, scenes, g = pretrain_images(data_cfg)
        spb, k, cut = int(data_cfg.scenes_per_batch or 0), int(data_cfg.samples_per_scene), 1
        if g != int(data_cfg.crops_as_scenes or 0):  # crops cut on read: their batch layout, spelt out
            cut = int(data_cfg.crops_as_scenes)
            spb, k = pipeline.batch_layout(config.batch_size, spb, k, cut)
        pipeline.check_images(
            images, registry.data_info(data_cfg), where=f"split {data_cfg.train_split!r}", stacked=True
        )
        # The stored side, not a crop-as-scene's: views cut from g x g sub-crops are upsampled by design.
        registry.warn_if_upsampling(
            data_cfg.image_size,
            np.asarray(images.shape[1:3]) * cut,
            what=f"split {data_cfg.train_split!r} of {data_cfg.folder or data_cfg.name!r}",
        )
        it = device_data.DeviceIterator(
            images,
            labels,
            global_batch_size=config.batch_size,
            seed=config.seed,
            mesh=mesh or shd.make_mesh(),
            crops_as_scenes=g,
            scene_ids=scenes,
            scenes_per_batch=spb,
            samples_per_scene=k,
            dataset=data_cfg.name,
        )
        return it, make_batch_transform(config)

    build.ensure_built(data_cfg.name, data_cfg.data_dir or None, config=data_cfg.builder_config)
    _warn_if_upsampling(data_cfg)
    it = pipeline.make_pretrain_iterator(
        data_cfg,
        global_batch_size=config.batch_size,
        seed=config.seed,
        image_size=data_cfg.image_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return it, None


def _warn_if_upsampling(data_cfg) -> None:
    """Warns when ``data.image_size`` exceeds the stored image side of the TFDS dataset's
    ``image`` feature (``registry.warn_if_upsampling``; crops-as-scenes sub-crops are upsampled
    by design and not warned about)."""
    try:
        shape = pipeline.open_source(data_cfg, data_cfg.train_split).builder.info.features["image"].shape
        hw = np.asarray(shape[:2], np.int64)  # None (variable size) -> TypeError
    except (KeyError, TypeError, ValueError, AttributeError):  # no static image shape: nothing to compare
        return
    if len(hw) == 2 and (hw > 0).all():
        registry.warn_if_upsampling(
            data_cfg.image_size, hw, what=f"split {data_cfg.train_split!r} of {data_cfg.name!r}"
        )
