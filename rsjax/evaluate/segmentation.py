"""Semantic segmentation data, checks and pictures (the job is :mod:`rsjax.jobs.segmentation`).

Run::

    python -m rsjax.main --config=configs/seg.py --workdir=runs/seg_unet \
        --config.data.data_dir=/path/to/tfds --config.pretrained=runs/<pretraining workdir> \
        --config.model.decoder=deeplabv3plus --config.model.output_stride=16
    python -m rsjax.main --config=configs/seg.py:false_protocol --workdir=runs/seg_false ...
    python -m rsjax.main --config=configs/seg.py:smoke --workdir=/tmp/smoke

Model and loss: :class:`rsjax.tasks.SegmentationTask` (``model.decoder`` = ``unet`` |
``deeplabv3plus`` | ``pspnet``; ``model.output_stride`` 32 / 16 / 8; softmax CE +
``loss.dice_weight`` x multiclass soft Dice, ``loss.dice_reduction`` ``example`` | ``batch``),
trained on the one loop (``rsjax.train.fit``: resume, SIGTERM, non-finite refusal) with
``optimizer`` (an :mod:`rsjax.optim` block; ``--config.optimizer.freeze=encoder/*`` trains only
the decoder with the encoder in inference mode). Training batches: random ``data.crop_size``
crops with the same flip / rotation for image and mask (``rsjax.data.arrays``), a pure
function of ``(seed, step)``. Evaluation on whole test images: mIoU, per-class IoU, overall
accuracy (totals over all valid test pixels, :mod:`rsjax.evaluate.metrics`).

Dataset contract (the ``rs_segmentation`` TFDS builder, read through ``tfds.data_source``):
features ``image`` [H, W, C] (uint8 / uint16, band order and statistics of the registry entry
of ``data.name`` / ``data.builder_config``) and ``mask`` [H, W] uint8; splits
``eval.train_split`` / ``eval.test_split`` (``train`` / ``test``); one image size per split.
Other feature names: ``data.image_key`` / ``data.mask_key``. A colour-coded dataset read from its
folder (``data.name=dubai_aerial_seg``, ``data.folder``; :mod:`rsjax.data.tiles`) gives the same
arrays through the same reader (:func:`rsjax.data.pipeline.read_split`): ``data.image_size``
crops, split by tile (``data.test_scenes``, scene = tile number).

Mask convention (one for every dense job, :mod:`rsjax.data.segmentation`): the registry entry's
``DatasetInfo.mask_ignore_value`` says how the stored masks mark "no label" (``0`` for the
``rs_segmentation`` configs and ``dynamic_world``: mmseg's ``reduce_zero_label``, stored 0 and
255 ignored, ``v`` = class ``v - 1``; ``None`` for the synthetic dataset: every value a class);
in memory labels are class ids ``0..model.num_classes-1`` and :data:`IGNORE_INDEX` (-1) for
ignored pixels, which count in no loss and no score.

Writes ``eval_report.json`` (task ``segmentation``), ``metrics.jsonl``, ``loss_curve.png``,
``segmentation_overlay.png`` (image, ground truth, prediction) and ``per_class_iou.png``.
"""

from __future__ import annotations

import numpy as np

from rsjax import plots
from rsjax.data import pipeline, registry
from rsjax.data.segmentation import IGNORE_INDEX, masks_to_labels
from rsjax.errors import DataError


def load_data(config):
    """``(train, test)`` dicts of raw arrays ``{"image", "mask"}`` (masks as stored)."""
    d = config.data
    keys = {"image": d.image_key, "mask": d.mask_key}
    ec = config.eval
    train = pipeline.read_split(
        d, ec.train_split, fields=keys, limit=ec.get("max_train", 0), split_key="eval.train_split"
    )
    test = pipeline.read_split(d, ec.test_split, fields=keys, limit=ec.get("max_test", 0), split_key="eval.test_split")
    return train, test


def labels(arrays: dict, info) -> dict:
    """``arrays`` with the stored ``mask`` turned into int32 labels (-1 = ignore) by the registry's
    mask convention (``info.mask_ignore_value``; :func:`rsjax.data.segmentation.masks_to_labels`)."""
    return {**arrays, "mask": masks_to_labels(arrays["mask"], info.mask_ignore_value)}


def check(arrays, info, config, split):
    """Shapes, bands, and labels in ``[0, model.num_classes)`` or :data:`IGNORE_INDEX` (DataError)."""
    x, m = arrays["image"], arrays["mask"]
    if x.ndim != 4 or m.shape != x.shape[:3]:
        raise DataError(f"{split}: images {x.shape} must be [N, H, W, C] and masks {m.shape} [N, H, W]")
    if x.shape[-1] != info.num_bands:
        raise DataError(
            f"{split}: images have {x.shape[-1]} bands, dataset {info.name!r} declares "
            f"{info.num_bands} {list(info.bands)}"
        )
    registry.check_bands(config, x.shape[-1], f"dataset {info.name!r}")
    vals = np.unique(m)
    bad = [int(v) for v in vals if (v < 0 or v >= config.model.num_classes) and v != IGNORE_INDEX]
    if bad:
        shown = [v + 1 for v in bad[:5]] if info.mask_ignore_value == 0 else bad[:5]
        raise DataError(
            f"{split}: stored mask values {shown} are not classes of [0, model.num_classes="
            f"{config.model.num_classes}) under the mask convention of dataset {info.name!r} "
            f"(mask_ignore_value={info.mask_ignore_value!r} in its registry entry)"
        )


def overlay(test: dict, pred: np.ndarray, info, num_classes: int, names, ignore, path: str, n: int = 4) -> str:
    """Rows of (image, ground truth, prediction) for the first ``n`` test images."""
    idx = registry.rgb_indices(info.bands)
    pal = plots.label_palette(num_classes)
    rows = []
    for i in range(min(n, len(pred))):
        rows.append(
            [
                plots.display_rgb(test["image"][i], idx),
                plots.colorize(test["mask"][i], num_classes, ignore),
                plots.colorize(pred[i], num_classes),
            ]
        )
    legend = {str(nm): tuple(pal[c]) for c, nm in enumerate(names)}
    if ignore is not None:
        legend["ignored"] = (0.0, 0.0, 0.0)
    return plots.image_grid(rows, ["image", "ground truth", "prediction"], path, legend=legend)
