"""Segmentation job (``config.job = "segmentation"``): see :mod:`rsjax.evaluate.segmentation`.

Run::

    python -m rsjax.main --config=configs/seg.py:smoke --workdir=/tmp/smoke
"""

from __future__ import annotations

import os

import numpy as np

from rsjax import plots
from rsjax.data.segmentation import IGNORE_INDEX
from rsjax.evaluate import dense
from rsjax.evaluate import metrics as M
from rsjax.evaluate import segmentation as seg
from rsjax.tasks import SegmentationTask
from rsjax.tasks.segmentation import output_stride


def run(config, workdir: str, *, data=None, info=None) -> dict:
    """The job; ``data`` = ``(train, test)`` raw arrays instead of reading ``config.data`` (then
    ``info`` = their registry entry)."""
    ignore = IGNORE_INDEX  # the in-memory ignore label; stored masks follow the registry (seg.labels)
    num_classes = int(config.model.num_classes)

    def make_task(pretrained, train=None):  # train: unused (change detection fits pos_weight to it)
        return SegmentationTask(config, num_classes=num_classes, ignore_index=ignore, pretrained=pretrained)

    def prepare(train, test, info):
        train, test = seg.labels(train, info), seg.labels(test, info)
        for name, arrays in (("train", train), ("test", test)):
            seg.check(arrays, info, config, name)
        return train, test

    def report(wd, task, test, pred, info, summary):
        names = list(
            config.data.class_names
            or (info.class_names if len(info.class_names) == num_classes else [str(i) for i in range(num_classes)])
        )
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
            "output_stride": output_stride(config.model),
            "freeze_encoder": bool(task.freeze_encoder),
            "num_test": int(len(test["image"])),
            **summary,
        }
        if wd.is_main:
            seg.overlay(
                test,
                pred,
                info,
                num_classes,
                names,
                ignore,
                os.path.join(wd.path, "segmentation_overlay.png"),
                n=int(config.eval.get("num_pictures", 4)),
            )
            plots.bars(
                {k: (0.0 if np.isnan(v) else v) for k, v in metrics["per_class_iou"].items()},
                os.path.join(wd.path, "per_class_iou.png"),
                ylabel="IoU",
                title=f"{config.data.name} {config.model.decoder}: mIoU {metrics['miou']:.3f}",
            )
            wd.write_eval_report("segmentation", metrics, config)
            print(
                f"{config.data.name} ({config.model.decoder}): mIoU {metrics['miou']:.4f} overall accuracy "
                f"{metrics['overall_accuracy']:.4f} ({metrics['num_test']} test images)",
                flush=True,
            )
        return metrics

    return dense.run(
        config,
        workdir,
        make_task=make_task,
        load_data=(lambda c: data) if data is not None else seg.load_data,
        prepare=prepare,
        image_keys=("image",),
        report=report,
        info=info,
    )
