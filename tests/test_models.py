"""ResNet encoders, projection head and conditional denoiser: shapes, parameter counts,
parameter naming, dtype handling and gradient flow."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax.models.heads import Denoiser, ProjectionHead, _timestep_embedding
from rsjax.models.resnet import ResNet, create_encoder, feature_dim, stage_channels


def _shapes(model, x_shape, **kw):
    """Variables and output shapes without compiling (eval_shape)."""
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, **kw), variables, x)
    return variables, out


def _np_init(model, *args, seed=0, **kw):
    """Variables with the shapes of ``model.init`` filled by numpy (fan-in normal kernels, BN
    at identity). Avoids compiling flax's threefry-based init, which takes ~10 s on CPU."""
    shapes = jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a, **kw), *args)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        leaf = path[-1].key
        if leaf == "kernel":
            fan_in = int(np.prod(s.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), s.shape), s.dtype)
        if leaf in ("scale", "var"):
            return jnp.ones(s.shape, s.dtype)
        return jnp.zeros(s.shape, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def tiny():
    model = create_encoder("tiny")
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 5))
    variables = _np_init(model, x, train=False)
    return model, variables, x


@pytest.mark.parametrize("name", ["tiny", "resnet18", "resnet50"])
@pytest.mark.parametrize("bands", [3, 13])
def test_encoder_shapes(name, bands):
    model = create_encoder(name)
    variables, (pooled, feats) = _shapes(model, (2, 64, 64, bands), return_features=True)
    chans = stage_channels(name)
    assert pooled.shape == (2, feature_dim(name)) and pooled.dtype == jnp.float32
    assert [f.shape for f in feats] == [(2, 64 // s, 64 // s, c) for s, c in zip((4, 8, 16, 32), chans)]
    assert variables["params"]["conv1"]["kernel"].shape == (7, 7, bands, chans[0] // (4 if name == "resnet50" else 1))
    assert model.feature_dim == feature_dim(name) and model.stage_channels == chans


def test_stage_channels_and_feature_dim():
    assert stage_channels("resnet18") == (64, 128, 256, 512) == stage_channels("resnet34")
    assert stage_channels("resnet50") == (256, 512, 1024, 2048)
    assert stage_channels("tiny") == (8, 16, 32, 64)
    assert feature_dim("resnet18") == 512 and feature_dim("resnet50") == 2048
    with pytest.raises(ValueError, match="resnet101"):
        create_encoder("resnet101")


@pytest.mark.parametrize(
    "name,expected",
    [("resnet18", 11_176_512), ("resnet34", 21_284_672), ("resnet50", 23_508_032)],
)
def test_param_counts_match_torchvision(name, expected):
    # torchvision totals with a 1000-class fc and 3 bands: 11,689,512 / 21,797,672 / 25,557,032.
    variables, _ = _shapes(create_encoder(name), (1, 32, 32, 3))
    assert _count(variables["params"]) == expected
    fc = feature_dim(name) * 1000 + 1000
    assert expected + fc == {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}[name]
    # 13 bands only widen conv1.
    variables13, _ = _shapes(create_encoder(name), (1, 32, 32, 13))
    assert _count(variables13["params"]) == expected + 64 * 7 * 7 * 10


def test_param_tree_names():
    variables, _ = _shapes(create_encoder("resnet50"), (1, 32, 32, 3))
    p, s = variables["params"], variables["batch_stats"]
    assert sorted(p) == ["bn1", "conv1"] + [
        f"layer{i}_{j}" for i, n in zip(range(1, 5), (3, 4, 6, 3)) for j in range(n)
    ]
    assert sorted(p["layer1_0"]) == sorted(
        ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv", "downsample_bn"]
    )
    assert "downsample_conv" not in p["layer1_1"]
    assert p["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)  # v1.5: stride on the 3x3
    assert p["layer1_0"]["downsample_conv"]["kernel"].shape == (1, 1, 64, 256)
    assert sorted(s["layer4_2"]["bn3"]) == ["mean", "var"]
    v18, _ = _shapes(create_encoder("resnet18"), (1, 32, 32, 3))
    assert sorted(v18["params"]["layer1_0"]) == ["bn1", "bn2", "conv1", "conv2"]
    assert "downsample_bn" in v18["params"]["layer2_0"]
    assert "bias" not in v18["params"]["conv1"]


def test_cifar_stem():
    model = create_encoder("resnet18", stem="cifar")
    variables, (pooled, feats) = _shapes(model, (2, 32, 32, 4), return_features=True)
    assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 4, 64)
    assert [f.shape[1] for f in feats] == [32, 16, 8, 4]
    assert pooled.shape == (2, 512)
    with pytest.raises(ValueError, match="stem"):
        create_encoder("tiny", stem="deep")


def test_tiny_forward_train_and_eval(tiny):
    model, variables, x = tiny
    pooled = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert pooled.shape == (2, 64) and pooled.dtype == jnp.float32
    assert np.all(np.isfinite(pooled)) and np.all(np.asarray(pooled) >= 0)  # mean of ReLU outputs
    out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert out.shape == (2, 64)
    new_mean = updates["batch_stats"]["bn1"]["mean"]
    # momentum 0.9 (torch 0.1): new = 0.9 * 0 + 0.1 * batch_mean
    assert not np.allclose(new_mean, 0.0)
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])


def test_bn_constants_match_torch():
    model = create_encoder("tiny", stem="cifar")
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 2)) * 3.0 + 1.0
    variables = _np_init(model, x, train=False)
    _, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    h = jax.lax.conv_general_dilated(
        x,
        variables["params"]["conv1"]["kernel"],
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(upd["batch_stats"]["bn1"]["mean"], 0.1 * h.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        upd["batch_stats"]["bn1"]["var"], 0.9 + 0.1 * h.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
    )


def test_bfloat16_compute(tiny):
    _, variables, x = tiny
    model = create_encoder("tiny", dtype=jnp.bfloat16)
    v16, _ = _shapes(model, x.shape)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v16))
    pooled, feats = jax.jit(lambda v, x: model.apply(v, x, train=False, return_features=True))(variables, x)
    assert pooled.dtype == jnp.float32 and feats[0].dtype == jnp.bfloat16
    ref = jax.jit(lambda v, x: create_encoder("tiny").apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(pooled, ref, rtol=0.1, atol=0.1)


def test_zero_init_residual():
    model = ResNet(stage_sizes=(1, 1, 1, 1), block="bottleneck", width=4, zero_init_residual=True)
    variables, _ = _shapes(model, (1, 16, 16, 3))
    # Real flax init (with a PRNG that compiles fast on CPU).
    real = jax.jit(lambda k: model.init(k, jnp.zeros((1, 16, 16, 3)), train=False))(
        jax.random.key(0, impl="unsafe_rbg")
    )
    assert variables["params"]["layer1_0"]["bn3"]["scale"].shape == (16,)
    assert np.all(real["params"]["layer1_0"]["bn3"]["scale"] == 0)
    assert np.all(real["params"]["layer1_0"]["bn1"]["scale"] == 1)


def test_bad_input_rank():
    with pytest.raises(ValueError, match="NHWC"):
        create_encoder("tiny").init(jax.random.key(0), jnp.zeros((32, 32, 3)), train=False)


# ---------------------------------------------------------------------------------------------
# Projection head


@pytest.mark.parametrize("num_layers,use_bn", [(2, True), (3, True), (1, True), (2, False)])
def test_projection_head(num_layers, use_bn):
    head = ProjectionHead(hidden_dim=32, out_dim=8, num_layers=num_layers, use_bn=use_bn)
    x = jax.random.normal(jax.random.key(0), (4, 16))
    variables = _np_init(head, x, train=False)
    y, upd = jax.jit(lambda v, x: head.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert y.shape == (4, 8) and y.dtype == jnp.float32
    names = set(variables["params"])
    hidden = range(num_layers - 1)
    assert names == {f"dense_{i}" for i in hidden} | {f"bn_{i}" for i in hidden if use_bn} | {"dense_out"}
    if num_layers > 1 and use_bn:
        assert "bias" not in variables["params"]["dense_0"]
        assert set(upd["batch_stats"]) == {f"bn_{i}" for i in range(num_layers - 1)}


def test_projection_head_bf16_and_last_bn():
    head = ProjectionHead(hidden_dim=32, out_dim=8, last_bn=True, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (4, 16))
    variables = _np_init(head, x, train=False)
    assert "bn_out" in variables["params"]
    y = jax.jit(lambda v, x: head.apply(v, x, train=False))(variables, x)
    assert y.dtype == jnp.float32 and y.shape == (4, 8)


# ---------------------------------------------------------------------------------------------
# Denoiser


def test_timestep_embedding():
    t = jnp.array([0, 1, 999])
    emb = _timestep_embedding(t, 16)
    half = 8
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    ref = np.concatenate([np.sin(np.outer([0, 1, 999], freqs)), np.cos(np.outer([0, 1, 999], freqs))], axis=1)
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-5)
    assert _timestep_embedding(t, 7).shape == (3, 7)


@pytest.fixture(scope="module")
def denoiser_case(tiny):
    enc, enc_vars, _ = tiny
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 5))
    _, cond = jax.jit(lambda v, x: enc.apply(v, x, train=False, return_features=True))(enc_vars, x)
    den = Denoiser(out_channels=5, base_channels=8, channel_mults=(1, 2, 4), time_dim=16)
    t = jnp.array([3, 500])
    dvars = _np_init(den, x, t, cond, train=True, seed=4)
    return enc, enc_vars, den, dvars, x, t, cond


def test_denoiser_shapes_and_cond_levels(denoiser_case):
    _, _, den, dvars, x, t, cond = denoiser_case
    apply = jax.jit(lambda v, x, t, c: den.apply(v, x, t, c, train=True))
    eps = apply(dvars, x, t, cond)
    assert eps.shape == x.shape and eps.dtype == jnp.float32
    assert np.all(np.isfinite(eps))
    # tiny standard stem at 32 px: cond maps are 8, 4, 2, 1 px; denoiser levels 32, 16, 8 px
    # -> all go to level 2 (8 px, 4 * 8 channels).
    p = dvars["params"]
    assert [p[f"cond_proj_{k}"]["kernel"].shape for k in range(4)] == [
        (1, 1, 8, 32),
        (1, 1, 16, 32),
        (1, 1, 32, 32),
        (1, 1, 64, 32),
    ]
    assert "batch_stats" not in dvars
    # cond changes the output; cond=None works and needs no cond params.
    eps0 = apply(dvars, x, t, [c * 0 for c in cond])
    assert not np.allclose(eps, eps0)
    none_vars, none_out = _shapes_denoiser(den, x, t)
    assert not any(k.startswith("cond_proj") for k in none_vars["params"])
    assert none_out.shape == x.shape and none_out.dtype == jnp.float32


def _shapes_denoiser(den, x, t, cond=None):
    variables = jax.eval_shape(lambda: den.init(jax.random.key(0), x, t, cond, train=False))
    return variables, jax.eval_shape(lambda v: den.apply(v, x, t, cond, train=False), variables)


def test_denoiser_cond_level_matching_cifar_resolutions():
    den = Denoiser(out_channels=3, base_channels=8, channel_mults=(1, 2, 4), time_dim=16)
    x = jnp.zeros((1, 32, 32, 3))
    cond = [jnp.ones((1, 32, 32, 8)), jnp.ones((1, 16, 16, 16)), jnp.ones((1, 8, 8, 32)), jnp.ones((1, 4, 4, 64))]
    variables = jax.eval_shape(lambda: den.init(jax.random.key(0), x, jnp.zeros((1,), jnp.int32), cond, train=False))
    outs = [variables["params"][f"cond_proj_{k}"]["kernel"].shape[-1] for k in range(4)]
    assert outs == [8, 16, 32, 32]


def test_denoiser_gradients_reach_cond_and_encoder(denoiser_case):
    enc, enc_vars, den, dvars, x, t, cond = denoiser_case
    noise = jax.random.normal(jax.random.key(5), x.shape)

    # One compile: d loss / d(encoder params) and d loss / d(cond maps) (via zero offsets).
    def loss(enc_params, offsets):
        _, feats = enc.apply({**enc_vars, "params": enc_params}, x, train=False, return_features=True)
        feats = [f + o for f, o in zip(feats, offsets)]
        return jnp.mean((den.apply(dvars, x, t, feats, train=True) - noise) ** 2)

    g_enc, g_cond = jax.jit(jax.grad(loss, argnums=(0, 1)))(enc_vars["params"], [jnp.zeros_like(c) for c in cond])
    for g in g_cond:
        assert float(jnp.abs(g).max()) > 0
    assert float(jnp.abs(g_enc["conv1"]["kernel"]).max()) > 0
    assert float(jnp.abs(g_enc["layer4_0"]["conv2"]["kernel"]).max()) > 0


def test_denoiser_bf16_and_errors(denoiser_case):
    _, _, _, dvars, x, t, cond = denoiser_case
    den16 = Denoiser(out_channels=5, base_channels=8, channel_mults=(1, 2, 4), time_dim=16, dtype=jnp.bfloat16)
    eps = jax.jit(lambda v: den16.apply(v, x, t, cond, train=True))(dvars)
    assert eps.dtype == jnp.float32 and eps.shape == x.shape
    assert np.all(np.isfinite(eps))
    t1 = jnp.zeros((1,), jnp.int32)
    with pytest.raises(ValueError, match="divisible"):
        _shapes_denoiser(den16, jnp.zeros((1, 30, 30, 5)), t1)
    with pytest.raises(ValueError, match="bands"):
        _shapes_denoiser(den16, jnp.zeros((1, 32, 32, 4)), t1)


def _group_norm(x, groups, scale, bias, eps=1e-6):
    """GroupNorm written out (flax's epsilon 1e-6): per sample and group of channels."""
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * scale + bias


def _conv3(x, kernel, bias):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return np.asarray(y) + bias


def test_film_block_is_adagn_written_out():
    """A residual block of the film conditioning = x + conv2(SiLU(GN2(conv1(SiLU(GN1(x)))) * (1 + s)
    + b)), (s, b) = Dense(SiLU(emb)), written out here from its parameters."""
    from rsjax.models.heads import _ResBlock

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 6, 8)).astype(np.float32)
    emb = rng.normal(size=(2, 16)).astype(np.float32)
    block = _ResBlock(8, num_groups=4, conv="lax", adagn=True)
    variables = block.init(jax.random.key(1), x, emb)
    p = jax.tree.map(
        lambda a: np.asarray(a) + rng.normal(size=a.shape).astype(np.float32) * 0.1, variables["params"]
    )  # non-trivial norm scales / biases too
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    h = _conv3(
        silu(_group_norm(x, 4, p["norm1"]["scale"], p["norm1"]["bias"])), p["conv1"]["kernel"], p["conv1"]["bias"]
    )
    mod = silu(emb) @ p["emb_proj"]["kernel"] + p["emb_proj"]["bias"]
    s, b = mod[:, None, None, :8], mod[:, None, None, 8:]
    h = _group_norm(h, 4, p["norm2"]["scale"], p["norm2"]["bias"]) * (1 + s) + b
    want = x + _conv3(silu(h), p["conv2"]["kernel"], p["conv2"]["bias"])
    got = block.apply({"params": p}, x, emb)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    assert "time_proj" not in p


def test_film_denoiser_reads_the_pooled_vector_not_the_maps(denoiser_case):
    _, _, _, _, x, t, cond = denoiser_case
    den = Denoiser(out_channels=5, base_channels=8, channel_mults=(1, 2, 4), time_dim=16, conditioning="film")
    vec = jnp.mean(cond[-1], axis=(1, 2))
    variables = den.init(jax.random.key(0), x, t, cond, train=True, vec=vec)
    assert not any(k.startswith("cond_proj") for k in variables["params"])
    assert {"vec_mlp_0", "vec_mlp_1"} <= set(variables["params"])
    apply = jax.jit(lambda v, c, vec: den.apply(v, x, t, c, train=True, vec=vec))
    eps = apply(variables, cond, vec)
    np.testing.assert_array_equal(eps, apply(variables, [c * 0 for c in cond], vec))  # maps unused
    assert not np.allclose(eps, apply(variables, cond, vec[::-1]))  # the vector is
    with pytest.raises(ValueError, match="needs vec"):
        den.apply(variables, x, t, cond, train=True)
    with pytest.raises(ValueError, match="conditioning='fim'"):
        Denoiser(out_channels=5, conditioning="fim").init(jax.random.key(0), x, t, cond, train=True, vec=vec)
