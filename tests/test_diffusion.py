"""rsjax.diffusion against float64 numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax import diffusion


def test_linear_beta_schedule_defaults():
    betas = diffusion.linear_beta_schedule()
    assert betas.shape == (1000,) and betas.dtype == jnp.float32
    assert betas[0] == np.float32(1e-4) and betas[-1] == np.float32(0.02)
    ref = [1e-4 + t * (0.02 - 1e-4) / 999 for t in range(1000)]
    np.testing.assert_allclose(betas, ref, rtol=1e-6)
    assert np.all(np.diff(np.asarray(betas)) > 0)


def test_linear_beta_schedule_bad_args():
    with pytest.raises(ValueError, match="num_steps"):
        diffusion.linear_beta_schedule(0, 1e-4, 0.02)
    with pytest.raises(ValueError, match="beta_start"):
        diffusion.linear_beta_schedule(10, 0.02, 1e-4)


def test_alphas_cumprod_matches_numpy():
    betas = diffusion.linear_beta_schedule(1000, 1e-4, 0.02)
    abar = diffusion.alphas_cumprod(betas)
    assert abar.shape == (1000,) and abar.dtype == jnp.float32
    ref, prod = [], 1.0
    for b in np.linspace(1e-4, 0.02, 1000):
        prod *= 1.0 - b
        ref.append(prod)
    np.testing.assert_allclose(abar, ref, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(diffusion.alphas_cumprod)(betas), abar, rtol=1e-6)
    assert np.all(np.diff(np.asarray(abar)) < 0) and 0 < abar[-1] < 1e-4


def test_q_sample_matches_numpy_loop():
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, size=(4, 5, 6, 3)).astype(np.float32)
    noise = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([0, 17, 500, 999], np.int32)
    abar = diffusion.alphas_cumprod(diffusion.linear_beta_schedule())
    out = diffusion.q_sample(x0, t, noise, abar)
    assert out.shape == x0.shape and out.dtype == jnp.float32
    ref = np.zeros(x0.shape)
    abar64 = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    for b in range(4):
        a = abar64[t[b]]
        ref[b] = math.sqrt(a) * x0[b] + math.sqrt(1 - a) * noise[b]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(diffusion.q_sample)(x0, t, noise, abar), out, rtol=1e-6, atol=1e-7)
    # 2-D inputs broadcast too; t = 0 is almost clean
    x2 = diffusion.q_sample(x0[:, 0, 0], t, noise[:, 0, 0], abar)
    np.testing.assert_allclose(x2, out[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(out[0], x0[0], atol=0.05)


def test_ddpm_loss_matches_numpy():
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
    pred = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
    out = diffusion.ddpm_loss(noise, pred)
    assert out.shape == (3,) and out.dtype == jnp.float32
    ref = [np.mean((noise[b].astype(np.float64) - pred[b]) ** 2) for b in range(3)]
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    np.testing.assert_array_equal(diffusion.ddpm_loss(noise, noise), np.zeros(3))
    g = jax.grad(lambda p: jnp.mean(diffusion.ddpm_loss(noise, p)))(pred)
    np.testing.assert_allclose(g, 2 * (pred - noise) / pred.size, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dim", [8, 7])
def test_timestep_embedding_matches_numpy(dim):
    t = np.array([0, 1, 10, 999], np.int32)
    emb = diffusion.timestep_embedding(t, dim)
    assert emb.shape == (4, dim) and emb.dtype == jnp.float32
    half = dim // 2
    ref = np.zeros((4, dim))
    for b in range(4):
        for k in range(half):
            f = 10000.0 ** (-k / half)
            ref[b, k] = math.sin(t[b] * f)
            ref[b, half + k] = math.cos(t[b] * f)
    np.testing.assert_allclose(emb, ref, atol=2e-4)
    np.testing.assert_allclose(jax.jit(diffusion.timestep_embedding, static_argnums=1)(t, dim), emb, atol=1e-5)
