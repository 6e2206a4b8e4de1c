"""rsjax.models.conv: every convolution formulation computes lax.conv_general_dilated's function.

The reference is ``lax.conv_general_dilated`` itself (what flax.linen.Conv calls) and
``flax.linen.max_pool``; values and both gradients (input and kernel) are compared in float32,
relative to the reference's largest magnitude (1e-5). The shapes are those the models use:
the 7x7 / stride-2 stem (1, 3 and 13 bands), 3x3 at stride 1 and 2, 1x1 projections (stride 1
and 2), dilated 3x3 of DeepLabv3+ (rates 2-36, also on maps smaller than the rate), the
denoiser's 3x3 with integer padding, maps of 1-2 pixels, odd and even sizes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from rsjax import methods, optim, train
from rsjax import sharding as shd
from rsjax.models import conv as conv_lib
from rsjax.models import resnet

FORMULATIONS = ("taps", "im2col", "auto")

# (H, W, C_in, C_out, kernel, stride, dilation); padding = dilation * (kernel // 2) (the models' rule)
CASES = [
    (32, 32, 3, 8, 7, 2, 1),  # standard stem, RGB
    (33, 31, 13, 8, 7, 2, 1),  # stem, 13 bands, odd sizes
    (16, 16, 1, 4, 7, 2, 1),  # stem, 1 band
    (32, 32, 13, 8, 3, 1, 1),  # cifar stem
    (8, 8, 8, 8, 3, 1, 1),  # layer1
    (7, 9, 8, 16, 3, 2, 1),  # first block of a stage, odd sizes
    (4, 4, 16, 16, 3, 2, 1),  # -> 2 px
    (2, 2, 16, 16, 3, 1, 1),  # 2 px map (im2col under auto)
    (1, 1, 16, 16, 3, 1, 1),  # 1 px map
    (2, 2, 16, 32, 3, 2, 1),  # -> 1 px
    (8, 8, 16, 32, 1, 2, 1),  # downsample 1x1 / stride 2
    (6, 5, 16, 8, 1, 1, 1),  # 1x1 projection
    (8, 8, 16, 8, 3, 1, 2),  # dilated (output stride 16)
    (8, 8, 16, 8, 3, 1, 6),  # ASPP rate 6 on 8 px: only some taps read data
    (8, 8, 16, 8, 3, 1, 24),  # ASPP rate 24 on 8 px: the centre tap alone
    (9, 9, 16, 8, 3, 1, 12),
]


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _check(f_ref, f, x, w, tol=1e-5):
    y_ref, vjp_ref = jax.vjp(f_ref, x, w)
    y, vjp = jax.vjp(f, x, w)
    assert y.shape == y_ref.shape
    g = jnp.asarray(np.random.default_rng(1).standard_normal(y_ref.shape), jnp.float32)
    (dx_ref, dw_ref), (dx, dw) = vjp_ref(g), vjp(g)
    for name, a, b in (("output", y, y_ref), ("input gradient", dx, dx_ref), ("kernel gradient", dw, dw_ref)):
        err = _rel_err(a, b)
        assert err <= tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("impl", FORMULATIONS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "h{}w{}c{}o{}k{}s{}d{}".format(*c))
def test_formulation_equals_lax_values_and_gradients(case, impl):
    h, w, cin, cout, k, s, d = case
    pad = d * (k // 2)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, h, w, cin)), jnp.float32)
    kern = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)

    def ref(x, kern):
        return lax.conv_general_dilated(
            x, kern, (s, s), ((pad, pad), (pad, pad)), rhs_dilation=(d, d), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def f(x, kern):
        return conv_lib.conv2d(x, kern, strides=s, padding=pad, dilation=d, impl=impl)

    # Jitted, as every model runs: one program each instead of one per eager op and shape
    # (the eager form computes the same function; checking it too doubled this file's time).
    _check(jax.jit(ref), jax.jit(f), x, kern)


@pytest.mark.parametrize("impl", FORMULATIONS)
def test_asymmetric_padding_and_bfloat16(impl):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 9, 8, 5)), jnp.float32)
    kern = jnp.asarray(rng.standard_normal((3, 3, 5, 4)), jnp.float32)
    pads = ((0, 1), (2, 0))

    def ref(x, kern):
        return lax.conv_general_dilated(x, kern, (2, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    _check(ref, lambda x, kern: conv_lib.conv2d(x, kern, strides=(2, 1), padding=pads, impl=impl), x, kern)
    # bf16 in, bf16 out, as nn.Conv(dtype=bfloat16): within bf16 rounding of the float32 result
    y = conv_lib.conv2d(x.astype(jnp.bfloat16), kern.astype(jnp.bfloat16), strides=(2, 1), padding=pads, impl=impl)
    assert y.dtype == jnp.bfloat16
    assert _rel_err(y.astype(jnp.float32), ref(x, kern)) < 2e-2


def test_choose_rule():
    ch = conv_lib.choose
    assert ch((8, 32, 32, 3), (7, 7, 3, 64), 2, 3, 1, backend="cpu") == "lax"
    assert ch((8, 8, 8, 64), (3, 3, 64, 64), 1, 1, 1, backend="cpu") == "lax"
    assert ch((8, 2, 2, 256), (3, 3, 256, 256), 1, 1, 1, backend="cpu") == "im2col"  # 2 px map
    assert ch((8, 4, 4, 256), (3, 3, 256, 512), 2, 1, 1, backend="cpu") == "im2col"  # -> 2 px
    assert ch((8, 8, 8, 64), (1, 1, 64, 128), 2, 0, 1, backend="cpu") == "im2col"  # 1x1 = a matmul
    assert ch((8, 8, 8, 64), (3, 3, 64, 64), 1, 24, 24, backend="cpu") == "im2col"  # taps on padding only
    for backend in ("gpu", "tpu"):
        assert ch((8, 2, 2, 256), (3, 3, 256, 256), 1, 1, 1, backend=backend) == "lax"


def test_bad_arguments_are_refused():
    x, kern = jnp.zeros((1, 8, 8, 3)), jnp.zeros((3, 3, 3, 4))
    with pytest.raises(ValueError, match="model.conv"):
        conv_lib.conv2d(x, kern, impl="winograd")
    with pytest.raises(ValueError, match="4 channels"):
        conv_lib.conv2d(jnp.zeros((1, 8, 8, 4)), kern)
    with pytest.raises(ValueError, match="explicit"):
        conv_lib.conv2d(x, kern, padding="SAME")
    from rsjax.errors import ConfigError

    with pytest.raises(ConfigError, match="model.conv='fft'"):
        conv_lib.from_config({"conv": "fft"})


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("impl", ("lax", "taps", "im2col"))
def test_conv_module_has_flax_conv_parameters(use_bias, impl):
    """Same parameter names, shapes and initial values as flax.linen.Conv, same output."""
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 6, 6, 5)), jnp.float32)
    kw = dict(
        features=7,
        kernel_size=(3, 3),
        strides=(2, 2),
        padding=((1, 1), (1, 1)),
        use_bias=use_bias,
        bias_init=nn.initializers.normal(1.0),
    )
    ref = nn.Conv(**kw)
    mine = conv_lib.Conv(**kw, impl=impl)
    key = jax.random.PRNGKey(0)
    p_ref, p = ref.init(key, x), mine.init(key, x)
    assert jax.tree.structure(p_ref) == jax.tree.structure(p)
    jax.tree.map(np.testing.assert_array_equal, p_ref, p)
    np.testing.assert_allclose(mine.apply(p, x), ref.apply(p_ref, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 16, 16, 4), (2, 9, 7, 3), (3, 8, 8, 5)])
def test_max_pool_equals_flax_with_ties(shape):
    """Values and gradient exactly: each output's gradient goes to the first maximum of its
    window, as XLA's select-and-scatter does (ties are everywhere after a ReLU)."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(np.maximum(rng.standard_normal(shape), 0.0), jnp.float32)
    x = x.at[0, 1, 1, 0].set(x[0, 1, 2, 0])  # one more tie inside a window

    def ref(x):
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    def mine(x):
        return conv_lib.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), impl="im2col")

    y_ref, vjp_ref = jax.vjp(ref, x)
    y, vjp = jax.vjp(mine, x)
    np.testing.assert_array_equal(y, y_ref)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])
    np.testing.assert_array_equal(
        jax.jit(jax.grad(lambda x: jnp.sum(mine(x) * g)))(x), jax.grad(lambda x: jnp.sum(ref(x) * g))(x)
    )


def test_encoder_parameters_do_not_depend_on_the_formulation():
    x = jnp.ones((2, 32, 32, 13), jnp.float32)
    key = jax.random.PRNGKey(0)
    a = resnet.create_encoder("resnet18", conv="lax").init(key, x, train=False)
    b = resnet.create_encoder("resnet18", conv="auto").init(key, x, train=False)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _run_steps(config, n: int):
    """Params and metrics after each of ``n`` train steps (one device: the step is what is compared)."""
    mesh = shd.make_mesh(jax.devices()[:1])
    method = methods.get_method(config)
    tx, schedule = optim.make(config.optimizer, config.total_steps)
    state = train.create_state(method, tx, config.seed, mesh)
    step = train.jit_train_step(train.make_train_step(method, tx, schedule, seed=config.seed), mesh)
    rng = np.random.default_rng(5)
    b, s, c = config.batch_size, config.data.image_size, config.model.in_channels
    params, metrics = [jax.device_get(state["params"])], []
    for _ in range(n):
        batch = {
            "view1": rng.standard_normal((b, s, s, c), np.float32),
            "view2": rng.standard_normal((b, s, s, c), np.float32),
            "label": np.zeros((b,), np.int32),
            "scene_id": np.arange(b, dtype=np.int32) // 4,
        }
        state, m = step(state, jax.device_put(batch, shd.data_sharded(mesh)))
        params.append(jax.device_get(state["params"]))
        metrics.append(jax.device_get(m))
    return params, metrics


@pytest.mark.parametrize("name,arg", [("simclr", "smoke"), ("swimdiff", "smoke")])
def test_train_steps_equal_under_both_formulations(config_loader, name, arg):
    """Three train steps of a ResNet-18 (SimCLR at 32 px, where auto takes im2col for layer3/4,
    the 1x1 downsamples and the max pool) and of the SwiMDiff smoke step (with its denoiser) give
    the same losses, gradient norms and parameters under ``model.conv=lax`` and ``auto``.

    SGD without warm-up (Adam's first steps are ~lr * sign(g): a rounding-level difference of a
    near-zero gradient would become 2 lr). The first step's loss and gradient norm agree to 1e-4;
    later steps to 1e-3 and the parameters after three steps to 1e-3 of each leaf's largest value:
    float32 rounding passes through BatchNorm of 8 samples at 1 px and may move the max pool's
    choice between near-equal elements. A wrong formulation (a tap lost, a stride off) is O(1).
    """
    out = {}
    for impl in ("lax", "auto"):
        c = config_loader(name, arg)
        if name == "simclr":
            c.model.name = "resnet18"
            c.batch_size = 8
        c.optimizer.name = "sgd"
        c.optimizer.lr = 0.001
        c.optimizer.warmup_steps = 0
        c.model.conv = impl
        out[impl] = _run_steps(c, 3)
    (p_lax, m_lax), (p_auto, m_auto) = out["lax"], out["auto"]
    for i, (a, b) in enumerate(zip(m_lax, m_auto)):
        for k in ("loss", "loss_diffusion", "grad_norm"):
            if k in a:
                np.testing.assert_allclose(b[k], a[k], rtol=1e-4 if i == 0 else 1e-3, err_msg=f"step {i + 1} {k}")
    for (path, a), b in zip(jax.tree.leaves_with_path(p_lax[-1]), jax.tree.leaves(p_auto[-1])):
        # + 1e-6: a conv bias right before a GroupNorm has a zero gradient up to rounding (~1e-12)
        err = float(np.max(np.abs(np.asarray(b) - np.asarray(a))))
        assert err <= 1e-3 * float(np.max(np.abs(a))) + 1e-6, (jax.tree_util.keystr(path), err)
