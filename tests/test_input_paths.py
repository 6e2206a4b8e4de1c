"""The two input paths (host grain pipeline, GPU-resident ``data.device_resident=True``) serve
the same batch layouts and the same augmentation keys, and refuse what they cannot serve.

* device batches are scene-aware (``scenes_per_batch`` distinct scenes x ``samples_per_scene``
  members, laid out scene by scene), checked against the scene ids stored in the records;
* crops-as-scenes on the device path: each scene's rows are distinct sub-crops of one image;
* resume through ``get_state`` / ``set_state`` gives the batches of an uninterrupted run;
* the host and device photometric ops (band gain, saturation, grayscale) agree in
  distribution with each other and with the analytic moments of their definition
  (tests/test_ops.py compares every op); both paths read ``data.augment``;
* bad keys and unsupported key combinations are refused by ``validate_config``;
* the CLI run ``configs/swimdiff.py:smoke`` with ``data.device_resident=True`` works.
"""

from __future__ import annotations

import json
import pathlib
import re

import jax
import numpy as np
import pytest

from rsjax.data import device_augment as dev
from rsjax.data import input as input_lib
from rsjax.data import ops, pipeline
from rsjax.jobs import pretrain

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from rsjax.data import build

    d = str(tmp_path_factory.mktemp("tfds"))
    build.ensure_built("rs_synthetic", d, config="tiny")  # 32 records, 8 scenes x 4
    return d


def _config(synth_dir, name="swimdiff.py", **data):
    from conftest import load_config

    c = load_config(name, "smoke")
    c.data.data_dir = synth_dir
    c.data.num_threads = 1
    for k, v in data.items():
        c.data[k] = v
    return c


def _records(synth_dir):
    """Raw images and stored scene ids of the tiny train split, read directly from TFDS."""
    cfg = pipeline.default_data_config()
    cfg.data_dir, cfg.builder_config = synth_dir, "tiny"
    src = pipeline.open_source(cfg, "train")
    rows = src.read(range(len(src)))
    return (np.stack([np.asarray(r["image"]) for r in rows]), np.asarray([int(r["scene_id"]) for r in rows]))


def _host_batches(it, n):
    return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(n)]


# ---------------------------------------------------------------------------- batch layout


def test_device_batches_hold_s_scenes_of_k_members(synth_dir):
    config = _config(synth_dir, device_resident=True)  # batch 16 = 4 scenes x 4
    s, k = config.data.scenes_per_batch, config.data.samples_per_scene
    it = input_lib.make_iterator(config)[0]
    images, stored_scene = _records(synth_dir)
    flat = images.reshape(len(images), -1)
    for _ in range(5):  # crosses epochs (8 scenes / 4 per batch = 2 steps per epoch)
        b = jax.device_get(next(it))
        assert b["image"].shape == (16, 32, 32, 13)
        sid = b["scene_id"].reshape(s, k)
        assert (sid == sid[:, :1]).all(), "rows [j*k, (j+1)*k) must be one scene"
        assert len(set(sid[:, 0].tolist())) == s, "S distinct scenes per batch"
        # Independent of the iterator's bookkeeping: find every row's record by its pixels and
        # check the scene id the dataset stores for it.
        rec = [int(np.nonzero((flat == row.reshape(-1)).all(axis=1))[0][0]) for row in b["image"]]
        np.testing.assert_array_equal(stored_scene[rec], b["scene_id"])
        assert len(set(rec)) == 16, "a scene of 4 records, k = 4: every record once"


def test_device_and_host_paths_put_the_same_units_in_the_same_rows(synth_dir):
    config = _config(synth_dir, device_resident=True)
    dev_it = input_lib.make_iterator(config)[0]
    config.data.device_resident = False
    host_it = input_lib.make_iterator(config)[0]
    for _ in range(3):
        d, h = jax.device_get(next(dev_it)), next(host_it)
        np.testing.assert_array_equal(d["scene_id"], h["scene_id"])
        np.testing.assert_array_equal(d["label"], h["label"])
    host_it.close()


@pytest.mark.parametrize("spb,k", [(0, 4), (4, 2)])
def test_device_crops_as_scenes(synth_dir, spb, k):
    # spb = 0: every image brings all its 2 x 2 crops; spb = 4, k = 2: 4 images x 2 of their crops.
    config = _config(synth_dir, device_resident=True, crops_as_scenes=2, scenes_per_batch=spb, samples_per_scene=k)
    config.batch_size = 8 if spb else 16
    it = input_lib.make_iterator(config)[0]
    b = jax.device_get(next(it))
    rows = 4 if not spb else k
    sid = b["scene_id"].reshape(-1, rows)
    assert (sid == sid[:, :1]).all() and len(set(sid[:, 0].tolist())) == sid.shape[0]
    img = b["image"].reshape(sid.shape[0], rows, -1)
    assert (img == img[:, :1]).all(), "members of a scene are crops of one image"
    quadrants = {(0.0, 0.0, 16.0, 16.0), (0.0, 16.0, 16.0, 16.0), (16.0, 0.0, 16.0, 16.0), (16.0, 16.0, 16.0, 16.0)}
    for reg in b["region"].reshape(sid.shape[0], rows, 4):
        got = {tuple(map(float, r)) for r in reg}
        assert len(got) == rows and got <= quadrants, "distinct sub-crops of the 2 x 2 grid"


def test_device_resume_gives_the_uninterrupted_batches(synth_dir):
    config = _config(synth_dir, device_resident=True)
    full = [jax.device_get(b) for b, _ in zip(input_lib.make_iterator(config)[0], range(5))]
    first = input_lib.make_iterator(config)[0]
    for _ in range(3):
        next(first)
    state = first.get_state()
    assert json.loads(state)["next_batch"] == 3
    resumed = input_lib.make_iterator(config)[0]
    resumed.set_state(state)
    for want in full[3:]:
        got = jax.device_get(next(resumed))
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # a state of another seed or layout is refused, and so is the old (v1) format
    config.seed += 1
    other = input_lib.make_iterator(config)[0]
    with pytest.raises(ValueError, match="seed"):
        other.set_state(state)
    with pytest.raises(ValueError, match="start a new workdir"):
        other.set_state({"format": "rsjax.data.device/v1", "next_batch": 3})


# ------------------------------------------------------------------ augmentation parity

N_DRAWS = 2000
PHOTO_ONLY = "resize|"  # whole image, no flips / blur: pixel (0, 0) carries the photometric ops exactly


def _host_outputs(img, spec, n=N_DRAWS, seed=7):
    pipe = ops.view_recipe(PHOTO_ONLY + spec, "numpy")
    ctx = ops.Context(out_size=img.shape[0])
    return np.stack([pipe.image(img, np.random.default_rng([seed, i]), ctx) for i in range(n)])


def _device_outputs(img, spec, n=N_DRAWS, seed=3):
    imgs = np.broadcast_to(img, (n,) + img.shape)
    return np.asarray(
        dev.augment_views(
            jax.random.PRNGKey(seed), imgs, PHOTO_ONLY + spec, out_size=img.shape[0], scale=1.0, mean=0.0, std=1.0
        )
    )


def test_band_jitter_same_distribution_on_both_paths():
    bj = 0.3
    img = np.ones((8, 8, 5), np.float32)  # output band k = its gain g_k ~ U(0.7, 1.3)
    spec = f"jitter(0.0, p=1.0, band={bj})"
    for out in (_host_outputs(img, spec)[:, 0, 0], _device_outputs(img, spec)[:, 0, 0]):
        assert out.shape == (N_DRAWS, 5)
        assert out.min() >= 1 - bj - 1e-6 and out.max() <= 1 + bj + 1e-6
        np.testing.assert_allclose(out.mean(), 1.0, atol=0.01)
        np.testing.assert_allclose(out.std(), bj / np.sqrt(3.0), rtol=0.05)  # U(a, b): (b - a) / sqrt(12)
        # independent per band: the correlation between two bands is ~0
        assert abs(np.corrcoef(out[:, 0], out[:, 1])[0, 1]) < 0.1
    # the jitter probability gates the gain on both paths: P(all gains == 1) = 1 - p
    spec = f"jitter(0.0, p=0.5, band={bj})"
    for out in (_host_outputs(img, spec)[:, 0, 0], _device_outputs(img, spec)[:, 0, 0]):
        np.testing.assert_allclose(np.mean(np.all(out == 1.0, axis=1)), 0.5, atol=0.04)


def test_saturation_and_grayscale_same_distribution_on_both_paths():
    sat, gray = 0.4, 0.25
    x = np.array([0.2, 0.5, 0.8], np.float32)  # band mean m = 0.5, x - m = (-0.3, 0, 0.3)
    img = np.broadcast_to(x, (8, 8, 3)).copy()
    spec = f"jitter(0.0, p=1.0, saturation={sat})|gray({gray})"
    stats = []
    for out in (_host_outputs(img, spec)[:, 0, 0], _device_outputs(img, spec)[:, 0, 0]):
        np.testing.assert_allclose(out.mean(axis=1), 0.5, atol=1e-5)  # the band mean is kept
        factor = (out[:, 2] - 0.5) / 0.3  # 0 when gray, else sat
        is_gray = np.abs(factor) < 1e-6
        np.testing.assert_allclose(is_gray.mean(), gray, atol=0.03)
        f = factor[~is_gray]
        assert f.min() >= 1 - sat - 1e-4 and f.max() <= 1 + sat + 1e-4
        np.testing.assert_allclose(f.mean(), 1.0, atol=0.02)
        np.testing.assert_allclose(f.std(), 2 * sat / np.sqrt(12.0), rtol=0.06)
        stats.append((is_gray.mean(), f.mean(), f.std()))
    np.testing.assert_allclose(stats[0], stats[1], atol=0.04)


def test_all_photometric_ops_together_agree_in_distribution():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.1, 1.0, (8, 8, 4)).astype(np.float32)
    spec = "jitter(0.4, p=0.8, band=0.1, saturation=0.5)|gray(0.2)"
    h, d = _host_outputs(img, spec, seed=1), _device_outputs(img, spec, seed=1)
    assert (h >= 0).all() and (d >= 0).all()
    for axis in ((0, 1, 2), (0,)):  # per band, and per pixel and band
        np.testing.assert_allclose(h.mean(axis=axis), d.mean(axis=axis), atol=0.03)
        np.testing.assert_allclose(h.std(axis=axis), d.std(axis=axis), atol=0.03)


@pytest.mark.parametrize("device_resident", [False, True])
def test_both_paths_read_data_augment(synth_dir, device_resident):
    # gray(1.0): every view has all bands equal before standardization, on either path.
    from rsjax.data import registry

    config = _config(
        synth_dir,
        device_resident=device_resident,
        augment="rrc(0.5, 1.0)|flip_rot|jitter(0.4, p=0.8, saturation=0.3)|gray(1.0)",
    )
    it, transform = input_lib.make_iterator(config)
    b = next(it)
    assert (transform is None) != device_resident  # decided once, by data.device_resident
    if device_resident:
        b = transform(b, jax.random.PRNGKey(0))
    info = registry.get_config_info("rs_synthetic")
    v = np.asarray(b["view1"])
    assert v.shape[1:3] == (config.data.image_size,) * 2
    raw = v * np.asarray(info.std, np.float32) + np.asarray(info.mean, np.float32)
    np.testing.assert_allclose(raw, np.broadcast_to(raw[..., :1], raw.shape), atol=1e-3)
    if not device_resident:
        it.close()


def test_former_augmentation_keys_are_refused_live_and_folded_when_read(synth_dir, tmp_path):
    # One meaning per key: a live config that still sets a former key is refused with the
    # equivalent recipe (written out by hand here); an old workdir's config.json that sets them
    # has them folded into data.augment once, when read.
    from rsjax import checkpoint
    from rsjax.errors import ConfigError

    expected = "rrc(0.4, 1.0)|flip_rot|jitter(0.4, p=0.8)|gray(0.2)|blur(0.5, sigma=(0.1, 1.0))"
    config = _config(synth_dir)
    with config.unlocked():
        config.data.crop_scale_min = 0.4
        config.data.gray_prob = 0.2
    wd = tmp_path / "wd"
    with pytest.raises(
        ConfigError,
        match=r"config\.data\.crop_scale_min, config\.data\.gray_prob: former augmentation "
        r"key\(s\).*set config\.data\.augment=" + re.escape(repr(expected)),
    ):
        pretrain.run(config, str(wd))
    assert not wd.exists(), "refused before anything is written"

    old = config.to_dict()
    del old["data"]["augment"], old["data"]["folder_seed"]  # written before these keys existed
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    d = checkpoint.read_config(str(tmp_path / "old")).data
    assert d.augment == expected and d.folder_seed == 0
    assert "crop_scale_min" not in d and "gray_prob" not in d


def test_a_data_block_missing_keys_is_refused_naming_them(synth_dir, tmp_path):
    config = _config(synth_dir)
    with config.unlocked():
        del config.data["crop_size"], config.data["mask_key"]
    with pytest.raises(
        ValueError,
        match=r"config\.data lacks the key\(s\) crop_size, mask_key: build the block "
        r"with configs\.common\.data_config",
    ):
        pretrain.run(config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "data,match",
    [
        ({"hue": 0.1}, r"config\.data\.hue: no input path reads this key"),
        ({"folder": "/x", "device_resident": False}, r"data\.folder.*data\.device_resident"),
        ({"num_workers": 2, "device_resident": True}, r"data\.num_workers.*data\.device_resident"),
        ({"crops_as_scenes": 3, "scenes_per_batch": 0}, r"data\.crops_as_scenes.*data\.scenes_per_batch"),
        ({"scenes_per_batch": 3}, r"data\.scenes_per_batch.*batch_size"),
        ({"augment": "rrc(0.2, 1.0)|gray(1.5)"}, r"config\.data\.augment: op 'gray\(1\.5\)': p=1\.5"),
        ({"augment": "rrc(0.2, 1.0)|jitter(band=1.0)"}, r"config\.data\.augment: op 'jitter\(band=1\.0\)'"),
        ({"augment": "rrc(0.2, 1.0)|hue(0.1)"}, r"config\.data\.augment: unknown op 'hue'"),
        ({"augment": "flip_rot"}, r"config\.data\.augment='flip_rot': a view recipe starts with"),
        (
            {"augment": "rrc(0.2, 1.0)|crop_flip(8)", "device_resident": True},
            r"config\.data\.augment: op 'crop_flip' has no jax implementation \(backends that have it: numpy\)",
        ),
        ({"gray_prob": 1.5}, r"config\.data\.gray_prob=1\.5: the former augmentation keys"),
    ],
)
def test_unsupported_keys_and_combinations_are_refused(synth_dir, tmp_path, data, match):
    config = _config(synth_dir)
    with config.unlocked():
        for k, v in data.items():
            config.data[k] = v
    with pytest.raises(ValueError, match=match):
        pretrain.run(config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists(), "refused before anything is written"


# ---------------------------------------------------------------------------- the CLI


def test_swimdiff_smoke_on_the_device_path_logs_matching_and_refuses_nonfinite(synth_dir, tmp_path, monkeypatch):
    """The pretraining job on the GPU-resident path: scene-wide matching acts (scene_false_negatives
    > 0 on every step) and RSJAX_DEBUG_NONFINITE_FROM_STEP, applied inside the step, refuses steps
    there as on the host path (it used to do nothing on this path)."""
    from rsjax import main as main_lib

    config = _config(synth_dir, device_resident=True)
    config.total_steps = 2
    config.checkpoint_every = 1
    config.eval.enabled = False
    monkeypatch.setenv("RSJAX_DEBUG_NONFINITE_FROM_STEP", "2")
    wd = tmp_path / "e_dev"
    s = main_lib.run(config, str(wd))
    rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and np.isfinite(rows[0]["loss"])
    assert rows[1]["loss"] is None  # strict JSON: the refused step's NaN loss is written as null
    assert all(row["scene_false_negatives"] > 0 for row in rows)
    events = [json.loads(line) for line in (wd / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [2] and s["nonfinite_steps"] == 1
