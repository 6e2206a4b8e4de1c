"""Decoders: output shapes at input resolution, dilation (output stride) of the encoder without
changing parameter names, gradient flow (and none into a frozen encoder), pretrained-encoder
plug-in, siamese symmetry, PyTorch-style adaptive pooling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax.models import decoders as D
from rsjax.models import resnet as R

B, S, C = 2, 32, 4
KEYS = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}


def _x(seed=0, shape=(B, S, S, C)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _init(model, *args):
    # One jitted init program compiles faster than flax's op-by-op eager init.
    return jax.jit(lambda keys, *a: model.init(keys, *a, train=False))(KEYS, *args)


def _loss_and_grads(model, variables, x, y):
    def loss(params):
        logits, upd = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            rngs={"dropout": jax.random.PRNGKey(2)},
            mutable=["batch_stats"],
        )
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[..., None], -1)), (logits, upd)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])


def _nonzero(tree):
    return any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(tree))


@pytest.mark.parametrize("decoder,output_stride", [("unet", 32), ("deeplabv3plus", 16), ("pspnet", 8)])
def test_segmentation_model_shapes_and_grads(decoder, output_stride):
    model = D.SegmentationModel("tiny", decoder, 5, C, output_stride=output_stride)
    x = _x()
    variables = _init(model, x)
    assert set(variables["params"]) == {"encoder", "decoder"}
    assert set(variables["batch_stats"]) == {"encoder", "decoder"}
    y = jnp.asarray(np.random.default_rng(1).integers(0, 5, (B, S, S)), jnp.int32)
    (loss, (logits, upd)), grads = _loss_and_grads(model, variables, x, y)
    assert logits.shape == (B, S, S, 5) and logits.dtype == jnp.float32
    assert np.isfinite(float(loss))
    assert _nonzero(grads["encoder"]) and _nonzero(grads["decoder"])
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert set(upd["batch_stats"]) == {"encoder", "decoder"}


def test_frozen_encoder_gets_no_gradient_and_keeps_statistics():
    model = D.SegmentationModel("tiny", "unet", 3, C, freeze_encoder=True)
    x = _x()
    variables = _init(model, x)
    y = jnp.zeros((B, S, S), jnp.int32)
    (_, (_, upd)), grads = _loss_and_grads(model, variables, x, y)
    assert not _nonzero(grads["encoder"]) and _nonzero(grads["decoder"])
    for a, b in zip(
        jax.tree.leaves(upd["batch_stats"]["encoder"]), jax.tree.leaves(variables["batch_stats"]["encoder"])
    ):
        np.testing.assert_array_equal(a, b)


def test_dilation_keeps_parameter_tree_and_sets_output_stride():
    x = _x(shape=(1, 64, 64, C))
    plain = R.create_encoder("tiny")
    v = plain.init(jax.random.PRNGKey(0), x, train=False)
    shapes = jax.tree.map(jnp.shape, v)
    sizes = {}
    for os_ in (32, 16, 8):
        enc = R.create_encoder("tiny", replace_stride_with_dilation=R.dilation_for_output_stride(os_))
        assert jax.tree.map(jnp.shape, enc.init(jax.random.PRNGKey(0), x, train=False)) == shapes
        _, feats, stem = enc.apply(v, x, train=False, return_features=True, return_stem=True)  # same weights load
        sizes[os_] = [f.shape[1] for f in feats]
        assert stem.shape[1] == 32
    assert sizes == {32: [16, 8, 4, 2], 16: [16, 8, 4, 4], 8: [16, 8, 8, 8]}
    # Default is unchanged: an explicit all-False tuple gives the same numbers as before.
    a = plain.apply(v, x, train=False)
    b = R.create_encoder("tiny", replace_stride_with_dilation=(False, False, False)).apply(v, x, train=False)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="output_stride"):
        R.dilation_for_output_stride(4)


def test_dilated_stage_matches_hand_built_dilated_convs():
    # The first conv of layer4's first block keeps dilation 1 (torchvision); later convs use 2.
    enc = R.create_encoder("tiny", replace_stride_with_dilation=(False, False, True))
    x = _x(shape=(1, 32, 32, C))
    v = enc.init(jax.random.PRNGKey(0), x, train=False)
    _, (c1, c2, c3, c4) = enc.apply(v, x, train=False, return_features=True)
    p, s = v["params"]["layer4_0"], v["batch_stats"]["layer4_0"]

    def conv(h, k, d, stride=1):
        pad = d * (k.shape[0] // 2)
        return jax.lax.conv_general_dilated(
            h, k, (stride, stride), [(pad, pad)] * 2, rhs_dilation=(d, d), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def bn(h, name):
        return (h - s[name]["mean"]) / jnp.sqrt(s[name]["var"] + 1e-5) * p[name]["scale"] + p[name]["bias"]

    out = jax.nn.relu(bn(conv(c3, p["conv1"]["kernel"], 1), "bn1"))
    out = bn(conv(out, p["conv2"]["kernel"], 1), "bn2")  # first block: previous dilation (1)
    short = bn(conv(c3, p["downsample_conv"]["kernel"], 1), "downsample_bn")
    np.testing.assert_allclose(jax.nn.relu(out + short), c4, rtol=1e-4, atol=1e-4)


def test_siamese_cd_unet_shapes_symmetry_and_grads():
    model = D.SiameseCDUNet("tiny", C)
    a, b = _x(0), _x(1)
    variables = _init(model, a, b)
    assert set(variables["params"]) == {"encoder", "decoder"}
    # The encoder tree is exactly a plain ResNet's: a pretrained encoder plugs in.
    enc_shapes = jax.tree.map(jnp.shape, R.create_encoder("tiny").init(jax.random.PRNGKey(0), a, train=False))
    assert jax.tree.map(jnp.shape, variables["params"]["encoder"]) == enc_shapes["params"]

    @jax.jit
    def fwd(variables, a, b):
        return model.apply(variables, a, b, train=False)

    out = fwd(variables, a, b)
    assert out.shape == (B, S, S) and out.dtype == jnp.float32
    np.testing.assert_allclose(fwd(variables, b, a), out, rtol=1e-5, atol=1e-5)  # |fA - fB| is symmetric

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, a, b, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(jax.nn.softplus(-logits))

    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert _nonzero(grads["encoder"]) and _nonzero(grads["decoder"])
    with pytest.raises(ValueError, match="image B"):
        model.apply(variables, a, b[..., :3], train=False)


def test_plug_encoder_replaces_and_checks_shapes():
    model = D.SegmentationModel("tiny", "unet", 2, C)
    x = _x()
    variables = _init(model, x)
    pre = R.create_encoder("tiny").init(jax.random.PRNGKey(7), x, train=False)
    plugged = D.plug_encoder(variables, pre["params"], pre["batch_stats"])
    for a, b in zip(jax.tree.leaves(plugged["params"]["encoder"]), jax.tree.leaves(pre["params"])):
        np.testing.assert_array_equal(a, b)
    assert plugged["params"]["decoder"] is variables["params"]["decoder"]
    wrong = R.create_encoder("tiny").init(jax.random.PRNGKey(7), x[..., :3], train=False)
    with pytest.raises(ValueError, match=r"conv1.*\(7, 7, 3, 8\).*\(7, 7, 4, 8\)"):
        D.plug_encoder(variables, wrong["params"], wrong["batch_stats"])
    with pytest.raises(ValueError, match="model.in_channels"):
        model.apply(variables, x[..., :3], train=False)


@pytest.mark.parametrize("n_in,n_out", [(7, 3), (6, 6), (1, 6), (13, 2), (5, 1)])
def test_adaptive_avg_pool_matches_loop(n_in, n_out):
    x = np.random.default_rng(0).normal(size=(1, n_in, n_in, 2)).astype(np.float32)
    ref = np.zeros((1, n_out, n_out, 2), np.float32)
    for i in range(n_out):
        h0, h1 = int(np.floor(i * n_in / n_out)), int(np.ceil((i + 1) * n_in / n_out))
        for j in range(n_out):
            w0, w1 = int(np.floor(j * n_in / n_out)), int(np.ceil((j + 1) * n_in / n_out))
            ref[0, i, j] = x[0, h0:h1, w0:w1].mean(axis=(0, 1))
    np.testing.assert_allclose(D.adaptive_avg_pool(jnp.asarray(x), n_out), ref, rtol=1e-5, atol=1e-6)


def test_aspp_rates_and_unknown_decoder():
    assert D.aspp_rates(16) == (6, 12, 18) and D.aspp_rates(8) == (12, 24, 36)
    with pytest.raises(ValueError, match="model.decoder"):
        D.make_decoder("fcn", 3)
