"""rsjax.flops against counts written by hand from the architecture (issue 18).

The reference never looks at a jaxpr: it walks torchvision's ResNet layer table and sums
2 * H_out * W_out * k * k * C_in * C_out per convolution (+ 2 * in * out per dense layer).
A training step differentiates w.r.t. the parameters only, so every layer costs its forward
three times (forward, input gradient, weight gradient) except the first convolution, whose
input gradient is never formed:  fwd_bwd = 3 * fwd - first_conv.
Only tracing (make_jaxpr) runs; nothing is compiled or executed.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from rsjax import flops
from rsjax.models import resnet

# name -> (blocks per stage, block type, base width); written from the torchvision paper
# table, not imported from rsjax.models.resnet.ARCHS, so a wrong table there would show.
_TABLE = {"resnet18": ((2, 2, 2, 2), "basic"), "resnet50": ((3, 4, 6, 3), "bottleneck")}


def _out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def analytic_resnet(name, batch, size, cin=3):
    """(forward FLOPs, FLOPs of the stem conv) of the headless ResNet, standard stem."""
    blocks, kind = _TABLE[name]
    total = 0.0

    def conv(h, c_in, c_out, k, s):
        nonlocal total
        ho = _out(h, k, s, k // 2)
        total += 2.0 * batch * ho * ho * k * k * c_in * c_out
        return ho

    h = conv(size, cin, 64, 7, 2)
    stem = total
    h = _out(h, 3, 2, 1)  # max pool: no multiply-adds
    c = 64
    for i, n in enumerate(blocks):
        planes = 64 * 2**i
        for j in range(n):
            s = 2 if (i > 0 and j == 0) else 1
            if kind == "basic":
                h1 = conv(h, c, planes, 3, s)
                conv(h1, planes, planes, 3, 1)
                out_c = planes
            else:
                conv(h, c, planes, 1, 1)
                h1 = conv(h, planes, planes, 3, s)
                conv(h1, planes, 4 * planes, 1, 1)
                out_c = 4 * planes
            if s != 1 or c != out_c:
                conv(h, c, out_c, 1, s)  # downsample shortcut
            h, c = h1, out_c
    return total, stem, c


class _EncoderWithHead(nn.Module):
    name_: str

    @nn.compact
    def __call__(self, x):
        z = resnet.create_encoder(self.name_)(x, train=True)
        return nn.Dense(128, name="head")(z)


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("resnet50", 224)])
def test_resnet_fwd_bwd_matches_analytic(name, size):
    batch = 2
    model = _EncoderWithHead(name)
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))

    def loss(params, stats, x):
        z, _ = model.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        return jnp.sum(z)  # no multiply-adds in the loss

    convs, stem, feat = analytic_resnet(name, batch, size)
    dense = 2.0 * batch * feat * 128
    fwd = convs + dense
    want = 3 * fwd - stem

    got_fwd = flops.count_flops(loss, variables["params"], variables["batch_stats"], x)
    got = flops.count_flops(jax.grad(loss), variables["params"], variables["batch_stats"], x)
    assert got_fwd == pytest.approx(fwd, rel=1e-9)  # the forward is an exact count
    assert got == pytest.approx(want, rel=0.01), got / want


def test_strided_conv_gradient_counts_as_forward():
    # One 3x3 / stride-2 conv, 16x16x4 -> 8x8x8, batch 2: forward 2*2*8*8*9*4*8 = 73,728.
    # Gradient w.r.t. input AND kernel: forward + input gradient + weight gradient = 3x.
    def f(x, w):
        y = jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y)

    x = jax.ShapeDtypeStruct((2, 16, 16, 4), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 4, 8), jnp.float32)
    assert flops.count_flops(f, x, w) == 73_728
    assert flops.count_flops(jax.grad(f, argnums=(0, 1)), x, w) == 3 * 73_728
