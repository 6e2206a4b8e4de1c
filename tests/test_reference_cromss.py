"""rsjax against the code CromSS (zhu-xlab/CromSS) runs: its segmentation loss, the binary loss
of its one-channel branch, and its ReduceLROnPlateau learning-rate rule.

CromSS (``models/pl_pretrain.py`` / ``models/pl_finetune.py``, ``_get_loss``) sums torch
``CrossEntropyLoss(ignore_index)`` (or ``BCEWithLogitsLoss()`` for one channel) and
segmentation_models_pytorch ``DiceLoss(mode, from_logits=True, ignore_index)``. smp is not
installed here: ``smp_dice_loss`` below is a numpy port of smp 0.6.0's ``DiceLoss.forward`` +
``soft_tversky_score`` written line for line after their logic (including its
``(sum p + sum y - sum |p - y|) / 2`` intersection, which rsjax does not use). torch's own
``cross_entropy`` / ``binary_cross_entropy_with_logits`` and ``ReduceLROnPlateau`` are the
second references.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from rsjax import losses, optim


# --- numpy ports (test references) -----------------------------------------------------
def _log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _logsigmoid(x):
    return -np.logaddexp(0.0, -x)


def smp_dice_loss(y_pred, y_true, mode, ignore_index=None, smooth=0.0, eps=1e-7):
    """smp 0.6.0 ``DiceLoss(mode, from_logits=True, ignore_index, smooth, eps).forward``.

    ``y_pred`` [N, C, H, W] logits (C = 1 for binary), ``y_true`` [N, H, W] int.
    """
    y_pred = np.asarray(y_pred, np.float64)
    y_true = np.asarray(y_true)
    if mode == "multiclass":
        y_pred = np.exp(_log_softmax(y_pred, axis=1))
    else:
        y_pred = np.exp(_logsigmoid(y_pred))
    bs = y_true.shape[0]
    num_classes = y_pred.shape[1]
    dims = (0, 2)
    if mode == "binary":
        y_true = y_true.reshape(bs, 1, -1)
        y_pred = y_pred.reshape(bs, 1, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred = y_pred * mask
            y_true = y_true * mask
    else:
        y_true = y_true.reshape(bs, -1)
        y_pred = y_pred.reshape(bs, num_classes, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred = y_pred * mask[:, None, :]
            y_true = np.eye(num_classes, dtype=np.int64)[y_true * mask]  # N, H*W, C
            y_true = y_true.transpose(0, 2, 1) * mask[:, None, :]
        else:
            y_true = np.eye(num_classes, dtype=np.int64)[y_true].transpose(0, 2, 1)
    y_true = y_true.astype(np.float64)
    # soft_tversky_score(output, target, 0.5, 0.5, smooth, eps, dims)
    output_sum = y_pred.sum(axis=dims)
    target_sum = y_true.sum(axis=dims)
    difference = np.abs(y_pred - y_true).sum(axis=dims)
    intersection = (output_sum + target_sum - difference) / 2
    fp = output_sum - intersection
    fn = target_sum - intersection
    scores = (intersection + smooth) / np.maximum(intersection + 0.5 * fp + 0.5 * fn + smooth, eps)
    loss = 1.0 - scores
    loss = loss * (y_true.sum(axis=dims) > 0)
    return loss.mean()


def torch_ce_mean(logits_nchw, labels, ignore_index=None):
    """torch ``CrossEntropyLoss(ignore_index)`` semantics: mean of -log p_y over non-ignored pixels."""
    logp = _log_softmax(np.asarray(logits_nchw, np.float64), axis=1)
    valid = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    safe = np.where(valid, labels, 0)
    nll = -np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    return nll[valid].sum() / valid.sum()


def bce_with_logits_mean(logits, y, valid):
    x = np.asarray(logits, np.float64)
    y = np.asarray(y, np.float64)
    per = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    return per[valid].sum() / valid.sum()


def _case(seed, b=3, h=8, w=8, c=5, present=3, ignore=-1, p_ignore=0.2):
    """Logits [B, H, W, C]; labels from the first ``present`` classes only (the others absent
    from the batch) with ``p_ignore`` of the pixels set to ``ignore``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (b, h, w, c)).astype(np.float32)
    labels = rng.integers(0, present, (b, h, w))
    if ignore is not None:
        labels = np.where(rng.random((b, h, w)) < p_ignore, ignore, labels)
    return logits, labels.astype(np.int32)


# --- ce_dice, reduction="batch" = CromSS ----------------------------------------------
@pytest.mark.parametrize("ignore_index", [None, -1, 5])
@pytest.mark.parametrize("dice_weight", [1.0, 0.3])
def test_ce_dice_batch_matches_cromss(ignore_index, dice_weight):
    logits, labels = _case(0, ignore=ignore_index)
    got = losses.ce_dice(logits, labels, ignore_index=ignore_index, dice_weight=dice_weight, reduction="batch")
    assert got.shape == ()
    nchw = logits.transpose(0, 3, 1, 2)
    ce = torch_ce_mean(nchw, labels, ignore_index)
    dice = smp_dice_loss(nchw, labels, "multiclass", ignore_index)
    np.testing.assert_allclose(got, ce + dice_weight * dice, rtol=1e-5, atol=1e-6)
    # second reference for the CE part: torch itself (ignore_index=-100 means "none" in torch)
    ce_t = torch.nn.functional.cross_entropy(
        torch.from_numpy(nchw).double(),
        torch.from_numpy(labels).long(),
        ignore_index=-100 if ignore_index is None else ignore_index,
    )
    np.testing.assert_allclose(ce, ce_t.item(), rtol=1e-12)
    # under jit too
    f = jax.jit(
        lambda lg: losses.ce_dice(lg, labels, ignore_index=ignore_index, dice_weight=dice_weight, reduction="batch")
    )
    np.testing.assert_allclose(f(logits), got, rtol=1e-6, atol=1e-7)


def test_ce_dice_batch_absent_classes_cost_nothing():
    # classes 3 and 4 never appear: their Dice terms are 0 (smp), yet the mean is over all 5
    logits, labels = _case(1, present=3, ignore=None)
    nchw = logits.transpose(0, 3, 1, 2)
    got = losses.ce_dice(logits, labels, dice_weight=1.0, reduction="batch") - torch_ce_mean(nchw, labels)
    # by hand: (1/5) sum_{c < 3} (1 - 2 I_c / (P_c + Y_c))
    p = np.exp(_log_softmax(logits.astype(np.float64), axis=-1))
    y = np.eye(5)[labels]
    terms = [1 - 2 * (p[..., c] * y[..., c]).sum() / (p[..., c].sum() + y[..., c].sum()) for c in range(3)]
    np.testing.assert_allclose(got, sum(terms) / 5, rtol=1e-5)


def test_ce_dice_batch_all_ignored_is_zero_not_nan():
    logits, _ = _case(2)
    labels = np.full(logits.shape[:3], -1, np.int32)
    out = losses.ce_dice(logits, labels, ignore_index=-1, reduction="batch")
    assert float(out) == 0.0
    g = jax.grad(lambda lg: losses.ce_dice(lg, labels, ignore_index=-1, reduction="batch"))(logits)
    assert np.all(np.isfinite(g))


def test_ce_dice_gradients_match_between_forms_on_one_example():
    # B = 1, every class present: the per-example form differs from the batch form only by the
    # smoothing (eps = 1 vs 0) -- a check that "batch" is the same loss, pooled differently
    logits, labels = _case(3, b=1, h=16, w=16, c=3, present=3, ignore=None)
    y = np.eye(3)[labels]
    p = np.exp(_log_softmax(logits.astype(np.float64), axis=-1))
    inter, card = (p * y).sum((0, 1, 2)), p.sum((0, 1, 2)) + y.sum((0, 1, 2))
    ce = torch_ce_mean(logits.transpose(0, 3, 1, 2), labels)
    np.testing.assert_allclose(
        losses.ce_dice(logits, labels, reduction="batch"), ce + np.mean(1 - 2 * inter / card), rtol=1e-5
    )
    np.testing.assert_allclose(
        losses.ce_dice(logits, labels, reduction="example")[0],
        ce + np.mean(1 - (2 * inter + 1) / (card + 1)),
        rtol=1e-5,
    )


def test_issue_example_dice_terms():
    """32 x 32 crops, 6 classes, p = 0.9 on the true class (0.02 on each other): three crops of a
    single class (0, 1, 2) and three split in halves (3|4, 4|5, 5|3): every class covers 1024
    pixels of the batch. Hand-computed:

    * CromSS (batch Dice, eps 1e-7): per class I = 0.9 n, P = 0.9 n + 0.02 (N - n), Y = n with
      N = 6 n, so Dice = 1.8 / (1.9 + 0.1) = 0.9 and the Dice term is 0.100.
    * rsjax "example" (eps = 1, per crop): single-class crop: present class
      (2 * 0.9 * 1024 + 1) / (0.9 * 1024 + 1024 + 1), absent class 1 / (0.02 * 1024 + 1);
      half-and-half crop: present (2 * 0.9 * 512 + 1) / (0.9 * 512 + 0.02 * 512 + 512 + 1);
      Dice term = mean over crops of 1 - mean over classes = 0.730.
    """
    s, half = 32, 16
    labels = np.zeros((6, s, s), np.int32)
    for i, c in enumerate((0, 1, 2)):
        labels[i] = c
    for i, (a, b) in enumerate(((3, 4), (4, 5), (5, 3))):
        labels[3 + i, :, :half], labels[3 + i, :, half:] = a, b
    logits = np.where(np.eye(6, dtype=bool)[labels], np.log(0.9), np.log(0.02)).astype(np.float32)
    ce = -math.log(0.9)

    batch_dice = float(losses.ce_dice(logits, labels, reduction="batch")) - ce
    ex_dice = float(jnp.mean(losses.ce_dice(logits, labels, reduction="example"))) - ce

    absent = 1 / (0.02 * 1024 + 1)
    one = 1 - (((2 * 0.9 * 1024 + 1) / (0.9 * 1024 + 1024 + 1)) + 5 * absent) / 6
    two = 1 - (2 * (2 * 0.9 * 512 + 1) / (0.9 * 512 + 0.02 * 512 + 512 + 1) + 4 * absent) / 6
    # 2e-5: each term is a float32 mean over 6,144 pixels minus the CE; XLA:CPU's own reduction
    # kernels (rsjax.backend turns its YNNPACK fusions off) sum in another order: ~1e-4 relative.
    np.testing.assert_allclose(batch_dice, 0.1, atol=2e-5)
    np.testing.assert_allclose(ex_dice, (one + two) / 2, atol=2e-5)
    assert round(batch_dice, 3) == 0.100 and round(ex_dice, 3) == 0.730
    np.testing.assert_allclose(
        batch_dice, smp_dice_loss(logits.transpose(0, 3, 1, 2), labels, "multiclass"), atol=2e-5
    )  # the float32 CE mean's rounding, as above


def test_ce_dice_bad_reduction_names_the_key():
    logits, labels = _case(4)
    with pytest.raises(ValueError, match="dice_reduction"):
        losses.ce_dice(logits, labels, reduction="mean")


# --- bce_dice, reduction="batch" = CromSS's one-channel branch -------------------------
@pytest.mark.parametrize("ignore_index", [None, 255])
def test_bce_dice_batch_matches_reference(ignore_index):
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, (3, 8, 8)).astype(np.float32)
    labels = (rng.random((3, 8, 8)) < 0.3).astype(np.int32)
    if ignore_index is not None:
        labels = np.where(rng.random((3, 8, 8)) < 0.2, ignore_index, labels)
    got = losses.bce_dice(logits, labels, ignore_index=ignore_index, dice_weight=0.7, reduction="batch")
    assert got.shape == ()
    valid = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    y = np.where(valid, labels, 0)
    bce = bce_with_logits_mean(logits, y, valid)
    dice = smp_dice_loss(logits[:, None], labels, "binary", ignore_index)
    np.testing.assert_allclose(got, bce + 0.7 * dice, rtol=1e-5, atol=1e-6)
    if ignore_index is None:  # torch's BCEWithLogitsLoss() (mean) itself
        bce_t = torch.nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(logits).double(), torch.from_numpy(labels).double()
        )
        np.testing.assert_allclose(bce, bce_t.item(), rtol=1e-12)
        # pos_weight: torch's BCEWithLogitsLoss(pos_weight=w), the change pixels' term times w
        w = 4.0
        bce_w = torch.nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(logits).double(), torch.from_numpy(labels).double(), pos_weight=torch.tensor(w).double()
        )
        got_w = losses.bce_dice(logits, labels, dice_weight=0.0, reduction="batch", pos_weight=w)
        np.testing.assert_allclose(got_w, bce_w.item(), rtol=1e-5)


def test_bce_dice_batch_without_change_has_no_dice_term():
    rng = np.random.default_rng(6)
    logits = rng.normal(0, 2, (2, 8, 8)).astype(np.float32)
    labels = np.zeros((2, 8, 8), np.int32)
    got = losses.bce_dice(logits, labels, dice_weight=1.0, reduction="batch")
    np.testing.assert_allclose(got, bce_with_logits_mean(logits, labels, np.ones(labels.shape, bool)), rtol=1e-5)
    assert smp_dice_loss(logits[:, None], labels, "binary") == 0.0


# --- ReduceLROnPlateau -----------------------------------------------------------------
def _run_rule(metrics, **kw):
    base_lr = kw.pop("base_lr", 1.0)
    st = {
        "scale": 1.0,
        "best": -math.inf if kw.get("mode", "max") == "max" else math.inf,
        "num_bad": 0,
        "cooldown_counter": 0,
        "num_evals": 0,
    }
    lrs = []
    for m in metrics:
        st = optim.plateau_update(st, m, base_lr=base_lr, **kw)
        lrs.append(base_lr * st["scale"])
    return lrs, st


def _run_torch(metrics, base_lr=1.0, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
    lrs = []
    for m in metrics:
        sched.step(m)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_plateau_hand_computed_sequence():
    # max, rel threshold 1e-4, patience 2, factor 0.5 (by hand):
    # 0.5, 0.6 improve; 0.6 and 0.60005 (< 0.6 * 1.0001) are bad 1, 2; the next 0.6 is bad 3 > 2:
    # lr 0.5; 0.7 improves; three more 0.7: lr 0.25; three more: lr 0.125
    metrics = [0.5, 0.6, 0.6, 0.60005, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    want = [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    lrs, st = _run_rule(metrics, mode="max", patience=2, factor=0.5)
    assert lrs == want
    assert st["best"] == 0.7 and st["num_evals"] == len(metrics)
    assert _run_torch(metrics, mode="max", patience=2, factor=0.5) == want


@pytest.mark.parametrize(
    "kw",
    [
        dict(mode="max", patience=30, factor=0.5),  # CromSS
        dict(mode="max", patience=3, factor=0.5, cooldown=2),
        dict(mode="max", patience=1, factor=0.1, threshold=0.05, threshold_mode="abs", min_lr=0.003),
        dict(mode="min", patience=2, factor=0.5, threshold=1e-3),
        dict(mode="min", patience=0, factor=0.7, threshold_mode="abs", cooldown=1),
    ],
)
def test_plateau_matches_torch(kw):
    rng = np.random.default_rng(7)
    # a rising curve that flattens, with noise: improvements early, plateaus later
    n = 300
    metrics = list(np.round(1 - np.exp(-np.arange(n) / 15) + rng.normal(0, 0.01, n), 4))
    lrs, _ = _run_rule(metrics, base_lr=0.005, **kw)
    ref = _run_torch(metrics, base_lr=0.005, **kw)
    np.testing.assert_allclose(lrs, ref, rtol=1e-12)
    assert min(ref) < 0.005  # the sequence does trigger reductions


def test_plateau_scale_scales_the_learning_rate():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.5, 0.1, -0.3])}
    tx = optax.chain(optax.adam(1e-2), optim.plateau_scale("max"))
    st = tx.init(params)
    assert float(st[-1].scale) == 1.0 and float(st[-1].best) == -np.inf
    st = (st[0], st[-1]._replace(scale=jnp.float32(0.25)))
    upd, _ = tx.update(grads, st, params)
    ref, _ = optax.adam(0.25e-2).update(grads, optax.adam(0.25e-2).init(params), params)
    np.testing.assert_allclose(upd["w"], ref["w"], rtol=1e-6)
