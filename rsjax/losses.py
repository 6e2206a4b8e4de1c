"""Pure loss functions on arrays (DESIGN §3, §6).

Everything here is a function of arrays only: no parameters, no config, no Flax
modules. State such as a MoCo queue goes in as an argument. Every loss returns a
per-example float32 vector; reduce it with ``jnp.mean`` in the caller. (Exception:
``ce_dice`` / ``bce_dice`` with ``reduction="batch"`` return the reference's scalar,
whose Dice is pooled over the batch and so has no per-example split.)

The contrastive losses are written on the GLOBAL batch. Under ``jax.jit`` with
batch-sharded inputs (``NamedSharding(mesh, P('data'))``) XLA gathers what the
similarity matrices need, so every anchor sees the negatives of every device.
There are no ``axis_name`` collectives in this module on purpose: a loss that
only sees its local shard is the bug described in DESIGN §2.

Numerics. All inputs are cast to float32. Contrastive losses are evaluated in
log space: ``-log(P / (P + N))`` with ``P = exp(l_pos)`` and
``P + N = sum_j exp(l_j)`` becomes ``logsumexp_j(l_j) - l_pos``, i.e. every
exponential is taken after subtracting the row maximum, so a small temperature
(large logits) cannot overflow.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

__all__ = ["nt_xent", "scene_infonce", "false_nt_xent", "ce_dice", "bce_dice"]

SCENE_MODES = ("none", "mask", "soft")
DICE_REDUCTIONS = ("example", "batch")  # ce_dice / bce_dice: rsjax's per-example form | the reference's batch form
FNSD_MODES = ("vissl", "gate_then_pick", "per_anchor")

# Squared-norm floor of the L2 normalisation: keeps x / ||x|| finite (and its
# gradient NaN-free) for an all-zero vector.
_NORM_EPS = 1e-12


def _l2_normalize(x: jax.Array) -> jax.Array:
    """``x / max(||x||_2, 1e-6)`` along the last axis, in float32."""
    x = jnp.asarray(x, jnp.float32)
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, _NORM_EPS))


def _log_add(a: jax.Array, b: jax.Array) -> jax.Array:
    """``log(exp(a) + exp(b))`` elementwise, with ``_log_add(a, -inf) == a`` bitwise.

    ``hi + log1p(exp(lo - hi))``: for ``b = -inf`` this is ``a + log1p(0) = a + 0``,
    which is exactly ``a`` — the property that makes FALSE with nothing to
    calibrate identical to NT-Xent. Its gradient is finite for ``b = -inf``.
    """
    hi = jnp.maximum(a, b)
    lo = jnp.minimum(a, b)
    return hi + jnp.log1p(jnp.exp(lo - hi))


def _two_view_logits(z1: jax.Array, z2: jax.Array, temperature):
    """Shared front end of :func:`nt_xent` and :func:`false_nt_xent`.

    Returns ``(sim, logits, pos_idx, lse)`` over the 2B views ``z = [z1; z2]``:
    ``sim = z z^T`` (cosines), ``logits = sim / tau`` with the diagonal (self)
    set to ``-inf``, ``pos_idx[i] = (i + B) mod 2B`` and
    ``lse[i] = logsumexp_{j != i} logits[i, j]`` (= log(P_i + N_i)).
    """
    chex.assert_rank([z1, z2], 2)
    chex.assert_equal_shape([z1, z2])
    b = z1.shape[0]
    n = 2 * b
    z = _l2_normalize(jnp.concatenate([z1, z2], axis=0))
    sim = z @ z.T  # [2B, 2B] cosines
    eye = jnp.eye(n, dtype=bool)
    logits = jnp.where(eye, -jnp.inf, sim / temperature)
    pos_idx = (jnp.arange(n) + b) % n
    lse = jax.nn.logsumexp(logits, axis=1)
    return sim, logits, pos_idx, lse


def nt_xent(z1: jax.Array, z2: jax.Array, *, temperature) -> jax.Array:
    r"""SimCLR NT-Xent (normalized temperature-scaled cross entropy), per anchor.

    The 2B views ``z = [z1; z2]`` are L2-normalized here (``z / ||z||``, so the
    caller may pass raw projector outputs). With ``s_ij = z_i . z_j`` and the
    positive of view i being its other view ``p(i) = (i + B) mod 2B``::

        loss_i = -log( exp(s_{i,p(i)}/tau) / sum_{j != i} exp(s_ij/tau) )
               = logsumexp_{j != i}(s_ij / tau) - s_{i,p(i)} / tau

    The denominator holds the positive and the 2B - 2 negatives (every view but
    the anchor itself), computed as a max-shifted logsumexp (no overflow for
    small tau).

    Args:
      z1: [B, D] embeddings of the first view.
      z2: [B, D] embeddings of the second view (row i pairs with ``z1[i]``).
      temperature: tau > 0.

    Returns:
      [2B] float32: the B anchors of ``z1`` first, then the B anchors of ``z2``.
    """
    _, logits, pos_idx, lse = _two_view_logits(z1, z2, temperature)
    l_pos = jnp.take_along_axis(logits, pos_idx[:, None], axis=1)[:, 0]
    return lse - l_pos


def scene_infonce(
    q: jax.Array,
    k: jax.Array,
    *,
    scene_q: jax.Array,
    scene_k: jax.Array,
    temperature,
    mode: str = "soft",
    queue: jax.Array | None = None,
    scene_queue: jax.Array | None = None,
    batch_negatives: bool = True,
) -> jax.Array:
    r"""Scene-aware MoCo InfoNCE (SwiMDiff's contrastive branch, DESIGN §3.1), per query.

    Inputs are L2-normalized projector outputs; they are re-normalized here
    (idempotent up to rounding) so that the logits are exact cosines / tau.

    Candidates of query i (``c^i``, with scene ids ``g^i``) depend on ``batch_negatives``:

    * ``True`` (SwiMDiff): the B keys of the global batch followed by the K queue
      entries, ``c^i = [k; queue]`` ([B + K, D]) for every i, ``g = [scene_k; scene_queue]``;
      the positive ``k_i`` is candidate i. Same-scene keys must be in the batch for
      scene-wide matching to act on the freshest keys.
    * ``False`` (MoCo v2, facebookresearch/moco ``builder.py``): the positive and the
      queue only, ``c^i = [k_i; queue]`` ([1 + K, D]); the positive is candidate 0, i.e.
      MoCo's ``logits = cat([q.k+, q.queue]) / T`` with label 0. The other keys of the
      batch are not candidates. Needs a queue (otherwise there is no negative).

    Logits ``l_ij = q_i . c^i_j / tau``. The false-negative set is
    ``F_i = {j : g^i_j == scene_q[i], j != pos(i)}`` (only candidates, so with
    ``batch_negatives=False`` only queue entries can be false negatives).

    With ``logp_ij = log_softmax_j(l'_ij)`` every mode is the cross entropy of a
    target distribution ``t_i``::

        loss_i = - sum_j t_ij * logp_ij

    * ``"none"``: plain MoCo InfoNCE: ``l' = l``, ``t_i = onehot(pos(i))``, i.e.
      ``loss_i = logsumexp_j l_ij - l_{i,pos(i)}``.
    * ``"mask"``: members of ``F_i`` are removed from the denominator:
      ``l'_ij = -inf`` for ``j in F_i`` (via ``where``), ``t_i = onehot(pos(i))``.
    * ``"soft"`` (default; the paper's "recalibrated labels"): ``l' = l`` and
      ``t_ij ∝ [j == pos(i)] + [j in F_i] * w_ij`` with
      ``w_ij = stop_gradient(max(0, q_i . c^i_j))`` (a cosine), normalized so that
      ``sum_j t_ij = 1``. The target is a constant of the gradient: only
      ``logp`` is differentiated, ``d loss_i / d l_ij = softmax_j(l_i) - t_ij``.
      The paper's exact normalization is not public; this is rsjax's documented choice.

    All three modes run the same operations (log_softmax, target, weighted sum),
    so with ``F_i`` empty ``"soft"`` (target exactly one-hot, divided by 1) and
    ``"mask"`` (nothing masked) give bitwise the value of ``"none"``.

    Args:
      q: [B, D] queries.
      k: [B, D] keys (``k[i]`` is the positive of ``q[i]``).
      scene_q: [B] int scene id of each query.
      scene_k: [B] int scene id of each key (normally equal to ``scene_q``).
      temperature: tau > 0.
      mode: ``"none" | "mask" | "soft"``.
      queue: optional [K, D] queue of past keys (negatives).
      scene_queue: [K] int scene ids of the queue; required with ``queue``.
      batch_negatives: whether the other keys of the batch are candidates (see above).

    Returns:
      [B] float32 per-query losses.
    """
    if mode not in SCENE_MODES:
        raise ValueError(f"scene_infonce: unknown mode {mode!r}; expected one of {SCENE_MODES}")
    chex.assert_rank([q, k], 2)
    chex.assert_equal_shape([q, k])
    b = q.shape[0]
    chex.assert_shape([scene_q, scene_k], (b,))
    q = _l2_normalize(q)
    k = _l2_normalize(k)
    scene_q = jnp.asarray(scene_q)
    scene_k = jnp.asarray(scene_k).astype(scene_q.dtype)
    if queue is not None:
        if scene_queue is None:
            raise ValueError("scene_infonce: `queue` was given without `scene_queue` (its scene ids)")
        chex.assert_rank(queue, 2)
        chex.assert_axis_dimension(queue, 1, q.shape[1])
        chex.assert_shape(scene_queue, (queue.shape[0],))
        queue = _l2_normalize(queue)
        scene_queue = jnp.asarray(scene_queue).astype(scene_q.dtype)
    elif scene_queue is not None:
        raise ValueError("scene_infonce: `scene_queue` was given without `queue`")

    if batch_negatives:
        cand = k if queue is None else jnp.concatenate([k, queue], axis=0)
        scene_c = scene_k if queue is None else jnp.concatenate([scene_k, scene_queue], axis=0)
        sim = q @ cand.T  # [B, B+K] cosines
        is_pos = jnp.arange(b)[:, None] == jnp.arange(cand.shape[0])[None, :]
        same_scene = scene_q[:, None] == scene_c[None, :]
    else:
        if queue is None:
            raise ValueError(
                "scene_infonce: batch_negatives=False needs a `queue`: the candidates are then the "
                "positive and the queue only, so without a queue there is no negative "
                "(set config.moco.queue_size > 0 or config.moco.batch_negatives=True)"
            )
        # MoCo v2's layout: column 0 = l_pos = q_i . k_i, columns 1.. = q_i . queue.
        l_pos = jnp.sum(q * k, axis=1, keepdims=True)
        sim = jnp.concatenate([l_pos, q @ queue.T], axis=1)  # [B, 1+K] cosines
        is_pos = (jnp.arange(sim.shape[1]) == 0)[None, :] & jnp.ones((b, 1), bool)
        same_scene = jnp.concatenate([(scene_q == scene_k)[:, None], scene_q[:, None] == scene_queue[None, :]], axis=1)
    logits = sim / temperature
    false_neg = same_scene & ~is_pos  # F_i

    target = is_pos.astype(jnp.float32)
    if mode == "mask":
        excluded = false_neg
    else:
        excluded = jnp.zeros_like(false_neg)
    if mode == "soft":
        # Held constant: the recalibrated label is a target, not something to optimize
        # (without it the loss could lower itself by moving q towards same-scene keys
        # through the weights as well as through the logits).
        w = jax.lax.stop_gradient(jnp.maximum(sim, 0.0))
        target = target + jnp.where(false_neg, w, 0.0)
    target = target / jnp.sum(target, axis=1, keepdims=True)

    logp = jax.nn.log_softmax(jnp.where(excluded, -jnp.inf, logits), axis=1)
    # Excluded entries have logp = -inf and target 0; zero them before the product
    # so neither the value nor any gradient sees 0 * inf.
    logp = jnp.where(excluded, 0.0, logp)
    return -jnp.sum(target * logp, axis=1)


def false_nt_xent(
    z1: jax.Array,
    z2: jax.Array,
    *,
    temperature,
    threshold=0.9,
    alpha=1.0,
    fnsd_mode: str = "vissl",
) -> jax.Array:
    r"""FALSE: NT-Xent with false-negative self-determination and calibration (DESIGN §3.3).

    Views ``z = [z1; z2]`` (2N = 2B rows, the order of VISSL's ``false_collator``: all first
    views, then all second views) are L2-normalized here. With ``S_ij = exp(z_i . z_j / tau)``
    and positive ``p(i) = (i + B) mod 2B``::

        P_i = S_{i,p(i)}                 N_i = sum_{j not in {i, p(i)}} S_ij
        D_ij = |S_ij - S_{i,p(i)}|       (FNSD distance of negative j to the positive of i)

    FNSD picks a set C of (anchor a, negative m) cells; FNCC (confidence calibration) then
    moves ``alpha * S_am`` from the negatives to the positive of each calibrated anchor::

        P_a += alpha * sum_{m: (a,m) in C} S_am      N_a -= (same)
        loss_i = -log(P_i / (P_i + N_i))

    which is the VISSL code's ``all_pos[a,m] = w S_am; all_neg[a,m] = (1 - w) S_am`` with
    ``w = alpha`` (``confidence_weight``). The three modes differ only in how C is chosen:

    * ``fnsd_mode="vissl"`` (default): the selection of GeoX-Lab/FALSE
      ``vissl/losses/false_loss.py`` as it runs on ONE GPU, here on the GLOBAL batch (so it
      is the same on any device count; the official code only indexes correctly with
      world size 1). A 2N x 2N matrix ``diff`` is filled with the placeholder 3 (not +inf);
      only the strict upper triangle ``j > i`` minus the positive column gets
      ``diff_ij = D_ij`` (float32, linear space, as the reference). PICK: every cell with
      ``diff_ij == min(diff)`` over ALL rows (exact ties all kept, placeholder cells
      included, which happens when every searched D exceeds 3). THEN GATE: a picked cell
      acts only if its row passes ``log(S_{a,p(a)}) * tau >= threshold`` (the reference
      recovers the positive cosine from S). Picked placeholder cells on the diagonal or the
      positive are no-ops in the reference and here; picked lower-triangle negatives ARE
      calibrated. So a gated anchor usually is not calibrated: the global arg-min of D
      normally lies in an ungated row (small S_pos and small S_ij give small D).
    * ``fnsd_mode="gate_then_pick"`` (rsjax's former "official"): gate rows first (positive
      cosine ``z_i . z_{p(i)} >= threshold``), then one cell: the smallest ``D_ij`` over the
      gated rows and ALL negative columns (not only the upper triangle; no placeholder),
      ties to the first cell in row-major order. Nothing changes if no row is gated.
    * ``fnsd_mode="per_anchor"``: every gated anchor i (same gate as gate_then_pick) is
      calibrated with its own ``argmin_j D_ij`` over its negatives (ties: smallest j).

    In every mode ``threshold <= 1`` and ``alpha > 0`` are part of the gate, so any
    ``threshold > 1`` switches FALSE off even when rounding makes a cosine exceed 1. With
    Python-scalar ``threshold > 1`` or ``alpha == 0`` the function returns :func:`nt_xent`;
    traced values take the general path, which is also exact.

    Numerics: ``P_i + N_i`` is unchanged by FNCC, so
    ``loss_i = logsumexp_{j != i}(l_ij) - log(exp(l_{i,p(i)}) + alpha sum_{m in C_i} exp(l_im))``
    with ``l = z z^T / tau``, both terms max-shifted log-sum-exps (small tau cannot
    overflow the loss). An anchor with ``C_i`` empty gets ``log_add(l_pos, -inf) == l_pos``
    bitwise, i.e. exactly :func:`nt_xent`. The selection is not differentiated
    (stop_gradient). gate_then_pick / per_anchor compare D in log space,
    ``log D_ij = max(l_ij, l_pos) + log(-expm1(-|l_ij - l_pos|))`` (same order as D, never
    forms S); vissl forms S in float32 like the reference, because its placeholder 3 is an
    absolute value: for ``tau < ~0.0114`` S overflows there as in the reference (the loss
    stays finite; the selection then degenerates as the reference's would).

    Args:
      z1, z2: [B, D] embeddings of the two views.
      temperature: tau > 0 (official config: 0.5).
      threshold: gate T on the positive cosine (default and official 0.9).
      alpha: FNCC confidence, >= 0 (default and official yaml 1; the FALSE README suggests 0.9).
      fnsd_mode: ``"vissl" | "gate_then_pick" | "per_anchor"``.

    Returns:
      [2B] float32: anchors of ``z1`` first, then those of ``z2``.
    """
    if fnsd_mode == "official":
        raise ValueError(
            "false_nt_xent: fnsd_mode='official' (config.loss.fnsd_mode) is no longer accepted: it "
            "meant gate-then-pick, which is not the official VISSL selection. Choose 'vissl' (the "
            "VISSL code's pick-then-gate selection), 'gate_then_pick' (the former rsjax rule) or "
            "'per_anchor'"
        )
    if fnsd_mode not in FNSD_MODES:
        raise ValueError(
            f"false_nt_xent: unknown fnsd_mode {fnsd_mode!r} (config.loss.fnsd_mode); expected one of {FNSD_MODES}"
        )
    if isinstance(alpha, (int, float)) and alpha < 0:
        raise ValueError(f"false_nt_xent: alpha={alpha} must be >= 0")
    if (isinstance(threshold, (int, float)) and threshold > 1) or (isinstance(alpha, (int, float)) and alpha == 0):
        # Python scalars (checked in float64, before any float32 rounding of T):
        # FALSE is off, so return NT-Xent itself.
        return nt_xent(z1, z2, temperature=temperature)
    sim, logits, pos_idx, lse = _two_view_logits(z1, z2, temperature)
    n = logits.shape[0]
    rows = jnp.arange(n)[:, None]
    cols = jnp.arange(n)[None, :]
    l_pos = jnp.take_along_axis(logits, pos_idx[:, None], axis=1)[:, 0]
    cos_pos = jnp.take_along_axis(sim, pos_idx[:, None], axis=1)[:, 0]

    # --- FNSD: the boolean [2N, 2N] set C of calibrated cells (no gradient) ---
    threshold = jnp.asarray(threshold, jnp.float32)
    alpha = jnp.asarray(alpha, jnp.float32)
    on = (threshold <= 1.0) & (alpha > 0)
    lg = jax.lax.stop_gradient(logits)
    lp = jax.lax.stop_gradient(l_pos)[:, None]
    is_neg = (cols != rows) & (cols != pos_idx[:, None])
    if fnsd_mode == "vissl":
        s = jnp.exp(lg)  # S_ij = exp(z_i.z_j / tau); the diagonal (-inf logit) is a placeholder cell
        s_pos = jnp.exp(lp)
        searched = (cols > rows) & (cols != pos_idx[:, None])  # strict upper triangle minus positive
        diff = jnp.where(searched, jnp.abs(s - s_pos), jnp.float32(3.0))
        picked = diff == jnp.min(diff)  # every tied cell, over all rows
        gate = (jnp.log(s_pos[:, 0]) * jnp.asarray(temperature, jnp.float32) >= threshold) & on
        # picked diagonal / positive cells change nothing in the reference: keep negatives only
        cal = picked & gate[:, None] & is_neg
    else:
        gate = (cos_pos >= threshold) & on
        # log D_ij = log |exp(l_ij) - exp(l_pos)|: -inf for an exact tie, +inf off the negatives.
        l_neg = jnp.where(is_neg, lg, lp)  # placeholder lp keeps the masked entries finite
        log_d = jnp.maximum(l_neg, lp) + jnp.log(-jnp.expm1(-jnp.abs(l_neg - lp)))
        log_d = jnp.where(is_neg, log_d, jnp.inf)
        if fnsd_mode == "per_anchor":
            fn_idx = jnp.argmin(log_d, axis=1)  # first occurrence on ties
            has_neg = jnp.min(log_d, axis=1) < jnp.inf  # B = 1 has no negative
            cal = (cols == fn_idx[:, None]) & (gate & has_neg)[:, None]
        else:  # gate_then_pick
            flat = jnp.where(gate[:, None], log_d, jnp.inf).reshape(-1)
            best = jnp.argmin(flat)  # first occurrence: row-major tie-breaking
            # flat[best] == +inf means no gated anchor (or no negative): nothing calibrated.
            cal = ((rows * n + cols) == best) & (flat[best] < jnp.inf)

    # --- FNCC: P_a += alpha * sum_C S_am, N_a -= the same, in log space ---
    # Masked logsumexp over the calibrated cells of each row; rows without any get -inf,
    # with the double-where so that neither value nor gradient sees log(0).
    has = jnp.any(cal, axis=1)
    mx = jax.lax.stop_gradient(jnp.max(jnp.where(cal, lg, -jnp.inf), axis=1))
    mx = jnp.where(has, mx, 0.0)
    sum_e = jnp.sum(jnp.where(cal, jnp.exp(jnp.where(cal, logits, 0.0) - mx[:, None]), 0.0), axis=1)
    log_extra = jnp.log(jnp.where(has, alpha, 1.0)) + jnp.log(jnp.where(has, sum_e, 1.0)) + mx
    log_extra = jnp.where(has, log_extra, -jnp.inf)
    return lse - _log_add(l_pos, log_extra)


def ce_dice(
    logits: jax.Array, labels: jax.Array, *, ignore_index=None, dice_weight=1.0, reduction: str = "example"
) -> jax.Array:
    r"""Softmax cross entropy + multiclass soft Dice loss (DESIGN §3.4), two reductions.

    Valid pixels ``V = {x : labels[x] != ignore_index}`` (all pixels when ``ignore_index`` is
    None), class probabilities ``p = softmax(logits)``, one-hot labels ``y``; every sum below
    runs over valid pixels only. Labels of valid pixels must lie in ``[0, C)``.

    ``reduction="batch"`` (CromSS exactly; returns a scalar). CromSS (zhu-xlab/CromSS,
    ``models/pl_pretrain.py``) adds torch ``CrossEntropyLoss(ignore_index)`` and
    segmentation_models_pytorch (smp 0.6.0) ``DiceLoss("multiclass", from_logits=True,
    ignore_index)`` (smooth 0, eps 1e-7). Both are aggregated over the whole batch::

        CE     = (1 / |V|) * sum_{b, x in V} -log p_{b, x, y}          (torch: mean over valid pixels)
        I_c    = sum_{b, x in V} p_bxc y_bxc        S_c = sum_{b, x in V} (p_bxc + y_bxc)
        Dice_c = I_c / max(S_c / 2, eps)                               (smp: dims (0, 2), eps = 1e-7)
        loss   = CE + dice_weight * (1 / C) * sum_c [sum_{b,x} y_bxc > 0] * (1 - Dice_c)

    A class absent from the batch's valid labels contributes 0 but still counts in the mean
    over all C classes, as in smp. (smp writes ``I_c = (sum p + sum y - sum |p - y|) / 2``,
    equal to ``sum p y`` for one-hot y; ``I_c / max(S_c / 2, eps)`` is smp's
    ``(I + smooth) / max(I + fp / 2 + fn / 2 + smooth, eps)`` with ``smooth = 0``.) With no
    valid pixel at all torch's CE is 0/0 = NaN; rsjax returns CE = 0 there (Dice is 0: every
    class is absent).

    ``reduction="example"`` (rsjax's own form, the default of the downstream segmentation
    job): the same terms per example b, with smoothing ``eps = 1`` in numerator and
    denominator and the mean over all C classes::

        CE_b   = (1 / |V_b|) * sum_{x in V_b} -log p_{x, y_x}
        Dice_c = (2 * sum_{x in V_b} p_xc y_xc + 1) / (sum_{x in V_b} (p_xc + y_xc) + 1)
        loss_b = CE_b + dice_weight * (1 - (1 / C) * sum_c Dice_c)

    Here a class absent from the example's labels and predicted with small probability
    still costs almost 1 (its Dice is ~0); an example with no valid pixel gives exactly 0.
    On 32 x 32 crops with 6 classes and p = 0.9 on the true class the two Dice terms differ
    by a factor ~7 (tests/test_reference_cromss.py).

    Args:
      logits: [B, H, W, C] unnormalized class scores.
      labels: [B, H, W] int class ids (``ignore_index`` marks no-data).
      ignore_index: label value to ignore, or None.
      dice_weight: weight of the Dice term.
      reduction: ``"batch"`` (CromSS; scalar) or ``"example"`` (rsjax; [B]).

    Returns:
      float32: a scalar for ``"batch"``, [B] for ``"example"``.
    """
    if reduction not in DICE_REDUCTIONS:
        raise ValueError(
            f"ce_dice: reduction={reduction!r} (config key loss.dice_reduction); expected one of {DICE_REDUCTIONS}"
        )
    chex.assert_rank(logits, 4)
    chex.assert_rank(labels, 3)
    chex.assert_shape(labels, logits.shape[:3])
    logits = jnp.asarray(logits, jnp.float32)
    num_classes = logits.shape[-1]
    labels = jnp.asarray(labels)
    if ignore_index is None:
        valid = jnp.ones(labels.shape, dtype=bool)
    else:
        valid = labels != ignore_index
    validf = valid.astype(jnp.float32)
    y = jax.nn.one_hot(jnp.where(valid, labels, 0), num_classes, dtype=jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce_pix = jnp.where(valid, -jnp.sum(y * logp, axis=-1), 0.0)
    p = jnp.exp(logp) * validf[..., None]
    y = y * validf[..., None]

    if reduction == "batch":
        eps = 1e-7  # smp DiceLoss default
        ce = jnp.sum(ce_pix) / jnp.maximum(jnp.sum(validf), 1.0)
        inter = jnp.sum(p * y, axis=(0, 1, 2))  # [C]
        y_sum = jnp.sum(y, axis=(0, 1, 2))
        card = jnp.sum(p, axis=(0, 1, 2)) + y_sum
        dice = inter / jnp.maximum(0.5 * card, eps)
        dice_loss = jnp.where(y_sum > 0, 1.0 - dice, 0.0)
        return ce + dice_weight * jnp.mean(dice_loss)

    eps = 1.0
    n_valid = jnp.sum(validf, axis=(1, 2))
    ce = jnp.sum(ce_pix, axis=(1, 2)) / jnp.maximum(n_valid, 1.0)
    inter = jnp.sum(p * y, axis=(1, 2))  # [B, C]
    card = jnp.sum(p, axis=(1, 2)) + jnp.sum(y, axis=(1, 2))
    dice = (2.0 * inter + eps) / (card + eps)
    return ce + dice_weight * (1.0 - jnp.mean(dice, axis=-1))


def bce_dice(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index=None,
    dice_weight=1.0,
    reduction: str = "example",
    pos_weight=1.0,
) -> jax.Array:
    r"""Binary cross entropy + soft Dice of the positive (change) class, two reductions.

    Valid pixels ``V = {x : labels[x] != ignore_index}`` (all pixels when ``ignore_index`` is
    None), ``p = sigmoid(logits)``, ``y`` in {0, 1}; sums run over valid pixels only. The
    per-pixel BCE weights the change pixels by ``w = pos_weight`` (torch ``BCEWithLogitsLoss``'s
    ``pos_weight``; the mean still divides by the pixel count)::

        bce(l, y) = w * y * softplus(-l) + (1 - y) * softplus(l)   (w = 1: softplus(l) - y * l)

    ``reduction="batch"`` (a named reference; returns a scalar): the binary branch of CromSS's
    loss builder (zhu-xlab/CromSS ``models/pl_finetune.py`` ``_get_loss`` with one output
    channel, ``loss_type="cd"``): torch ``BCEWithLogitsLoss()`` (mean) + smp 0.6.0
    ``DiceLoss("binary", from_logits=True, ignore_index)`` (smooth 0, eps 1e-7, dims (0, 2):
    one Dice over the whole batch)::

        BCE  = (1 / |V|) * sum_{b, x in V} bce(l_bx, y_bx)      (w = 1: -y log p - (1-y) log(1-p))
        I    = sum_{b, x in V} p_bx y_bx        S = sum_{b, x in V} (p_bx + y_bx)
        Dice = I / max(S / 2, eps)
        loss = BCE + dice_weight * [sum_{b,x} y_bx > 0] * (1 - Dice)

    A batch without any change pixel gets Dice loss 0 (smp). With ``ignore_index`` None this
    is the reference exactly. torch's ``BCEWithLogitsLoss`` has no ``ignore_index``; rsjax
    averages BCE over the valid pixels only (its own extension; smp's Dice does mask them).
    No valid pixel at all: 0.

    ``reduction="example"`` (rsjax's own form, the default of the change-detection job): per
    example b, with smoothing ``eps = 1``::

        BCE_b  = (1 / |V_b|) * sum_{x in V_b} bce(l_x, y_x)
        Dice_b = (2 * sum_{x in V_b} p_x y_x + 1) / (sum_{x in V_b} (p_x + y_x) + 1)
        loss_b = BCE_b + dice_weight * (1 - Dice_b)

    (an example without change that predicts none scores Dice ~1). An example with no valid
    pixel gives exactly 0.

    Args:
      logits: [B, H, W] change logits.
      labels: [B, H, W] {0, 1} (``ignore_index`` marks pixels to skip).
      ignore_index: label value to ignore, or None.
      dice_weight: weight of the Dice term.
      reduction: ``"batch"`` (CromSS's binary branch; scalar) or ``"example"`` (rsjax; [B]).
      pos_weight: ``w`` > 0, the weight of the change pixels' BCE (a float or a scalar array;
        1 = unweighted). A rare change class (OSCD: 0.3-3.6 % of the pixels) pulls an unweighted
        BCE towards "no change" everywhere; ``w`` near ``(1 - f) / f`` (``f`` the change fraction)
        balances the two classes' BCE.

    Returns:
      float32: a scalar for ``"batch"``, [B] for ``"example"``.
    """
    if reduction not in DICE_REDUCTIONS:
        raise ValueError(
            f"bce_dice: reduction={reduction!r} (config key train.dice_reduction); expected one of {DICE_REDUCTIONS}"
        )
    chex.assert_rank([logits, labels], 3)
    chex.assert_equal_shape([logits, labels])
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels)
    valid = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    validf = valid.astype(jnp.float32)
    y = jnp.where(valid, labels, 0).astype(jnp.float32)
    bce_pix = jax.nn.softplus(logits) - y * logits  # = y softplus(-l) + (1 - y) softplus(l)
    if not (isinstance(pos_weight, (int, float)) and pos_weight == 1):  # w = 1: the unweighted program
        bce_pix = bce_pix + (jnp.asarray(pos_weight, jnp.float32) - 1.0) * y * jax.nn.softplus(-logits)
    bce_pix = bce_pix * validf
    p = jax.nn.sigmoid(logits) * validf
    if reduction == "batch":
        eps = 1e-7  # smp DiceLoss default
        n_valid = jnp.sum(validf)
        bce = jnp.sum(bce_pix) / jnp.maximum(n_valid, 1.0)
        y_sum = jnp.sum(y)
        dice = jnp.sum(p * y) / jnp.maximum(0.5 * (jnp.sum(p) + y_sum), eps)
        return bce + dice_weight * jnp.where(y_sum > 0, 1.0 - dice, 0.0)

    eps = 1.0
    n_valid = jnp.sum(validf, axis=(1, 2))
    bce = jnp.sum(bce_pix, axis=(1, 2)) / jnp.maximum(n_valid, 1.0)
    inter = jnp.sum(p * y, axis=(1, 2))
    dice = (2.0 * inter + eps) / (jnp.sum(p, axis=(1, 2)) + jnp.sum(y, axis=(1, 2)) + eps)
    return jnp.where(n_valid > 0, bce + dice_weight * (1.0 - dice), 0.0)
