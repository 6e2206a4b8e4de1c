"""FALSE against literal numpy ports of the official code (GeoX-Lab/FALSE, the vendored VISSL).

* ``port_false_criterion``: ``vissl/losses/false_loss.py`` ``FALSECriterion`` (with
  ``FALSELoss.forward``'s normalisation) on ONE GPU (world size 1, rank 0), line for line:
  masks of ``precompute_pos_neg_mask``, ``diff_sim`` filled with 3, the upper-triangle loop,
  ``torch.where(diff_sim == torch.min(diff_sim))``, then the gate per picked cell. float32
  like the reference; it returns the per-anchor terms of the reference's mean.
* ``port_cosine_warm_restart`` / ``port_composite_lr``: VISSL's
  ``CosineWarmRestartScheduler`` and classy_vision's ``CompositeParamScheduler`` (+ its
  ``LinearParamScheduler``) as configured by ``configs/config/pretrain/FALSE/false_1gpu_resnet.yaml``.
"""

from __future__ import annotations

import bisect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rsjax import losses

RTOL = 2e-5
ATOL = 2e-5


# ----------------------------------------------------------------------------------------
# numpy port of vissl/losses/false_loss.py (single GPU)
# ----------------------------------------------------------------------------------------
def port_false_criterion(embedding, temperature, confidence_weight, positive_threshold):
    """Returns (per-anchor loss terms [2N], calibrated cells [(a, m)], min(diff_sim))."""
    # FALSELoss.forward: nn.functional.normalize(output, dim=1, p=2)
    emb = np.asarray(embedding, np.float32)
    emb = emb / np.maximum(np.sqrt(np.sum(emb * emb, axis=1, keepdims=True)), np.float32(1e-12))
    T = temperature
    num_pos = 2
    # precompute_pos_neg_mask with effective_batch_size = batch, world_size 1, rank 0
    total_images = emb.shape[0]
    world_size, rank = 1, 0
    batch_size = total_images // world_size
    orig_images = batch_size // num_pos
    pos_mask = np.zeros((batch_size, total_images), np.float32)
    neg_mask = np.zeros((batch_size, total_images), np.float32)
    all_indices = np.arange(total_images)
    pos_members = orig_images * np.arange(num_pos)
    orig_members = np.arange(orig_images)
    for anchor in np.arange(num_pos):
        for img_idx in range(orig_images):
            delete_inds = batch_size * rank + img_idx + pos_members
            neg_inds = np.delete(all_indices, delete_inds)
            neg_mask[anchor * orig_images + img_idx, neg_inds] = 1
        for pos in np.delete(np.arange(num_pos), anchor):
            pos_inds = batch_size * rank + pos * orig_images + orig_members
            pos_mask[np.arange(anchor * orig_images, (anchor + 1) * orig_images), pos_inds] = 1
    # forward
    similarity = np.exp((emb @ emb.T) / np.float32(T)).astype(np.float32)
    all_pos = similarity * pos_mask
    all_neg = similarity * neg_mask
    r, c = similarity.shape
    pos_sim = np.zeros((r, 1), np.float32) - 2
    diff_sim = np.zeros((r, c), np.float32) + 3
    for pos_idx in range(r):
        if pos_idx >= int(r / 2):
            pos_sim[pos_idx] = similarity[pos_idx, pos_idx - int(c / 2)]
        else:
            pos_sim[pos_idx] = similarity[pos_idx, pos_idx + int(c / 2)]
        diff_sim[pos_idx, pos_idx:] = np.abs(similarity[pos_idx, pos_idx:] - pos_sim[pos_idx])
        diff_sim[pos_idx, pos_idx] = 3
        if pos_idx < int(r / 2):
            diff_sim[pos_idx, pos_idx + int(c / 2)] = 3
    select_pair = np.where(diff_sim == np.min(diff_sim))
    calibrated = []
    for pair in range(len(select_pair[0])):
        anchor_n = select_pair[0][pair]
        m_neg_n = select_pair[1][pair]
        cos_pos_sim = np.log(pos_sim[anchor_n]) * np.float32(T)
        if cos_pos_sim[0] >= np.float32(positive_threshold):
            changed = False
            if all_pos[anchor_n, m_neg_n] == 0:
                all_pos[anchor_n, m_neg_n] = confidence_weight * all_neg[anchor_n, m_neg_n]
                changed = all_pos[anchor_n, m_neg_n] != 0
            if all_neg[anchor_n, m_neg_n] != 0:
                all_neg[anchor_n, m_neg_n] = (1 - confidence_weight) * all_neg[anchor_n, m_neg_n]
            if changed:
                calibrated.append((int(anchor_n), int(m_neg_n)))
    pos = np.sum(all_pos.astype(np.float64), 1)
    neg = np.sum(all_neg.astype(np.float64), 1)
    return -np.log(pos / (pos + neg)), calibrated, float(np.min(diff_sim))


def ref_nt_xent(z1, z2, tau):
    """Independent float64 NT-Xent per anchor (2B,)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n, b = len(z), len(z1)
    out = np.zeros(n)
    for i in range(n):
        logits = np.array([z[i] @ z[j] / tau for j in range(n) if j != i])
        out[i] = np.log(np.sum(np.exp(logits))) - z[i] @ z[(i + b) % n] / tau
    return out


def _vissl(z1, z2, tau=0.5, threshold=0.9, alpha=1.0):
    return losses.false_nt_xent(z1, z2, temperature=tau, threshold=threshold, alpha=alpha, fnsd_mode="vissl")


def _changed_rows(out, z1, z2, tau=0.5):
    return sorted(np.flatnonzero(np.asarray(out) != np.asarray(losses.nt_xent(z1, z2, temperature=tau))).tolist())


def _check_against_port(z1, z2, tau=0.5, threshold=0.9, alpha=1.0):
    out = _vissl(z1, z2, tau, threshold, alpha)
    ref, cells, dmin = port_false_criterion(np.concatenate([z1, z2]), tau, alpha, threshold)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.mean(out), np.mean(ref), rtol=RTOL)  # the reference's scalar
    assert _changed_rows(out, z1, z2, tau) == sorted({a for a, _ in cells})
    return out, cells, dmin


# ----------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------
def _draw(seed, b=16, d=32, n_gated=None, sigma=0.05):
    """Random images; ``n_gated`` (1-4) of them get a near-duplicate second view."""
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(b, d)).astype(np.float32)
    z2 = rng.normal(size=(b, d)).astype(np.float32)
    k = int(rng.integers(1, 5)) if n_gated is None else n_gated
    near = rng.choice(b, size=k, replace=False)
    z1n = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    z2[near] = z1n[near] + sigma * rng.normal(size=(k, d)).astype(np.float32)
    return z1, z2


def _near_duplicates(seed, b=8, d=16, sigma=0.02):
    """Every image: two near-duplicate views; images nearly orthogonal (basis + noise)."""
    rng = np.random.default_rng(seed)
    base = np.eye(d, dtype=np.float32)[:b]
    z1 = base + sigma * rng.normal(size=(b, d)).astype(np.float32)
    z2 = base + sigma * rng.normal(size=(b, d)).astype(np.float32)
    return z1, z2


# ----------------------------------------------------------------------------------------
# FNSD selection: vissl == the port
# ----------------------------------------------------------------------------------------
def test_random_draws_like_the_issue_match_port():
    """B = 16, 1-4 gated images: the arg-min lies in an ungated row, so the official code
    calibrates nothing; rsjax's vissl mode neither; gate_then_pick always does."""
    fired_vissl = fired_gtp = 0
    for seed in range(12):
        z1, z2 = _draw(seed)
        out, cells, dmin = _check_against_port(z1, z2)
        assert dmin < 3.0
        fired_vissl += bool(cells)
        gtp = losses.false_nt_xent(z1, z2, temperature=0.5, fnsd_mode="gate_then_pick")
        fired_gtp += bool(_changed_rows(gtp, z1, z2))
    assert fired_vissl == 0 and fired_gtp == 12


@pytest.mark.parametrize("alpha", [1.0, 0.9])
def test_fires_on_a_real_candidate(alpha):
    """All views near-duplicates, images 0 and 1 similar (cos ~ 0.95): the smallest searched
    D is one cell of rows {0, 1, B} (a gated row), picked then gated -> calibrated."""
    z1, z2 = _near_duplicates(3)
    b = len(z1)
    mix = np.float32(0.33)
    z1[1] = z1[0] + mix * z1[1]
    z2[1] = z2[0] + mix * z2[1]
    out, cells, dmin = _check_against_port(z1, z2, alpha=alpha)
    assert dmin < 3.0 and len(cells) == 1
    a, m = cells[0]
    assert a in (0, 1, b) and m > a
    # the calibrated row by hand: P += alpha S_am, N -= alpha S_am
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    s = np.exp(z @ z.T / 0.5)
    p = s[a, (a + b) % (2 * b)] + alpha * s[a, m]
    tot = s[a].sum() - s[a, a]
    np.testing.assert_allclose(out[a], -np.log(p / tot), rtol=RTOL)


def test_fires_on_the_placeholder_tie():
    """Every searched D > 3 (near-duplicate views of well-separated images): min(diff) is the
    placeholder 3, so every placeholder cell is picked; the lower-triangle negatives of gated
    rows are calibrated (every row here but row 0, which has none)."""
    z1, z2 = _near_duplicates(5)
    out, cells, dmin = _check_against_port(z1, z2)
    assert dmin == 3.0
    n = 2 * len(z1)
    assert len(cells) == sum(1 for a in range(n) for m in range(a) if m != (a + n // 2) % n)
    assert _changed_rows(out, z1, z2) == list(range(1, n))


def test_does_not_fire_when_the_argmin_row_is_not_gated():
    z1, z2 = _near_duplicates(5)
    z2[3] = np.roll(z2[3], 5)  # image 3's views now differ: its row has small D but fails the gate
    out, cells, dmin = _check_against_port(z1, z2)
    assert dmin < 3.0 and cells == []
    np.testing.assert_array_equal(out, losses.nt_xent(z1, z2, temperature=0.5))


def test_exact_ties_all_calibrated():
    """Basis vectors (exact cosines 0 / 1): images 0 and 1 identical. D = 0 exactly at
    (0, 1), (0, B+1), (1, B), (B, B+1): all four tied cells are calibrated."""
    b, d = 6, 8
    z1 = np.eye(d, dtype=np.float32)[[0, 0, 2, 3, 4, 5]]
    z2 = z1.copy()
    out, cells, dmin = _check_against_port(z1, z2)
    assert dmin == 0.0
    assert sorted(cells) == [(0, 1), (0, b + 1), (1, b), (b, b + 1)]
    # row 0 gets two cells: P_0 = e^2 + 2 e^2 (alpha = 1) over the unchanged row total
    e2 = math.exp(2.0)
    tot = 3 * e2 + (2 * b - 4) * 1.0  # views of image 0/1 (cos 1) and the rest (cos 0)
    np.testing.assert_allclose(out[0], -np.log(3 * e2 / tot), rtol=RTOL)
    np.testing.assert_allclose(out[1], -np.log(2 * e2 / tot), rtol=RTOL)


def test_gate_uses_log_of_s_times_tau():
    """The gate compares log(S_pos) * tau (float32) with T, as the reference does."""
    z1, z2 = _near_duplicates(5)
    z = np.concatenate([z1, z2]) / np.linalg.norm(np.concatenate([z1, z2]), axis=1, keepdims=True)
    cos_min = float(np.min(np.sum(z[:8] * z[8:], 1)))
    for thr in (cos_min - 1e-3, cos_min + 1e-3):  # every row / not every row gated
        _check_against_port(z1, z2, threshold=thr)


def test_degenerate_cases_and_traced_alpha_zero():
    z1, z2 = _near_duplicates(5)
    plain = ref_nt_xent(z1, z2, 0.5)
    np.testing.assert_allclose(_vissl(z1, z2, alpha=0.0), plain, rtol=RTOL)
    f = jax.jit(lambda a, b, al: losses.false_nt_xent(a, b, temperature=0.5, alpha=al, fnsd_mode="vissl"))
    np.testing.assert_allclose(f(z1, z2, jnp.float32(0.0)), plain, rtol=RTOL)  # general path
    assert not np.allclose(f(z1, z2, jnp.float32(1.0)), plain, rtol=1e-3)  # ... which does act
    g = jax.grad(lambda a: jnp.mean(_vissl(a, z2, tau=1e-3)))(z1)  # S overflows; loss stays finite
    assert np.isfinite(g).all()


# ----------------------------------------------------------------------------------------
# global batch: 8 fake devices give the single-device (= single-GPU reference) values
# ----------------------------------------------------------------------------------------
def test_vissl_on_8_devices_equals_1():
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should provide 8 fake CPU devices"
    sharded = NamedSharding(Mesh(np.array(devices), ("data",)), P("data"))
    one = NamedSharding(Mesh(np.array(devices[:1]), ("data",)), P("data"))

    def f(a, c):
        return _vissl(a, c), jax.grad(lambda x: jnp.mean(_vissl(x, c)))(a)

    z1, z2 = _near_duplicates(3)
    z1[1] = z1[0] + np.float32(0.33) * z1[1]
    z2[1] = z2[0] + np.float32(0.33) * z2[1]
    cases = {"real_candidate": (z1, z2), "placeholder": _near_duplicates(5), "none": _draw(1, b=8)}
    for name, (a, c) in cases.items():
        ref, _, _ = port_false_criterion(np.concatenate([a, c]), 0.5, 1.0, 0.9)
        got1 = jax.jit(f)(*[jax.device_put(x, one) for x in (a, c)])
        sa, sc = [jax.device_put(x, sharded) for x in (a, c)]
        assert len(sa.sharding.device_set) == 8
        got8 = jax.jit(f)(sa, sc)
        np.testing.assert_allclose(got8[0], got1[0], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got8[1], got1[1], rtol=1e-4, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got8[0], ref, rtol=RTOL, atol=ATOL, err_msg=name)


# ----------------------------------------------------------------------------------------
# LR schedule: VISSL CosineWarmRestartScheduler inside classy_vision's composite scheduler
# ----------------------------------------------------------------------------------------
class PortCosineWarmRestart:
    """vissl/optimizers/param_scheduler/cosine_warm_restart_scheduler.py, line for line."""

    def __init__(self, start_value, end_value, restart_interval_length, wave_type, lr_multiplier, is_adaptive):
        self.restart_interval_length = restart_interval_length
        self.wave_type = wave_type
        self._start_value = start_value
        self._end_value = end_value
        self._max_lr = self._start_value
        self.lr_multiplier = lr_multiplier
        self.is_adaptive = is_adaptive
        self.restart_steps = [0.0]
        if self.wave_type == "full":
            self.restart_steps.extend(
                np.arange(self.restart_interval_length, 1.0, 2 * self.restart_interval_length).tolist()
            )
        elif self.wave_type == "half":
            self.restart_steps.extend(
                np.arange(self.restart_interval_length, 1.0, self.restart_interval_length).tolist()
            )
        self.lr_restart_values = []
        for idx in range(len(self.restart_steps)):
            if self.is_adaptive:
                if self.wave_type == "half":
                    desired_max_lr = self._end_value + 0.5 * (self._start_value - self._end_value) * (
                        1 + math.cos(math.pi * self.restart_steps[idx])
                    )
                elif self.wave_type == "full":
                    desired_max_lr = self._end_value + 0.5 * (self._start_value - self._end_value) * (
                        1 + math.cos(math.pi * (self.restart_interval_length + self.restart_steps[idx]))
                    )
                lr_multiplier = desired_max_lr / self._start_value
            else:
                lr_multiplier = pow(self.lr_multiplier, idx)
            self.lr_restart_values.append(self._start_value * lr_multiplier)

    def __call__(self, where):
        if self.wave_type == "half":
            restart_num = max(bisect.bisect(self.restart_steps, where) - 1, 0)
            self._max_lr = self.lr_restart_values[restart_num]
            where = (where % float(self.restart_interval_length)) / float(self.restart_interval_length)
        elif self.wave_type == "full":
            restart_num = max(bisect.bisect(self.restart_steps, where) - 1, 0)
            self._max_lr = self.lr_restart_values[restart_num]
            where = where / float(self.restart_interval_length)
        return self._end_value + 0.5 * (self._max_lr - self._end_value) * (1 + math.cos(math.pi * where))


def port_composite_lr(schedulers, lengths, interval_scaling):
    """classy_vision CompositeParamScheduler (+ LinearParamScheduler below)."""
    WHERE_EPSILON = 1e-6

    def f(where):
        i = 0
        running_total = lengths[i]
        while (where + WHERE_EPSILON) > running_total and i < len(schedulers) - 1:
            i += 1
            running_total += lengths[i]
        scheduler_where = where
        if interval_scaling[i] == "rescaled":
            scheduler_start = running_total - lengths[i]
            scheduler_where = (where - scheduler_start) / lengths[i]
        return schedulers[i](scheduler_where)

    return f


def port_linear(start_value, end_value):
    return lambda where: end_value * where + start_value * (1 - where)


def _load_false_config(variant):
    from conftest import load_config

    return load_config("false", variant)


@pytest.mark.parametrize("wave,adaptive,mult", [("full", True, 1.0), ("half", False, 0.5), ("half", True, 1.0)])
def test_vissl_schedule_matches_port(wave, adaptive, mult):
    from rsjax import optim

    c = _load_false_config("paper")
    c.optimizer.wave, c.optimizer.adaptive_restarts, c.optimizer.cycle_decay = wave, adaptive, mult
    ours = optim.schedule(c.optimizer, c.total_steps)
    # false_1gpu_resnet.yaml: composite [linear 0.6 -> 4.8, cosine_warm_restart 4.8 -> 0.0048],
    # lengths [0.1, 0.9], interval_scaling [rescaled, rescaled]; where = step / total steps.
    port = port_composite_lr(
        [
            port_linear(0.6, 4.8),
            PortCosineWarmRestart(4.8, 0.0048, 0.334, wave, lr_multiplier=mult, is_adaptive=adaptive),
        ],
        [0.1, 0.9],
        ["rescaled", "rescaled"],
    )
    total = c.total_steps
    steps = np.arange(total)
    ref = np.array([port(s / total) for s in steps])
    got = np.asarray(jax.jit(jax.vmap(ours))(steps))
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-6)
    if wave == "full" and adaptive:  # the values the issue quotes
        w = total // 10
        assert ref[w - 1] < 4.8 and abs(ref[w] - 3.597) < 1e-2  # jump down to ~3.6
        u2 = w + int(round(2 * 0.334 * (total - w)))
        assert abs(ref[u2] - 1.20) < 2e-2 and ref[-1] < 0.006  # ~1.2, then ~0.005
