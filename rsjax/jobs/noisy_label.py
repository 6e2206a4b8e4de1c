"""Task-specific pretraining with noisy labels (job ``noisy_label``; DESIGN §3.4, arXiv 2402.16164).

A ResNet encoder inside a UNet (``rsjax.tasks.SegmentationTask``: CE + Dice, ignore value -1) is
trained on noisy masks, then its encoder is transferred to UNet / DeepLabv3+ / PSPNet on a
*different class set* and compared with the same transfer from a random encoder. Every training
runs on the one loop (:func:`rsjax.train.fit`: resume, SIGTERM exit 75, refused non-finite steps,
TensorBoard, metrics.jsonl), one phase folder each:

* ``pretrain/``: the pretraining (checkpoints in the pretraining layout, so
  ``rsjax.checkpoint.load_encoder``, the downstream jobs and ``python -m rsjax.export
  --workdir=<workdir>/pretrain`` read it), ``analysis.jsonl``;
* ``transfer_<encoder>_<decoder>/``: one fine-tune per (encoder, decoder), encoder ``pretrained``
  or ``random_init``.

A rerun continues the first unfinished phase (``stop_after_steps`` applies to each phase).

Data (``rsjax.data.segmentation``): ``data.name`` is any dataset whose TFDS builder stores
``image`` and ``mask`` (``rs_synthetic``, ``dynamic_world``, ``rs_segmentation``); masks become
int32 labels with -1 = ignore; images larger than ``data.image_size`` are cut into tiles.
Label noise (``config.noise``) is added to the pretraining labels only; every evaluation uses the
clean labels. Batches: :class:`rsjax.data.arrays.ArrayIterator` (a pure function of
``(seed, step)``; random flip + 90-degree rotation of image and mask alike, as the dense jobs).

Optimizers: ``config.optimizer`` (pretraining) and ``config.transfer.optimizer`` in the shape of
``rsjax.optim.default_block``; ``transfer.optimizer.freeze = "encoder/*"`` fine-tunes the decoder
only. Steps: ``total_steps`` / ``batch_size`` (or ``epochs`` > 0: ``total_steps = epochs *
ceil(num_train / batch_size)``), ``transfer.total_steps`` / ``transfer.batch_size``.

ReduceLROnPlateau (``config.optimizer.plateau``, on in ``configs/noisy_label.py:paper``):
CromSS's torch rule (``rsjax.optim.plateau_update``) on the mIoU of ``plateau.val_fraction``
of the pretraining crops (held out, scored with their noisy labels), every ``plateau.every``
steps (0 = once per epoch), as a :class:`rsjax.train.Hook`; its state is a leaf of the
optimizer state (checkpointed, so a resumed run continues the rule exactly). Its rows
(``val_miou``, ``lr_scale``, ``best``, ``num_bad``) go to the phase's ``metrics.jsonl``.

Per-layer analysis (``analysis.every`` steps, another Hook; ``rsjax.evaluate.layers``) on
``analysis.max_images`` clean test crops: weight norms and relative change from the
initialisation per encoder stage / decoder level, Fisher ratio of the clean classes per
feature level; rows ``{step, miou, fisher, weights}`` in ``pretrain/analysis.jsonl``.

Transfer (``config.transfer``, ``rsjax.data.segmentation.downstream_data``): ``transfer.split``
divided by scene into a labelled train part (``train_scene_fraction``, at most
``max_train_images``) and a test part, classes remapped by ``transfer.class_map``. Every
(encoder, decoder) fine-tune starts from the same decoder initialisation and data order
(seed ``config.seed + 1``). Reported: mIoU, per-class IoU, overall accuracy on the test part.
"""

from __future__ import annotations

import jax
import ml_collections

from rsjax import errors, plots
from rsjax import noisy_label as nl
from rsjax import sharding as shd
from rsjax import workdir as workdir_lib
from rsjax.data import segmentation as segdata
from rsjax.evaluate import metrics


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Noisy-label pretraining + transfer. Returns the report metrics, or ``{"stopped": phase,
    "step": step}`` when a phase stopped at ``stop_after_steps`` (rerun to continue)."""
    shd.maybe_initialize_distributed()
    nl.validate(config)
    mesh = shd.make_mesh()
    with errors.config_errors():
        shd.check_batch_divisible(config.batch_size, mesh)
        if config.transfer.get("enabled", True):
            shd.check_batch_divisible(config.transfer.batch_size, mesh)
    is_main = jax.process_index() == 0
    with workdir_lib.Workdir(workdir, config, is_main=is_main) as wd:
        pre, ana = nl.load_data(config)
        pre, labels, val = nl.split_pretraining(
            config, pre, segdata.noisy_labels(config, pre.labels, pre.info.num_classes)
        )
        rate = 1.0 - segdata.noise_agreement(config, pre.labels, labels)["pixel"]
        # clean labels from here on in the pretraining's classes (noise.class_map: a coarser legend)
        pre, ana = nl.in_pretraining_legend(config, pre), nl.in_pretraining_legend(config, ana)
        k = len(pre.class_names)
        if is_main:
            print(
                f"{config.data.name}: {len(pre)} training crops of {config.data.image_size} px, {k} classes; "
                f"label noise: {rate:.1%} of pixels differ from the clean masks",
                flush=True,
            )
        out = nl.pretrain(config, wd, mesh, pre, labels, val=val, analysis_data=ana, desc="noisy_label")
        res = out["result"]
        if not res.finished:
            return {"stopped": "pretrain", "step": res.step}
        cm, fisher, pred = out["probe"](
            res.state["params"], res.state["batch_stats"], ana.images, ana.labels, keep_pred=4
        )
        pre_scores = metrics.segmentation_scores(cm)
        report = {
            "pretrain": {
                "dataset": config.data.name,
                "num_train": len(pre),
                "pixel_noise_rate": rate,
                "noise": config.noise.to_dict(),
                "clean_test": pre_scores,
                "fisher": fisher,
                "class_names": list(pre.class_names),
                "step": res.step,
            },
        }
        if is_main:
            print(
                f"pretraining task (clean test labels, {k} classes): mIoU {pre_scores['miou']:.3f}, "
                f"OA {pre_scores['overall_accuracy']:.3f}",
                flush=True,
            )
            plots.class_map_rows(
                wd.file("predictions.png"),
                nl.rgb(ana, 4),
                [("clean label", ana.labels), ("prediction (pretraining task)", pred)],
                k,
                pre.class_names,
            )
            plots.class_map_rows(
                wd.file("label_noise.png"),
                nl.rgb(pre, 4),
                [("clean mask", pre.labels), ("noisy training mask", labels)],
                k,
                pre.class_names,
            )
            wd.plot_confusion(cm, "confusion_pretrain.png", class_names=list(pre.class_names))
        if config.transfer.get("enabled", True):
            tr_train, tr_test, names = segdata.downstream_data(config)
            encoders = {"pretrained": nl.encoder_of(res.state)}
            if config.transfer.get("compare_random_init", True):
                encoders = {"random_init": None, **encoders}
            results = nl.transfer(config, wd, mesh, encoders, tr_train, tr_test)
            if results is None:
                return {"stopped": "transfer", "step": res.step}
            report["transfer"] = {
                "class_names": list(names),
                "num_train": len(tr_train),
                "num_test": len(tr_test),
                "results": results,
            }
            if is_main:
                plots.transfer_miou(
                    wd.file("transfer_miou.png"),
                    results,
                    f"{config.data.name}: encoder transferred to {len(names)} classes",
                )
        if is_main:
            wd.write_eval_report("noisy_label_pretraining", report, config)
    return report
