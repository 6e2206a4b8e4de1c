"""Pure loss functions on arrays (DESIGN §3, §6).

Everything here is a function of arrays only: no parameters, no config, no Flax
modules. State such as a MoCo queue goes in as an argument. Every loss returns a
per-example float32 vector; reduce it with ``jnp.mean`` in the caller.

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
FNSD_MODES = ("official", "per_anchor")

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
) -> jax.Array:
    r"""Scene-aware MoCo InfoNCE (SwiMDiff's contrastive branch, DESIGN §3.1), per query.

    Inputs are L2-normalized projector outputs; they are re-normalized here
    (idempotent up to rounding) so that the logits are exact cosines / tau.

    Candidates of query i are the B keys of the global batch followed by the K
    queue entries, ``c = [k; queue]`` ([B + K, D]), with scene ids
    ``g = [scene_k; scene_queue]``. The positive of ``q_i`` is ``k_i``
    (candidate index i). Logits ``l_ij = q_i . c_j / tau``.
    The false-negative set is ``F_i = {j : g_j == scene_q[i], j != i}``.

    With ``logp_ij = log_softmax_j(l'_ij)`` every mode is the cross entropy of a
    target distribution ``t_i``::

        loss_i = - sum_j t_ij * logp_ij

    * ``"none"``: plain MoCo InfoNCE: ``l' = l``, ``t_i = onehot(i)``, i.e.
      ``loss_i = logsumexp_j l_ij - l_ii``.
    * ``"mask"``: members of ``F_i`` are removed from the denominator:
      ``l'_ij = -inf`` for ``j in F_i`` (via ``where``), ``t_i = onehot(i)``.
    * ``"soft"`` (default; the paper's "recalibrated labels"): ``l' = l`` and
      ``t_ij ∝ [j == i] + [j in F_i] * w_ij`` with
      ``w_ij = stop_gradient(max(0, q_i . c_j))`` (a cosine), normalized so that
      ``sum_j t_ij = 1``. The paper's exact normalization is not public; this is
      rsjax's documented choice.

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
    cand = _l2_normalize(k)
    scene_c = jnp.asarray(scene_k)
    if queue is not None:
        if scene_queue is None:
            raise ValueError("scene_infonce: `queue` was given without `scene_queue` (its scene ids)")
        chex.assert_rank(queue, 2)
        chex.assert_axis_dimension(queue, 1, q.shape[1])
        chex.assert_shape(scene_queue, (queue.shape[0],))
        cand = jnp.concatenate([cand, _l2_normalize(queue)], axis=0)
        scene_c = jnp.concatenate([scene_c, jnp.asarray(scene_queue).astype(scene_c.dtype)], axis=0)
    elif scene_queue is not None:
        raise ValueError("scene_infonce: `scene_queue` was given without `queue`")

    n_cand = cand.shape[0]
    sim = q @ cand.T  # [B, B+K] cosines
    logits = sim / temperature
    is_pos = jnp.arange(b)[:, None] == jnp.arange(n_cand)[None, :]
    same_scene = jnp.asarray(scene_q)[:, None] == scene_c[None, :]
    false_neg = same_scene & ~is_pos  # F_i

    target = is_pos.astype(jnp.float32)
    if mode == "mask":
        excluded = false_neg
    else:
        excluded = jnp.zeros_like(false_neg)
    if mode == "soft":
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
    fnsd_mode: str = "official",
) -> jax.Array:
    r"""FALSE: NT-Xent with false-negative self-determination and calibration (DESIGN §3.3).

    Views ``z = [z1; z2]`` (2N = 2B rows) are L2-normalized here. With
    ``S_ij = exp(z_i . z_j / tau)`` and positive ``p(i) = (i + B) mod 2B``::

        P_i = S_{i,p(i)}                 N_i = sum_{j not in {i, p(i)}} S_ij

    FNSD (false-negative self-determination). For every negative j of anchor i,
    ``D_ij = |S_ij - S_{i,p(i)}|``; the candidate false negative of i is
    ``m(i) = argmin_j D_ij``. Only *gated* anchors act: those with positive
    cosine ``z_i . z_{p(i)} >= threshold`` (and ``threshold <= 1``, so any
    ``threshold > 1`` switches FALSE off even when rounding makes a cosine
    exceed 1; ``alpha > 0`` is part of the gate too). With Python-scalar
    ``threshold > 1`` or ``alpha == 0`` the function simply returns
    :func:`nt_xent`; traced values take the general path, which is also exact.

    * ``fnsd_mode="per_anchor"``: every gated anchor i is calibrated with its own
      ``m(i)`` (ties: the smallest column index j).
    * ``fnsd_mode="official"``: a single pair ``(a, m)`` for the whole global
      batch: the smallest ``D_ij`` over the full 2N x 2N matrix, restricted to
      gated rows i and negative columns j (not the upper triangle only, as the
      VISSL code does). Ties go to the first pair in row-major order (smallest i,
      then smallest j). Only row a is calibrated; if no anchor is gated nothing
      changes.

    FNCC (confidence calibration) on each calibrated anchor a::

        P_a += alpha * S_{a,m}        N_a -= alpha * S_{a,m}
        loss_i = -log(P_i / (P_i + N_i))

    Numerics: ``P_i + N_i`` is unchanged by FNCC, so
    ``loss_i = logsumexp_{j != i}(l_ij) - log(exp(l_{i,p(i)}) + alpha exp(l_{i,m}))``
    with ``l = z z^T / tau``; both terms are max-shifted log-sum-exps, so S is
    never formed and small tau cannot overflow. An anchor that is not calibrated
    gets ``log_add(l_pos, -inf) == l_pos`` bitwise, so ``alpha = 0`` or
    ``threshold > 1`` return exactly :func:`nt_xent`. D is compared in log space,
    ``log D_ij = max(l_ij, l_pos) + log(-expm1(-|l_ij - l_pos|))``, which orders
    pairs like D itself (also across rows, as needed by "official") without
    forming S. The selection is not differentiated (stop_gradient).

    Args:
      z1, z2: [B, D] embeddings of the two views.
      temperature: tau > 0 (official config: 0.5).
      threshold: gate T on the positive cosine (default 0.9).
      alpha: FNCC confidence, >= 0 (default 1; the FALSE README suggests 0.9).
      fnsd_mode: ``"official" | "per_anchor"``.

    Returns:
      [2B] float32: anchors of ``z1`` first, then those of ``z2``.
    """
    if fnsd_mode not in FNSD_MODES:
        raise ValueError(
            f"false_nt_xent: unknown fnsd_mode {fnsd_mode!r}; expected one of {FNSD_MODES}"
        )
    if isinstance(alpha, (int, float)) and alpha < 0:
        raise ValueError(f"false_nt_xent: alpha={alpha} must be >= 0")
    if (isinstance(threshold, (int, float)) and threshold > 1) or (
        isinstance(alpha, (int, float)) and alpha == 0
    ):
        # Python scalars (checked in float64, before any float32 rounding of T):
        # FALSE is off, so return NT-Xent itself.
        return nt_xent(z1, z2, temperature=temperature)
    sim, logits, pos_idx, lse = _two_view_logits(z1, z2, temperature)
    n = logits.shape[0]
    cols = jnp.arange(n)
    l_pos = jnp.take_along_axis(logits, pos_idx[:, None], axis=1)[:, 0]
    cos_pos = jnp.take_along_axis(sim, pos_idx[:, None], axis=1)[:, 0]

    # --- FNSD: which (anchor, negative) pairs are calibrated (no gradient) ---
    threshold = jnp.asarray(threshold, jnp.float32)
    alpha = jnp.asarray(alpha, jnp.float32)
    gate = (cos_pos >= threshold) & (threshold <= 1.0) & (alpha > 0)
    lg = jax.lax.stop_gradient(logits)
    lp = jax.lax.stop_gradient(l_pos)[:, None]
    is_neg = (cols[None, :] != cols[:, None]) & (cols[None, :] != pos_idx[:, None])
    # log D_ij = log |exp(l_ij) - exp(l_pos)|: -inf for an exact tie, +inf off the negatives.
    l_neg = jnp.where(is_neg, lg, lp)  # placeholder lp keeps the masked entries finite
    log_d = jnp.maximum(l_neg, lp) + jnp.log(-jnp.expm1(-jnp.abs(l_neg - lp)))
    log_d = jnp.where(is_neg, log_d, jnp.inf)
    if fnsd_mode == "per_anchor":
        fn_idx = jnp.argmin(log_d, axis=1)  # first occurrence on ties
        calibrated = gate & (jnp.min(log_d, axis=1) < jnp.inf)  # B = 1 has no negative
    else:
        flat = jnp.where(gate[:, None], log_d, jnp.inf).reshape(-1)
        best = jnp.argmin(flat)  # first occurrence: row-major tie-breaking
        fn_idx = jnp.full((n,), best % n)
        # flat[best] == +inf means no gated anchor (or no negative): nothing calibrated.
        calibrated = (cols == best // n) & (flat[best] < jnp.inf)

    # --- FNCC: P_a += alpha * S_am, N_a -= alpha * S_am, in log space ---
    l_fn = jnp.take_along_axis(logits, fn_idx[:, None], axis=1)[:, 0]
    log_extra = jnp.where(calibrated, jnp.log(jnp.where(calibrated, alpha, 1.0)) + l_fn, -jnp.inf)
    return lse - _log_add(l_pos, log_extra)


def ce_dice(logits: jax.Array, labels: jax.Array, *, ignore_index=None, dice_weight=1.0) -> jax.Array:
    r"""Softmax cross entropy + multiclass soft Dice loss, per example (DESIGN §3.4).

    For example b with valid pixels ``V = {x : labels[b, x] != ignore_index}``
    (all pixels when ``ignore_index`` is None), class probabilities
    ``p = softmax(logits)`` and one-hot labels ``y``::

        CE_b   = (1 / |V|) * sum_{x in V} -log p_{x, y_x}
        Dice_c = (2 * sum_{x in V} p_xc y_xc + eps) / (sum_{x in V} p_xc + sum_{x in V} y_xc + eps)
        loss_b = CE_b + dice_weight * (1 - (1 / C) * sum_c Dice_c)

    Smoothing ``eps = 1`` (DESIGN leaves it open): a class absent from both the
    prediction and the labels of the example scores Dice 1 (no penalty, no
    0/0), and the mean is over all C classes. Dice is computed per example (not
    over the batch) so the output is a per-example vector. Ignored pixels are
    excluded from both terms; an example with no valid pixel gives exactly 0.
    Labels of valid pixels must lie in ``[0, C)``.

    Args:
      logits: [B, H, W, C] unnormalized class scores.
      labels: [B, H, W] int class ids (``ignore_index`` marks no-data).
      ignore_index: label value to ignore, or None.
      dice_weight: weight of the Dice term.

    Returns:
      [B] float32.
    """
    chex.assert_rank(logits, 4)
    chex.assert_rank(labels, 3)
    chex.assert_shape(labels, logits.shape[:3])
    eps = 1.0
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
    n_valid = jnp.sum(validf, axis=(1, 2))
    ce = jnp.sum(ce_pix, axis=(1, 2)) / jnp.maximum(n_valid, 1.0)

    p = jnp.exp(logp) * validf[..., None]
    y = y * validf[..., None]
    inter = jnp.sum(p * y, axis=(1, 2))  # [B, C]
    card = jnp.sum(p, axis=(1, 2)) + jnp.sum(y, axis=(1, 2))
    dice = (2.0 * inter + eps) / (card + eps)
    return ce + dice_weight * (1.0 - jnp.mean(dice, axis=-1))


def bce_dice(logits: jax.Array, labels: jax.Array, *, ignore_index=None, dice_weight=1.0) -> jax.Array:
    r"""Binary cross entropy + soft Dice of the positive class, per example (change detection).

    For example b with valid pixels ``V = {x : labels[b, x] != ignore_index}`` (all pixels
    when ``ignore_index`` is None), ``p = sigmoid(logits)`` and ``y`` in {0, 1}::

        BCE_b  = (1 / |V|) * sum_{x in V} [softplus(l_x) - y_x * l_x]     (= -y log p - (1-y) log(1-p))
        Dice_b = (2 * sum_{x in V} p_x y_x + eps) / (sum_{x in V} p_x + sum_{x in V} y_x + eps)
        loss_b = BCE_b + dice_weight * (1 - Dice_b)

    with ``eps = 1`` as in :func:`ce_dice` (an example without change that predicts none
    scores Dice ~1). An example with no valid pixel gives exactly 0.

    Args:
      logits: [B, H, W] change logits.
      labels: [B, H, W] {0, 1} (``ignore_index`` marks pixels to skip).

    Returns:
      [B] float32.
    """
    chex.assert_rank([logits, labels], 3)
    chex.assert_equal_shape([logits, labels])
    eps = 1.0
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels)
    valid = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    validf = valid.astype(jnp.float32)
    y = jnp.where(valid, labels, 0).astype(jnp.float32)
    n_valid = jnp.sum(validf, axis=(1, 2))
    bce = jnp.sum((jax.nn.softplus(logits) - y * logits) * validf, axis=(1, 2)) / jnp.maximum(n_valid, 1.0)
    p = jax.nn.sigmoid(logits) * validf
    inter = jnp.sum(p * y, axis=(1, 2))
    dice = (2.0 * inter + eps) / (jnp.sum(p, axis=(1, 2)) + jnp.sum(y, axis=(1, 2)) + eps)
    return jnp.where(n_valid > 0, bce + dice_weight * (1.0 - dice), 0.0)
