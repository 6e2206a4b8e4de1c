"""grain pretraining pipeline: shapes, scene-aware batching, process slicing, exact resume."""

import json

import numpy as np
import pytest

from rsjax.data import pipeline, registry
from rsjax.errors import ConfigError

SIZE = 16  # view size: small keeps these tests fast on a shared CPU


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from rsjax.data import build

    d = str(tmp_path_factory.mktemp("tfds"))
    build.build_dataset("rs_synthetic", d, config="tiny", progress=False)
    return d


def _cfg(data_dir, **kw):
    cfg = pipeline.default_data_config()  # the complete block, locked: an unknown key raises
    cfg.data_dir = data_dir
    cfg.builder_config = "tiny"
    cfg.num_threads = 1
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_default_config_fields():
    cfg = pipeline.default_data_config()
    from rsjax.data import ops

    for key in (
        "name",
        "builder_config",
        "data_dir",
        "scenes_per_batch",
        "samples_per_scene",
        "crops_as_scenes",
        "augment",
        "num_workers",
    ):
        assert key in cfg
    assert cfg.name == "rs_synthetic" and cfg.num_workers == 0 and cfg.augment == ops.DEFAULT_AUGMENT
    cfg.data_dir = "/some/where"  # placeholder fields accept strings later
    with pytest.raises(AttributeError, match="crop_scale_min"):  # locked: a former / misspelt key is refused
        cfg.crop_scale_min = 0.5


def test_batch_shapes_dtypes_and_determinism(data_dir):
    cfg = _cfg(data_dir)
    it = pipeline.make_pretrain_iterator(cfg, global_batch_size=8, seed=0, image_size=SIZE)
    b = next(it)
    assert set(b) == {"view1", "view2", "scene_id", "label"}
    assert b["view1"].shape == b["view2"].shape == (8, SIZE, SIZE, 13)
    assert b["view1"].dtype == np.float32
    assert b["scene_id"].shape == (8,) and b["scene_id"].dtype == np.int32
    assert b["label"].shape == (8,) and b["label"].dtype == np.int32
    assert ((b["label"] >= 0) & (b["label"] < 6)).all()
    assert np.isfinite(b["view1"]).all() and abs(float(b["view1"].mean())) < 2.0
    assert not np.allclose(b["view1"], b["view2"])
    again = pipeline.make_pretrain_iterator(cfg, global_batch_size=8, seed=0, image_size=SIZE)
    _assert_batches_equal([b], [next(again)])
    other = pipeline.make_pretrain_iterator(cfg, global_batch_size=8, seed=1, image_size=SIZE)
    assert not np.array_equal(next(other)["view1"], b["view1"])


def test_plain_epochs_are_permutations_and_reshuffled(data_dir):
    it = pipeline.make_pretrain_iterator(
        _cfg(data_dir, augment="rrc(0.2, 1.0)|flip_rot"), global_batch_size=8, seed=0, image_size=SIZE
    )
    assert it.steps_per_epoch == 4  # 32 crops / 8
    from rsjax.data.pipeline import EpochPlan

    p = EpochPlan(np.arange(32) // 4, 8, seed=0)
    e0, e1 = p.epoch(0), p.epoch(1)
    assert sorted(e0.ravel().tolist()) == list(range(32))
    assert sorted(e1.ravel().tolist()) == list(range(32))
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(p.batch(5), e1[1])


def test_scene_aware_batches(data_dir):
    cfg = _cfg(data_dir, scenes_per_batch=4, samples_per_scene=2)
    it = pipeline.make_pretrain_iterator(cfg, global_batch_size=8, seed=0, image_size=SIZE)
    assert it.steps_per_epoch == 4  # 8 tiles x (4 crops // 2) groups / 4 scenes per batch
    for b in _take(it, 9):  # more than two epochs
        scenes, counts = np.unique(b["scene_id"], return_counts=True)
        assert len(scenes) == 4 and (counts == 2).all(), b["scene_id"]
        # rows are laid out scene by scene
        assert (b["scene_id"][0::2] == b["scene_id"][1::2]).all()
    with pytest.raises(ValueError, match="scenes_per_batch \\* data.samples_per_scene"):
        pipeline.make_pretrain_iterator(cfg, global_batch_size=10, seed=0, image_size=SIZE)
    with pytest.raises(ValueError, match="only 8 scenes"):
        pipeline.make_pretrain_iterator(
            _cfg(data_dir, scenes_per_batch=16, samples_per_scene=1), global_batch_size=16, seed=0, image_size=SIZE
        )


def test_epoch_plan_uneven_scenes():
    from rsjax.data.pipeline import EpochPlan

    sizes = [1, 2, 3, 5, 8, 13, 4, 4, 2, 1, 7]
    scenes = np.repeat(np.arange(len(sizes)) * 10, sizes)  # non-contiguous scene ids
    p = EpochPlan(scenes, 12, seed=3, scenes_per_batch=4, samples_per_scene=3)
    for e in range(3):
        plan = p.epoch(e)
        assert plan.shape == (p.steps_per_epoch, 12)
        for row in plan:
            sc = scenes[row].reshape(4, 3)
            assert (sc == sc[:, :1]).all()  # each group of 3 is one scene
            assert len(set(sc[:, 0])) == 4  # 4 distinct scenes
        # units of full scenes are not repeated within an epoch
        full = np.isin(scenes[plan.ravel()], [i * 10 for i, s in enumerate(sizes) if s >= 3])
        u = plan.ravel()[full]
        assert len(u) == len(set(u.tolist()))
    np.testing.assert_array_equal(p.epoch(1), EpochPlan(scenes, 12, 3, 4, 3).epoch(1))


def test_process_slices_concatenate_to_single_process_batch(data_dir):
    for kw in ({}, {"scenes_per_batch": 2, "samples_per_scene": 4}):
        cfg = _cfg(data_dir, **kw)
        full = _take(pipeline.make_pretrain_iterator(cfg, global_batch_size=8, seed=4, image_size=SIZE), 3)
        parts = [
            _take(
                pipeline.make_pretrain_iterator(
                    cfg, global_batch_size=8, seed=4, image_size=SIZE, process_index=p, process_count=2
                ),
                3,
            )
            for p in range(2)
        ]
        for step in range(3):
            assert parts[0][step]["view1"].shape[0] == 4
            joined = {k: np.concatenate([parts[0][step][k], parts[1][step][k]]) for k in full[step]}
            _assert_batches_equal([joined], [full[step]])
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.make_pretrain_iterator(cfg, global_batch_size=9, seed=0, image_size=SIZE, process_count=2)


def test_resume_from_state_is_exact(data_dir):
    cfg = _cfg(data_dir, scenes_per_batch=4, samples_per_scene=2)
    kw = dict(global_batch_size=8, seed=0, image_size=SIZE)
    it = pipeline.make_pretrain_iterator(cfg, **kw)
    _take(it, 5)  # crosses an epoch boundary (4 steps per epoch)
    state = it.get_state()
    assert isinstance(state, bytes)
    decoded = json.loads(state)
    assert decoded["next_batch"] == 5 and decoded["format"] == pipeline.STATE_FORMAT
    after = _take(it, 3)
    fresh = pipeline.make_pretrain_iterator(cfg, **kw)
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 3), after)
    # str and dict forms are accepted too; resuming on 2 processes gives the two halves
    half = pipeline.make_pretrain_iterator(cfg, process_index=1, process_count=2, **kw)
    half.set_state(decoded)
    np.testing.assert_array_equal(next(half)["view2"], after[0]["view2"][4:])
    again = pipeline.make_pretrain_iterator(cfg, **kw)
    again.set_state(state.decode())
    assert again.next_batch == 5
    wrong = pipeline.make_pretrain_iterator(cfg, global_batch_size=8, seed=1, image_size=SIZE)
    with pytest.raises(ValueError, match="seed was 0"):
        wrong.set_state(state)


def test_finite_epochs(data_dir):
    it = pipeline.make_pretrain_iterator(_cfg(data_dir), global_batch_size=16, seed=0, image_size=SIZE, num_epochs=1)
    assert len(list(it)) == 2


def test_crops_as_scenes(data_dir):
    cfg = _cfg(data_dir, crops_as_scenes=2, scenes_per_batch=2, samples_per_scene=4, augment="rrc(1.0, 1.0)")
    src = pipeline.open_source(cfg, "train")
    n = len(src)
    np.testing.assert_array_equal(pipeline.unit_scene_ids(src, 2), np.repeat(np.arange(n), 4))
    it = pipeline.make_pretrain_iterator(cfg, global_batch_size=8, seed=0, image_size=16)
    b = next(it)
    scenes, counts = np.unique(b["scene_id"], return_counts=True)
    assert len(scenes) == 2 and (counts == 4).all()
    # with scale-1 crops and no photometric changes, each view is the 16 px quadrant, and the
    # four rows of a scene are the four quadrants of that record's image
    info = registry.get_config_info("rs_synthetic")
    for s in scenes:
        img = registry.normalize(src.read([s])[0]["image"], info)
        quads = {(y, x): img[y : y + 16, x : x + 16] for y in (0, 16) for x in (0, 16)}
        rows = np.nonzero(b["scene_id"] == s)[0]
        matched = set()
        for r in rows:
            hit = [q for q, v in quads.items() if np.allclose(b["view1"][r], v, atol=1e-4)]
            assert len(hit) == 1
            matched.add(hit[0])
        assert matched == set(quads)


def test_eval_arrays(data_dir):
    cfg = _cfg(data_dir)
    x, y = pipeline.eval_arrays(cfg, "test")
    assert x.shape == (16, 32, 32, 13) and x.dtype == np.float32
    assert y.shape == (16,) and y.dtype == np.int32 and ((y >= 0) & (y < 6)).all()
    src = pipeline.open_source(cfg, "test")
    info = registry.get_config_info("rs_synthetic")
    ex = src.read([3])[0]
    # the normalisation written out: (x / scale - mean) / std with the registry's statistics
    ref = (np.asarray(ex["image"], np.float64) / info.scale - np.asarray(info.mean)) / np.asarray(info.std)
    np.testing.assert_allclose(x[3], ref, rtol=1e-5, atol=1e-5)
    assert y[3] == ex["label"]
    # the one subset rule: 5 records drawn with default_rng(0), in record order
    keep = np.sort(np.random.default_rng(0).permutation(16)[:5])
    xs, ys = pipeline.eval_arrays(cfg, "test", limit=5, image_size=24)
    assert xs.shape == (5, 24, 24, 13) and ys.tolist() == y[keep].tolist()
    from rsjax.data import augment

    np.testing.assert_allclose(xs[2], augment.resize(x[keep[2]], 24), rtol=1e-5, atol=1e-5)
    cfg.pp_eval = "normalize|flip_rot"
    with pytest.raises(ConfigError, match=r"config.data.pp_eval='normalize\|flip_rot': \['flip_rot'\] draw random"):
        pipeline.eval_arrays(cfg, "test")
    cfg.pp_eval = "normalize|resize"
    with pytest.raises(ValueError, match="no split 'validation'"):
        pipeline.eval_arrays(cfg, "validation")


def test_dense_inputs_are_the_pp_dense_recipe_on_host_and_device():
    """The dense jobs' host batches and device test images come from ``data.pp_dense``: the
    normalisation written out, on every image key (both dates of a change pair), int32 for the
    rest; a recipe that resizes (the masks would no longer match) or draws is refused."""
    import jax

    from rsjax.evaluate import dense

    info = registry.get_config_info("oscd")
    rng = np.random.default_rng(0)
    batch = {k: rng.integers(0, 4000, (2, 8, 8, info.num_bands)).astype(np.uint16) for k in ("a", "b")}
    batch["change"] = rng.integers(0, 2, (2, 8, 8)).astype(np.uint8)
    ref = {
        k: (batch[k].astype(np.float64) / info.scale - np.asarray(info.mean)) / np.asarray(info.std) for k in ("a", "b")
    }
    host = dense.normalizer(info, ("a", "b"), "normalize")(batch)
    device = jax.jit(dense.device_normalizer(info, ("a", "b"), "normalize"))(batch)
    for k in ("a", "b"):
        np.testing.assert_allclose(host[k], ref[k], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(device[k]), ref[k], rtol=1e-5, atol=1e-5)
    assert host["change"].dtype == np.int32 and (host["change"] == batch["change"]).all()
    for bad, what in (
        ("normalize|resize", r"\['resize'\] change the image size"),
        ("normalize|flip_lr", r"\['flip_lr'\] draw random"),
    ):
        with pytest.raises(ConfigError, match=rf"config.data.pp_dense='{bad.replace('|', '[|]')}': {what}"):
            dense.normalizer(info, ("image",), bad)


@pytest.mark.slow
def test_worker_processes_match_in_process(data_dir):
    cfg = _cfg(data_dir)
    ref = _take(pipeline.make_pretrain_iterator(cfg, global_batch_size=8, seed=2, image_size=SIZE), 3)
    cfg.num_workers = 1
    it = pipeline.make_pretrain_iterator(cfg, global_batch_size=8, seed=2, image_size=SIZE)
    try:
        got = _take(it, 2)
        state = it.get_state()
    finally:
        it.close()
    _assert_batches_equal(got, ref[:2])
    it2 = pipeline.make_pretrain_iterator(cfg, global_batch_size=8, seed=2, image_size=SIZE)
    try:
        it2.set_state(state)
        _assert_batches_equal([next(it2)], ref[2:])
    finally:
        it2.close()
