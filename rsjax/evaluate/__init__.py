"""Evaluation: evaluators looked up by name, downstream metrics and the evaluation libraries.

``rsjax.evaluate.get(name)`` returns one of two kinds of evaluator (as big_vision's evaluator
registry, but plain functions):

Frozen-feature evaluators (:mod:`rsjax.evaluate.classification`)::

    fn(train_feats [N, F], train_targets, test_feats [M, F], test_targets, *, num_classes=None,
       **options) -> (metrics: dict, predictions: np.ndarray)

* ``knn``: weighted cosine kNN; options ``k``, ``temperature``; metrics ``top1``,
  ``per_class``, ``confusion_matrix``; predictions = labels [M].
* ``linear``: linear probe (softmax CE); options ``epochs``, ``lr``, ``weight_decay``, ``seed``;
  same metrics; predictions = labels [M].
* ``linear_multilabel``: linear probe (sigmoid BCE) on multi-hot targets [N, C]; same options;
  metrics ``micro_map``, ``macro_map``, ``per_class_ap``, ``classes_with_positives``;
  predictions = logits [M, C].

``classification.evaluator_options(name, config.eval, seed)`` maps an ``eval`` config block to
the options, and ``classification.frozen_eval`` runs features + evaluators for one encoder.
A job's frozen-feature evaluators are data: ``config.eval.evaluators`` (e.g. ``("knn", "linear")``;
the BigEarthNet job ``("linear_multilabel",)``), checked by :func:`check_feature_evaluators`.

Dense scorers (:mod:`rsjax.evaluate.metrics`; predictions already made)::

    fn(pred, labels, *, num_classes=None, ignore_index=None) -> metrics: dict

* ``segmentation``: integer class maps -> ``miou``, ``per_class_iou``, ``overall_accuracy``, ...
  (``num_classes`` required).
* ``change_detection``: {0, 1} change maps -> ``f1``, ``iou``, ``precision``, ``recall``, ...

Modules are imported on first use (importing :mod:`rsjax.evaluate` stays cheap).
"""

from __future__ import annotations

import importlib
from typing import Callable

from rsjax import errors
from rsjax.evaluate import metrics as M

# name -> "module:function"
EVALUATORS = {
    "knn": "rsjax.evaluate.classification:knn_evaluator",
    "linear": "rsjax.evaluate.classification:linear_evaluator",
    "linear_multilabel": "rsjax.evaluate.classification:linear_multilabel_evaluator",
    "segmentation": "rsjax.evaluate:segmentation_scorer",
    "change_detection": "rsjax.evaluate:change_detection_scorer",
}


def check_feature_evaluators(names_: tuple, *, multilabel: bool, key: str = "eval.evaluators") -> tuple[str, ...]:
    """``names_`` as a tuple after checking it names frozen-feature evaluators of the right kind
    (``linear_multilabel`` for multi-hot targets, ``knn`` / ``linear`` for single labels);
    ConfigError naming ``config.<key>`` otherwise."""
    names_ = tuple(names_ or ())
    allowed = ("linear_multilabel",) if multilabel else ("knn", "linear")
    bad = [n for n in names_ if n not in allowed]
    if not names_ or bad:
        raise errors.ConfigError(
            f"config.{key}={names_!r}: {'empty' if not names_ else f'{bad} not usable here'}; "
            f"this job's frozen-feature evaluators are {allowed}"
        )
    return names_


def names() -> list[str]:
    return sorted(EVALUATORS)


def get(name: str) -> Callable:
    """The evaluator registered as ``name`` (see the module docstring)."""
    if name not in EVALUATORS:
        raise errors.ConfigError(f"unknown evaluator {name!r}; known: {', '.join(names())}")
    module, fn = EVALUATORS[name].split(":")
    return getattr(importlib.import_module(module), fn)


def segmentation_scorer(pred, labels, *, num_classes: int | None = None, ignore_index: int | None = None) -> dict:
    """``"segmentation"``: :func:`rsjax.evaluate.metrics.segmentation_metrics` of class maps."""
    if not num_classes:
        raise ValueError("the segmentation evaluator needs num_classes")
    return M.segmentation_metrics(pred, labels, int(num_classes), ignore_index)


def change_detection_scorer(pred, labels, *, num_classes: int | None = None, ignore_index: int | None = None) -> dict:
    """``"change_detection"``: :func:`rsjax.evaluate.metrics.binary_change_metrics` of {0, 1} maps."""
    if num_classes not in (None, 2):
        raise ValueError(f"the change_detection evaluator is binary (num_classes=2), got {num_classes}")
    return M.binary_change_metrics(pred, labels, ignore_index)
