"""Metrics against plain loop references (written independently of rsjax.evaluate.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rsjax.evaluate import metrics as M


# --- references ------------------------------------------------------------------------
def ref_ap(scores, targets):
    """Threshold at every distinct score, from high to low; area = sum (dR * P)."""
    scores, targets = list(map(float, scores)), list(map(int, targets))
    n_pos = sum(targets)
    if n_pos == 0:
        return float("nan")
    ap, prev_r = 0.0, 0.0
    for th in sorted(set(scores), reverse=True):
        tp = sum(1 for s, t in zip(scores, targets) if s >= th and t == 1)
        fp = sum(1 for s, t in zip(scores, targets) if s >= th and t == 0)
        p, r = tp / (tp + fp), tp / n_pos
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def ref_seg(pred, labels, num_classes, ignore_index):
    tp = [0] * num_classes
    fp = [0] * num_classes
    fn = [0] * num_classes
    correct = total = 0
    for p, y in zip(np.ravel(pred).tolist(), np.ravel(labels).tolist()):
        if ignore_index is not None and y == ignore_index:
            continue
        total += 1
        if p == y:
            tp[y] += 1
            correct += 1
        else:
            fp[p] += 1
            fn[y] += 1
    iou = [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else float("nan") for c in range(num_classes)]
    valid = [v for v in iou if not math.isnan(v)]
    return iou, sum(valid) / len(valid), correct / total


def ref_binary(pred, labels, ignore_index):
    tp = fp = fn = 0
    for p, y in zip(np.ravel(pred).tolist(), np.ravel(labels).tolist()):
        if ignore_index is not None and y == ignore_index:
            continue
        tp += p == 1 and y == 1
        fp += p == 1 and y == 0
        fn += p == 0 and y == 1
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else (1.0 if tp + fp + fn == 0 else 0.0)
    iou = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    return precision, recall, f1, iou


def close(a, b, tol=1e-9):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return abs(a - b) <= tol


# --- tests ---------------------------------------------------------------------------------
def test_average_precision_known_value_and_ties():
    # scikit-learn's documented example: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.8333
    assert M.average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.833333, abs=1e-6)
    # All scores tied: one threshold, AP = prevalence.
    assert M.average_precision([0.5] * 4, [1, 0, 0, 0]) == pytest.approx(0.25)
    assert math.isnan(M.average_precision([0.3, 0.2], [0, 0]))


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_loop(seed):
    rng = np.random.default_rng(seed)
    n = 40
    scores = np.round(rng.normal(size=n), 1)  # rounding creates ties
    targets = (rng.random(n) < 0.3).astype(int)
    targets[0] = 1
    assert M.average_precision(scores, targets) == pytest.approx(ref_ap(scores, targets), abs=1e-12)


def test_multilabel_map_micro_macro():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(30, 5))
    targets = (rng.random((30, 5)) < 0.3).astype(int)
    targets[:, 4] = 0  # a class without positives: NaN, left out of macro
    out = M.multilabel_map(scores, targets)
    per = [ref_ap(scores[:, c], targets[:, c]) for c in range(5)]
    for a, b in zip(out["per_class_ap"], per):
        assert close(a, b, 1e-12)
    assert out["macro_map"] == pytest.approx(np.mean(per[:4]), abs=1e-12)
    assert out["micro_map"] == pytest.approx(ref_ap(scores.ravel(), targets.ravel()), abs=1e-12)
    assert out["classes_with_positives"] == 4
    perfect = M.multilabel_map(targets + 0.1 * scores * 0, targets)
    assert perfect["micro_map"] == 1.0


@pytest.mark.parametrize("ignore_index", [None, 255])
def test_segmentation_metrics_match_loop(ignore_index):
    rng = np.random.default_rng(1)
    c = 4
    labels = rng.integers(0, c, (3, 9, 7))
    pred = np.where(rng.random(labels.shape) < 0.6, labels, rng.integers(0, c, labels.shape))
    labels[labels == 3] = 2  # class 3 never true -> IoU from false positives only (0.0)
    if ignore_index is not None:
        labels[rng.random(labels.shape) < 0.2] = ignore_index
    out = M.segmentation_metrics(pred, labels, c, ignore_index)
    iou, miou, oa = ref_seg(pred, labels, c, ignore_index)
    assert all(close(a, b, 1e-12) for a, b in zip(out["per_class_iou"], iou))
    assert out["miou"] == pytest.approx(miou, abs=1e-12)
    assert out["overall_accuracy"] == pytest.approx(oa, abs=1e-12)


def test_segmentation_absent_class_is_nan_and_excluded():
    labels = np.array([[0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 2]])
    out = M.segmentation_metrics(pred, labels, 3, ignore_index=255)
    assert out["per_class_iou"][:2] == [0.5, 0.5] and math.isnan(out["per_class_iou"][2])
    assert out["miou"] == 0.5 and out["num_pixels"] == 3
    with pytest.raises(ValueError, match="outside"):
        M.segmentation_metrics(pred, labels, 3, ignore_index=None)


@pytest.mark.parametrize("ignore_index", [None, 255])
def test_binary_change_metrics_match_loop(ignore_index):
    rng = np.random.default_rng(2)
    labels = (rng.random((4, 16, 16)) < 0.2).astype(np.int64)
    pred = np.where(rng.random(labels.shape) < 0.85, labels, 1 - labels)
    if ignore_index is not None:
        labels[rng.random(labels.shape) < 0.1] = ignore_index
    out = M.binary_change_metrics(pred, labels, ignore_index)
    p, r, f1, iou = ref_binary(pred, labels, ignore_index)
    assert out["precision"] == pytest.approx(p) and out["recall"] == pytest.approx(r)
    assert out["f1"] == pytest.approx(f1) and out["iou"] == pytest.approx(iou)


def test_binary_degenerate_cases():
    z = np.zeros((5, 5), int)
    empty = M.binary_change_metrics(z, z)
    assert empty["f1"] == 1.0 and empty["iou"] == 1.0 and math.isnan(empty["precision"])
    missed = M.binary_change_metrics(z, np.ones_like(z))
    assert missed["f1"] == 0.0 and missed["recall"] == 0.0 and math.isnan(missed["precision"])


def test_confusion_accumulates_over_batches():
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 3, (2, 8, 8)), rng.integers(0, 3, (2, 8, 8))
    total = M.dense_confusion_matrix(p[:1], y[:1], 3) + M.dense_confusion_matrix(p[1:], y[1:], 3)
    np.testing.assert_array_equal(total, M.dense_confusion_matrix(p, y, 3))
    ref = np.zeros((3, 3), int)
    for a, b in zip(y.ravel(), p.ravel()):
        ref[a, b] += 1
    np.testing.assert_array_equal(total, ref)


def test_classification_reexports():
    pred, y = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2])
    assert M.accuracy(pred, y) == 0.75
    assert M.per_class_accuracy(pred, y, 3) == [1.0, 1.0, 0.5]
    assert M.confusion_matrix(pred, y, 3)[2, 1] == 1
