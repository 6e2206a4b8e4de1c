"""Evaluation metrics as pure numpy functions (no JAX, no config).

Classification (single label): :func:`accuracy`, :func:`per_class_accuracy`,
:func:`confusion_matrix` (the ones of :mod:`rsjax.evaluate.classification`, re-exported).

Multi-label: :func:`average_precision` with scikit-learn's ``average_precision_score``
definition (step-wise area under the precision-recall curve, no interpolation)::

    AP = sum_k (R_k - R_{k-1}) * P_k

over the thresholds ``k`` = the distinct scores in decreasing order (tied scores enter
together), ``P_k`` / ``R_k`` precision / recall of "score >= threshold k", ``R_0 = 0``.
Micro AP treats every (sample, class) pair as one binary decision (``ravel``); macro AP is
the mean of the per-class APs over the classes with at least one positive (a class without
positives has no defined AP: it is NaN in ``per_class`` and left out of the mean).

Dense prediction: metrics come from a confusion matrix ``cm[true, pred]`` accumulated over
a whole evaluation set (:func:`dense_confusion_matrix` per batch, summed), i.e. totals over
all pixels, not a mean of per-image scores.

* :func:`segmentation_scores`: ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` (NaN when the class is
  in neither the labels nor the predictions; mIoU = mean over the others), overall accuracy
  = trace / total, per-class accuracy (recall).
* :func:`binary_scores`: precision, recall, F1, IoU of the positive ("change") class; a 0/0
  ratio (no predicted / no true change) is NaN, except F1 and IoU, which are 1.0 when there
  is no change in the labels and none predicted (a perfect empty prediction).

Pixels whose label equals ``ignore_index`` are dropped before counting. Any other label
outside ``[0, num_classes)`` raises ValueError.
"""

from __future__ import annotations

import numpy as np


def accuracy(pred, labels) -> float:
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float((pred == labels).mean()) if labels.size else float("nan")


def per_class_accuracy(pred, labels, num_classes: int) -> list[float]:
    pred, labels = np.asarray(pred), np.asarray(labels)
    return [float((pred[labels == c] == c).mean()) if (labels == c).any() else float("nan") for c in range(num_classes)]


def confusion_matrix(pred, labels, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(pred)), 1)
    return cm


__all__ = [
    "accuracy",
    "per_class_accuracy",
    "confusion_matrix",
    "average_precision",
    "multilabel_map",
    "dense_confusion_matrix",
    "segmentation_scores",
    "binary_scores",
    "segmentation_metrics",
    "binary_change_metrics",
]


# --------------------------------------------------------------------------------------
# Multi-label average precision
# --------------------------------------------------------------------------------------
def average_precision(scores, targets) -> float:
    """AP of one binary problem (scikit-learn's definition); NaN without positives.

    Args:
      scores: [N] real-valued scores (higher = more likely positive).
      targets: [N] {0, 1}.
    """
    s = np.asarray(scores, np.float64).ravel()
    t = np.asarray(targets).ravel().astype(bool)
    if s.shape != t.shape:
        raise ValueError(f"scores {s.shape} and targets {t.shape} differ in size")
    n_pos = int(t.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    # The last position of every run of equal scores is one threshold.
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(t)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multilabel_map(scores, targets) -> dict:
    """Micro / macro mAP and per-class AP of multi-label scores.

    Args:
      scores: [N, C] scores (logits or probabilities: AP only uses their order).
      targets: [N, C] multi-hot {0, 1}.

    Returns:
      ``{"micro_map", "macro_map", "per_class_ap" (list, NaN for classes without positives),
      "classes_with_positives"}``.
    """
    s, t = np.asarray(scores), np.asarray(targets)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"multilabel_map expects scores and targets [N, C] of equal shape, got {s.shape}, {t.shape}")
    per_class = [average_precision(s[:, c], t[:, c]) for c in range(s.shape[1])]
    valid = [a for a in per_class if not np.isnan(a)]
    return {
        "micro_map": average_precision(s.ravel(), t.ravel()),
        "macro_map": float(np.mean(valid)) if valid else float("nan"),
        "per_class_ap": per_class,
        "classes_with_positives": len(valid),
    }


# --------------------------------------------------------------------------------------
# Dense prediction (segmentation, change detection)
# --------------------------------------------------------------------------------------
def dense_confusion_matrix(pred, labels, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """``cm[true, pred]`` (int64 [C, C]) over all pixels whose label is not ``ignore_index``."""
    p = np.asarray(pred).ravel().astype(np.int64)
    y = np.asarray(labels).ravel().astype(np.int64)
    if p.shape != y.shape:
        raise ValueError(f"predictions ({np.shape(pred)}) and labels ({np.shape(labels)}) differ in size")
    if ignore_index is not None:
        keep = y != ignore_index
        p, y = p[keep], y[keep]
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(
            f"labels contain values {sorted(set(np.unique(y[bad]).tolist()))[:5]} outside "
            f"[0, {num_classes}) that are not ignore_index={ignore_index}"
        )
    if ((p < 0) | (p >= num_classes)).any():
        raise ValueError(f"predictions outside [0, {num_classes})")
    return np.bincount(y * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _div(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def segmentation_scores(cm) -> dict:
    """mIoU, per-class IoU, overall accuracy and per-class accuracy from ``cm[true, pred]``."""
    cm = np.asarray(cm, np.int64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    iou = _div(tp, tp + fp + fn)
    total = cm.sum()
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "per_class_iou": [float(v) for v in iou],
        "overall_accuracy": float(tp.sum() / total) if total else float("nan"),
        "per_class_accuracy": [float(v) for v in _div(tp, tp + fn)],
        "num_pixels": int(total),
    }


def binary_scores(cm) -> dict:
    """Precision / recall / F1 / IoU of class 1 from a 2x2 ``cm[true, pred]`` (see module doc)."""
    cm = np.asarray(cm, np.int64)
    if cm.shape != (2, 2):
        raise ValueError(f"binary_scores expects a 2x2 confusion matrix, got {cm.shape}")
    tp, fp, fn, tn = int(cm[1, 1]), int(cm[0, 1]), int(cm[1, 0]), int(cm[0, 0])
    empty = tp + fp + fn == 0
    precision = float(_div(tp, tp + fp))
    recall = float(_div(tp, tp + fn))
    return {
        "precision": precision,
        "recall": recall,
        "f1": 1.0 if empty else float(2 * tp / (2 * tp + fp + fn)),
        "iou": 1.0 if empty else float(tp / (tp + fp + fn)),
        "overall_accuracy": float((tp + tn) / cm.sum()) if cm.sum() else float("nan"),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def segmentation_metrics(pred, labels, num_classes: int, ignore_index: int | None = None) -> dict:
    """:func:`segmentation_scores` of integer predictions against labels (any equal shapes)."""
    return segmentation_scores(dense_confusion_matrix(pred, labels, num_classes, ignore_index))


def binary_change_metrics(pred, labels, ignore_index: int | None = None) -> dict:
    """:func:`binary_scores` of {0, 1} change predictions against {0, 1} labels."""
    return binary_scores(dense_confusion_matrix(pred, labels, 2, ignore_index))
