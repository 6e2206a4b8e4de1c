"""Study: clean vs noisy labels for task-specific segmentation pretraining (job
``noisy_label_study``; DESIGN §3.4).

Every arm (``study.noise_rates``; 0 = the clean arm, no noise of any kind) pretrains the same
ResNet UNet (same initialisation, data order and budget) with a different label-noise rate,
transfers its encoder to ``transfer.decoders`` on held-out scenes with merged classes, and
records per-layer weight statistics and feature discriminability over pretraining
(``rsjax.evaluate.layers``). ``study.include_random_init`` adds the same transfers from a random
encoder. Every training is a phase of the one loop (resumable): ``<arm>/pretrain/`` (exportable
with ``python -m rsjax.export --workdir=<workdir>/<arm>/pretrain``), ``<arm>/transfer_<decoder>/``
and ``random_init/transfer_<decoder>/``; a rerun continues the first unfinished phase.

Outputs: ``study.json`` (table, transfer scores, per-layer analysis), ``study.md``,
``study_miou.png``, ``study_layers.png``, ``eval_report.json``.
"""

from __future__ import annotations

import json
import time

import jax
import ml_collections

from rsjax import errors, plots
from rsjax import noisy_label as nl
from rsjax import sharding as shd
from rsjax import workdir as workdir_lib
from rsjax.data import label_noise
from rsjax.data import segmentation as segdata
from rsjax.data.segmentation import IGNORE_INDEX
from rsjax.evaluate import metrics


def study_arms(config) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, arm config) per noise rate: 0 = the clean arm (no noise of any kind)."""
    arms = []
    for r in config.study.noise_rates:
        c = ml_collections.ConfigDict(config.to_dict())
        c.job = "noisy_label"
        c.noise.flip_rate = float(r)
        if float(r) == 0.0:
            c.noise.erosion = 0
            name = "clean"
        else:
            name = f"noise_{float(r):.2f}"
        arms.append((name, c))
    if len({n for n, _ in arms}) != len(arms):
        raise errors.ConfigError(f"config.study.noise_rates={tuple(config.study.noise_rates)} has duplicates")
    return arms


def validate(config) -> list[tuple[str, ml_collections.ConfigDict]]:
    """The study's keys and every arm's config (ConfigError naming the key); returns the arms."""
    with errors.config_errors():
        if not config.transfer.get("enabled", True):
            raise errors.ConfigError("config.transfer.enabled=False: the study compares transferred encoders")
        if not len(config.study.noise_rates):
            raise errors.ConfigError("config.study.noise_rates is empty")
        arms = study_arms(config)
    for name, arm_cfg in arms:
        try:
            nl.validate(arm_cfg)
        except errors.ConfigError as e:
            raise errors.ConfigError(f"{e} (study arm {name}, from config.study.noise_rates)") from None
    return arms


def markdown_table(table, decoders) -> str:
    head = (
        "| arm | flip rate | pixel noise | pretrain mIoU (clean test) | "
        + " | ".join(f"{d} mIoU" for d in decoders)
        + " |"
    )
    sep = "|" + "---|" * (4 + len(decoders))
    lines = [head, sep]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in table:
        lines.append(
            f"| {r['arm']} | {fmt(r['flip_rate'])} | {fmt(r['pixel_noise_rate'])} | "
            f"{fmt(r['pretrain_miou'])} | " + " | ".join(fmt(r["downstream_miou"][d]) for d in decoders) + " |"
        )
    return "\n".join(lines) + "\n"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Clean vs noisy pretraining -> downstream mIoU and per-layer analysis. Returns the summary,
    or ``{"stopped": phase}`` when a phase stopped at ``stop_after_steps`` (rerun to continue)."""
    t_start = time.time()
    shd.maybe_initialize_distributed()
    arms = validate(config)
    mesh = shd.make_mesh()
    with errors.config_errors():
        shd.check_batch_divisible(config.batch_size, mesh)
        shd.check_batch_divisible(config.transfer.batch_size, mesh)
    is_main = jax.process_index() == 0
    with workdir_lib.Workdir(workdir, config, is_main=is_main) as wd:
        pre_all, ana = nl.load_data(config)
        k = pre_all.info.num_classes
        pre = nl.split_pretraining(config, pre_all, pre_all.labels)[0]  # clean labels; the arms add noise
        tr_train, tr_test, names = segdata.downstream_data(config)
        decoders = list(config.transfer.decoders)

        table, analysis, transfer = [], {}, {}
        if config.study.get("include_random_init", True):
            res = nl.transfer(
                config, wd.sub("random_init"), mesh, {"random_init": None}, tr_train, tr_test, tagged=False
            )
            if res is None:
                return {"stopped": "random_init"}
            transfer["random_init"] = res["random_init"]
            table.append(
                {
                    "arm": "random_init",
                    "flip_rate": None,
                    "pixel_noise_rate": None,
                    "pretrain_miou": None,
                    "downstream_miou": {d: res["random_init"][d]["miou"] for d in decoders},
                }
            )
        for name, arm_cfg in arms:
            _, labels, val = nl.split_pretraining(arm_cfg, pre_all, segdata.noisy_labels(arm_cfg, pre_all.labels, k))
            rate = label_noise.noise_rate(pre.labels, labels, IGNORE_INDEX)
            if is_main:
                print(
                    f"arm {name}: flip rate {arm_cfg.noise.flip_rate:.2f}, erosion {arm_cfg.noise.erosion} px -> "
                    f"{rate:.1%} noisy pixels",
                    flush=True,
                )
            arm_wd = wd.sub(name)
            out = nl.pretrain(arm_cfg, arm_wd, mesh, pre, labels, val=val, analysis_data=ana, desc=name)
            state = out["result"].state
            if not out["result"].finished:
                return {"stopped": f"{name}/pretrain"}
            cm, _, _ = out["probe"](state["params"], state["batch_stats"], ana.images, ana.labels)
            analysis[name] = out["analysis"]
            res = nl.transfer(config, arm_wd, mesh, {name: nl.encoder_of(state)}, tr_train, tr_test, tagged=False)
            if res is None:
                return {"stopped": f"{name}/transfer"}
            transfer[name] = res[name]
            table.append(
                {
                    "arm": name,
                    "flip_rate": float(arm_cfg.noise.flip_rate),
                    "pixel_noise_rate": rate,
                    "pretrain_miou": metrics.segmentation_scores(cm)["miou"],
                    "downstream_miou": {d: res[name][d]["miou"] for d in decoders},
                }
            )

        summary = {
            "table": table,
            "decoders": decoders,
            "downstream_classes": list(names),
            "pretrain_classes": list(pre.class_names),
            "num_pretrain_images": len(pre),
            "num_downstream_train": len(tr_train),
            "num_downstream_test": len(tr_test),
            "transfer": transfer,
            "analysis": analysis,
            "seconds": time.time() - t_start,
        }
        if is_main:
            with open(wd.file("study.json"), "w") as f:
                f.write(workdir_lib.dumps({"config": json.loads(config.to_json_best_effort()), **summary}, indent=1))
            steps = nl.total_steps(config, len(pre))
            md = (
                f"# Noisy-label pretraining study ({config.data.name})\n\n"
                f"Pretraining: {len(pre)} crops, {k} classes ({', '.join(pre.class_names)}), "
                f"{config.model.name} + {config.model.decoder}, {steps} steps per arm.\n"
                f"Downstream: {len(tr_train)} train / {len(tr_test)} test crops, classes "
                f"{', '.join(names)}; {config.transfer.total_steps} fine-tuning steps.\n\n"
                + markdown_table(table, decoders)
            )
            with open(wd.file("study.md"), "w") as f:
                f.write(md)
            print(md, flush=True)
            plots.noise_study_miou(wd.file("study_miou.png"), table, decoders)
            plots.noise_study_layers(wd.file("study_layers.png"), analysis)
            wd.write_eval_report("noisy_label_study", {"table": table, "decoders": decoders}, config)
    return summary
