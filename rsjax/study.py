"""The library part of the studies (:mod:`rsjax.jobs.study_eurosat`, :mod:`rsjax.jobs.study_dubai`,
:mod:`rsjax.jobs.study_oscd`): the plan, the one resumable loop, arm configs, run records, the
EuroSAT table, and FALSE's firing on real batches (:func:`false_firing`).

Shared by the jobs: :func:`plan` (seeds and arms from ``config.study``), :func:`workdir_config`
(config.json without the keys a continuation may change), :func:`compilation_cache`,
:func:`arm_config` (an arm's pretraining config: ``config.arms.<arm>``, which the study config
builds with ``configs.common.add_arms`` from the arm's config module plus the study's shared
settings, and the seed and step counts), :func:`last_window` (the mechanism's evidence from
``metrics.jsonl``) and :func:`run_arms`: every arm, then every run of it (a seed, or a fold and a
seed) in ``<workdir>/<arm>_s<seed>`` / ``<arm>_f<fold>_s<seed>``; a run whose ``arm_result.json``
exists is not rerun, so an interrupted study continues where it stopped.

Results as data: as soon as an arm (all its runs) ends, its result is written as strict JSON
with :func:`rsjax.results.save` to ``<workdir>/results`` and ``config.study.out_dir`` when set (a
GPU call points it at ``$OUT`` so a run cut off mid-study still returns every finished arm), with
:func:`rsjax.results.provenance` (command, commit, date, device); ``python -m rsjax.results``
renders the tables from ``results/study_*.json`` (EuroSAT: :func:`arm_payload`, :func:`settings`,
:func:`markdown_table` here), ``results/dubai_*.json`` and ``results/oscd_*.json`` (their jobs'
payloads). ``config.study.time_budget_s`` > 0
starts no new run after that many seconds, for time-boxed calls; the rerun resumes there.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rsjax import errors, train, trainables
from rsjax import results as results_lib
from rsjax import sharding as shd
from rsjax import workdir as workdir_lib
from rsjax.data import input as input_lib
from rsjax.methods import false as false_lib

# config.study keys that may differ between the calls of one study (they change no result).
STUDY_MUTABLE_KEYS = ("arms", "out_dir", "time_budget_s", "stop_after_arm", "comparisons", "picture_city")


def parse_seeds(config) -> list[int]:
    """``config.study.seeds`` (comma-separated integers) as a list; ConfigError naming the key."""
    try:
        seeds = [int(s) for s in str(config.study.seeds).split(",") if s.strip()]
    except ValueError:
        raise errors.ConfigError(
            f"config.study.seeds={config.study.seeds!r}: expected comma-separated integers"
        ) from None
    if not seeds:
        raise errors.ConfigError(f"config.study.seeds={config.study.seeds!r}: no seed")
    return seeds


def workdir_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What a study's config.json holds: the config without the ``study`` keys that may change
    between the calls of one study (:data:`STUDY_MUTABLE_KEYS`), so that config.json refuses the
    workdir of another study but not the continuation of this one."""
    d = config.to_dict()
    for key in STUDY_MUTABLE_KEYS:
        d["study"].pop(key, None)
    return ml_collections.ConfigDict(d)


def arm_names(config) -> list[str]:
    """The arms the study config defines (``config.arms``, built by configs.common.add_arms)."""
    return list(config.arms.keys())


def plan(config) -> tuple[list[int], list[str]]:
    """``(seeds, arms)`` of ``config.study`` (``seeds``: comma-separated integers; ``arms``: a
    comma-separated subset of :func:`arm_names`, ``random_init`` first when
    ``include_random_init``). ConfigError naming the key, before anything is written."""
    with errors.config_errors():
        seeds = parse_seeds(config)
        arms = [a.strip() for a in str(config.study.arms).split(",") if a.strip()]
        if config.study.include_random_init and "random_init" not in arms:
            arms = ["random_init", *arms]
        known = arm_names(config)
        unknown = [a for a in arms if a != "random_init" and a not in known]
        if unknown:
            raise errors.ConfigError(
                f"config.study.arms: unknown arm(s) {unknown}; known: random_init, {', '.join(known)}"
            )
        if config.dtype not in ("float32", "bfloat16"):
            raise errors.ConfigError(f"config.dtype={config.dtype!r}: expected float32 or bfloat16")
    return seeds, arms


def arm_config(config: ml_collections.ConfigDict, arm: str, seed: int, num_train: int) -> ml_collections.ConfigDict:
    """The pretraining config of ``arm`` for ``seed``: ``config.arms.<arm>`` (built, with the
    study's shared settings, by the study config itself) plus what needs the split size or the
    seed: ``seed``, ``total_steps`` (``max_steps_per_arm``, else ``epochs`` x ``num_train //
    batch_size``), ``optimizer.warmup_steps`` (``optimizer.warmup_fraction`` of them),
    ``log_every`` (``arm_log_every`` when set) and ``checkpoint_every`` (one checkpoint, at the
    end), and the run-time
    ``data.cache_dir``."""
    if arm not in config.arms:
        raise ValueError(f"config.study.arms: unknown arm {arm!r}; known: {sorted(config.arms)}")
    c = ml_collections.ConfigDict(config.arms[arm].to_dict())
    c.seed = seed
    steps_per_epoch = max(1, num_train // config.batch_size)
    c.total_steps = int(config.max_steps_per_arm or config.epochs * steps_per_epoch)
    c.optimizer.warmup_steps = int(config.optimizer.warmup_fraction * c.total_steps)
    # >= 8 logged rows in the last 20 % of 840 steps; config.arm_log_every > 0 sets it (1: every step)
    c.log_every = int(config.get("arm_log_every", 0) or 0) or max(1, min(20, c.total_steps // 4))
    c.checkpoint_every = c.total_steps
    c.data.cache_dir = config.data.cache_dir  # set by the job for a device-resident class folder
    c.lock()
    return c


def out_dirs(config, workdir: str) -> list[str]:
    """Where each finished arm's JSON goes: ``<workdir>/results`` (the resume record) first,
    then ``config.study.out_dir`` when set (e.g. ``$OUT`` of a device call)."""
    dirs = [os.path.join(workdir, "results")]
    extra = config.study.get("out_dir", "")
    if extra and os.path.abspath(extra) != os.path.abspath(dirs[0]):
        dirs.append(extra)
    return dirs


def settings(config, data, num_train: int, num_test: int) -> dict:
    """What every arm of this study shares, recorded beside each arm's numbers."""
    return {
        "dataset": data.name,
        "model": config.model.name,
        "image_size": int(data.image_size),
        "epochs": config.epochs,
        "max_steps_per_arm": int(config.get("max_steps_per_arm", 0) or 0),
        "batch_size": config.batch_size,
        "dtype": config.dtype,
        "optimizer": config.optimizer.name,
        "lr": config.optimizer.lr,
        "num_train": int(num_train),
        "num_test": int(num_test),
        "eval_max_train": int(config.eval.max_train or 0),
        "knn_k": config.eval.knn_k,
        "knn_temperature": config.eval.knn_temperature,
        "linear_epochs": config.eval.linear_epochs,
    }


def comparisons(config) -> list[list[str]]:
    """``config.study.comparisons`` (``"a-b,c-d"``: first arm minus second) as ``[[a, b], ...]``."""
    return [c.strip().split("-", 1) for c in str(config.study.get("comparisons", "")).split(",") if "-" in c]


def arm_record(config, arm: str, arm_index: int, runs: list[dict], shared: dict, fmt: str) -> dict:
    """The fields every study's arm record starts with (format, setting, arm, its config module
    and overrides, the shared settings, the runs, the comparisons, the runs that failed)."""
    source = json.loads(config.arm_sources[arm]) if arm in config.get("arm_sources", {}) else {}
    return {
        "format": fmt,
        "setting": config.study.name,
        "arm": arm,
        "arm_index": arm_index,
        "config_file": source.get("config"),
        "overrides": dict(source.get("overrides", {})),
        "settings": shared,
        "runs": runs,
        "comparisons": comparisons(config),
        "errors": [
            {**{k: r[k] for k in ("fold", "seed") if k in r}, "error": r["error"]} for r in runs if "error" in r
        ],
    }


def mechanism(ok_runs: list[dict]) -> dict:
    """What the runs' training logged, over the finished runs: the last-window mean of every
    metric (:func:`last_window`) and the refused (non-finite) steps."""
    windows = [r["last_window"] for r in ok_runs if r.get("last_window")]
    keys = sorted({k for w in windows for k in w})
    return {
        "last_window_mean": {k: float(np.mean([w[k] for w in windows if k in w])) for k in keys},
        "refused_steps": int(sum(r.get("refused_steps", 0) for r in ok_runs)),
    }


def write_report(
    workdir: str, config, seeds: list[int], results: dict, not_started: list[str], markdown, **extra
) -> dict:
    """A study's ``study.json`` (date, device, seeds, ``extra``, the arm records, the arms not
    started, the config) and ``study.md`` (``markdown(report)``, also printed); returns the report."""
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
        "seeds": seeds,
        **extra,
        "results": results,
        "not_started": not_started,
        "config": json.loads(config.to_json_best_effort()),
    }
    results_lib.save(report, os.path.join(workdir, "study.json"))
    md = markdown(report)
    with open(os.path.join(workdir, "study.md"), "w") as f:
        f.write(md)
    print(md, flush=True)
    return report


def arm_payload(config, arm: str, arm_index: int, runs: list[dict], shared: dict) -> dict:
    """One arm's result record of the EuroSAT study (``study_<name>_<arm>.json``; rendered by rsjax.results)."""
    p = arm_record(config, arm, arm_index, runs, shared, "rsjax.study_arm/v2")
    ok = [r for r in runs if "error" not in r]
    for m in ("linear", "knn"):
        vals = [r[m] for r in ok]
        p[f"{m}_mean"] = float(np.mean(vals)) if vals else None
        p[f"{m}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None  # sample sd
    p.update(mechanism(ok))  # the mechanism, averaged over seeds
    p["pretrain_s"] = float(np.mean([r["pretrain_s"] for r in ok])) if ok else None
    p["compile_s"] = float(np.mean([r.get("compile_s") or 0.0 for r in ok])) if ok else None
    p["wall_s"] = float(sum(r.get("wall_s") or 0.0 for r in runs))
    p["provenance"] = results_lib.provenance()
    return p


# The last fraction of a run's steps whose logged metrics a run record averages.
WINDOW = 0.2


def last_window(metrics_path: str, total_steps: int, log_every: int = 0, fraction: float = WINDOW) -> dict:
    """Means of every metric ``metrics.jsonl`` logged in the last ``fraction`` of the run's steps
    (rows with ``step > (1 - fraction) * total_steps``; null values skipped): the loss terms,
    ``conditioning_gain``, ``grad_share_diffusion``, ``scene_false_negatives``, ... Also
    ``window_rows``, the number of logged rows averaged. With ``log_every`` > 0 only the rows of
    the logging cadence and the last step count: a row a stop forced off the cadence (a run
    stopped and resumed) would weigh its one step like a whole interval."""
    rows = [
        r
        for r in workdir_lib.read_jsonl(metrics_path)
        if r.get("step", 0) > (1 - fraction) * total_steps
        and (not log_every or r["step"] % log_every == 0 or r["step"] == total_steps)
    ]
    keys = sorted({k for r in rows for k in r if k != "step"})
    out: dict = {"window_rows": len(rows)}
    for k in keys:
        vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
        if vals:
            out[k] = float(np.mean(vals))
    return out


def compilation_cache(workdir: str) -> str:
    """Turns on JAX's persistent compilation cache in ``<workdir>/xla_cache`` unless one is set
    (``JAX_COMPILATION_CACHE_DIR``), and returns its folder. A study's runs compile the same
    programs again and again (each run builds its own step, every fine-tune the same programs);
    with the cache only the first run of each program compiles (a CPU change-detection run: 25 s
    -> 3 s). Call it before the first compilation of the process: JAX reads the setting when it
    first compiles."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), "xla_cache"))
    return jax.config.jax_compilation_cache_dir


def run_dir(workdir: str, arm: str, unit: dict) -> str:
    """``<workdir>/<arm>_<k><v>...``: one run's folder (``unit`` ``{"seed": 0}`` -> ``<arm>_s0``,
    ``{"fold": 1, "seed": 0}`` -> ``<arm>_f1_s0``; the first letter of each key)."""
    return os.path.join(workdir, arm + "".join(f"_{k[0]}{v}" for k, v in unit.items()))


def run_arms(
    config,
    workdir: str,
    arms: list[str],
    units: list[dict],
    *,
    run_one: Callable[[str, dict, str], dict],
    payload: Callable[[str, int, list[dict]], dict],
    file_name: Callable[[str], str],
    line: Callable[[str, dict], str],
) -> tuple[dict, list[str]]:
    """The one resumable loop of the studies: every arm, then every run ``unit`` of it (``{"seed": s}``
    for EuroSAT and Dubai, ``{"fold": k, "seed": s}`` for OSCD), each in its own :func:`run_dir`
    (``<arm>_s<seed>``, ``<arm>_f<fold>_s<seed>``).

    ``run_one(arm, unit, folder)`` -> the run's record (the unit's keys are added); it is saved as
    ``<folder>/arm_result.json`` and never rerun. When every unit of an arm has a record,
    ``payload(arm, arm_index, runs)`` (the arm's result) is written with :func:`rsjax.results.save`
    as ``file_name(arm)`` to every :func:`out_dirs`; an arm whose file already holds every unit is
    not looked at again (its file is copied to the other out dirs). A run that raises is recorded
    in the arm's file with its error (not in arm_result.json: delete the arm's file to retry it) and
    the next run starts. ``config.study.time_budget_s`` > 0: no run starts after that many
    seconds; ``config.study.stop_after_arm``: the loop ends after that arm. ``line(arm, record)``:
    the progress line of a finished run.

    Returns ``(results, not_started)``: ``{arm: payload}`` of the finished arms, and the arms
    left (unfinished or not started) when the budget ran out.
    """
    results: dict[str, dict] = {}
    dirs = out_dirs(config, workdir)
    t_study = time.time()
    budget = float(config.study.get("time_budget_s", 0) or 0)
    keys = [tuple(sorted(u.items())) for u in units]
    walls: list[float] = []  # wall seconds of the trained runs finished in this call (the ETA)
    for arm_index, arm in enumerate(arms):
        name = file_name(arm)
        finished = os.path.join(dirs[0], name)
        if os.path.exists(finished):  # this arm ended in an earlier call: keep its record
            with open(finished) as f:
                done = json.load(f)
            if sorted(tuple(sorted((k, r[k]) for k in units[0])) for r in done["runs"]) == sorted(keys):
                for d in dirs[1:]:
                    results_lib.save(done, os.path.join(d, name))
                results[arm] = done
                continue
        runs = []
        for unit in units:
            folder = run_dir(workdir, arm, unit)
            record = os.path.join(folder, "arm_result.json")
            if os.path.exists(record):
                with open(record) as f:
                    runs.append(json.load(f))
                continue
            elapsed = time.time() - t_study
            if budget and elapsed > budget:
                left = arms[arm_index:]
                print(
                    f"== study: time_budget_s={budget:.0f} spent; left: {', '.join(left)} (rerun to continue)",
                    flush=True,
                )
                return results, left
            todo = sum(a != "random_init" for a in arms[arm_index:]) * len(units) - (arm != "random_init") * len(runs)
            eta = f", about {todo * np.mean(walls) / 60:.0f} min left (mean run so far)" if walls else ""
            print(
                f"== study: {arm} {unit} (arm {arm_index + 1}/{len(arms)}), {elapsed / 60:.1f} min elapsed{eta}",
                flush=True,
            )
            t_run = time.time()
            try:
                r = {**run_one(arm, unit, folder), **unit}
            except Exception as e:  # noqa: BLE001 - one run's failure (non-finite loss, OOM) ends that run only
                r = {**unit, "error": f"{type(e).__name__}: {e}"[:1000], "wall_s": time.time() - t_run}
                runs.append(r)
                print(f"   {arm} {unit}: FAILED ({r['error'][:300]}); the next run starts", flush=True)
                continue
            r["wall_s"] = time.time() - t_run
            if arm != "random_init":
                walls.append(r["wall_s"])
            os.makedirs(folder, exist_ok=True)
            results_lib.save(r, record)
            runs.append(r)
            print(f"   {arm} {unit}: {line(arm, r)} ({r['wall_s']:.0f} s wall)", flush=True)
        p = payload(arm, arm_index, runs)
        for d in dirs:
            results_lib.save(p, os.path.join(d, name))
        results[arm] = p
        if config.study.stop_after_arm and arm == config.study.stop_after_arm:
            break
    return results, []


def markdown_table(report: dict) -> str:
    lines = [
        f"{report['date']}, {report['device']}, seeds {report['seeds']}, "
        f"{report['num_train']} train / {report['num_test']} test",
        "",
        "| method | linear top-1 | kNN top-1 | pretrain s |",
        "|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        if r.get("linear_mean") is None:  # every seed failed: say why
            lines.append(f"| {name} | failed: {'; '.join(e['error'][:80] for e in r.get('errors', []))} | | |")
            continue
        pm = lambda m: f"{100 * r[m + '_mean']:.1f}" + (f" ± {100 * r[m + '_sd']:.1f}" if r[m + "_sd"] else "")  # noqa: E731
        lines.append(f"| {name} | {pm('linear')} | {pm('knn')} | {r['pretrain_s']:.0f} |")
    return "\n".join(lines) + "\n"


# FNSD modes the firing report measures besides the configured one (rsjax.losses.false_nt_xent).
FIRING_MODES = ("vissl", "gate_then_pick", "per_anchor")


def false_firing(config, states: dict, *, thresholds, num_batches: int, modes=FIRING_MODES) -> dict:
    """Where FALSE's selection fires on real batches: ``num_batches`` batches of the pretraining
    data of ``config`` (a ``false`` config: its iterator and views, as its training draws them
    at steps 0, 1, ...), embedded by encoder + projector in training mode (batch statistics, as
    the step) with each of ``states`` (``name -> (params, batch_stats)``, or None: the
    initialisation of ``config.seed``), on the same batches.

    Returns per name ``{mode: {"threshold": [...], "false_calibrated": [...], "false_gated":
    [...]}}`` per FNSD mode of ``modes``, counts per batch averaged over the batches
    (:func:`rsjax.methods.false.firing`; the configured ``loss.alpha`` and ``loss.temperature``),
    and ``"cos_pos"``: the 0, 10, 50, 90 and 100 % quantiles of the batches' positive cosines
    (the gate compares them with the threshold)."""
    method = trainables.from_config(config)
    init = None
    variables = {}
    for name, st in states.items():
        if st is None and init is None:
            init = method.init(jax.random.PRNGKey(int(config.seed)), method.sample_batch(2))[:2]
        variables[name] = init if st is None else st
    it, transform = input_lib.make_iterator(config, shd.make_mesh())
    embed = jax.jit(lambda p, bs, x: method.embed(p, bs, x, train=True)[0])
    alpha, tau = float(config.loss.get("alpha", 1.0)), float(config.loss.temperature)
    rows = {name: {m: [] for m in modes} for name in variables}
    cosines = {name: [] for name in variables}
    root = jax.random.PRNGKey(int(config.seed))
    for step in range(int(num_batches)):
        batch = next(it)
        if transform is not None:  # the step's augment stream (rsjax.train.make_train_step)
            key = jax.random.fold_in(jax.random.fold_in(root, step), train.RNG_STREAMS.index("augment"))
            batch = transform(batch, key)
        b = batch["view1"].shape[0]
        x = jnp.concatenate([jnp.asarray(batch["view1"]), jnp.asarray(batch["view2"])])
        for name, (params, batch_stats) in variables.items():
            z = embed(params, batch_stats, x)
            z1, z2 = z[:b], z[b:]
            n1, n2 = (np.asarray(v) / np.linalg.norm(np.asarray(v), axis=-1, keepdims=True) for v in (z1, z2))
            cosines[name].append(np.sum(n1 * n2, axis=-1))
            for m in modes:
                rows[name][m].append(
                    false_lib.firing(z1, z2, thresholds=thresholds, temperature=tau, alpha=alpha, fnsd_mode=m)
                )
    out = {}
    for name in variables:
        o: dict = {
            "batches": int(num_batches),
            "batch_size": int(config.batch_size),
            "alpha": alpha,
            "temperature": tau,
        }
        for m, rs in rows[name].items():
            o[m] = {
                "threshold": [float(t) for t in thresholds],
                **{
                    k: [float(np.mean([r[k][i] for r in rs])) for i in range(len(thresholds))]
                    for k in ("false_calibrated", "false_gated")
                },
            }
        cos = np.concatenate(cosines[name]) if cosines[name] else np.zeros(0)
        o["cos_pos"] = {f"q{q}": float(np.percentile(cos, q)) for q in (0, 10, 50, 90, 100)} if len(cos) else {}
        out[name] = o
    return out
