"""Semantic segmentation job (``config.job = "segmentation"``): encoder + UNet / DeepLabv3+ / PSPNet.

Run::

    python -m rsjax.main --config=configs/seg.py --workdir=runs/seg_unet \
        --config.data.data_dir=/path/to/tfds --config.pretrained=runs/<pretraining workdir> \
        --config.model.decoder=deeplabv3plus --config.model.output_stride=16
    python -m rsjax.main --config=configs/seg.py:false_protocol --workdir=runs/seg_false ...
    python -m rsjax.main --config=configs/seg.py:smoke --workdir=/tmp/smoke

Model: :class:`rsjax.models.decoders.SegmentationModel` (``model.decoder`` = ``unet`` |
``deeplabv3plus`` | ``pspnet``; ``model.output_stride`` 32 / 16 / 8 dilates layer4 / layer3
of the encoder; ``train.freeze_encoder`` trains only the decoder with the encoder in
inference mode). The encoder comes from ``config.pretrained`` (any pretraining run;
architecture / stem / band count must match ``config.model``) or random init.

Loss: ``rsjax.losses.ce_dice`` (softmax cross entropy + ``train.dice_weight`` x multiclass soft
Dice; ``train.dice_weight = 0`` gives plain CE) with ``data.ignore_index``; ``train.dice_reduction``:
``example`` (default, rsjax's per-crop form) or ``batch`` (CromSS: torch CE + smp multiclass DiceLoss
pooled over the batch). Training batches:
random ``train.crop_size`` crops with the same flip / rotation for image and mask, a pure
function of ``(seed, step)``. Evaluation on whole test images: mIoU, per-class IoU, overall
accuracy (totals over all valid test pixels, :mod:`rsjax.evaluate.metrics`).

Dataset contract (the ``rs_segmentation`` TFDS builder, read through ``tfds.data_source``):
features ``image`` [H, W, C] (uint8 / uint16, band order and statistics of the registry entry
of ``data.name`` / ``data.builder_config``) and ``mask`` [H, W] uint8; splits ``train`` /
``test``; one image size per split. Other feature names: ``data.image_key`` / ``data.mask_key``.
Mask encodings:

* ``data.reduce_zero_label = True`` (the ``rs_segmentation`` builder, mmseg's
  ``reduce_zero_label``): stored 0 (and 255) = ignore, ``v`` in 1..K = class ``v - 1``; the job
  maps them to ``data.ignore_index`` (255) and 0..K-1.
* ``False``: class ids in ``[0, model.num_classes)`` as stored, ``data.ignore_index`` (or None)
  marks no-data pixels (the synthetic dataset).

Writes ``eval_report.json`` (task ``segmentation``), ``metrics.jsonl``, ``loss_curve.png``,
``segmentation_overlay.png`` (image, ground truth, prediction) and ``per_class_iou.png``.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import losses, plots
from rsjax.data import registry
from rsjax.evaluate import common
from rsjax.evaluate import metrics as M
from rsjax.models import decoders


def load_data(config):
    """``(train, test)`` dicts of raw arrays ``{"image", "mask"}`` (masks as stored)."""
    d = common.data_config(config)
    keys = {"image": d.get("image_key", "image"), "mask": d.get("mask_key", "mask")}
    ec = config.eval
    train = common.load_fields(d, ec.train_split, keys, max_examples=ec.get("max_train", 0) or None)
    test = common.load_fields(d, ec.test_split, keys, max_examples=ec.get("max_test", 0) or None)
    return train, test


def reduce_zero_label(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    """Stored 0 / 255 -> ``ignore_index``, ``v`` -> ``v - 1`` (uint8 in, int32 out)."""
    m = np.asarray(mask).astype(np.int32)
    return np.where((m == 0) | (m == 255), ignore_index, m - 1).astype(np.int32)


def _labels(config, arrays: dict) -> dict:
    if not config.data.get("reduce_zero_label", False):
        return arrays
    ignore = config.data.get("ignore_index", None)
    if ignore is None:
        raise ValueError("config.data.reduce_zero_label=True needs config.data.ignore_index (e.g. 255)")
    return {**arrays, "mask": reduce_zero_label(arrays["mask"], int(ignore))}


# model.output_stride = 0 picks the usual choice of each decoder.
DEFAULT_OUTPUT_STRIDE = {"unet": 32, "deeplabv3plus": 16, "pspnet": 8}


def output_stride(config) -> int:
    os_ = int(config.model.get("output_stride", 0) or 0)
    return os_ or DEFAULT_OUTPUT_STRIDE.get(config.model.decoder, 32)


def build_model(config):
    mc = config.model
    ch = mc.get("decoder_channels", ())
    if isinstance(ch, (list, tuple)):
        ch = tuple(ch) or None
    return decoders.SegmentationModel(
        mc.name, mc.decoder, int(mc.num_classes), int(mc.in_channels), stem=mc.get("stem", "standard"),
        output_stride=output_stride(config), decoder_channels=ch or None,
        dropout_rate=mc.get("dropout_rate", None), freeze_encoder=bool(config.train.freeze_encoder),
        dtype=common.compute_dtype(config))


def _check(arrays, info, config, split, ignore):
    x, m = arrays["image"], arrays["mask"]
    if x.ndim != 4 or m.shape != x.shape[:3]:
        raise ValueError(f"{split}: images {x.shape} must be [N, H, W, C] and masks {m.shape} [N, H, W]")
    if x.shape[-1] != info.num_bands:
        raise ValueError(f"{split}: images have {x.shape[-1]} bands, dataset {info.name!r} declares "
                         f"{info.num_bands} {list(info.bands)}")
    common.check_bands(config, x.shape[-1], f"dataset {info.name!r}")
    vals = np.unique(m)
    bad = [int(v) for v in vals if (v < 0 or v >= config.model.num_classes) and v != ignore]
    if bad:
        raise ValueError(f"{split}: mask values {bad[:5]} are outside [0, model.num_classes="
                         f"{config.model.num_classes}) and not data.ignore_index={ignore}")


def evaluate_arrays(config, wd, train: dict, test: dict, *, info: registry.DatasetInfo | None = None,
                    loaded=None, class_names=None) -> dict:
    """Trains and evaluates on raw arrays ``{"image", "mask"}`` (images in stored units, masks
    as stored: ``data.reduce_zero_label`` is applied here)."""
    t0 = time.time()
    info = info or common.dataset_info(config)
    ignore = config.data.get("ignore_index", None)
    train, test = _labels(config, train), _labels(config, test)
    for name, arrays in (("train", train), ("test", test)):
        _check(arrays, info, config, name, ignore)
    num_classes = int(config.model.num_classes)
    names = list(class_names or config.data.get("class_names", ()) or
                 (info.class_names if len(info.class_names) == num_classes else [str(i) for i in range(num_classes)]))
    tc = config.train
    model = build_model(config)
    crop = int(tc.crop_size) if int(tc.crop_size) > 0 else train["image"].shape[1]
    x0 = jnp.zeros((1, crop, crop, train["image"].shape[-1]), jnp.float32)
    variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, x0, train=False))(
        jax.random.PRNGKey(config.seed))
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    if loaded is not None:
        variables = decoders.plug_encoder(variables, loaded[0], loaded[1])
    tx = common.make_optimizer(tc, int(tc.steps), variables["params"], freeze_encoder=bool(tc.freeze_encoder))

    def loss_fn(params, batch_stats, batch, rng):
        logits, upd = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=True,
                                  rngs={"dropout": rng}, mutable=["batch_stats"])
        # a scalar for dice_reduction="batch": train_loop's mean leaves it unchanged
        per = losses.ce_dice(logits, batch["mask"], ignore_index=ignore, dice_weight=tc.dice_weight,
                             reduction=tc.get("dice_reduction", "example"))
        return per, upd["batch_stats"]

    def batch_fn(step):
        raw = common.sample_batch(train, int(tc.batch_size), crop, config.seed, step)
        return {"image": registry.normalize(raw["image"], info), "mask": raw["mask"].astype(np.int32)}

    variables, _ = common.train_loop(loss_fn=loss_fn, variables=variables, tx=tx, batch_fn=batch_fn,
                                     steps=int(tc.steps), seed=config.seed, wd=wd,
                                     desc=f"segmentation ({config.model.decoder})",
                                     log_every=int(config.get("log_every", 10)))
    pred = predict(config, model, variables, test["image"], info)
    cm = M.dense_confusion_matrix(pred, test["mask"], num_classes, ignore)
    scores = M.segmentation_scores(cm)
    metrics = {
        "miou": scores["miou"],
        "overall_accuracy": scores["overall_accuracy"],
        "per_class_iou": dict(zip(names, scores["per_class_iou"])),
        "per_class_accuracy": dict(zip(names, scores["per_class_accuracy"])),
        "confusion_matrix": cm.tolist(),
        "num_pixels": scores["num_pixels"],
        "decoder": config.model.decoder,
        "output_stride": output_stride(config),
        "freeze_encoder": bool(tc.freeze_encoder),
        "num_train": int(len(train["image"])),
        "num_test": int(len(test["image"])),
        "train_steps": int(tc.steps),
        "encoder": common.pretrained_summary(loaded),
        "seconds": time.time() - t0,
    }
    if wd.is_main:
        wd.plot_loss_curve()
        overlay(test, pred, info, num_classes, names, ignore, os.path.join(wd.path, "segmentation_overlay.png"),
                n=int(config.eval.get("num_pictures", 4)))
        plots.bars({k: (0.0 if np.isnan(v) else v) for k, v in metrics["per_class_iou"].items()},
                   os.path.join(wd.path, "per_class_iou.png"), ylabel="IoU",
                   title=f"{config.data.name} {config.model.decoder}: mIoU {metrics['miou']:.3f}")
        wd.write_eval_report("segmentation", metrics, config)
        print(f"{config.data.name} ({config.model.decoder}): mIoU {metrics['miou']:.4f} overall accuracy "
              f"{metrics['overall_accuracy']:.4f} ({metrics['num_test']} test images)", flush=True)
    return metrics


def predict(config, model, variables, images: np.ndarray, info) -> np.ndarray:
    """Class predictions uint8/int32 [N, H, W] for whole images (fixed-size padded batches)."""
    from rsjax import sharding as shd

    mesh = shd.make_mesh()
    rep, dat = shd.replicated(mesh), shd.data_sharded(mesh)
    fwd = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False), -1).astype(jnp.int32),
                  in_shardings=(rep, dat), out_shardings=rep)
    variables = jax.device_put(variables, rep)
    bs = max(mesh.devices.size, (int(config.eval.batch_size) // mesh.devices.size) * mesh.devices.size)
    out = []
    for s, e in common.eval_batches(len(images), bs, "predict test"):
        x = common.pad_to(registry.normalize(images[s:e], info), bs)
        out.append(np.asarray(fwd(variables, x))[: e - s])
    return np.concatenate(out)


def overlay(test: dict, pred: np.ndarray, info, num_classes: int, names, ignore, path: str, n: int = 4) -> str:
    """Rows of (image, ground truth, prediction) for the first ``n`` test images."""
    idx = common.rgb_indices(info.bands)
    pal = plots.label_palette(num_classes)
    rows = []
    for i in range(min(n, len(pred))):
        rows.append([plots.display_rgb(test["image"][i], idx),
                     plots.colorize(test["mask"][i], num_classes, ignore),
                     plots.colorize(pred[i], num_classes)])
    legend = {str(nm): tuple(pal[c]) for c, nm in enumerate(names)}
    if ignore is not None:
        legend["ignored"] = (0.0, 0.0, 0.0)
    return plots.image_grid(rows, ["image", "ground truth", "prediction"], path, legend=legend)


def run(config, workdir: str) -> dict:
    info = common.dataset_info(config)
    return common.run_job(config, workdir, load_data,
                          lambda wd, data, loaded: evaluate_arrays(config, wd, *data, info=info, loaded=loaded))
