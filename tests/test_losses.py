"""rsjax.losses against independent float64 numpy loop references (DESIGN §7.4)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rsjax import losses

RTOL = 2e-5
ATOL = 2e-5
SCENE_MODES_ALL = ("none", "mask", "soft")


# ----------------------------------------------------------------------------------------
# plain numpy loop references (float64)
# ----------------------------------------------------------------------------------------
def _np_normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ref_nt_xent(z1, z2, tau):
    z = _np_normalize(np.concatenate([z1, z2], 0))
    n, b = len(z), len(z1)
    out = np.zeros(n)
    for i in range(n):
        pos = (i + b) % n
        num = np.exp(np.dot(z[i], z[pos]) / tau)
        den = 0.0
        for j in range(n):
            if j != i:
                den += np.exp(np.dot(z[i], z[j]) / tau)
        out[i] = -np.log(num / den)
    return out


def ref_scene_infonce(q, k, scene_q, scene_k, tau, mode, queue=None, scene_queue=None, batch_negatives=True):
    q, k = _np_normalize(q), _np_normalize(k)
    qn = [] if queue is None else list(_np_normalize(queue))
    sq = [] if queue is None else list(scene_queue)
    out = np.zeros(len(q))
    for i in range(len(q)):
        if batch_negatives:  # every key of the batch, then the queue; positive at i
            cands, scenes, p = list(k) + qn, list(scene_k) + sq, i
        else:  # MoCo v2: the positive, then the queue; positive at 0
            cands, scenes, p = [k[i]] + qn, [scene_k[i]] + sq, 0
        cos = [float(np.dot(q[i], c)) for c in cands]
        fn = [j for j in range(len(cands)) if j != p and scenes[j] == scene_q[i]]
        if mode == "mask":
            den_idx = [j for j in range(len(cands)) if j not in fn]
        else:
            den_idx = list(range(len(cands)))
        log_den = np.log(sum(np.exp(cos[j] / tau) for j in den_idx))
        if mode == "soft":
            weights = {p: 1.0}
            for j in fn:
                weights[j] = max(0.0, cos[j])
            total = sum(weights.values())
            out[i] = -sum(w / total * (cos[j] / tau - log_den) for j, w in weights.items())
        else:
            out[i] = -(cos[p] / tau - log_den)
    return out


def ref_moco_v2(q, k, queue, tau):
    """facebookresearch/moco ``moco/builder.py`` forward + ``main_moco.py`` criterion, in numpy.

    ``q``, ``k`` [N, C] and ``queue`` [C, K] (MoCo keeps the queue as columns) are normalized
    along C; ``l_pos = einsum('nc,nc->n')[:, None]``, ``l_neg = einsum('nc,ck->nk')``,
    ``logits = cat([l_pos, l_neg], 1) / T``, labels all 0, ``CrossEntropyLoss`` per row.
    """
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    queue = queue / np.linalg.norm(queue, axis=0, keepdims=True)
    l_pos = np.einsum("nc,nc->n", q, k)[:, None]
    l_neg = np.einsum("nc,ck->nk", q, queue)
    logits = np.concatenate([l_pos, l_neg], axis=1) / tau
    labels = np.zeros(len(q), np.int64)
    out = np.zeros(len(q))
    for n in range(len(q)):  # CrossEntropyLoss(reduction="none"): -log softmax(logits)[label]
        row = logits[n]
        m = row.max()
        out[n] = -(row[labels[n]] - m - np.log(np.sum(np.exp(row - m))))
    return out


def ref_false(z1, z2, tau, threshold, alpha, fnsd_mode):
    z = _np_normalize(np.concatenate([z1, z2], 0))
    n, b = len(z), len(z1)
    S = np.exp(z @ z.T / tau)
    pos = [(i + b) % n for i in range(n)]
    P_ = np.array([S[i, pos[i]] for i in range(n)])
    N_ = np.array([sum(S[i, j] for j in range(n) if j not in (i, pos[i])) for i in range(n)])
    gated = [i for i in range(n) if np.dot(z[i], z[pos[i]]) >= threshold and threshold <= 1]

    def fn_of(i):  # argmin_j D_ij over negatives, first index on ties
        best, best_d = None, np.inf
        for j in range(n):
            if j in (i, pos[i]):
                continue
            d = abs(S[i, j] - P_[i])
            if d < best_d:
                best, best_d = j, d
        return best, best_d

    pairs = []
    if fnsd_mode == "per_anchor":
        pairs = [(i, fn_of(i)[0]) for i in gated]
    else:  # gate_then_pick
        best, best_d = None, np.inf
        for i in gated:  # row-major scan of the full matrix
            j, d = fn_of(i)
            if d < best_d:
                best, best_d = (i, j), d
        if best is not None:
            pairs = [best]
    P2, N2 = P_.copy(), N_.copy()
    for i, m in pairs:
        P2[i] += alpha * S[i, m]
        N2[i] -= alpha * S[i, m]
    return -np.log(P2 / (P2 + N2)), pairs


def ref_ce_dice(logits, labels, ignore_index, dice_weight, eps=1.0):
    logits = np.asarray(logits, np.float64)
    bsz, h, w, c = logits.shape
    out = np.zeros(bsz)
    for b in range(bsz):
        ce, nv = 0.0, 0
        inter, sp, sy = np.zeros(c), np.zeros(c), np.zeros(c)
        for x in range(h):
            for y in range(w):
                lab = labels[b, x, y]
                if ignore_index is not None and lab == ignore_index:
                    continue
                e = np.exp(logits[b, x, y] - logits[b, x, y].max())
                p = e / e.sum()
                ce += -np.log(p[lab])
                nv += 1
                for cc in range(c):
                    yc = 1.0 if cc == lab else 0.0
                    inter[cc] += p[cc] * yc
                    sp[cc] += p[cc]
                    sy[cc] += yc
        ce = ce / nv if nv else 0.0
        dice = [(2 * inter[cc] + eps) / (sp[cc] + sy[cc] + eps) for cc in range(c)]
        out[b] = ce + dice_weight * (1 - np.mean(dice))
    return out


# ----------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------
def _pair(seed, b=6, d=8, near=None, sigma=0.1):
    """z1 random; z2 = z1 + sigma*noise for rows in `near` (high positive cosine), else random."""
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(b, d)).astype(np.float32)
    z2 = rng.normal(size=(b, d)).astype(np.float32)
    if near is not None:
        z1n = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
        z2[near] = z1n[near] + sigma * rng.normal(size=(len(near), d)).astype(np.float32)
    return z1, z2


def _scene_inputs(seed, b=6, d=8, k=10):
    rng = np.random.default_rng(seed)
    q = _np_normalize(rng.normal(size=(b, d))).astype(np.float32)
    # keys close to queries so some cosines are positive and soft weights are non-trivial
    key = _np_normalize(q + 0.5 * rng.normal(size=(b, d))).astype(np.float32)
    queue = _np_normalize(rng.normal(size=(k, d))).astype(np.float32)
    # scenes: {0,0,1,1,2,3}: anchors 0..3 have same-scene batch keys, 4 and 5 do not
    # (4 gets a same-scene queue entry, 5 none at all).
    scene = np.array([0, 0, 1, 1, 2, 3][:b], np.int32)
    scene_queue = np.array([7, 0, 2, 9, 9, 1, 7, 8, 0, 9][:k], np.int32)
    return q, key, scene, queue, scene_queue


# ----------------------------------------------------------------------------------------
# nt_xent
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_nt_xent_matches_numpy(tau):
    z1, z2 = _pair(0)
    out = losses.nt_xent(z1, z2, temperature=tau)
    assert out.shape == (12,) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref_nt_xent(z1, z2, tau), rtol=RTOL, atol=ATOL)


def test_nt_xent_jit_grad_and_small_tau():
    z1, z2 = _pair(1)
    f = functools.partial(losses.nt_xent, temperature=0.2)
    np.testing.assert_allclose(jax.jit(f)(z1, z2), f(z1, z2), rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda a, b: jnp.mean(f(a, b)), argnums=(0, 1))(z1, z2)
    assert all(np.isfinite(x).all() for x in g)
    # tau = 1e-3: exp(1/tau) overflows float32; the log-space form must not.
    out = losses.nt_xent(z1, z2, temperature=1e-3)
    assert np.isfinite(out).all()
    # float64 reference in log space for the tiny temperature
    z = _np_normalize(np.concatenate([z1, z2]))
    s = z @ z.T / 1e-3
    np.fill_diagonal(s, -np.inf)
    lse = np.log(np.sum(np.exp(s - s.max(1, keepdims=True)), 1)) + s.max(1)
    ref = lse - s[np.arange(12), (np.arange(12) + 6) % 12]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-2)


# ----------------------------------------------------------------------------------------
# scene_infonce
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["none", "mask", "soft"])
@pytest.mark.parametrize("with_queue", [False, True])
def test_scene_infonce_matches_numpy(mode, with_queue):
    q, k, scene, queue, scene_queue = _scene_inputs(2)
    kw = dict(queue=queue, scene_queue=scene_queue) if with_queue else {}
    out = losses.scene_infonce(q, k, scene_q=scene, scene_k=scene, temperature=0.2, mode=mode, **kw)
    assert out.shape == (6,) and out.dtype == jnp.float32
    ref = ref_scene_infonce(q, k, scene, scene, 0.2, mode, *(queue, scene_queue) if with_queue else ())
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    jitted = jax.jit(functools.partial(losses.scene_infonce, temperature=0.2, mode=mode))(
        q, k, scene_q=scene, scene_k=scene, **kw
    )
    np.testing.assert_allclose(jitted, out, rtol=1e-6, atol=1e-6)


def test_scene_infonce_modes_differ_where_false_negatives_exist():
    q, k, scene, queue, scene_queue = _scene_inputs(3)
    kw = dict(scene_q=scene, scene_k=scene, temperature=0.2, queue=queue, scene_queue=scene_queue)
    none = losses.scene_infonce(q, k, mode="none", **kw)
    mask = losses.scene_infonce(q, k, mode="mask", **kw)
    soft = losses.scene_infonce(q, k, mode="soft", **kw)
    # anchor 5 has no same-scene candidate anywhere: all modes identical, bitwise
    assert none[5] == mask[5] == soft[5]
    # anchors 0..4 have false negatives: masking removes denominator mass
    assert np.all(np.asarray(mask[:5]) < np.asarray(none[:5]))


def test_scene_infonce_no_false_negatives_equals_plain_exactly():
    q, k, _, queue, _ = _scene_inputs(4)
    scene = np.arange(6, dtype=np.int32)
    scene_queue = np.arange(100, 110, dtype=np.int32)
    for kw in ({}, dict(queue=queue, scene_queue=scene_queue)):
        base = dict(scene_q=scene, scene_k=scene, temperature=0.2, **kw)
        none = losses.scene_infonce(q, k, mode="none", **base)
        np.testing.assert_array_equal(losses.scene_infonce(q, k, mode="soft", **base), none)
        np.testing.assert_array_equal(losses.scene_infonce(q, k, mode="mask", **base), none)
        jf = jax.jit(losses.scene_infonce, static_argnames=("mode",))
        np.testing.assert_array_equal(jf(q, k, mode="soft", **base), jf(q, k, mode="none", **base))


@pytest.mark.parametrize("mode", ["none", "mask", "soft"])
def test_scene_infonce_grad_finite(mode):
    q, k, scene, queue, scene_queue = _scene_inputs(5)

    def f(q, k, queue):
        return jnp.mean(
            losses.scene_infonce(
                q,
                k,
                scene_q=scene,
                scene_k=scene,
                temperature=0.1,
                mode=mode,
                queue=queue,
                scene_queue=scene_queue,
            )
        )

    grads = jax.grad(f, argnums=(0, 1, 2))(q, k, queue)
    assert all(np.isfinite(g).all() for g in grads)


def test_scene_infonce_bad_mode_and_queue_args():
    q, k, scene, queue, scene_queue = _scene_inputs(6)
    with pytest.raises(ValueError, match="'hard'"):
        losses.scene_infonce(q, k, scene_q=scene, scene_k=scene, temperature=0.2, mode="hard")
    with pytest.raises(ValueError, match="scene_queue"):
        losses.scene_infonce(q, k, scene_q=scene, scene_k=scene, temperature=0.2, queue=queue)


@pytest.mark.parametrize("mode", ["none", "mask", "soft"])
def test_scene_infonce_queue_only_matches_numpy(mode):
    """batch_negatives=False: candidates of q_i are k_i and the queue (MoCo v2)."""
    q, k, scene, queue, scene_queue = _scene_inputs(7)
    kw = dict(scene_q=scene, scene_k=scene, temperature=0.2, queue=queue, scene_queue=scene_queue)
    out = losses.scene_infonce(q, k, mode=mode, batch_negatives=False, **kw)
    ref = ref_scene_infonce(q, k, scene, scene, 0.2, mode, queue, scene_queue, batch_negatives=False)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    jitted = jax.jit(functools.partial(losses.scene_infonce, mode=mode, batch_negatives=False))(q, k, **kw)
    np.testing.assert_allclose(jitted, out, rtol=1e-6, atol=1e-6)
    # and it is not the batch-negatives loss (the 5 other keys are extra candidates there)
    with_batch = losses.scene_infonce(q, k, mode=mode, batch_negatives=True, **kw)
    assert np.all(np.abs(np.asarray(with_batch) - np.asarray(out)) > 1e-4)


@pytest.mark.parametrize("tau", [0.07, 0.2])
def test_scene_infonce_none_queue_only_is_moco_v2(tau):
    """mode none + batch_negatives=False is MoCo v2's logits [q.k+, q.queue] / T with label 0."""
    rng = np.random.default_rng(8)
    b, d, kq = 5, 16, 12
    q, k = rng.normal(size=(b, d)).astype(np.float32), rng.normal(size=(b, d)).astype(np.float32)
    queue_cols = rng.normal(size=(d, kq)).astype(np.float32)  # MoCo's [C, K] buffer
    scene = rng.integers(0, 3, size=b).astype(np.int32)  # scene ids must not matter in mode none
    scene_queue = rng.integers(0, 3, size=kq).astype(np.int32)
    out = losses.scene_infonce(
        q,
        k,
        scene_q=scene,
        scene_k=scene,
        temperature=tau,
        mode="none",
        queue=queue_cols.T,
        scene_queue=scene_queue,
        batch_negatives=False,
    )
    np.testing.assert_allclose(out, ref_moco_v2(q, k, queue_cols, tau), rtol=RTOL, atol=ATOL)


def test_scene_infonce_queue_only_ignores_other_batch_keys():
    q, k, scene, queue, scene_queue = _scene_inputs(9)
    kw = dict(
        scene_q=scene, scene_k=scene, temperature=0.2, queue=queue, scene_queue=scene_queue, batch_negatives=False
    )
    k2 = k.copy()
    k2[1:] = np.random.default_rng(0).normal(size=k2[1:].shape)
    for mode in SCENE_MODES_ALL:
        a = losses.scene_infonce(q, k, mode=mode, **kw)
        c = losses.scene_infonce(q, k2, mode=mode, **kw)
        assert a[0] == c[0] and np.all(np.asarray(a[1:]) != np.asarray(c[1:]))


def test_scene_infonce_queue_only_needs_queue():
    q, k, scene, _, _ = _scene_inputs(10)
    with pytest.raises(ValueError, match="batch_negatives=False needs a `queue`"):
        losses.scene_infonce(q, k, scene_q=scene, scene_k=scene, temperature=0.2, batch_negatives=False)


def ref_scene_infonce_grad(q, k, scene, queue, scene_queue, tau, mode, batch_negatives):
    """Analytic float64 gradient of mean_i loss_i w.r.t. (q, k, queue), the target held constant.

    With u = x / |x| for every input row, l_ij = u(q_i) . u(c_j) / tau and p_i = softmax(l'_i)
    (masked entries have p = t = 0): d loss_i / d l_ij = p_ij - t_ij, and the normalization
    contributes d u / d x = (I - u u^T) / |x|.
    """
    q, k, queue = (np.asarray(x, np.float64) for x in (q, k, queue))
    nq, nk, nu = (np.linalg.norm(x, axis=1, keepdims=True) for x in (q, k, queue))
    uq, uk, uu = q / nq, k / nk, queue / nu
    gq, gk, gu = np.zeros_like(q), np.zeros_like(k), np.zeros_like(queue)
    b = len(q)
    for i in range(b):
        if batch_negatives:
            cands = [("k", j) for j in range(b)] + [("u", m) for m in range(len(queue))]
            p = i
        else:
            cands = [("k", i)] + [("u", m) for m in range(len(queue))]
            p = 0
        vec = [uk[j] if src == "k" else uu[j] for src, j in cands]
        sc = [scene[j] if src == "k" else scene_queue[j] for src, j in cands]
        cos = np.array([uq[i] @ v for v in vec])
        fn = np.array([j != p and sc[j] == scene[i] for j in range(len(cands))])
        keep = ~fn if mode == "mask" else np.ones(len(cands), bool)
        e = np.where(keep, np.exp(cos / tau - np.max(cos / tau)), 0.0)
        prob = e / e.sum()
        t = np.zeros(len(cands))
        t[p] = 1.0
        if mode == "soft":
            t = t + np.where(fn, np.maximum(cos, 0.0), 0.0)
        t = t / t.sum()
        g_l = (prob - t) / b  # d mean-loss / d l_ij
        d_uq = sum(g_l[j] * vec[j] for j in range(len(cands))) / tau
        gq[i] += d_uq
        for j, (src, idx) in enumerate(cands):
            d_uc = g_l[j] * uq[i] / tau
            (gk if src == "k" else gu)[idx] += d_uc
    # chain through u = x / |x|
    proj = lambda g, u, n: (g - np.sum(g * u, axis=1, keepdims=True) * u) / n  # noqa: E731
    return proj(gq, uq, nq), proj(gk, uk, nk), proj(gu, uu, nu)


@pytest.mark.parametrize("mode", ["soft", "mask", "none"])
@pytest.mark.parametrize("batch_negatives", [True, False])
def test_scene_infonce_grad_matches_analytic_with_constant_target(mode, batch_negatives):
    """Fails if the soft weights w_ij are differentiated (stop_gradient removed)."""
    q, k, scene, queue, scene_queue = _scene_inputs(11)
    rng = np.random.default_rng(11)
    # rows off the unit sphere, so the normalization's Jacobian is exercised too
    q, k, queue = (x * rng.uniform(0.5, 2.0, size=(len(x), 1)).astype(np.float32) for x in (q, k, queue))
    # queue entries close to the queries of the same scene: cos > 0, so the soft weights matter
    queue[1] = q[0] + 0.3 * queue[1]
    queue[2] = q[4] + 0.3 * queue[2]

    def f(q, k, queue):
        return jnp.mean(
            losses.scene_infonce(
                q,
                k,
                scene_q=scene,
                scene_k=scene,
                temperature=0.2,
                mode=mode,
                queue=queue,
                scene_queue=scene_queue,
                batch_negatives=batch_negatives,
            )
        )

    got = jax.grad(f, argnums=(0, 1, 2))(q, k, queue)
    ref = ref_scene_infonce_grad(q, k, scene, queue, scene_queue, 0.2, mode, batch_negatives)
    for name, g, r in zip(("q", "k", "queue"), got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=2e-6, err_msg=name)


# ----------------------------------------------------------------------------------------
# false_nt_xent
# ----------------------------------------------------------------------------------------
NEAR = [0, 2, 3]  # rows whose positive cosine is ~0.99 (gated at T = 0.9); others ~0


def _false_pair(seed):
    z1, z2 = _pair(seed, b=6, d=8, near=NEAR, sigma=0.05)
    z = _np_normalize(np.concatenate([z1, z2]))
    cos_pos = np.sum(z[:6] * z[6:], 1)
    assert (cos_pos[NEAR] > 0.95).all() and (np.delete(cos_pos, NEAR) < 0.85).all()
    return z1, z2


@pytest.mark.parametrize("fnsd_mode", ["gate_then_pick", "per_anchor"])
@pytest.mark.parametrize("seed,tau,alpha", [(10, 0.5, 1.0), (15, 0.2, 0.9), (22, 0.5, 0.5)])
def test_false_matches_numpy(fnsd_mode, seed, tau, alpha):
    z1, z2 = _false_pair(seed)
    out = losses.false_nt_xent(z1, z2, temperature=tau, threshold=0.9, alpha=alpha, fnsd_mode=fnsd_mode)
    assert out.shape == (12,) and out.dtype == jnp.float32
    ref, pairs = ref_false(z1, z2, tau, 0.9, alpha, fnsd_mode)
    anchors = sorted(i for i, _ in pairs)
    assert anchors == ([0, 2, 3, 6, 8, 9] if fnsd_mode == "per_anchor" else anchors[:1])
    assert len(anchors) >= 1
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    # calibrated rows change, all others equal plain NT-Xent exactly
    plain = losses.nt_xent(z1, z2, temperature=tau)
    changed = np.flatnonzero(np.asarray(out) != np.asarray(plain))
    assert sorted(changed) == anchors
    jitted = jax.jit(
        functools.partial(losses.false_nt_xent, temperature=tau, threshold=0.9, alpha=alpha, fnsd_mode=fnsd_mode)
    )(z1, z2)
    np.testing.assert_allclose(jitted, out, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fnsd_mode", ["gate_then_pick", "per_anchor"])
def test_false_degenerate_equals_nt_xent_exactly(fnsd_mode):
    z1, z2 = _false_pair(13)
    plain = losses.nt_xent(z1, z2, temperature=0.5)
    for kw in (dict(alpha=0.0), dict(threshold=1.0 + 1e-6), dict(threshold=2.0)):
        out = losses.false_nt_xent(z1, z2, temperature=0.5, fnsd_mode=fnsd_mode, **kw)
        np.testing.assert_array_equal(out, plain)
    # identical views: positive cosine rounds to ~1 and may exceed it; T > 1 still gates off
    out = losses.false_nt_xent(z1, z1, temperature=0.5, threshold=1.0 + 1e-6, fnsd_mode=fnsd_mode)
    np.testing.assert_array_equal(out, losses.nt_xent(z1, z1, temperature=0.5))
    # also under jit (each function compiled separately)
    jp = jax.jit(functools.partial(losses.nt_xent, temperature=0.5))(z1, z2)
    jf = jax.jit(functools.partial(losses.false_nt_xent, temperature=0.5, alpha=0.0, fnsd_mode=fnsd_mode))(z1, z2)
    np.testing.assert_array_equal(jf, jp)
    # traced alpha / threshold take the general (non-short-circuit) path, eager and jitted
    for kw in (dict(alpha=jnp.float32(0.0)), dict(threshold=jnp.float32(1.5))):
        out = losses.false_nt_xent(z1, z2, temperature=0.5, fnsd_mode=fnsd_mode, **kw)
        np.testing.assert_array_equal(out, plain)
        jf = jax.jit(lambda a, b, kw: losses.false_nt_xent(a, b, temperature=0.5, fnsd_mode=fnsd_mode, **kw))(
            z1, z2, kw
        )
        np.testing.assert_array_equal(jf, jp)
    # and the gradients agree
    g_plain = jax.grad(lambda a: jnp.mean(losses.nt_xent(a, z2, temperature=0.5)))(z1)
    g_false = jax.grad(
        lambda a: jnp.mean(losses.false_nt_xent(a, z2, temperature=0.5, alpha=jnp.float32(0.0), fnsd_mode=fnsd_mode))
    )(z1)
    np.testing.assert_array_equal(g_false, g_plain)


@pytest.mark.parametrize("fnsd_mode", ["gate_then_pick", "per_anchor"])
def test_false_grad_finite_and_small_tau(fnsd_mode):
    z1, z2 = _false_pair(14)
    for tau in (0.5, 1e-3):
        f = lambda a, b: jnp.mean(  # noqa: E731
            losses.false_nt_xent(a, b, temperature=tau, fnsd_mode=fnsd_mode)
        )
        assert np.isfinite(f(z1, z2))
        grads = jax.grad(f, argnums=(0, 1))(z1, z2)
        assert all(np.isfinite(g).all() for g in grads)


def test_false_gate_then_pick_searches_full_matrix():
    # seed 22: the globally closest pair lies below the diagonal (anchor 8, candidate 0),
    # which an upper-triangle search (as in the VISSL code) would miss.
    z1, z2 = _false_pair(22)
    ref, pairs = ref_false(z1, z2, 0.5, 0.9, 1.0, "gate_then_pick")
    assert pairs == [(8, 0)]
    out = losses.false_nt_xent(z1, z2, temperature=0.5, fnsd_mode="gate_then_pick")
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


def test_false_gate_then_pick_tie_breaking_row_major():
    # Duplicate sample: views 0 and 1 identical in both views, so anchors 0 and 1 each see the
    # other's views as exact-tie false negatives (D = 0). Row-major: anchor 0, first such column.
    rng = np.random.default_rng(15)
    z1 = rng.normal(size=(4, 8)).astype(np.float32)
    z1[1] = z1[0]
    z2 = z1.copy()
    out = losses.false_nt_xent(z1, z2, temperature=0.5, threshold=0.9, fnsd_mode="gate_then_pick")
    plain = losses.nt_xent(z1, z2, temperature=0.5)
    assert list(np.flatnonzero(np.asarray(out) != np.asarray(plain))) == [0]
    # the chosen pair is (0, 1) [candidates 1 and 5 both tie exactly]: P += S_01, N -= S_01
    z = _np_normalize(np.concatenate([z1, z2]))
    s = np.exp(z @ z.T / 0.5)
    p0 = s[0, 4] + s[0, 1]
    n0 = sum(s[0, j] for j in range(8) if j not in (0, 4)) - s[0, 1]
    np.testing.assert_allclose(out[0], -np.log(p0 / (p0 + n0)), rtol=RTOL, atol=ATOL)


def test_false_bad_args():
    z1, z2 = _false_pair(16)
    with pytest.raises(ValueError, match="'upper'"):
        losses.false_nt_xent(z1, z2, temperature=0.5, fnsd_mode="upper")
    # the former ambiguous name is refused, naming the config key and the new choices
    with pytest.raises(ValueError, match=r"config\.loss\.fnsd_mode.*'vissl'.*'gate_then_pick'"):
        losses.false_nt_xent(z1, z2, temperature=0.5, fnsd_mode="official")
    with pytest.raises(ValueError, match="alpha"):
        losses.false_nt_xent(z1, z2, temperature=0.5, alpha=-0.1)


# ----------------------------------------------------------------------------------------
# ce_dice
# ----------------------------------------------------------------------------------------
def _seg_inputs(seed, b=3, h=4, w=5, c=3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, h, w, c)).astype(np.float32) * 2
    labels = rng.integers(0, c, size=(b, h, w)).astype(np.int32)
    return logits, labels


@pytest.mark.parametrize("ignore_index,dice_weight", [(None, 1.0), (255, 1.0), (255, 0.5), (1, 2.0)])
def test_ce_dice_matches_numpy(ignore_index, dice_weight):
    logits, labels = _seg_inputs(20)
    if ignore_index == 255:
        rng = np.random.default_rng(21)
        labels = np.where(rng.random(labels.shape) < 0.3, 255, labels).astype(np.int32)
        labels[2] = 255  # an example with no valid pixel
    out = losses.ce_dice(logits, labels, ignore_index=ignore_index, dice_weight=dice_weight)
    assert out.shape == (3,) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref_ce_dice(logits, labels, ignore_index, dice_weight), rtol=RTOL, atol=ATOL)
    if ignore_index == 255:
        assert out[2] == 0.0
    f = jax.jit(functools.partial(losses.ce_dice, ignore_index=ignore_index, dice_weight=dice_weight))
    np.testing.assert_allclose(f(logits, labels), out, rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda x: jnp.mean(f(x, labels)))(logits)
    assert np.isfinite(g).all()
    if ignore_index is not None:  # ignored pixels get no gradient
        assert np.all(np.asarray(g)[labels == ignore_index] == 0)


def test_ce_dice_perfect_logits_near_zero():
    _, labels = _seg_inputs(22)
    labels[0, 0, 0] = 255
    logits = 30.0 * jax.nn.one_hot(labels, 3)  # 255 -> all-zero row, ignored
    out = losses.ce_dice(logits, labels, ignore_index=255)
    assert np.all(np.asarray(out) < 1e-6)
    assert np.all(np.asarray(out) >= 0)


def test_ce_dice_all_ignored_no_nan():
    logits, _ = _seg_inputs(23)
    labels = np.full(logits.shape[:3], 7, np.int32)
    out = losses.ce_dice(logits, labels, ignore_index=7)
    np.testing.assert_array_equal(out, np.zeros(3, np.float32))
    g = jax.grad(lambda x: jnp.mean(losses.ce_dice(x, labels, ignore_index=7)))(logits)
    np.testing.assert_array_equal(g, np.zeros_like(logits))


# ----------------------------------------------------------------------------------------
# global batch: 8-device sharded inputs give the single-device values (DESIGN §2)
# ----------------------------------------------------------------------------------------
def test_losses_on_sharded_global_batch():
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should provide 8 fake CPU devices"
    mesh = Mesh(np.array(devices), ("data",))
    sharded = NamedSharding(mesh, P("data"))
    shard = lambda *xs: [jax.device_put(x, sharded) for x in xs]  # noqa: E731

    rng = np.random.default_rng(30)
    b, d = 8, 8
    z1 = rng.normal(size=(b, d)).astype(np.float32)
    z2 = (_np_normalize(z1) + 0.05 * rng.normal(size=(b, d))).astype(np.float32)
    z2[4:] = rng.normal(size=(4, d))  # half the anchors gated at T = 0.9
    scene = np.array([0, 0, 1, 1, 2, 2, 3, 4], np.int32)
    queue = _np_normalize(rng.normal(size=(16, d))).astype(np.float32)
    scene_queue = rng.integers(0, 6, size=16).astype(np.int32)
    logits = rng.normal(size=(b, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(b, 4, 4)).astype(np.int32)
    labels[:, 0, 0] = 255

    cases = {
        "nt_xent": (lambda a, c: losses.nt_xent(a, c, temperature=0.2), (z1, z2)),
        "scene_soft": (
            lambda a, c, s, qu, sq: losses.scene_infonce(
                a, c, scene_q=s, scene_k=s, temperature=0.2, mode="soft", queue=qu, scene_queue=sq
            ),
            (z1, z2, scene, queue, scene_queue),
        ),
        "scene_soft_queue_only": (
            lambda a, c, s, qu, sq: losses.scene_infonce(
                a,
                c,
                scene_q=s,
                scene_k=s,
                temperature=0.2,
                mode="soft",
                queue=qu,
                scene_queue=sq,
                batch_negatives=False,
            ),
            (z1, z2, scene, queue, scene_queue),
        ),
        "scene_mask": (
            lambda a, c, s: losses.scene_infonce(a, c, scene_q=s, scene_k=s, temperature=0.2, mode="mask"),
            (z1, z2, scene),
        ),
        "false_gate_then_pick": (
            lambda a, c: losses.false_nt_xent(a, c, temperature=0.5, fnsd_mode="gate_then_pick"),
            (z1, z2),
        ),
        "false_per_anchor": (
            lambda a, c: losses.false_nt_xent(a, c, temperature=0.5, fnsd_mode="per_anchor"),
            (z1, z2),
        ),
        "ce_dice": (lambda x, y: losses.ce_dice(x, y, ignore_index=255), (logits, labels)),
    }

    def all_losses(*flat):
        """Every loss and the gradient of its mean w.r.t. its first argument, in one program."""
        out, at = {}, 0
        for name, (fn, args) in cases.items():
            a = flat[at : at + len(args)]
            at += len(args)
            out[name] = (fn(*a), jax.grad(lambda x0, *rest: jnp.mean(fn(x0, *rest)))(*a))
        return out

    flat = [x for _, args in cases.values() for x in args]
    ref = jax.jit(all_losses)(*flat)
    sflat = shard(*flat)
    assert all(len(x.sharding.device_set) == 8 for x in sflat)
    got = jax.jit(all_losses)(*sflat)
    for name in cases:
        np.testing.assert_allclose(got[name][0], ref[name][0], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got[name][1], ref[name][1], rtol=1e-4, atol=1e-6, err_msg=name)
    # and the unsharded jitted values equal the eager ones
    for name, (fn, args) in cases.items():
        np.testing.assert_allclose(ref[name][0], fn(*args), rtol=1e-5, atol=1e-6, err_msg=name)
