"""The Dubai study job (``config.job = "study_dubai"``, ``configs/study_dubai.py``): noisy-label
pretraining and FALSE on real aerial images, every encoder fine-tuned and scored the same way.

Run::

    python -m rsjax.main --config=configs/study_dubai.py:cpu --workdir=runs/study_dubai \
        --config.data.folder=$DATA/dubai_aerial_seg --config.study.out_dir=results

Data (read once, :func:`rsjax.data.segmentation.load_split`, the tile folder split by tile):
the training split (every tile not in ``data.test_scenes``: scene = tile number,
:func:`rsjax.data.tiles.split_tiles`) in ``data.image_size`` crops with
clean labels, and the test split; ``study.max_test`` > 0 scores that many test crops (the one
subset rule, the same crops for every arm). The training crops are checked to come from no test
tile before anything trains.

Per arm (``study.arms``, of :data:`configs.study_dubai.ARM_ORDER`) and seed (``study.seeds``),
in ``<workdir>/<arm>_s<seed>/``, resumable (:func:`rsjax.study.run_arms`, the studies' one loop):

* pretraining (none for ``random_init``): a supervised arm (``config.arms.<arm>.method ==
  "noisy_label"``) trains the UNet on the training crops' labels with its ``noise`` block
  (:func:`rsjax.data.segmentation.noisy_labels`: coarser legend, majority pooling, flips; computed
  once per arm, the same for every seed) through :func:`rsjax.noisy_label.pretrain` (phase
  ``pretrain/``, with the per-layer analysis on ``analysis.max_images`` clean test crops); a
  ``false`` arm runs the pretraining job in ``pretrain/`` (its own workdir) on the same crops;
* fine-tuning: for each of ``study.label_fractions`` f, the encoder (or a random one) in the
  one fine-tuning config ``config.finetune_run`` (seeded with the study seed: the same decoder
  initialisation and batch order for every arm) on ``round(f * N)`` training crops with clean
  labels (:func:`label_subset`: drawn per seed, shared by the arms), phase
  ``transfer_f<100 f>_<decoder>/``, scored on the test crops (mIoU, per-class IoU, OA).

Records (:func:`rsjax.results.save`, with provenance): ``arm_result.json`` per arm and seed, and
when an arm ends ``dubai_<study.name>_<arm>.json`` in ``<workdir>/results`` and
``study.out_dir``: per seed the fine-tune scores, the pretraining's seconds, last-window metric
means and refused steps; the noise block and the noisy labels' pixel agreement with the clean
ones (supervised arms); the per-layer analysis rows (supervised arms); FALSE's firing
(``false_calibrated`` per logged step, and :func:`rsjax.study.false_firing` at
``study.firing_thresholds`` with the trained and the untrained encoder). The table of
docs/results.md is rendered from these files by ``python -m rsjax.results``. At the end:
``study.json``, ``study.md`` and ``study_overlay.png`` (one test image: truth and each arm's
prediction after fine-tuning on ``study.overlay_fraction`` of the labels, first seed; copied to
``study.out_dir`` as ``dubai_<study.name>_overlay.png``).

XLA's persistent compilation cache goes to ``<workdir>/xla_cache`` unless one is configured
(:func:`rsjax.study.compilation_cache`: every fine-tune compiles the same programs).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import ml_collections
import numpy as np

from rsjax import (
    checkpoint,
    errors,
    jobs,  # the registry: the SSL arms run the pretraining job by name
    plots,
)
from rsjax import noisy_label as nl
from rsjax import results as results_lib
from rsjax import sharding as shd
from rsjax import study as lib
from rsjax import workdir as workdir_lib
from rsjax.data import folders, registry, tiles
from rsjax.data import segmentation as segdata
from rsjax.data.segmentation import SegData

RESULT_FORMAT = "rsjax.dubai_arm/v1"
RANDOM_INIT = "random_init"


def kind(config, arm: str) -> str:
    """``random_init`` | ``supervised`` (the UNet on (noisy) masks) | ``contrastive`` (SimCLR / FALSE:
    the pretraining job)."""
    if arm == RANDOM_INIT:
        return RANDOM_INIT
    return "supervised" if config.arms[arm].method == "noisy_label" else "contrastive"


def fraction_tag(f: float) -> str:
    """``0.1`` -> ``f10``: the label fraction in a phase name."""
    return f"f{100 * float(f):g}".replace(".", "p")


def label_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """The ``round(fraction * n)`` (at least 1) training crops with clean labels a fine-tune of
    study seed ``seed`` sees: :func:`rsjax.data.folders.subset_indices` drawn with that seed
    (every arm of a seed gets the same crops); all of them for fraction 1."""
    return folders.subset_indices(n, None if fraction >= 1 else max(1, int(round(fraction * n))), seed=seed)


def validate(config) -> tuple[list[int], list[str]]:
    """``(seeds, arms)`` after checking the study's keys and every arm's config (ConfigError
    naming the key) before anything is written or read."""
    seeds, arms = lib.plan(config)
    known = [RANDOM_INIT, *lib.arm_names(config)]
    with errors.config_errors():
        if not arms:
            raise errors.ConfigError(f"config.study.arms={config.study.arms!r}: no arm; known: {', '.join(known)}")
        fr = [float(f) for f in config.study.label_fractions]
        if not fr or any(not 0 < f <= 1 for f in fr) or len(set(fr)) != len(fr):
            raise errors.ConfigError(
                f"config.study.label_fractions={tuple(config.study.label_fractions)}: "
                f"distinct fractions in (0, 1] expected"
            )
        if float(config.study.overlay_fraction) and float(config.study.overlay_fraction) not in fr:
            raise errors.ConfigError(
                f"config.study.overlay_fraction={config.study.overlay_fraction}: not one of "
                f"config.study.label_fractions {tuple(fr)} (0 = no overlay picture)"
            )
        for key in ("max_test", "firing_batches"):
            if int(config.study[key]) < 0:
                raise errors.ConfigError(f"config.study.{key}={config.study[key]!r}: must be >= 0")
        bad = [f"{a}-{b}" for a, b in lib.comparisons(config) if a not in known or b not in known]
        if bad:
            raise errors.ConfigError(f"config.study.comparisons: unknown arm in {bad}; known: {', '.join(known)}")
        info = registry.data_info(config.data)
        if not info.mask_colours:
            raise errors.ConfigError(
                f"config.data.name={config.data.name!r}: the study reads a tile folder "
                f"(a dataset with a colour table, e.g. dubai_aerial_seg)"
            )
        if not config.data.folder:
            raise errors.ConfigError(
                f"config.data.folder is empty: set it to the folder of {info.name!r} (e.g. $DATA/{info.name})"
            )
        if not int(config.max_steps_per_arm) > 0:
            raise errors.ConfigError(f"config.max_steps_per_arm={config.max_steps_per_arm!r}: must be > 0")
    for arm in arms:
        if kind(config, arm) == "supervised":
            try:
                nl.validate(lib.arm_config(config, arm, seeds[0], num_train=1))
            except errors.ConfigError as e:
                raise errors.ConfigError(f"{e} (study arm {arm}: config.arms.{arm})") from None
    try:
        nl.validate(finetune_config(config, seeds[0]))
    except errors.ConfigError as e:
        raise errors.ConfigError(f"{e} (the fine-tuning: config.finetune / config.finetune_run)") from None
    return seeds, arms


def finetune_config(config, seed: int) -> ml_collections.ConfigDict:
    """The one fine-tuning config every encoder of study seed ``seed`` gets."""
    c = ml_collections.ConfigDict(config.finetune_run.to_dict())
    c.seed = int(seed)
    c.lock()
    return c


@dataclasses.dataclass
class _Study:
    """What every arm and seed of one run shares."""

    config: ml_collections.ConfigDict
    wd: workdir_lib.Workdir
    mesh: object
    seeds: list[int]
    train: SegData  # the training crops, clean labels
    test: SegData  # the scored test crops
    overlay: SegData  # the crops of one test image (the overlay picture)
    overlay_grid: tuple[int, int]
    analysis: SegData  # clean test crops of the per-layer analysis
    num_test_all: int  # test crops of the test tiles (study.max_test of them scored)
    noisy: dict = dataclasses.field(default_factory=dict)  # arm -> (labels, agreement), the arm running

    def noisy_labels(self, arm: str, cfg) -> tuple[np.ndarray, dict]:
        """The arm's noisy labels (int8: 58 MB instead of 230 for the 14,085 crops) and their
        agreement with the clean ones; computed once per arm (the seeds of an arm run in a row)."""
        if arm not in self.noisy:
            self.noisy.clear()
            t = time.time()
            labels = segdata.noisy_labels(cfg, self.train.labels, self.train.info.num_classes).astype(np.int8)
            agree = segdata.noise_agreement(cfg, self.train.labels, labels)
            self.noisy[arm] = (labels, agree)
            print(
                f"   {arm}: noisy labels of {len(labels)} crops in {time.time() - t:.0f} s, "
                f"{agree['pixel']:.1%} pixel agreement with the clean ones",
                flush=True,
            )
        return self.noisy[arm]


def _load(config, mesh, wd, seeds) -> _Study:
    d = config.data
    train = segdata.load_split(d, d.train_split, image_size=d.image_size)
    held = {int(t) for t in d.test_scenes} | {int(t) for t in d.val_scenes}
    leaked = sorted(held & {int(s) for s in np.unique(train.scene_id)})
    if leaked:  # the split is by tile (rsjax.data.tiles.split_tiles): this would be a bug there
        raise errors.DataError(f"training crops from held-out tile(s) {leaked} of {d.folder!r}")
    test_all = segdata.load_split(d, "test", image_size=d.image_size)
    test = test_all.subset(folders.subset_indices(len(test_all), int(config.study.max_test) or None))
    first = tiles.crop_layout(d, "test", split_key="data.test_scenes")[0]
    overlay = test_all.subset(np.arange(first["rows"] * first["cols"]))
    ana = test.subset(folders.subset_indices(len(test), int(config.analysis.max_images) or None))
    print(
        f"{d.name}: {len(train)} training crops (tiles {sorted(set(train.scene_id.tolist()))}), {len(test)} of "
        f"{len(test_all)} test crops scored (tiles {sorted(set(test_all.scene_id.tolist()))}), "
        f"{d.image_size} px",
        flush=True,
    )
    return _Study(config, wd, mesh, seeds, train, test, overlay, (first["rows"], first["cols"]), ana, len(test_all))


def _fit_summary(summary: dict, metrics_path: str, cfg) -> dict:
    return {
        "steps": int(summary.get("step", 0)),
        "train_s": float(summary.get("train_seconds") or 0.0),
        "compile_s": float(summary.get("compile_seconds") or 0.0),
        "refused_steps": int(summary.get("nonfinite_steps", 0) or 0),
        "last_window": lib.last_window(metrics_path, cfg.total_steps, cfg.log_every),
    }


def _pretrain_supervised(s: _Study, arm: str, seed: int, aw) -> tuple[tuple, dict]:
    cfg = lib.arm_config(s.config, arm, seed, len(s.train))
    labels, agree = s.noisy_labels(arm, cfg)
    out = nl.pretrain(
        cfg, aw, s.mesh, s.train, labels, analysis_data=nl.in_pretraining_legend(cfg, s.analysis), desc=f"{arm} s{seed}"
    )
    res = out["result"]
    if not res.finished:
        raise errors.RsjaxError(f"study arm {arm}: pretraining stopped at step {res.step} (stop_after_steps)")
    rec = _fit_summary(res.summary, aw.sub("pretrain").metrics_path, cfg)
    rec.update(agreement=agree, analysis=out["analysis"], classes=int(cfg.model.num_classes))
    return nl.encoder_of(res.state), rec


def _pretrain_ssl(s: _Study, arm: str, seed: int, arm_wd: str) -> tuple[tuple, dict]:
    cfg = lib.arm_config(s.config, arm, seed, len(s.train))
    path = os.path.join(arm_wd, "pretrain")
    summary = jobs.get("pretrain")(cfg, path)
    params, batch_stats, _ = checkpoint.load_encoder(path)
    rec = _fit_summary(summary, os.path.join(path, "metrics.jsonl"), cfg)
    rows = [r for r in workdir_lib.read_jsonl(os.path.join(path, "metrics.jsonl")) if "false_calibrated" in r]
    if rows:  # every logged step: how often the selection fired at the configured threshold
        cal = np.asarray([r["false_calibrated"] for r in rows], float)
        rec["logged_firing"] = {
            "rows": len(rows),
            "threshold": float(cfg.loss.threshold),
            "calibrated_mean": float(cal.mean()),
            "steps_firing": int((cal > 0).sum()),
            "gated_mean": float(np.mean([r["false_gated"] for r in rows])),
        }
    if cfg.method == "false" and float(cfg.loss.alpha) > 0 and int(s.config.study.firing_batches):
        _, state = checkpoint.read_state(path)
        rec["firing"] = lib.false_firing(
            cfg,
            {"init": None, "trained": (state["params"], state["batch_stats"])},
            thresholds=tuple(s.config.study.firing_thresholds),
            num_batches=int(s.config.study.firing_batches),
        )
    return (params, batch_stats), rec


def _run_seed(s: _Study, arm: str, seed: int, arm_wd: str) -> dict:
    config = s.config
    aw = s.wd.sub(os.path.basename(arm_wd))
    rec: dict = {"seed": int(seed)}
    k = kind(config, arm)
    t = time.time()
    if k == RANDOM_INIT:
        enc = None
    elif k == "supervised":
        enc, rec["pretrain"] = _pretrain_supervised(s, arm, seed, aw)
    else:
        enc, rec["pretrain"] = _pretrain_ssl(s, arm, seed, arm_wd)
    rec["pretrain_wall_s"] = time.time() - t
    ft = finetune_config(config, seed)
    names = list(s.train.class_names)
    rec["finetune"] = {}
    for f in config.study.label_fractions:
        idx = label_subset(len(s.train), float(f), seed)
        tag = fraction_tag(f)
        draw = float(f) == float(config.study.overlay_fraction) and seed == s.seeds[0]
        res = nl.transfer(ft, aw, s.mesh, {tag: enc}, s.train.subset(idx), s.test, overlay=s.overlay if draw else None)
        if res is None:
            raise errors.RsjaxError(f"study arm {arm}: fine-tuning stopped early (stop_after_steps)")
        out = {}
        for dec, sc in res[tag].items():
            if "overlay_pred" in sc:
                np.save(aw.file(f"overlay_{tag}_{dec}.npy"), sc["overlay_pred"].astype(np.int8))
            out[dec] = {
                "miou": sc["miou"],
                "overall_accuracy": sc["overall_accuracy"],
                "per_class_iou": dict(zip(names, sc["per_class_iou"])),
                "final_loss": sc["loss_curve"][-1]["loss"] if sc["loss_curve"] else None,
            }
        rec["finetune"][f"{float(f):g}"] = {"num_train": int(len(idx)), "decoders": out}
    return rec


def _describe(r: dict) -> str:
    return ", ".join(
        f"f={f}: " + " ".join(f"{d} mIoU {v['miou']:.3f}" for d, v in x["decoders"].items())
        for f, x in r["finetune"].items()
    )


def settings(s: _Study) -> dict:
    """What every arm of this study shares, recorded beside each arm's numbers."""
    c = s.config
    return {
        "dataset": c.data.name,
        "model": c.model.name,
        "image_size": int(c.data.image_size),
        "decoder_channels": list(c.model.decoder_channels),
        "test_scenes": [int(t) for t in c.data.test_scenes],
        "pretrain_steps": int(c.max_steps_per_arm),
        "pretrain_batch": int(c.batch_size),
        "finetune_steps": int(c.finetune.total_steps),
        "finetune_batch": int(c.finetune.batch_size),
        "finetune_lr": float(c.finetune.lr),
        "decoders": list(c.finetune.decoders),
        "label_fractions": [float(f) for f in c.study.label_fractions],
        "num_train": len(s.train),
        "num_test": len(s.test),
        "num_test_all": s.num_test_all,
        "class_names": list(s.train.class_names),
        "dtype": c.dtype,
    }


def arm_payload(s: _Study, shared: dict, arm: str, arm_index: int, runs: list[dict]) -> dict:
    """One arm's result record (``dubai_<study.name>_<arm>.json``; rendered by
    :func:`rsjax.results.render_dubai_table`)."""
    config = s.config
    ok = [r for r in runs if "error" not in r]
    p = lib.arm_record(config, arm, arm_index, runs, shared, RESULT_FORMAT)
    p["kind"] = kind(config, arm)
    if p["kind"] == "supervised":
        cfg = config.arms[arm]
        p["noise"] = cfg.noise.to_dict()
        p["agreement"] = next((r["pretrain"]["agreement"] for r in ok), None)
    p["pretrain_s"] = float(np.mean([r["pretrain"]["train_s"] for r in ok])) if ok and "pretrain" in ok[0] else 0.0
    p["wall_s"] = float(sum(r.get("wall_s") or 0.0 for r in runs))
    p["provenance"] = results_lib.provenance()
    return p


def _overlay_picture(s: _Study, arms: list[str], path: str) -> str | None:
    f = s.config.study.overlay_fraction
    dec = s.config.finetune.decoders[0]
    rows, cols = s.overlay_grid
    columns = [("truth", tiles.stitch(s.overlay.labels, rows, cols)[None])]
    for arm in arms:
        npy = os.path.join(s.wd.path, f"{arm}_s{s.seeds[0]}", f"overlay_{fraction_tag(f)}_{dec}.npy")
        if os.path.exists(npy):
            columns.append((f"{arm}", tiles.stitch(np.load(npy).astype(np.int32), rows, cols)[None]))
    if len(columns) < 2:
        return None
    rgb = tiles.stitch(nl.rgb(s.overlay, len(s.overlay)), rows, cols)[None]
    return plots.class_map_rows(path, rgb, columns, len(s.train.class_names), s.train.class_names, panel_inches=4.0)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The study; returns the report (``study.json``)."""
    seeds, arms = validate(config)
    mesh = shd.make_mesh()
    with workdir_lib.Workdir(workdir, lib.workdir_config(config)) as wd:
        config = ml_collections.ConfigDict(config.to_dict())  # the caller's config stays as given
        lib.compilation_cache(workdir)  # the fine-tunes compile the same programs
        s = _load(config, mesh, wd, seeds)
        shared = settings(s)
        results, not_started = lib.run_arms(
            config,
            workdir,
            arms,
            [{"seed": seed} for seed in seeds],
            run_one=lambda arm, unit, arm_wd: _run_seed(s, arm, unit["seed"], arm_wd),
            payload=lambda arm, arm_index, runs: arm_payload(s, shared, arm, arm_index, runs),
            file_name=lambda arm: f"dubai_{config.study.name}_{arm}.json",
            line=lambda arm, r: _describe(r),
        )
        report = lib.write_report(
            workdir,
            config,
            seeds,
            results,
            not_started,
            lambda report: results_lib.render_dubai_table(list(report["results"].values())),
            settings=shared,
        )
        if float(config.study.overlay_fraction):
            picture = _overlay_picture(s, list(results), os.path.join(workdir, "study_overlay.png"))
            for d in lib.out_dirs(config, workdir)[1:]:  # beside the arm records (e.g. results/)
                if picture:
                    shutil.copyfile(picture, os.path.join(d, f"dubai_{config.study.name}_overlay.png"))
    return report
