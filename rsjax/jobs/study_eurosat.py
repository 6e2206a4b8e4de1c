"""The EuroSAT study job (``config.job = "study_eurosat"``, ``configs/study_eurosat.py``):
pretrain every method the same way, evaluate every encoder the same way.

Run::

    python -m rsjax.main --config=configs/study_eurosat.py:cpu --workdir=runs/study_cpu \
        --config.data.folder=../shared/data/eurosat_rgb

For each arm (``config.arms``, built by configs/study_eurosat.py from its ``ARMS``) and seed:
the arm's pretraining config (:func:`rsjax.study.arm_config`) is pretrained by the pretraining job in
``<workdir>/<arm>_s<seed>`` (its own workdir: resumable, locked, checkpoints), its encoder read
back with :func:`rsjax.checkpoint.load_encoder`, and the frozen encoder scored by the ``knn``
and ``linear`` evaluators (:func:`rsjax.evaluate.classification.frozen_eval`, features through
:func:`rsjax.sharding.batched_predict`). ``random_init`` scores the untrained encoder (the floor).

The study holds its workdir (lock, ``config.json``) for the whole run. Results as data: as
soon as an arm (all its seeds) ends, its record is written as strict JSON with
:func:`rsjax.results.save` to ``<workdir>/results/study_<study.name>_<arm>.json`` and to
``config.study.out_dir`` when set (a GPU call points it at ``$OUT`` so a run cut off mid-study
still returns every finished arm). Finished arms and seeds (``arm_result.json``) are not rerun.
``config.study.time_budget_s`` > 0 starts no new run after that many seconds; the rerun
resumes there (the loop: :func:`rsjax.study.run_arms`). ``config.study.arms``, ``out_dir``, ``time_budget_s`` and
``stop_after_arm`` may change between the calls of one study (they change no result).
Writes ``study.json``, ``study.md`` and ``study.png``; ``python -m rsjax.results`` renders the
README table from ``results/study_*.json``.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections

from rsjax import (
    checkpoint,
    errors,
    jobs,  # the registry: a study runs the pretraining job by name
    plots,
)
from rsjax import study as lib
from rsjax import workdir as workdir_lib
from rsjax.data import pipeline, registry
from rsjax.evaluate import classification as cls
from rsjax.models import conv as conv_lib
from rsjax.models import resnet


def validate(config: ml_collections.ConfigDict) -> tuple[list[int], list[str]]:
    """``(seeds, arms)`` after checking the study keys (ConfigError naming the key) before
    anything is written or loaded."""
    seeds, arms = lib.plan(config)
    with errors.config_errors():
        for key in ("batch_size", "epochs"):
            if not int(config[key]) > 0:
                raise errors.ConfigError(f"config.{key}={config[key]!r}: must be > 0")
        for key in ("knn_k", "linear_epochs", "batch_size"):
            if not int(config.eval[key]) > 0:
                raise errors.ConfigError(f"config.eval.{key}={config.eval[key]!r}: must be > 0")

        info = registry.data_info(config.data)
        if len(info.bands) != config.model.in_channels:
            raise errors.ConfigError(
                f"config.model.in_channels={config.model.in_channels} but {config.data.name} "
                f"has {len(info.bands)} bands"
            )
    return seeds, arms


def _score(encode_fn, variables, arrays, config, seed: int) -> dict:
    x_tr, y_tr, x_te, y_te = arrays
    r = cls.frozen_eval(encode_fn, variables, x_tr, y_tr, x_te, y_te, eval_config=config.eval, seed=seed)
    return {"linear": r.metrics["linear_top1"], "knn": r.metrics["knn_top1"]}


def _encode_fn(encoder):
    return lambda v, x: encoder.apply(v, x, train=False).astype(jnp.float32)


def _run_arm_seed(config, arm: str, seed: int, arm_wd: str, arrays, num_train: int) -> dict:
    """Pretrains (or, for random_init, initialises) one arm's encoder and scores it."""
    dtype = {"bfloat16": jnp.bfloat16}.get(config.dtype, jnp.float32)
    if arm == "random_init":  # the floor: the same encoder, untrained
        enc = resnet.encoder_from_config(config.model, dtype)
        x0 = jnp.zeros((2,) + arrays[0].shape[1:], jnp.float32)
        variables = jax.jit(lambda k: enc.init(k, x0, train=False))(jax.random.PRNGKey(seed))
        r = _score(_encode_fn(enc), variables, arrays, config, seed)
        r.update(seed=seed, pretrain_s=0.0, compile_s=0.0, steps=0, images_per_s=None)
        return r
    cfg = lib.arm_config(config, arm, seed, num_train)
    print(f"== study arm {arm} (seed {seed}): {cfg.method}, {cfg.total_steps} steps", flush=True)
    summary = jobs.get("pretrain")(cfg, arm_wd)
    params, batch_stats, meta = checkpoint.load_encoder(arm_wd)
    enc = resnet.create_encoder(meta["arch"], stem=meta["stem"], dtype=dtype, conv=conv_lib.from_config(config.model))
    r = _score(_encode_fn(enc), {"params": params, "batch_stats": batch_stats}, arrays, config, seed)
    r.update(
        seed=seed,
        pretrain_s=summary["train_seconds"],
        compile_s=summary["compile_seconds"],
        steps=summary["step"],
        images_per_s=2 * cfg.batch_size * summary["step"] / max(summary["train_seconds"], 1e-9),
        refused_steps=int(summary.get("nonfinite_steps", 0) or 0),
        last_window=lib.last_window(os.path.join(arm_wd, "metrics.jsonl"), cfg.total_steps, cfg.log_every),
        optimizer=cfg.optimizer.to_dict(),
    )
    for key in ("swimdiff", "loss", "moco"):
        if key in cfg:
            r[key] = cfg[key].to_dict()  # every setting of the arm's loss terms, overrides included
    return r


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    seeds, arms = validate(config)
    with workdir_lib.Workdir(workdir, lib.workdir_config(config)):
        config = ml_collections.ConfigDict(config.to_dict())  # the caller's config stays as given
        data = config.data  # complete: configs.common.data_config
        if data.device_resident and data.folder and not data.cache_dir:
            data.cache_dir = os.path.join(os.path.abspath(workdir), "cache")
        ecfg = config.eval
        x_tr, y_tr = pipeline.eval_arrays(
            data, ecfg.train_split, limit=ecfg.max_train, image_size=data.image_size, split_key="eval.train_split"
        )
        x_te, y_te = pipeline.eval_arrays(
            data, ecfg.test_split, limit=ecfg.max_test, image_size=data.image_size, split_key="eval.test_split"
        )
        num_train = pipeline.num_records(data, data.train_split)  # the probe may see a subset
        arrays = (x_tr, y_tr, x_te, y_te)
        return _run_arms(config, workdir, data, arms, seeds, arrays, num_train, plots)


def _run_arms(config, workdir, data, arms, seeds, arrays, num_train, plots) -> dict:
    y_te = arrays[3]
    shared = lib.settings(config, data, num_train, len(y_te))
    results, not_started = lib.run_arms(
        config,
        workdir,
        arms,
        [{"seed": s} for s in seeds],
        run_one=lambda arm, unit, folder: _run_arm_seed(config, arm, unit["seed"], folder, arrays, num_train),
        payload=lambda arm, index, runs: lib.arm_payload(config, arm, index, runs, shared),
        file_name=lambda arm: f"study_{config.study.name}_{arm}.json",
        line=lambda arm, r: f"linear {r['linear']:.2%}  kNN {r['knn']:.2%}  ({r['pretrain_s']:.0f} s training)",
    )

    report = lib.write_report(
        workdir,
        config,
        seeds,
        results,
        not_started,
        lib.markdown_table,
        num_train=int(num_train),
        num_test=int(len(y_te)),
    )
    scored = {k: v for k, v in results.items() if v.get("linear_mean") is not None}  # failed arms have none
    if scored:
        plots.bars(
            {k: 100 * v["linear_mean"] for k, v in scored.items()},
            os.path.join(workdir, "study.png"),
            errors={k: 100 * (v["linear_sd"] or 0.0) for k, v in scored.items()},
            ylabel="linear probe top-1 (%)",
            title=f"{data.name}: linear probe on frozen features",
        )
    return report
