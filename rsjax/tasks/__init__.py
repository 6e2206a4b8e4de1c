"""Supervised tasks for the one training loop (:func:`rsjax.train.fit`).

A task is a *trainable* with the interface of the SSL methods (``rsjax.methods.base.Method``):
``init(rng, batch) -> (params, batch_stats, extra)``, ``loss(params, batch_stats, extra, batch,
rngs, step) -> (loss, {"batch_stats", "metrics"})``, ``update_extra``, ``encode`` and
``sample_batch(batch_size)``, plus ``predict(params, batch_stats, batch)`` (eval mode) for the
batched predictions of the evaluators. A task built with ``pretrained=(params, batch_stats, meta)``
(``rsjax.checkpoint.load_encoder``) starts from that encoder; parameter trees are
``{"encoder", "decoder" | "head"}`` like every method's, so checkpoints of a task export and
evaluate like any pretraining run's.

* :class:`~rsjax.tasks.segmentation.SegmentationTask`: encoder + UNet / DeepLabv3+ / PSPNet,
  softmax CE + Dice (also the noisy-label pretraining method, ``config.method = "noisy_label"``).
* :class:`~rsjax.tasks.change_detection.ChangeDetectionTask`: siamese encoder + UNet, BCE + Dice.
* :class:`~rsjax.tasks.classification.ClassifierTask`: encoder + linear head (fine-tuning),
  softmax CE or multi-label sigmoid BCE.
"""

from rsjax.tasks.base import Task
from rsjax.tasks.change_detection import ChangeDetectionTask
from rsjax.tasks.classification import ClassifierTask
from rsjax.tasks.segmentation import SegmentationTask

__all__ = ["Task", "SegmentationTask", "ChangeDetectionTask", "ClassifierTask"]
