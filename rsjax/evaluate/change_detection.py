"""Change detection data, checks and pictures (the job is :mod:`rsjax.jobs.change_detection`).

Run::

    python -m rsjax.main --config=configs/cd_levir.py --workdir=runs/cd_levir \
        --config.data.data_dir=/path/to/tfds --config.pretrained=runs/<pretraining workdir>
    python -m rsjax.main --config=configs/cd_oscd.py:smoke --workdir=/tmp/smoke

Model: :class:`rsjax.models.decoders.SiameseCDUNet`: one shared-weight ResNet encoder sees
image A and image B, every scale (stem, layer1..4) is fused as ``|f_A - f_B|``, a UNet decodes
one change logit per pixel. The encoder comes from ``config.pretrained`` (any pretraining
run; architecture / stem / band count must match ``config.model``) or random init;
``--config.optimizer.freeze=encoder/*`` keeps it fixed (inference-mode BatchNorm, no updates).

Loss: ``rsjax.losses.bce_dice`` (binary cross entropy + ``loss.dice_weight`` x soft Dice of the
change class); ``loss.dice_reduction``: ``example`` (default, rsjax's per-example form) or
``batch`` (torch ``BCEWithLogitsLoss`` + smp ``DiceLoss("binary")`` over the batch, as CromSS builds
it for one output channel). Training batches: random ``data.crop_size`` crops with the same flip /
90-degree rotation for A, B and the change map, a pure function of ``(seed, step)``.
Evaluation: whole test images, change = ``logit > 0``; precision, recall, F1 and IoU of the
change class over all test pixels (:mod:`rsjax.evaluate.metrics`).

Dataset contract (for the ``levir_cd`` / ``oscd`` TFDS builders; read through
``tfds.data_source``): features

* ``image_a``: [H, W, C] uint8 (LEVIR-CD RGB) or uint16 (OSCD, 13 Sentinel-2 bands, reflectance
  x 1e4, band order of the registry entry), first date;
* ``image_b``: same shape and dtype, second date;
* ``change``: [H, W] uint8, 1 = changed, 0 = unchanged (LEVIR's 255 mapped to 1); a stored
  no-data value follows the mask convention of the registry entry
  (``DatasetInfo.mask_ignore_value``, None for ``levir_cd`` / ``oscd``: every pixel counts),
  turned into the in-memory ignore label -1 (:func:`labels`);

splits ``eval.train_split`` / ``eval.test_split`` (``train`` / ``test``; the builders also
write ``validation`` when the source has one); images of one split all the same size
(LEVIR-CD: the 1024 px tiles cut into 256 px crops). A LEVIR-layout folder without split
information is split by the builder (see ``tfds_builders/levir_cd``). Other feature names can be mapped with
``data.image_a_key`` / ``data.image_b_key`` / ``data.change_key`` (the synthetic dataset uses
``image`` / ``image2`` / ``change``). Normalisation: the registry entry of ``data.name``.

Writes ``eval_report.json`` (task ``change_detection``), ``metrics.jsonl``, ``loss_curve.png``
and ``change_overlay.png`` (rows of A, B, ground truth, prediction, and an error map on B:
white = hit, red = false alarm, blue = miss); with ``eval.save_predictions`` also
``predictions.npz`` (``change``: the test change maps, uint8 ``[N, H, W]``, in read order).
"""

from __future__ import annotations

import numpy as np

from rsjax import plots
from rsjax.data import pipeline, registry
from rsjax.data.segmentation import masks_to_labels


def load_data(config):
    """``(train, test)`` dicts of raw arrays ``{"a", "b", "change"}``."""
    d = config.data
    keys = {"a": d.image_a_key, "b": d.image_b_key, "change": d.change_key}
    ec = config.eval
    train = pipeline.read_split(
        d, ec.train_split, fields=keys, limit=ec.get("max_train", 0), split_key="eval.train_split"
    )
    test = pipeline.read_split(d, ec.test_split, fields=keys, limit=ec.get("max_test", 0), split_key="eval.test_split")
    return train, test


def labels(arrays: dict, info) -> dict:
    """``arrays`` with the stored ``change`` map as int32 labels (-1 = ignore) by the registry's
    mask convention (:func:`rsjax.data.segmentation.masks_to_labels`)."""
    return {**arrays, "change": masks_to_labels(arrays["change"], info.mask_ignore_value)}


def check(arrays, info, config, split):
    a, b, ch = arrays["a"], arrays["b"], arrays["change"]
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"{split}: image A {a.shape} and image B {b.shape} must both be [N, H, W, C]")
    if ch.shape != a.shape[:3]:
        raise ValueError(f"{split}: change map {ch.shape} does not match the images {a.shape[:3]}")
    if a.shape[-1] != info.num_bands:
        raise ValueError(
            f"{split}: images have {a.shape[-1]} bands, dataset {info.name!r} declares "
            f"{info.num_bands} {list(info.bands)}"
        )
    registry.check_bands(config, a.shape[-1], f"dataset {info.name!r}")


def overlay(test: dict, pred: np.ndarray, info, path: str, n: int = 4) -> str:
    """Rows of (A, B, ground truth, prediction, error map) for the first ``n`` test pairs,
    preferring pairs with change in the ground truth."""
    order = np.argsort(-(test["change"] == 1).reshape(len(pred), -1).mean(1), kind="stable")[:n]
    idx = registry.rgb_indices(info.bands)
    rows = [plots.change_panels(test["a"][i], test["b"][i], test["change"][i], pred[i], idx) for i in order]
    return plots.image_grid(rows, plots.CHANGE_TITLES, path, legend=plots.CHANGE_LEGEND)


def mosaic(crops: np.ndarray, ys, xs) -> np.ndarray:
    """The crops ``[N, S, S, ...]`` put back at their top-left offsets ``(ys[i], xs[i])`` (the
    builders' ``crop_y`` / ``crop_x``; overlapping crops hold the same pixels) into one array of
    the covered size; pixels no crop covers are 0."""
    s = crops.shape[1]
    out = np.zeros((int(max(ys)) + s, int(max(xs)) + crops.shape[2], *crops.shape[3:]), crops.dtype)
    for crop, y, x in zip(crops, ys, xs):
        out[int(y) : int(y) + s, int(x) : int(x) + crops.shape[2]] = crop
    return out
