"""The Dubai study (rsjax.jobs.study_dubai, configs/study_dubai.py) on a generated Dubai-like tile
folder: the noise models of its arms against written-out computations, label-fraction subsets,
test tiles kept out of every training, arm records, resume, FALSE's firing counts, the overlay
layout and the rendered table against numpy / scipy."""

from __future__ import annotations

import json
import math
import os

import ml_collections
import numpy as np
import pytest
from conftest import load_config
from dummy_data import write_dubai_like
from PIL import Image
from scipy import stats

from rsjax import results as R
from rsjax.data import segmentation as SD
from rsjax.data import tiles

# train tiles 1, 2, 4; test tiles 3 and 8 (the config's default); 32 px crops (the :smoke variant)
SIZES = {1: [(64, 64), (64, 96)], 2: [(64, 64)], 3: [(64, 96)], 4: [(96, 64)], 8: [(64, 64)]}
TRAIN_CROPS = 4 + 6 + 4 + 6
ARMS = "random_init,noisy_coarse_3class,false"  # one arm of each kind: the smoke stays short


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_dubai_like(tmp_path_factory.mktemp("data"), sizes=SIZES, block=8)[0]


def _config(folder, out, arms=ARMS, **kw):
    c = load_config("study_dubai", "smoke")
    c.data.folder = str(folder)
    c.study.arms = arms
    c.study.out_dir = str(out)
    for k, v in kw.items():
        c.study[k] = v
    return c


@pytest.fixture(scope="module")
def study_run(folder, tmp_path_factory):
    """One :smoke study (3 arms, 1 seed) with spies on what each training and score reads."""
    from rsjax import jobs
    from rsjax import noisy_label as nl
    from rsjax.data import pipeline
    from rsjax.jobs import study_dubai

    seen = {"pretrain": [], "transfer": [], "ssl": []}
    real_pretrain, real_transfer, real_job = nl.pretrain, nl.transfer, jobs.get

    def pretrain(cfg, wd, mesh, data, labels, **kw):
        seen["pretrain"].append(
            {
                "scenes": set(data.scene_id.tolist()),
                "analysis": set(kw["analysis_data"].scene_id.tolist()),
                "labels": labels.copy(),
                "plateau": bool(cfg.optimizer.plateau.enabled),
            }
        )
        return real_pretrain(cfg, wd, mesh, data, labels, **kw)

    def transfer(cfg, wd, mesh, encoders, train_data, test_data, **kw):
        seen["transfer"].append(
            {
                "tag": next(iter(encoders)),
                "n": len(train_data),
                "seed": cfg.seed,
                "train": set(train_data.scene_id.tolist()),
                "test": set(test_data.scene_id.tolist()),
                "labels": train_data.labels.copy(),
            }
        )
        return real_transfer(cfg, wd, mesh, encoders, train_data, test_data, **kw)

    def get(name):
        run = real_job(name)

        def spy(cfg, path):
            split = pipeline.read_split(cfg.data, cfg.data.train_split)
            seen["ssl"].append({"split": cfg.data.train_split, "scenes": set(split["scene_id"].tolist())})
            return run(cfg, path)

        return spy if name == "pretrain" else run

    mp = pytest.MonkeyPatch()
    mp.setattr(nl, "pretrain", pretrain)
    mp.setattr(nl, "transfer", transfer)
    mp.setattr(study_dubai.jobs, "get", get)
    out = tmp_path_factory.mktemp("out")
    wd = str(tmp_path_factory.mktemp("wd"))
    try:
        report = study_dubai.run(_config(folder, out), wd)
    finally:
        mp.undo()
    return {"report": report, "seen": seen, "out": out, "wd": wd, "folder": folder}


# --- noise models of the arms, against written-out computations -----------------------------------
def _coarse_by_hand(labels, class_map, f):
    """Remap, then per f x f block (cut at the border) the most frequent remapped class of the
    labelled pixels (first on ties) written to the block's labelled pixels."""
    lab = np.where(labels >= 0, np.asarray(class_map)[np.maximum(labels, 0)], -1)
    out = lab.copy()
    k = max(class_map) + 1
    for n in range(lab.shape[0]):
        for y in range(0, lab.shape[1], f):
            for x in range(0, lab.shape[2], f):
                block = lab[n, y : y + f, x : x + f]
                counts = np.bincount(block[block >= 0], minlength=k)
                if counts.sum():
                    out[n, y : y + f, x : x + f] = np.where(block >= 0, int(np.argmax(counts)), -1)
    return out


def test_arm_noise_blocks_are_the_documented_models():
    import configs.study_dubai as cfg_mod

    c = load_config("study_dubai", "cpu")
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 5, (6, 40, 40)).astype(np.int32)
    for arm, cmap in (("noisy_coarse", (0, 1, 2, 3, 4)), ("noisy_coarse_3class", cfg_mod.COARSE_3CLASS_MAP)):
        noise_only_pool = c.arms[arm].to_dict()
        noise_only_pool["noise"]["flip_rate"] = 0.0  # the pooling alone, then the flips below
        pooled = SD.noisy_labels(ml_collections.ConfigDict(noise_only_pool), labels, 5)
        np.testing.assert_array_equal(pooled, _coarse_by_hand(labels, cmap, 16))
        noisy = SD.noisy_labels(c.arms[arm], labels, 5)
        assert (noisy[labels < 0] == -1).all()  # unlabelled pixels stay unlabelled
        assert SD.noise_num_classes(c.arms[arm], 5) == c.arms[arm].model.num_classes == max(cmap) + 1
        a = SD.noise_agreement(c.arms[arm], labels, noisy)
        remapped = np.where(labels >= 0, np.asarray(cmap)[np.maximum(labels, 0)], -1)
        assert a["pixel"] == pytest.approx(np.mean(noisy[labels >= 0] == remapped[labels >= 0]))
        assert a["pixel"] < SD.noise_agreement(c.arms[arm], labels, pooled)["pixel"]  # the flips add to the pooling
    assert c.arms.noisy_coarse.noise.pool_factor == 16 and c.arms.clean_supervised.noise.pool_factor == 1
    clean = SD.noisy_labels(c.arms.clean_supervised, labels, 5)
    np.testing.assert_array_equal(clean, labels)  # the clean arm's labels are the masks


def test_arms_share_everything_but_the_method():
    """The supervised arms differ only in the noise block and class count; simclr and false only
    in loss.alpha; every pretraining arm has the same steps, batch, model, data and seed."""
    from rsjax import study

    c = load_config("study_dubai", "cpu")
    c.data.folder = "/dubai"
    cfgs = {arm: study.arm_config(c, arm, 3, 14085).to_dict() for arm in c.arms}
    for d in cfgs.values():
        assert (d["total_steps"], d["batch_size"], d["seed"], d["model"]["name"], d["data"]["folder"]) == (
            400,
            32,
            3,
            "resnet10_w32",
            "/dubai",
        )
        assert not d["optimizer"].get("plateau", {}).get("enabled", False)  # nothing chosen on held-out data
    sup = {
        a: dict(d, noise=None, model=dict(d["model"], num_classes=None))
        for a, d in cfgs.items()
        if d["method"] == "noisy_label"
    }
    assert sup["clean_supervised"] == sup["noisy_coarse"] == sup["noisy_coarse_3class"]
    simclr, false = dict(cfgs["simclr"]), dict(cfgs["false"])
    assert (simclr["loss"].pop("alpha"), false["loss"].pop("alpha")) == (0.0, 1.0)
    assert simclr == false and false["loss"]["threshold"] == 0.9 and false["loss"]["fnsd_mode"] == "vissl"
    ft = c.finetune_run
    assert (ft.transfer.total_steps, ft.transfer.batch_size, ft.model.num_classes, tuple(ft.transfer.decoders)) == (
        200,
        16,
        5,
        ("unet",),
    )


# --- data: label fractions, the test tiles, the overlay layout -------------------------------------
def test_label_subsets():
    from rsjax.jobs.study_dubai import fraction_tag, label_subset

    a, b = label_subset(1000, 0.1, 0), label_subset(1000, 0.1, 1)
    assert len(a) == len(b) == 100 and list(a) == sorted(set(a.tolist())) and a.max() < 1000
    np.testing.assert_array_equal(a, label_subset(1000, 0.1, 0))  # the same crops for every arm of a seed
    assert set(a.tolist()) != set(b.tolist())  # another seed, another draw
    np.testing.assert_array_equal(label_subset(1000, 1.0, 5), np.arange(1000))
    assert len(label_subset(7, 0.01, 0)) == 1
    assert (fraction_tag(0.1), fraction_tag(1.0), fraction_tag(0.025)) == ("f10", "f100", "f2p5")


def test_crop_layout_and_stitch(folder):
    from configs import common

    d = common.data_config(name="dubai_aerial_seg", folder=str(folder), image_size=32, test_scenes=(3, 8))
    layout = tiles.crop_layout(d, "test")
    assert [(x["tile"], x["rows"], x["cols"]) for x in layout] == [(3, 2, 3), (8, 2, 2)]
    test = SD.load_split(d, "test", image_size=32)
    assert len(test) == 6 + 4
    img = np.asarray(Image.open(layout[0]["image"]))
    np.testing.assert_array_equal(tiles.stitch(test.images[:6], 2, 3), img[:64, :96])
    with pytest.raises(ValueError, match="5 crops for a grid of 2 x 3"):
        tiles.stitch(test.images[:5], 2, 3)


def test_test_tiles_never_reach_a_training(study_run):
    seen = study_run["seen"]
    assert seen["pretrain"] and seen["ssl"] and seen["transfer"]
    for p in seen["pretrain"]:
        assert p["scenes"] == {1, 2, 4} and not p["plateau"]
        assert p["analysis"] <= {3, 8}  # the per-layer analysis: a measurement on clean test crops
    for s in seen["ssl"]:
        assert s["split"] == "train" and s["scenes"] == {1, 2, 4}
    for t in seen["transfer"]:
        assert t["train"] <= {1, 2, 4} and t["test"] == {3, 8}
    # label fractions: 10 % (2 of 20 crops) and 100 %, the same crops for every arm of the seed
    by_tag = {}
    for t in seen["transfer"]:
        by_tag.setdefault(t["tag"], []).append(t)
    assert sorted(by_tag) == ["f10", "f100"]
    assert {t["n"] for t in by_tag["f10"]} == {2} and {t["n"] for t in by_tag["f100"]} == {TRAIN_CROPS}
    for ts in by_tag.values():
        for t in ts[1:]:
            np.testing.assert_array_equal(t["labels"], ts[0]["labels"])
    # the 3-class arm pretrained on 3 classes, fine-tuned on 5
    (p,) = seen["pretrain"]
    assert set(np.unique(p["labels"])) <= {-1, 0, 1, 2}
    assert max(int(t["labels"].max()) for t in seen["transfer"]) > 2


# --- records -------------------------------------------------------------------------------------
def test_arm_records(study_run):
    out = study_run["out"]
    assert sorted(os.listdir(out)) == [
        "dubai_smoke_false.json",
        "dubai_smoke_noisy_coarse_3class.json",
        "dubai_smoke_overlay.png",
        "dubai_smoke_random_init.json",
    ]
    recs = {a: json.loads((out / f"dubai_smoke_{a}.json").read_text()) for a in ARMS.split(",")}
    for arm, p in recs.items():
        assert p["format"] == "rsjax.dubai_arm/v1" and p["arm"] == arm and p["setting"] == "smoke"
        prov = p["provenance"]
        assert prov["command"] and prov["date"] and prov["machine"]["backend"] == "cpu" and "git" in prov
        assert p["settings"]["test_scenes"] == [3, 8] and p["settings"]["num_train"] == TRAIN_CROPS
        (run,) = p["runs"]
        assert run["seed"] == 0 and set(run["finetune"]) == {"0.1", "1"}
        for f in run["finetune"].values():
            unet = f["decoders"]["unet"]
            assert 0 <= unet["miou"] <= 1 and set(unet["per_class_iou"]) == set(p["settings"]["class_names"])
        assert ["false", "simclr"] in p["comparisons"]
    sup = recs["noisy_coarse_3class"]
    assert sup["noise"]["pool_factor"] == 16 and sup["noise"]["class_map"] == [0, 2, 1, 1, 2]
    assert 0 < sup["agreement"]["pixel"] < 1 and set(sup["agreement"]["per_class"]) <= {"0", "1", "2"}
    rows = sup["runs"][0]["pretrain"]["analysis"]
    assert [r["step"] for r in rows] == [0, 1, 2] and "enc_c4" in rows[-1]["fisher"]
    assert rows[-1]["weights"]["enc_layer4"]["rel_change"] > 0
    false = recs["false"]["runs"][0]["pretrain"]
    assert false["steps"] == 2 and false["logged_firing"]["threshold"] == 0.9
    sweep = false["firing"]["trained"]["vissl"]
    assert sweep["threshold"] == [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99] and len(sweep["false_calibrated"]) == 7
    assert set(false["firing"]) == {"trained", "init"}
    assert os.path.exists(os.path.join(study_run["wd"], "study_overlay.png"))
    assert "| noisy_coarse_3class |" in (open(os.path.join(study_run["wd"], "study.md")).read())


def test_resume_reruns_nothing_finished(study_run, monkeypatch):
    """A rerun reads the finished arms; an arm-seed whose record was lost (a run killed after its
    trainings) is re-scored from its checkpoints without training again; a spent time budget
    starts no new arm."""
    from rsjax import noisy_label as nl
    from rsjax.jobs import study_dubai

    wd, out = study_run["wd"], study_run["out"]
    cfg = _config(study_run["folder"], out)
    before = json.loads((out / "dubai_smoke_noisy_coarse_3class.json").read_text())
    os.remove(os.path.join(wd, "results", "dubai_smoke_noisy_coarse_3class.json"))
    os.remove(os.path.join(wd, "noisy_coarse_3class_s0", "arm_result.json"))
    metrics = os.path.join(wd, "noisy_coarse_3class_s0", "pretrain", "metrics.jsonl")
    rows_before = open(metrics).read()
    calls = []
    real = nl.pretrain
    monkeypatch.setattr(nl, "pretrain", lambda *a, **k: calls.append(a[0].seed) or real(*a, **k))
    report = study_dubai.run(cfg, wd)
    assert calls == [0] and open(metrics).read() == rows_before  # resumed at its last step: nothing trained
    after = json.loads((out / "dubai_smoke_noisy_coarse_3class.json").read_text())
    for f in ("0.1", "1"):
        assert after["runs"][0]["finetune"][f] == before["runs"][0]["finetune"][f]
    assert sorted(report["results"]) == sorted(ARMS.split(","))
    calls.clear()
    report = study_dubai.run(_config(study_run["folder"], out, arms=ARMS + ",clean_supervised", time_budget_s=1e-9), wd)
    assert calls == [] and report["not_started"] == ["clean_supervised"]


def test_bad_keys_are_refused_before_writing(folder, tmp_path):
    from rsjax import errors
    from rsjax.jobs import study_dubai

    for key, value, match in (
        ("arms", "random_init,nope", "unknown arm"),
        ("label_fractions", (0.1, 1.5), "label_fractions"),
        ("overlay_fraction", 0.5, "overlay_fraction"),
        ("comparisons", "false-nope", "comparisons"),
    ):
        c = _config(folder, tmp_path / "out")
        c.study[key] = value
        with pytest.raises(errors.ConfigError, match=match):
            study_dubai.run(c, str(tmp_path / "wd"))
    c = _config(folder, tmp_path / "out")
    c.data.folder = ""
    with pytest.raises(errors.ConfigError, match="config.data.folder"):
        study_dubai.run(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


# --- FALSE's firing ------------------------------------------------------------------------------
def test_firing_counts_match_the_gate():
    """per_anchor calibrates every anchor whose positive cosine reaches T (there is always a
    negative); vissl and gate_then_pick at most one cell; nothing above the largest cosine."""
    from rsjax.methods import false as F

    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(6, 8)).astype(np.float32)
    z2 = (z1 + rng.normal(scale=[[0.1], [0.3], [0.6], [1.0], [2.0], [4.0]], size=(6, 8))).astype(np.float32)
    n1, n2 = (z / np.linalg.norm(z, axis=1, keepdims=True) for z in (z1, z2))
    cos = np.sum(n1 * n2, 1)
    c = np.sort(cos)
    ts = [-1.0, 0.0, 0.5, float(c[-2] + c[-3]) / 2, float(c[-1] + c[-2]) / 2, 0.999]  # never on a cosine
    got = F.firing(z1, z2, thresholds=ts, temperature=0.5, fnsd_mode="per_anchor")
    assert got["false_calibrated"] == [2.0 * np.sum(cos >= t) for t in ts]
    assert got["false_gated"] == got["false_calibrated"]
    for mode in ("vissl", "gate_then_pick"):
        g = F.firing(z1, z2, thresholds=ts, temperature=0.5, fnsd_mode=mode)
        assert all(c <= 2 for c in g["false_calibrated"]) and g["false_calibrated"][-1] == 0
    assert F.firing(z1, z2, thresholds=ts, temperature=0.5, alpha=0.0)["false_calibrated"] == [0.0] * len(ts)


# --- the rendered table --------------------------------------------------------------------------
def _payload(arm, index, miou10, miou100, kind="contrastive", **extra):
    runs = [
        {
            "seed": s,
            "finetune": {
                "0.1": {"decoders": {"unet": {"miou": a, "per_class_iou": {"water": a / 2, "land": a}}}},
                "1": {"decoders": {"unet": {"miou": b, "per_class_iou": {"water": b / 2, "land": b}}}},
            },
        }
        for s, (a, b) in enumerate(zip(miou10, miou100))
    ]
    return {
        "format": "rsjax.dubai_arm/v1",
        "setting": "cpu",
        "arm": arm,
        "arm_index": index,
        "kind": kind,
        "settings": {
            "dataset": "dubai_aerial_seg",
            "model": "resnet10_w32",
            "image_size": 64,
            "num_train": 100,
            "pretrain_steps": 400,
            "pretrain_batch": 32,
            "finetune_steps": 200,
            "finetune_batch": 16,
            "decoders": ["unet"],
            "decoder_channels": [128, 64, 32, 16, 16],
            "label_fractions": [0.1, 1.0],
            "num_test": 50,
            "test_tiles": [3, 8],
            "class_names": ["water", "land"],
        },
        "runs": runs,
        "comparisons": [["noisy_coarse", "random_init"], ["false", "simclr"]],
        "pretrain_s": 10.0,
        "wall_s": 60.0,
        "provenance": {
            "command": "python -m rsjax.main --config=configs/study_dubai.py:cpu",
            "git": {"commit": "abc1234", "dirty": False},
            "date": "2026-12-08T10:00:00+00:00",
            "machine": {"device_count": 1, "device_kinds": ["cpu"]},
        },
        **extra,
    }


def test_renderer_numbers_match_numpy_and_scipy(tmp_path):
    rand = ([0.30, 0.32, 0.29], [0.50, 0.52, 0.55])
    noisy = ([0.36, 0.35, 0.37], [0.53, 0.52, 0.58])
    R.save(_payload("random_init", 0, *rand, kind="random_init"), tmp_path / "dubai_cpu_random_init.json")
    R.save(
        _payload(
            "noisy_coarse",
            1,
            *noisy,
            kind="supervised",
            agreement={"pixel": 0.74},
            noise={"pool_factor": 16, "flip_rate": 0.2, "class_names": []},
        ),
        tmp_path / "dubai_cpu_noisy_coarse.json",
    )
    md = R.render_dubai_table(R.load_all("dubai_*.json", str(tmp_path)))
    assert "crops of test tiles 3, 8 (mIoU %" in md  # records written before data.test_tiles was renamed
    renamed = _payload("random_init", 0, *rand, kind="random_init")
    renamed["settings"]["test_scenes"] = renamed["settings"].pop("test_tiles")
    assert "crops of test tiles 3, 8 (mIoU %" in R.render_dubai_table([renamed])
    row = next(line for line in md.splitlines() if line.startswith("| noisy_coarse |"))
    for vals in noisy:
        m, sd = 100 * np.mean(vals), 100 * np.std(vals, ddof=1)
        assert f"{m:.1f} ± {sd:.1f}" in row
    for i, frac in enumerate(("10 %", "100 %")):
        d = np.subtract(noisy[i], rand[i])
        lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(len(d)))
        cell = f"{100 * d.mean():+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] (n = 3)"
        line = next(x for x in md.splitlines() if x.startswith("| noisy_coarse − random_init |"))
        assert line.split(" | ")[1 + i].strip(" |") == cell, frac
    per_class = md.split("Per-class IoU (%, mean over seeds), unet, 10 % labels:")[1]
    assert f"| noisy_coarse | {100 * np.mean(noisy[0]) / 2:.1f} | {100 * np.mean(noisy[0]):.1f} |" in per_class
    assert "| noisy_coarse | 2 classes, pooled x16, 20 % regions flipped | 74.0 |" in md
    assert "false − simclr" not in md  # a comparison whose arms have no record is left out
    assert R.render_dubai_table([]).startswith("_No Dubai study results yet")


def test_docs_results_block_is_generated():
    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "results.md")).read()
    assert "<!-- results:dubai -->" in text and "<!-- /results:dubai -->" in text
