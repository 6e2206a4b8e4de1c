"""The EuroSAT study: pretrain every method the same way, evaluate every encoder the same way.

Job ``study_eurosat`` (``configs/study_eurosat.py``). For each arm (method + overrides) and
seed: build the arm's pretraining config from its own config file plus the study's shared
settings (encoder, epochs, batch, optimizer, data), pretrain in ``<workdir>/<arm>_s<seed>``
with :func:`rsjax.train.train_and_evaluate`, then extract frozen features of the train and
test splits and score a linear probe and kNN on the test split. Arms already finished (their
``arm_result.json`` exists) are not rerun, so an interrupted study continues where it
stopped. Writes ``study.json``, ``study.md`` (method x metric, mean +- std over seeds) and
``study.png``.

Results as data: as soon as an arm (all its seeds) ends, its result is written as strict JSON
with :func:`rsjax.results.save` to ``<out_dir>/study_<study.name>_<arm>.json`` (``out_dir`` =
``config.study.out_dir``, default ``<workdir>/results``; a GPU call points it at ``$OUT`` so a
run cut off mid-study still returns every finished arm). The payload carries the arm's per-seed
linear/kNN top-1, pretraining seconds (compile excluded), compile seconds, the arm's wall
seconds (compile + pretraining + features + probes) and :func:`rsjax.results.provenance`
(command, commit, date, device). ``python -m rsjax.results`` renders the README table from
``results/study_*.json``. ``config.study.time_budget_s`` > 0 starts no new arm after that many
seconds, for time-boxed device calls; the rerun resumes at the next arm.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time

import jax
import ml_collections
import numpy as np

from rsjax import results as results_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# config.study keys that may differ between the calls of one study (see run()).
STUDY_MUTABLE_KEYS = ("arms", "out_dir", "time_budget_s", "stop_after_arm")


def _load_config_module(name: str):
    path = os.path.join(REPO, "configs", f"{name}.py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} for the study arm is missing")
    spec = importlib.util.spec_from_file_location(f"rsjax_cfg_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _set(c, dotted: str, value):
    *parents, last = dotted.split(".")
    for p in parents:
        c = c[p]
    c[last] = value


def arm_config(study: ml_collections.ConfigDict, arm: str, seed: int, num_train: int) -> ml_collections.ConfigDict:
    arms = _load_config_module("study_eurosat").ARMS
    if arm not in arms:
        raise ValueError(f"config.study.arms: unknown arm {arm!r}; known: {sorted(arms)}")
    file, overrides = arms[arm]
    c = _load_config_module(file).get_config(None)
    c.seed = seed
    c.dtype = study.dtype
    c.batch_size = study.batch_size
    c.model.name = study.model.name
    c.model.stem = study.model.stem
    c.model.in_channels = study.model.in_channels
    c.model.proj_hidden_dim = 512
    c.model.proj_dim = 128
    c.loss.temperature = study.temperature
    steps_per_epoch = max(1, num_train // study.batch_size)
    c.total_steps = int(study.get("max_steps_per_arm", 0) or study.epochs * steps_per_epoch)
    c.optimizer.name = study.optimizer.name
    c.optimizer.lr = study.optimizer.lr
    c.optimizer.weight_decay = study.optimizer.weight_decay
    c.optimizer.warmup_steps = int(study.optimizer.warmup_fraction * c.total_steps)
    c.data = ml_collections.ConfigDict(study.data.to_dict())
    if c.method == "swimdiff":
        c.data.crops_as_scenes = study.swimdiff_crops_as_scenes
        c.data.scenes_per_batch = 0
        c.swimdiff.diffusion_size = study.get("swimdiff_diffusion_size", 0)
        c.swimdiff.denoiser_channels = study.get("swimdiff_denoiser_channels", c.swimdiff.denoiser_channels)
    if "moco" in c:
        c.moco.queue_size = 16 * study.batch_size
    c.eval.enabled = False
    c.log_every = max(1, min(50, c.total_steps // 4))
    c.checkpoint_every = c.total_steps
    for k, v in overrides.items():
        _set(c, k, v)
    if c.method == "swimdiff" and float(c.swimdiff.lambda_d):
        # The encoder trains at the lr every arm shares; the GroupNorm UNet denoiser diverges under
        # SGD at that lr (measured: L_D 1.2 -> 13,265 -> NaN within 10 steps at lr 0.3), so it gets
        # a fraction of it (DDPM itself trains its UNet with Adam at 2e-4).
        scale = float(study.get("swimdiff_denoiser_lr_scale", 1.0))
        if scale != 1.0:
            c.optimizer.module_lr_scale = f"denoiser={scale}"
    return c


def _encoder_eval(encode_fn, x_tr, y_tr, x_te, y_te, ecfg, seed):
    from rsjax.evaluate import classification as cls

    f_tr = cls.extract_features(encode_fn, x_tr, batch_size=ecfg.batch_size, desc="features train")
    f_te = cls.extract_features(encode_fn, x_te, batch_size=ecfg.batch_size, desc="features test")
    k = int(max(y_tr.max(), y_te.max()) + 1)
    knn = cls.knn_predict(f_tr, y_tr, f_te, num_classes=k, k=ecfg.knn_k, temperature=ecfg.knn_temperature)
    lin = cls.linear_probe(f_tr, y_tr, f_te, num_classes=k, epochs=ecfg.linear_epochs, seed=seed)
    return {"linear": cls.accuracy(lin, y_te), "knn": cls.accuracy(knn, y_te)}


def _out_dirs(config, workdir: str) -> list[str]:
    """Where each finished arm's JSON goes: ``<workdir>/results`` (the resume record) first,
    then ``config.study.out_dir`` when set (e.g. ``$OUT`` of a device call)."""
    dirs = [os.path.join(workdir, "results")]
    extra = config.study.get("out_dir", "")
    if extra and os.path.abspath(extra) != os.path.abspath(dirs[0]):
        dirs.append(extra)
    return dirs


def _settings(config, data, num_train: int, num_test: int) -> dict:
    """What every arm of this study shares, recorded beside each arm's numbers."""
    return {
        "dataset": data.name, "model": config.model.name, "image_size": int(data.image_size),
        "epochs": config.epochs, "max_steps_per_arm": int(config.get("max_steps_per_arm", 0) or 0),
        "batch_size": config.batch_size, "dtype": config.dtype, "optimizer": config.optimizer.name,
        "lr": config.optimizer.lr, "num_train": int(num_train), "num_test": int(num_test),
        "eval_max_train": int(config.eval.max_train or 0), "knn_k": config.eval.knn_k,
        "knn_temperature": config.eval.knn_temperature, "linear_epochs": config.eval.linear_epochs,
    }


def _arm_payload(config, arm: str, arm_index: int, runs: list[dict], settings: dict) -> dict:
    """One arm's result record (``study_<name>_<arm>.json``; rendered by rsjax.results)."""
    if arm == "random_init":
        method, overrides = None, {}
    else:
        file, overrides = _load_config_module("study_eurosat").ARMS[arm]
        method = file
    p = {"format": "rsjax.study_arm/v1", "setting": config.study.name, "arm": arm, "arm_index": arm_index,
         "config_file": method, "overrides": dict(overrides), "settings": settings, "runs": runs}
    for m in ("linear", "knn"):
        vals = [r[m] for r in runs]
        p[f"{m}_mean"], p[f"{m}_std"] = float(np.mean(vals)), float(np.std(vals))
    p["pretrain_s"] = float(np.mean([r["pretrain_s"] for r in runs]))
    p["compile_s"] = float(np.mean([r.get("compile_s") or 0.0 for r in runs]))
    p["wall_s"] = float(sum(r.get("wall_s") or 0.0 for r in runs))
    p["provenance"] = results_lib.provenance()
    return p


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    from rsjax import checkpoint, plots, train
    from rsjax.data import registry
    from rsjax.data.defaults import default_data_config
    from rsjax.models import resnet

    from rsjax import workdir as workdir_lib

    # config.json; refuses the workdir of another study. Which arms run, where their JSON also
    # goes and the time box may change between the calls of one study (they change no result).
    wd_dict = config.to_dict()
    for key in STUDY_MUTABLE_KEYS:
        wd_dict["study"].pop(key, None)
    workdir_lib.Workdir(workdir, ml_collections.ConfigDict(wd_dict))
    data = default_data_config()
    data.update(config.data.to_dict())
    if data.device_resident and data.manual_dir and not data.cache_dir:
        data.cache_dir = os.path.join(os.path.abspath(workdir), "cache")
    config.unlock() if hasattr(config, "unlock") else None
    config.data = data
    info = registry.get_dataset_info(data.name)
    if len(info.bands) != config.model.in_channels:
        raise ValueError(f"config.model.in_channels={config.model.in_channels} but {data.name} has {len(info.bands)} bands")

    ecfg = config.eval
    x_tr, y_tr = train.load_eval_arrays(data, data.train_split, ecfg.max_train or None)
    x_te, y_te = train.load_eval_arrays(data, data.eval_split, ecfg.max_test or None)
    if data.device_resident and ecfg.max_train:  # the probe saw a subset: count the whole split
        from rsjax.data import device_data

        num_train = device_data.load_raw(data, data.train_split)[0].shape[0]
    else:
        num_train = len(y_tr)
    if x_tr.shape[1] != data.image_size:
        from rsjax.data import augment

        x_tr = np.stack([augment.resize(x, data.image_size) for x in x_tr])
        x_te = np.stack([augment.resize(x, data.image_size) for x in x_te])

    seeds = [int(s) for s in str(config.study.seeds).split(",") if s.strip()]
    arms = [a.strip() for a in config.study.arms.split(",") if a.strip()]
    if config.study.include_random_init and "random_init" not in arms:
        arms = ["random_init", *arms]
    known = _load_config_module("study_eurosat").ARMS
    unknown = [a for a in arms if a != "random_init" and a not in known]
    if unknown:  # before any data is loaded or any arm is trained
        raise ValueError(f"config.study.arms: unknown arm(s) {unknown}; known: random_init, {', '.join(known)}")
    results: dict[str, dict] = {}
    dtype = {"bfloat16": jax.numpy.bfloat16}.get(config.dtype, jax.numpy.float32)
    out_dirs = _out_dirs(config, workdir)
    settings = _settings(config, data, num_train, len(y_te))
    t_study = time.time()
    not_started: list[str] = []
    budget = float(config.study.get("time_budget_s", 0) or 0)

    for arm_index, arm in enumerate(arms):
        name = f"study_{config.study.name}_{arm}.json"
        finished = os.path.join(out_dirs[0], name)
        if os.path.exists(finished):  # this arm (all seeds) ended in an earlier run: keep its record
            with open(finished) as f:
                payload = json.load(f)
            if sorted(r["seed"] for r in payload["runs"]) == sorted(seeds):
                for d in out_dirs[1:]:
                    results_lib.save(payload, os.path.join(d, name))
                results[arm] = payload
                continue
        if budget and time.time() - t_study > budget:
            not_started = arms[arm_index:]
            print(f"== study: time_budget_s={budget:.0f} spent; not started: "
                  f"{', '.join(arms[arm_index:])} (rerun to continue)", flush=True)
            break
        runs = []
        for seed in seeds:
            arm_wd = os.path.join(workdir, f"{arm}_s{seed}")
            done = os.path.join(arm_wd, "arm_result.json")
            if os.path.exists(done):
                with open(done) as f:
                    runs.append(json.load(f))
                continue
            t_arm = time.time()
            _print_total_eta(arms, arm_index, results, t_study, config, num_train)
            if arm == "random_init":  # the floor: the same encoder, untrained
                enc = resnet.create_encoder(config.model.name, stem=config.model.stem, dtype=dtype)
                variables = jax.jit(lambda x, s=seed: enc.init(jax.random.PRNGKey(s), x, train=False))(x_tr[:2])
                fn = jax.jit(lambda x, v=variables: enc.apply(v, x, train=False))
                r = _encoder_eval(fn, x_tr, y_tr, x_te, y_te, ecfg, seed)
                r.update(seed=seed, pretrain_s=0.0, compile_s=0.0, steps=0, images_per_s=None)
            else:
                cfg = arm_config(config, arm, seed, num_train)
                print(f"== study arm {arm} (seed {seed}): {cfg.method}, {cfg.total_steps} steps", flush=True)
                summary = train.train_and_evaluate(cfg, arm_wd)
                params, batch_stats, meta = checkpoint.load_encoder(arm_wd)
                enc = resnet.create_encoder(meta["arch"], stem=meta["stem"], dtype=dtype)
                variables = {"params": params, "batch_stats": batch_stats}
                fn = jax.jit(lambda x, v=variables: enc.apply(v, x, train=False))
                r = _encoder_eval(fn, x_tr, y_tr, x_te, y_te, ecfg, seed)
                r.update(seed=seed, pretrain_s=summary["train_seconds"], compile_s=summary["compile_seconds"],
                         steps=summary["step"],
                         images_per_s=2 * cfg.batch_size * summary["step"] / max(summary["train_seconds"], 1e-9))
            r["wall_s"] = time.time() - t_arm
            os.makedirs(arm_wd, exist_ok=True)
            results_lib.save(r, done)
            runs.append(r)
            print(f"   {arm} s{seed}: linear {r['linear']:.2%}  kNN {r['knn']:.2%}  "
                  f"({r['pretrain_s']:.0f} s training, {r['wall_s']:.0f} s wall)", flush=True)
        payload = _arm_payload(config, arm, arm_index, runs, settings)
        for d in out_dirs:
            results_lib.save(payload, os.path.join(d, name))
        results[arm] = payload
        if config.study.stop_after_arm and arm == config.study.stop_after_arm:
            break

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
        "seeds": seeds,
        "num_train": int(num_train),
        "num_test": int(len(y_te)),
        "results": results,
        "not_started": not_started,
        "config": json.loads(config.to_json_best_effort()),
    }
    results_lib.save(report, os.path.join(workdir, "study.json"))
    md = markdown_table(report)
    with open(os.path.join(workdir, "study.md"), "w") as f:
        f.write(md)
    if not results:
        print(md, flush=True)
        return report
    plots.bars({k: 100 * v["linear_mean"] for k, v in results.items()}, os.path.join(workdir, "study.png"),
               errors={k: 100 * v["linear_std"] for k, v in results.items()}, ylabel="linear probe top-1 (%)",
               title=f"{data.name}: linear probe on frozen features")
    print(md, flush=True)
    return report


def _print_total_eta(arms, arm_index, results, t_study, config, num_train) -> None:
    """One line before each arm: elapsed time and a rough total ETA.

    The estimate charges every remaining trained arm the mean wall seconds per step of the
    arms finished in this run (their compile and evaluation included); before the first trained
    arm has finished it says so instead of guessing.
    """
    done = [r for a, r in results.items() if a != "random_init"]
    per_step = [run["wall_s"] / max(run["steps"], 1) for r in done for run in r["runs"]
                if run.get("steps") and run.get("wall_s")]
    elapsed = time.time() - t_study
    msg = f"== study: arm {arm_index + 1}/{len(arms)} ({arms[arm_index]}), {elapsed / 60:.1f} min elapsed"
    if per_step:
        steps = int(config.get("max_steps_per_arm", 0) or config.epochs * max(1, num_train // config.batch_size))
        left = sum(1 for a in arms[arm_index:] if a != "random_init") * len(str(config.study.seeds).split(","))
        msg += f", about {left * steps * float(np.mean(per_step)) / 60:.0f} min left (rough: mean s/step so far)"
    print(msg, flush=True)


def markdown_table(report: dict) -> str:
    lines = [f"{report['date']}, {report['device']}, seeds {report['seeds']}, "
             f"{report['num_train']} train / {report['num_test']} test",
             "", "| method | linear top-1 | kNN top-1 | pretrain s |", "|---|---|---|---|"]
    for name, r in report["results"].items():
        pm = lambda m: f"{100 * r[m + '_mean']:.1f} ± {100 * r[m + '_std']:.1f}"  # noqa: E731
        lines.append(f"| {name} | {pm('linear')} | {pm('knn')} | {r['pretrain_s']:.0f} |")
    return "\n".join(lines) + "\n"
