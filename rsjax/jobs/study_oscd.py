"""The OSCD study job (``config.job = "study_oscd"``, ``configs/study_oscd.py``): city folds,
pretraining on the training cities' unlabelled crops, change detection frozen and fine-tuned.

Run::

    python -m rsjax.main --config=configs/study_oscd.py:cpu --workdir=runs/study_oscd \
        --config.data.data_dir=$TFDS --config.study.out_dir=results

Folds: ``config.study.folds`` names the test scenes of each fold (``"bercy+paris,..."``: the
records' ``study.scene_name_key`` feature, OSCD's ``city``; scene ids where that key is ``''``).
Together they must test every scene of the dataset's ``train`` split exactly once. A fold's
scenes reach every read as ``data.test_scenes`` (the one rule of :mod:`rsjax.data.scenes`), so
its pretraining and its change-detection training read only the other scenes, and its scoring
only these.

For each arm (``random_init`` first, then ``config.arms``: built by configs/study_oscd.py from
their config modules, so only the loss differs), fold and seed, in ``<workdir>/<arm>_f<k>_s<seed>``:

1. pretrain (not for random_init) with the pretraining job in ``pretrain/``
   (:func:`rsjax.study.arm_config`: ``epochs`` over the fold's pretraining units, or
   ``max_steps_per_arm``; ``data.test_scenes`` = the fold's test scenes);
2. train the siamese change detector (``config.cd``; the change-detection job) on the fold's
   training scenes with that encoder frozen (``cd_frozen/``, ``optimizer.freeze="encoder/*"``) and
   fine-tuned (``cd_finetuned/``), and score the test scenes: F1 / IoU / precision / recall of the
   change class and the confusion counts.

A run's record (``arm_result.json``: both scores, pretraining seconds, the last-window means of
every logged pretraining metric incl. ``scene_false_negatives`` and SwiMDiff's ``loss_diffusion*``,
refused steps) is never rerun; when an arm has every run its JSON (:func:`payload`, with
:func:`rsjax.results.provenance`) goes to ``<workdir>/results/oscd_<study.name>_<arm>.json`` and
``config.study.out_dir``. ``python -m rsjax.results`` renders it (``render_oscd_table``).
``config.study.time_budget_s`` > 0 starts no run after that many seconds (rerun to continue).
At the end: ``study.json``, ``study.md`` and ``prediction_<city>.png`` (A, B, truth, prediction
and errors on one stitched test city for the floor and the best arm, fine-tuned, first seed).
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from rsjax import (
    errors,
    jobs,  # the registry: a study runs other jobs by name
    plots,
)
from rsjax import results as results_lib
from rsjax import study as lib
from rsjax import workdir as workdir_lib
from rsjax.data import pipeline, registry
from rsjax.evaluate import change_detection as cd_lib
from rsjax.evaluate import metrics as M

MODES = ("frozen", "finetuned")
SCORES = ("f1", "iou", "precision", "recall")


def validate(config: ml_collections.ConfigDict) -> tuple[list[int], list[str], list[list[str]]]:
    """``(seeds, arms, folds)`` (``folds``: the test scene names of each fold, as written) after
    checking the study keys, ConfigError naming the key, before anything is written."""
    seeds, arms = lib.plan(config)
    with errors.config_errors():
        folds = [[s.strip() for s in f.split("+") if s.strip()] for f in str(config.study.folds).split(",")]
        if len(folds) < 2 or not all(folds):
            raise errors.ConfigError(
                f"config.study.folds={config.study.folds!r}: expected at least 2 folds of test "
                f"scenes, e.g. 'bercy+paris,bordeaux+hongkong'"
            )
        names = [s for f in folds for s in f]
        twice = sorted({s for s in names if names.count(s) > 1})
        if twice:
            raise errors.ConfigError(f"config.study.folds: scene {twice[0]!r} is in more than one fold")
        if not (int(config.epochs) > 0 or int(config.max_steps_per_arm) > 0):
            raise errors.ConfigError(f"config.epochs={config.epochs}: must be > 0 (or config.max_steps_per_arm)")
        d = config.data
        if d.test_scenes or d.val_scenes or config.cd.data.test_scenes or config.cd.data.val_scenes:
            raise errors.ConfigError(
                "config.data.test_scenes / val_scenes (and config.cd.data.*) are set per fold "
                "by the study from config.study.folds; leave them ()"
            )
        if not (d.device_resident and d.pretrain_images):
            raise errors.ConfigError(
                "the study pretrains on both images of each record: set "
                "config.data.device_resident=True and config.data.pretrain_images"
            )
        info = registry.data_info(d)
        if len(info.bands) != int(config.model.in_channels):
            raise errors.ConfigError(
                f"config.model.in_channels={config.model.in_channels} but {d.name} has {len(info.bands)} bands"
            )
    return seeds, arms, folds


def fold_table(config, folds: list[list[str]]) -> list[dict]:
    """``[{"fold", "test", "train", "test_scenes", "train_scenes"}]``: the scene names and ids of
    each fold, from the records of the ``train`` split (``study.scene_name_key`` -> ``scene_id``).
    ConfigError for a name the data lacks, or a scene no fold tests."""
    key = config.study.scene_name_key
    fields = {"scene_id": "scene_id", **({"name": key} if key else {})}
    rec = pipeline.read_split(config.data, "train", fields=fields, desc="scenes")
    names = [(n.decode() if isinstance(n, bytes) else str(n)) for n in rec.get("name", rec["scene_id"])]
    ids = dict(zip(names, (int(i) for i in rec["scene_id"])))
    with errors.config_errors():
        unknown = [s for f in folds for s in f if s not in ids]
        if unknown:
            raise errors.ConfigError(
                f"config.study.folds: no scene {unknown[0]!r} in split 'train' of "
                f"{config.data.name!r} (its scenes: {', '.join(sorted(ids))})"
            )
        untested = sorted(set(ids) - {s for f in folds for s in f})
        if untested:
            raise errors.ConfigError(
                f"config.study.folds tests every scene once; not in any fold: {', '.join(untested)}"
            )
    return [
        {
            "fold": k,
            "test": sorted(f),
            "train": sorted(set(ids) - set(f)),
            "test_scenes": sorted(ids[s] for s in f),
            "train_scenes": sorted(ids[s] for s in set(ids) - set(f)),
        }
        for k, f in enumerate(folds)
    ]


def pretrain_units(config, fold: dict) -> int:
    """The units one pretraining epoch draws from: the fold's training records x images per
    record (``data.pretrain_images``) x ``crops_as_scenes``^2 crops."""
    d = ml_collections.ConfigDict(config.data.to_dict())
    d.test_scenes = tuple(fold["test_scenes"])
    g = max(1, int(d.crops_as_scenes or 0))
    return pipeline.num_records(d, d.train_split) * max(1, len(d.pretrain_images)) * g * g


def cd_config(config, fold: dict, seed: int, pretrained: str, mode: str) -> ml_collections.ConfigDict:
    """The change-detection config of one run: ``config.cd`` with the seed, the fold's test scenes
    held out, the encoder of ``pretrained`` ('' = random init) frozen or fine-tuned, and the
    mode's steps (``config.cd_steps.<mode>``)."""
    c = ml_collections.ConfigDict(config.cd.to_dict())
    c.seed = seed
    c.pretrained = pretrained
    c.data.test_scenes = tuple(fold["test_scenes"])
    c.optimizer.freeze = "encoder/*" if mode == "frozen" else ""
    c.total_steps = int(config.cd_steps[mode])
    c.lock()
    return c


def pretrain_config(config, arm: str, fold: dict, seed: int) -> ml_collections.ConfigDict:
    """The pretraining config of ``arm`` on ``fold``'s training scenes (:func:`rsjax.study.arm_config`
    with the fold's test scenes held out of the read)."""
    c = lib.arm_config(config, arm, seed, pretrain_units(config, fold))
    c.data.test_scenes = tuple(fold["test_scenes"])
    return c


def run_one(config, arm: str, fold: dict, seed: int, folder: str) -> dict:
    """Pretrains ``arm`` (not random_init) on ``fold``'s training scenes and scores its encoder
    in change detection, frozen and fine-tuned (see the module docstring)."""
    r: dict = {"test": fold["test"], "train": fold["train"]}
    pretrained = ""
    if arm != "random_init":
        cfg = pretrain_config(config, arm, fold, seed)
        print(
            f"== study arm {arm} (fold {fold['fold']}, seed {seed}): {cfg.method}, {cfg.total_steps} steps", flush=True
        )
        pretrained = os.path.join(folder, "pretrain")
        summary = jobs.get("pretrain")(cfg, pretrained)
        r.update(
            pretrain_s=summary["train_seconds"],
            compile_s=summary["compile_seconds"],
            steps=summary["step"],
            refused_steps=int(summary.get("nonfinite_steps", 0) or 0),
            last_window=lib.last_window(os.path.join(pretrained, "metrics.jsonl"), cfg.total_steps, cfg.log_every),
            optimizer=cfg.optimizer.to_dict(),
        )
        for key in ("swimdiff", "loss", "moco"):
            if key in cfg:
                r[key] = cfg[key].to_dict()  # every setting of the arm's loss terms
    for mode in MODES:
        m = jobs.get("change_detection")(
            cd_config(config, fold, seed, pretrained, mode), os.path.join(folder, f"cd_{mode}")
        )
        r[mode] = {
            k: m.get(k)
            for k in (
                *SCORES,
                "tp",
                "fp",
                "fn",
                "tn",
                "num_test",
                "num_train",
                "train_steps",
                "nonfinite_steps",
                "seconds",
                "pos_weight",
                "train_change_fraction",
            )
        }
    return r


def pooled(runs: list[dict], folds: list[dict]) -> list[dict]:
    """Per seed with every fold scored: the scores of the confusion counts summed over the folds
    (every test pixel of the dataset once)."""
    out = []
    for seed in sorted({r["seed"] for r in runs}):
        mine = [r for r in runs if r["seed"] == seed and "error" not in r]
        if len(mine) != len(folds):
            continue
        row = {"seed": seed}
        for mode in MODES:
            cm = np.zeros((2, 2), np.int64)
            for r in mine:
                cm += [[r[mode]["tn"], r[mode]["fp"]], [r[mode]["fn"], r[mode]["tp"]]]
            row[mode] = {k: v for k, v in M.binary_scores(cm).items() if k in (*SCORES, "tp", "fp", "fn")}
        out.append(row)
    return out


def settings(config, folds: list[dict]) -> dict:
    """What every arm of the study shares, recorded beside each arm's numbers."""
    c = config.cd
    return {
        "dataset": config.data.name,
        "model": config.model.name,
        "image_size": int(config.data.image_size),
        "crops_as_scenes": int(config.data.crops_as_scenes),
        "pretrain_images": list(config.data.pretrain_images),
        "epochs": int(config.epochs),
        "max_steps_per_arm": int(config.max_steps_per_arm or 0),
        "batch_size": int(config.batch_size),
        "dtype": config.dtype,
        "optimizer": config.optimizer.name,
        "lr": config.optimizer.lr,
        "augment": config.data.augment,
        "folds": [{k: f[k] for k in ("fold", "test", "train")} for f in folds],
        "cd": {
            "crop_size": int(c.data.crop_size),
            "steps": {m: int(config.cd_steps[m]) for m in MODES},
            "batch_size": int(c.batch_size),
            "optimizer": c.optimizer.name,
            "lr": c.optimizer.lr,
            "decoder_channels": list(c.model.decoder_channels),
            "loss_dice_weight": c.loss.dice_weight,
            "loss_pos_weight_power": c.loss.pos_weight_power,
        },
    }


def payload(config, arm: str, arm_index: int, runs: list[dict], shared: dict, folds: list[dict]) -> dict:
    """One arm's result record (``oscd_<name>_<arm>.json``; rendered by rsjax.results)."""
    ok = [r for r in runs if "error" not in r]
    p = lib.arm_record(config, arm, arm_index, runs, shared, "rsjax.oscd_arm/v1")
    p["pooled"] = pooled(runs, folds)
    p.update(lib.mechanism(ok))
    p["pretrain_s"] = float(np.mean([r.get("pretrain_s", 0.0) for r in ok])) if ok else None
    p["wall_s"] = float(sum(r.get("wall_s") or 0.0 for r in runs))
    p["provenance"] = results_lib.provenance()
    return p


def _picture(config, workdir: str, results: dict, folds: list[dict], seed: int) -> str | None:
    """``prediction_<city>.png``: the test city ``study.picture_city`` stitched from its crops, one
    row per encoder (the floor random_init, and the arm with the best pooled fine-tuned F1), in the
    fold that tests it, seed ``seed``. None when a needed run is missing."""

    def best_f1(p):
        vals = [row["finetuned"]["f1"] for row in p.get("pooled", [])]
        return float(np.mean(vals)) if vals else -1.0

    city = str(config.study.picture_city)
    fold = next((f for f in folds if city in f["test"]), None)
    trained = {a: p for a, p in results.items() if a != "random_init" and best_f1(p) >= 0}
    if fold is None or "random_init" not in results or not trained:
        return None
    rows = {"random_init (floor)": "random_init"}
    best = max(trained, key=lambda a: best_f1(trained[a]))
    rows[f"{best} (best)"] = best
    preds = {}
    for label, arm in rows.items():
        path = os.path.join(
            lib.run_dir(workdir, arm, {"fold": fold["fold"], "seed": seed}), "cd_finetuned", "predictions.npz"
        )
        if not os.path.exists(path):
            return None
        with np.load(path) as z:
            preds[label] = z["change"]
    d = cd_config(config, fold, seed, "", "finetuned").data
    have = pipeline.open_source(d, "train").features()
    fields = {
        "a": d.image_a_key,
        "b": d.image_b_key,
        "change": d.change_key,
        "scene_id": "scene_id",
        **({"y": "crop_y", "x": "crop_x"} if "crop_y" in have else {}),
    }
    test = pipeline.read_split(d, "test", fields=fields, desc="picture")
    keep = test["scene_id"] == fold["test_scenes"][fold["test"].index(city)]
    n, s = int(keep.sum()), test["a"].shape[1]
    cols = int(np.ceil(np.sqrt(n)))  # without stored offsets: the crops in a grid, in record order
    ys = test["y"][keep] if "y" in test else (np.arange(n) // cols) * s
    xs = test["x"][keep] if "x" in test else (np.arange(n) % cols) * s
    a, b, t = (cd_lib.mosaic(test[k][keep], ys, xs) for k in ("a", "b", "change"))
    idx = registry.rgb_indices(registry.data_info(d).bands)
    grid = [plots.change_panels(a, b, t, cd_lib.mosaic(p[keep], ys, xs), idx) for p in preds.values()]
    out = os.path.join(workdir, f"prediction_{city}.png")
    return plots.image_grid(grid, plots.CHANGE_TITLES, out, row_labels=list(preds), legend=plots.CHANGE_LEGEND)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    seeds, arms, fold_names = validate(config)
    with workdir_lib.Workdir(workdir, lib.workdir_config(config)):
        lib.compilation_cache(workdir)
        config = ml_collections.ConfigDict(config.to_dict())  # the caller's config stays as given
        folds = fold_table(config, fold_names)
        shared = settings(config, folds)
        units = [{"fold": f["fold"], "seed": s} for f in folds for s in seeds]

        def line(arm, r):
            return ", ".join(f"{mode} F1 {r[mode]['f1']:.3f}" for mode in MODES) + (
                f" ({r['pretrain_s']:.0f} s pretraining)" if "pretrain_s" in r else ""
            )

        results, not_started = lib.run_arms(
            config,
            workdir,
            arms,
            units,
            run_one=lambda arm, unit, folder: run_one(config, arm, folds[unit["fold"]], unit["seed"], folder),
            payload=lambda arm, index, runs: payload(config, arm, index, runs, shared, folds),
            file_name=lambda arm: f"oscd_{config.study.name}_{arm}.json",
            line=line,
        )
        report = lib.write_report(
            workdir,
            config,
            seeds,
            results,
            not_started,
            lambda report: results_lib.render_oscd_table(list(report["results"].values())),
            folds=shared["folds"],
        )
        picture = _picture(config, workdir, results, folds, seeds[0])
        if picture:
            report["picture"] = picture
        return report
