"""The OSCD study (rsjax.jobs.study_oscd, configs/study_oscd.py) and the rule it rests on: splits
cut by scene at run time (rsjax.data.scenes, applied by read_split). On the tiny synthetic dataset
(8 training tiles of 4 crops, scene = tile, two dates ``image`` / ``image2`` and a change map):
folds test every scene once and leak none into pretraining or change-detection training, every
arm draws the same pretraining batches, finished runs are not rerun, the arm's JSON carries
per-fold and pooled scores, and the table's numbers are recomputed here with numpy / scipy."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from conftest import load_config
from scipy import stats

from configs import common
from rsjax import errors
from rsjax.data import input as input_lib
from rsjax.data import pipeline


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from rsjax.data import build

    d = str(tmp_path_factory.mktemp("tfds"))
    build.ensure_built("rs_synthetic", d, config="tiny")
    return d


def smoke(synth, **study):
    c = load_config("study_oscd", "smoke")
    c.data.data_dir = synth
    for k, v in study.items():
        c.study[k] = v
    return c


def folds_of(config):
    from rsjax.jobs import study_oscd as S

    return S.fold_table(config, S.validate(config)[2])


def tiles(synth, **kw):
    return common.data_config(name="rs_synthetic", builder_config="tiny", data_dir=synth, **kw)


# --- the scene rule (read_split) -----------------------------------------------------------------
def test_scene_cut_of_a_tfds_split(synth):
    whole = pipeline.read_split(tiles(synth), "train", fields={"scene_id": "scene_id", "image": "image"})
    d = tiles(synth, test_scenes=(1, 6), val_scenes=(3,))
    parts = {
        s: pipeline.read_split(d, s, fields={"scene_id": "scene_id", "image": "image"})
        for s in ("train", "test", "validation")
    }
    assert sorted(set(parts["train"]["scene_id"])) == [0, 2, 4, 5, 7]
    assert sorted(set(parts["test"]["scene_id"])) == [1, 6] and set(parts["validation"]["scene_id"]) == {3}
    for s, p in parts.items():  # the records of those scenes, in record order, nothing else
        keep = np.isin(whole["scene_id"], sorted(set(p["scene_id"])))
        np.testing.assert_array_equal(p["image"], whole["image"][keep], err_msg=s)
        assert pipeline.num_records(d, s) == keep.sum()
    # the one subset rule applies inside the cut
    assert len(pipeline.read_split(d, "test", fields={"scene_id": "scene_id"}, limit=3)["scene_id"]) == 3
    # without held-out scenes a stored split is read as stored
    assert len(pipeline.read_split(tiles(synth, val_scenes=(3,)), "test", fields={"s": "scene_id"})["s"]) == 16


@pytest.mark.parametrize(
    "kw,split,match",
    [
        (
            {"test_scenes": (1, 9)},
            "test",
            r"config.data.test_scenes=\(1, 9\): no scene 9 in split 'train' of dataset "
            r"'rs_synthetic' \(its scenes: 0, 1, 2, 3, 4, 5, 6, 7\)",
        ),
        ({"val_scenes": (9,)}, "train", r"config.data.val_scenes=\(9,\): no scene 9"),
        (
            {"test_scenes": (2,), "val_scenes": (2,)},
            "train",
            r"test_scenes and config.data.val_scenes both hold scene 2",
        ),
        ({"test_scenes": ("a",)}, "train", r"config.data.test_scenes=\('a',\): expected scene ids"),
        ({"test_scenes": tuple(range(8))}, "train", r"'train': no scene of split 'train'"),
        ({"test_scenes": (2,)}, "validation", r"no split 'validation'"),  # not cut (no val_scenes): as stored
    ],
)
def test_scene_cut_errors_name_the_key(synth, kw, split, match):
    with pytest.raises(errors.ConfigError, match=match):
        pipeline.read_split(tiles(synth, **kw), split)


def test_held_out_scenes_need_a_reader_that_applies_them(synth):
    """The host grain pipeline reads a stored split by index: it refuses the keys it would ignore."""
    c = load_config("simclr", "smoke")
    c.data.test_scenes = (1,)
    with pytest.raises(ValueError, match=r"data.test_scenes=\(1,\): read by the GPU-resident path only"):
        input_lib.validate(c)
    c.data.device_resident = True
    input_lib.validate(c)


def test_former_tile_keys_are_renamed(tmp_path):
    from rsjax import workdir as workdir_lib
    from rsjax.data.defaults import check_complete

    d = tiles("x").to_dict()
    d["test_tiles"] = (3,)
    with pytest.raises(errors.ConfigError, match=r"config.data.test_tiles: renamed config.data.test_scenes"):
        check_complete(d)
    old = {"data": {k: v for k, v in d.items() if k != "test_scenes"}}
    assert workdir_lib.complete_config(old)["data"]["test_scenes"] == (3,)


# --- folds and pretraining input -----------------------------------------------------------------
def test_folds_test_every_scene_once_and_leak_none(synth):
    from rsjax.jobs import study_oscd as S

    config = smoke(synth)
    folds = folds_of(config)
    assert sorted(s for f in folds for s in f["test_scenes"]) == list(range(8))  # every scene tested once
    whole = pipeline.read_split(config.data, "train", fields={"a": "image", "b": "image2", "s": "scene_id"})
    for f in folds:
        test = np.asarray(f["test_scenes"])
        assert sorted(f["train_scenes"]) == sorted(set(range(8)) - set(test.tolist()))
        cd = S.cd_config(config, f, 0, "", "finetuned")
        cd_train = pipeline.read_split(cd.data, cd.eval.train_split, fields={"s": "scene_id"})["s"]
        cd_test = pipeline.read_split(cd.data, cd.eval.test_split, fields={"s": "scene_id"})["s"]
        assert not np.isin(cd_train, test).any() and sorted(set(cd_test)) == sorted(test)
        for arm in ("simclr", "swimdiff"):
            pre = S.pretrain_config(config, arm, f, 0)
            images, labels, scenes, g = input_lib.pretrain_images(pre.data)
            keep = ~np.isin(whole["s"], test)  # both dates of every training record, no test record
            dates = np.concatenate([whole["a"][keep], whole["b"][keep]])
            crops = np.stack([pipeline._sub_crop(im, 2, j) for im in dates for j in range(4)])  # cut on read
            np.testing.assert_array_equal(images, crops)
            n = int(keep.sum())
            np.testing.assert_array_equal(scenes, np.repeat(np.tile(np.arange(n), 2), 4))  # a record's dates: one scene
            assert (labels == -1).all() and g == 0
            assert S.pretrain_units(config, f) == 2 * n * 4  # 2 dates x 2 x 2 crops


@pytest.mark.parametrize(
    "folds,match",
    [
        ("0+1,2+3,4+5+6", r"tests every scene once; not in any fold: 7"),
        ("0+1,1+2,3+4+5+6+7", r"scene '1' is in more than one fold"),
        ("0+1,2+3,4+5+6+7+x", r"no scene 'x' in split 'train'"),
        ("0+1+2+3+4+5+6+7", r"at least 2 folds"),
    ],
)
def test_bad_folds_are_refused(synth, folds, match):
    with pytest.raises(errors.ConfigError, match=match):
        folds_of(smoke(synth, folds=folds))


def test_every_arm_sees_identical_pretraining_batches(synth):
    """Same units in the same rows and the same views for the same step key: only the loss differs."""
    import jax

    from rsjax import sharding as shd
    from rsjax.jobs import study_oscd as S

    config = smoke(synth, arms="simclr,moco_v2,swimdiff")
    fold = folds_of(config)[2]
    mesh = shd.make_mesh(jax.devices()[:1])
    seen = {}
    for arm in ("simclr", "moco_v2", "swimdiff"):
        cfg = S.pretrain_config(config, arm, fold, seed=3)
        it, transform = input_lib.make_iterator(cfg, mesh)
        batches = [jax.device_get(next(it)) for _ in range(3)]
        views = jax.device_get(transform(batches[0], jax.random.PRNGKey(7)))
        seen[arm] = (batches, views)
    ref_batches, ref_views = seen["simclr"]
    for arm, (batches, views) in seen.items():
        for b, r in zip(batches, ref_batches):
            assert set(b) == set(r), arm
            for k in r:
                np.testing.assert_array_equal(b[k], r[k], err_msg=f"{arm} {k}")
        np.testing.assert_array_equal(views["view1"], ref_views["view1"], err_msg=arm)
    # batch layout: 4 places x 4 crops at batch 16, each place's rows one scene
    sid = ref_batches[0]["scene_id"].reshape(4, 4)
    assert (sid == sid[:, :1]).all() and len(set(sid[:, 0])) == 4


# --- the job: resume, records, picture -----------------------------------------------------------
def _fake_run(calls):
    """A run record as run_one writes it, with confusion counts drawn from (arm, fold, seed)."""

    def run_one(config, arm, fold, seed, folder):
        calls.append((arm, fold["fold"], seed))
        rng = np.random.default_rng([len(arm), fold["fold"], seed])
        r = {"test": fold["test"], "train": fold["train"]}
        for mode in ("frozen", "finetuned"):
            tp, fp, fn = (int(x) for x in rng.integers(1, 50, 3))
            r[mode] = {
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "tn": 1000,
                "f1": 2 * tp / (2 * tp + fp + fn),
                "iou": tp / (tp + fp + fn),
                "precision": tp / (tp + fp),
                "recall": tp / (tp + fn),
            }
        if arm != "random_init":
            r.update(pretrain_s=1.0, steps=2, last_window={"loss": 1.0, "scene_false_negatives": 3.0})
        return r

    return run_one


def test_resume_skips_finished_runs_and_the_arm_json_has_fold_and_pooled_scores(synth, tmp_path, monkeypatch):
    from rsjax import results as R
    from rsjax.jobs import study_oscd as S

    calls: list = []
    monkeypatch.setattr(S, "run_one", _fake_run(calls))
    config = smoke(synth, arms="simclr", seeds="0,1", out_dir=str(tmp_path / "out"))
    wd = str(tmp_path / "wd")
    S.run(config, wd)
    assert len(calls) == 2 * 3 * 2  # arms x folds x seeds
    p = json.loads((tmp_path / "out" / "oscd_smoke_simclr.json").read_text())
    assert p["format"] == "rsjax.oscd_arm/v1" and p["provenance"]["command"]
    assert sorted((r["fold"], r["seed"]) for r in p["runs"]) == [(f, s) for f in range(3) for s in (0, 1)]
    assert {tuple(r["test"]) for r in p["runs"]} == {("0", "1"), ("2", "3"), ("4", "5", "6", "7")}
    for row in p["pooled"]:  # the confusion counts of every fold of a seed, summed
        for mode in ("frozen", "finetuned"):
            tp, fp, fn = (sum(r[mode][k] for r in p["runs"] if r["seed"] == row["seed"]) for k in ("tp", "fp", "fn"))
            assert row[mode]["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
            assert row[mode]["recall"] == pytest.approx(tp / (tp + fn))
    assert p["last_window_mean"]["scene_false_negatives"] == 3.0
    assert "| simclr | fine-tuned |" in R.render_oscd_table(R.load_all("oscd_*.json", str(tmp_path / "out")))

    calls.clear()
    S.run(config, wd)
    assert calls == []  # every run recorded: nothing reruns
    os.unlink(os.path.join(wd, "simclr_f1_s0", "arm_result.json"))
    os.unlink(os.path.join(wd, "results", "oscd_smoke_simclr.json"))
    S.run(config, wd)
    assert calls == [("simclr", 1, 0)]  # only the run without a record


def test_picture_stitches_the_test_city_for_floor_and_best(synth, tmp_path, monkeypatch):
    from rsjax.jobs import study_oscd as S

    config = smoke(synth)
    folds = folds_of(config)
    fold = folds[1]  # tests scenes 2 and 3 (8 crops)
    pooled = lambda f1: [{"seed": 0, "finetuned": {"f1": f1}}]  # noqa: E731
    results = {
        "random_init": {"pooled": pooled(0.1)},
        "simclr": {"pooled": pooled(0.3)},
        "swimdiff": {"pooled": pooled(0.2)},
    }
    seen = {}
    for arm in ("random_init", "simclr"):
        d = tmp_path / f"{arm}_f1_s0" / "cd_finetuned"
        d.mkdir(parents=True)
        pred = np.random.default_rng(len(arm)).integers(0, 2, (8, 32, 32)).astype(np.uint8)
        np.savez(d / "predictions.npz", change=pred)
        seen[arm] = pred
    grids = []
    monkeypatch.setattr(S.plots, "image_grid", lambda rows, titles, path, **kw: grids.append((rows, kw)) or path)
    out = S._picture(config, str(tmp_path), results, folds, 0)
    assert out.endswith("prediction_2.png")
    ((rows, kw),) = grids
    assert kw["row_labels"] == ["random_init (floor)", "simclr (best)"]
    assert len(rows) == 2 and all(len(r) == 5 for r in rows)
    test = pipeline.read_split(
        S.cd_config(config, fold, 0, "", "finetuned").data, "test", fields={"s": "scene_id", "c": "change"}
    )
    keep = test["s"] == 2  # 4 crops of 32 px, in a 2 x 2 grid (no stored offsets)
    for row, arm in zip(rows, ("random_init", "simclr")):
        assert row[3].shape == (64, 64)
        np.testing.assert_array_equal(row[3][:32, 32:], seen[arm][keep][1])  # prediction of the 2nd crop
        np.testing.assert_array_equal(row[2][32:, :32], test["c"][keep][2])  # truth of the 3rd


def test_mosaic_puts_crops_at_their_offsets():
    from rsjax.evaluate.change_detection import mosaic

    crops = np.arange(3 * 2 * 2).reshape(3, 2, 2)
    m = mosaic(crops, [0, 0, 1], [0, 2, 3])  # the last overlaps the second (same pixels there)
    assert m.shape == (3, 5)
    np.testing.assert_array_equal(m[1:3, 3:5], crops[2])
    np.testing.assert_array_equal(m[0:2, 0:2], crops[0])
    assert m[2, 0] == 0


# --- rendering ------------------------------------------------------------------------------------
def _arm(arm, index, f1):
    """A hand-made arm record: ``f1[mode][(fold, seed)]``; pooled = the per-seed mean (hand-set)."""
    runs = [
        {"fold": k, "seed": s, "frozen": {"f1": f1["frozen"][k, s]}, "finetuned": {"f1": f1["finetuned"][k, s]}}
        for k, s in f1["frozen"]
    ]
    seeds = sorted({s for _, s in f1["frozen"]})
    pooled = [
        {
            "seed": s,
            **{
                m: {
                    "f1": np.mean([v for (k, t), v in f1[m].items() if t == s]),
                    "iou": 0.1,
                    "precision": 0.2,
                    "recall": 0.3,
                }
                for m in ("frozen", "finetuned")
            },
        }
        for s in seeds
    ]
    return {
        "setting": "cpu",
        "arm": arm,
        "arm_index": index,
        "runs": runs,
        "pooled": pooled,
        "comparisons": [["simclr", "random_init"]],
        "settings": {
            "dataset": "oscd",
            "model": "resnet10_w32",
            "epochs": 20,
            "image_size": 32,
            "batch_size": 128,
            "cd": {"crop_size": 64, "steps": {"frozen": 500, "finetuned": 200}, "batch_size": 16},
            "folds": [{"fold": 0, "test": ["bercy", "paris"]}, {"fold": 1, "test": ["hongkong"]}],
        },
        "provenance": {
            "command": "python -m rsjax.main --config=configs/study_oscd.py:cpu",
            "date": "2026-12-07",
            "git": {"commit": "abc1234", "dirty": False},
        },
    }


def test_oscd_table_numbers_recomputed_independently():
    from rsjax import results as R

    rng = np.random.default_rng(0)
    keys = [(k, s) for k in (0, 1) for s in (0, 1, 2)]
    f1 = {
        a: {m: {key: float(rng.uniform(0.1, 0.6)) for key in keys} for m in ("frozen", "finetuned")}
        for a in ("random_init", "simclr")
    }
    simclr = _arm("simclr", 1, f1["simclr"])
    simclr["last_window_mean"] = {
        "scene_false_negatives": 33.66,
        "loss_diffusion": 0.56194,
        "loss_diffusion_nocond": 0.61116,
        "loss_diffusion_shuffled": 0.56507,
    }
    md = R.render_oscd_table([simclr, _arm("random_init", 0, f1["random_init"])])
    record = next(x for x in md.splitlines() if x.startswith("| simclr | 6 |"))
    assert record.split(" | ")[4:7] == ["33.7", "0.5619", "0.6112 / 0.5651"]
    assert md.index("| random_init | frozen |") < md.index("| simclr | frozen |")  # arm_index order
    assert "F0 bercy + paris, F1 hongkong" in md

    def mean_sd(v):
        return f"{100 * np.mean(v):.1f} ± {100 * np.std(v, ddof=1):.1f}"

    vals = [f1["simclr"]["finetuned"][k] for k in keys]
    fold0 = np.mean([f1["simclr"]["finetuned"][0, s] for s in range(3)])
    fold1 = np.mean([f1["simclr"]["finetuned"][1, s] for s in range(3)])
    pooled = [np.mean([f1["simclr"]["finetuned"][k, s] for k in (0, 1)]) for s in range(3)]
    row = next(line for line in md.splitlines() if line.startswith("| simclr | fine-tuned |"))
    assert row == (
        f"| simclr | fine-tuned | {mean_sd(pooled)} | 10.0 ± 0.0 | 20.0 ± 0.0 | 30.0 ± 0.0 "
        f"| {100 * fold0:.1f} / {100 * fold1:.1f} | {mean_sd(vals)} |"
    )
    d = np.array([f1["simclr"]["frozen"][k] - f1["random_init"]["frozen"][k] for k in keys])
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    cell = f"{100 * d.mean():+.1f} [{100 * (d.mean() - half):+.1f}, {100 * (d.mean() + half):+.1f}] (n = 6)"
    line = next(x for x in md.splitlines() if x.startswith("| simclr − random_init |"))
    assert line.split(" | ")[1] == cell
    dp = np.array(
        [
            np.mean([f1["simclr"]["finetuned"][k, s] - f1["random_init"]["finetuned"][k, s] for k in (0, 1)])
            for s in range(3)
        ]
    )
    half = stats.t.ppf(0.975, 2) * dp.std(ddof=1) / math.sqrt(3)
    assert line.rstrip(" |").split(" | ")[-1] == (
        f"{100 * dp.mean():+.1f} [{100 * (dp.mean() - half):+.1f}, {100 * (dp.mean() + half):+.1f}] (n = 3)"
    )
    assert R.render_oscd_table([]).startswith("_No OSCD study results yet")


# --- end to end -----------------------------------------------------------------------------------
def test_smoke_study_end_to_end(synth, tmp_path):
    """SimCLR on two folds, really trained (2 pretraining and 2 change-detection steps per mode):
    records with both scores and the pretraining's evidence, the arm's JSON, study.md."""
    from rsjax.jobs import study_oscd as S

    config = smoke(
        synth, arms="simclr", include_random_init=False, folds="0+1+2+3,4+5+6+7", out_dir=str(tmp_path / "out")
    )
    report = S.run(config, str(tmp_path / "wd"))
    p = report["results"]["simclr"]
    assert [(r["fold"], r["seed"]) for r in p["runs"]] == [(0, 0), (1, 0)] and not p["errors"]
    for r in p["runs"]:
        assert (
            r["steps"] == 2
            and r["last_window"]["window_rows"] >= 1
            and r["test"] in (["0", "1", "2", "3"], ["4", "5", "6", "7"])
        )
        for mode in S.MODES:
            assert 0.0 <= r[mode]["f1"] <= 1.0 and r[mode]["tp"] + r[mode]["fn"] > 0
            assert r[mode]["num_test"] == 16 and r[mode]["num_train"] == 16
    assert len(p["pooled"]) == 1 and (tmp_path / "out" / "oscd_smoke_simclr.json").exists()
    assert "| simclr | frozen |" in (tmp_path / "wd" / "study.md").read_text()
    assert os.path.exists(tmp_path / "wd" / "simclr_f1_s0" / "cd_finetuned" / "predictions.npz")
