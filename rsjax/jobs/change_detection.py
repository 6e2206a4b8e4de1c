"""Change detection job (``config.job = "change_detection"``): see :mod:`rsjax.evaluate.change_detection`.

Run::

    python -m rsjax.main --config=configs/cd_levir.py:smoke --workdir=/tmp/smoke
"""

from __future__ import annotations

import os

import numpy as np

from rsjax.data.segmentation import IGNORE_INDEX
from rsjax.evaluate import change_detection as cd
from rsjax.evaluate import dense
from rsjax.evaluate import metrics as M
from rsjax.tasks import ChangeDetectionTask


def run(config, workdir: str, *, data=None, info=None) -> dict:
    """The job; ``data`` = ``(train, test)`` raw arrays instead of reading ``config.data`` (then
    ``info`` = their registry entry)."""
    ignore = IGNORE_INDEX  # the in-memory ignore label; stored change maps follow the registry (cd.labels)

    def make_task(pretrained, train=None):  # train: the prepared training arrays (loss.pos_weight_power)
        return ChangeDetectionTask(
            config, ignore_index=ignore, pretrained=pretrained, train_change=None if train is None else train["change"]
        )

    def prepare(train, test, info):
        train, test = cd.labels(train, info), cd.labels(test, info)
        for name, arrays in (("train", train), ("test", test)):
            cd.check(arrays, info, config, name)
        return train, test

    def report(wd, task, test, pred, info, summary):
        cm = M.dense_confusion_matrix(pred, test["change"], 2, ignore)
        metrics = {
            **M.binary_scores(cm),
            "num_test": int(len(test["a"])),
            "freeze_encoder": bool(task.freeze_encoder),
            "pos_weight": task.pos_weight,
            "train_change_fraction": task.train_change_fraction,
            **summary,
        }
        if wd.is_main:
            cd.overlay(
                test, pred, info, os.path.join(wd.path, "change_overlay.png"), n=int(config.eval.get("num_pictures", 4))
            )
            wd.write_eval_report("change_detection", metrics, config)
            if config.eval.get("save_predictions", False):  # the test change maps, in read order
                np.savez_compressed(os.path.join(wd.path, "predictions.npz"), change=pred.astype(np.uint8))
            print(
                f"{config.data.name}: change F1 {metrics['f1']:.4f} IoU {metrics['iou']:.4f} precision "
                f"{metrics['precision']:.4f} recall {metrics['recall']:.4f} ({metrics['num_test']} test pairs)",
                flush=True,
            )
        return metrics

    return dense.run(
        config,
        workdir,
        make_task=make_task,
        load_data=(lambda c: data) if data is not None else cd.load_data,
        prepare=prepare,
        image_keys=("a", "b"),
        report=report,
        info=info,
    )
