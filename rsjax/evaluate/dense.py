"""The shape shared by the dense downstream jobs (segmentation, change detection).

validate config -> check the pretrained encoder -> open the workdir -> read the splits ->
train the task on the one loop (``rsjax.train.fit``: resume, SIGTERM, non-finite refusal) ->
predict whole test images (``rsjax.sharding.batched_predict``) -> score, pictures, report.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np

from rsjax import errors, train
from rsjax import sharding as shd
from rsjax import workdir as workdir_lib
from rsjax.data import arrays as arrays_lib
from rsjax.data import ops, registry
from rsjax.data.defaults import check_complete
from rsjax.evaluate import encoders
from rsjax.evaluate.classification import warn_if_exploding


def normalizer(info: registry.DatasetInfo, image_keys, recipe: str = ops.DEFAULT_PP_DENSE) -> Callable[[dict], dict]:
    """Host batch transform: the dense recipe ``recipe`` (``config.data.pp_dense``) on each of
    ``image_keys`` (stored pixel values -> standardized float32), int32 for every other array
    (masks, change maps)."""
    keys, pipe, ctx = tuple(image_keys), ops.dense_recipe(recipe, "numpy"), ops.Context(info=info)

    def transform(batch):
        out = pipe.on_keys(batch, keys, ctx)
        return {k: v if k in keys else v.astype(np.int32) for k, v in out.items()}

    return transform


def device_normalizer(
    info: registry.DatasetInfo, image_keys, recipe: str = ops.DEFAULT_PP_DENSE
) -> Callable[[dict], dict]:
    """The same recipe's jax backend, inside a jitted function (test images stay in stored units
    on the host)."""
    keys, pipe, ctx = tuple(image_keys), ops.dense_recipe(recipe, "jax"), ops.Context(info=info)
    return lambda batch: pipe.on_keys(batch, keys, ctx)


def validate(config, make_task: Callable) -> train.Phase:
    """Whole-config checks before anything is written (ConfigError naming the key)."""
    with errors.config_errors():
        phase = train.Phase.from_config(config, desc=config.job)
        phase.validate()
        check_complete(config.data)  # read directly below: unknown, former or missing keys, named
        registry.data_info(config.data)
        ops.dense_recipe(config.data.pp_dense, "numpy")  # an op that resizes or draws, named
        if int(config.data.crop_size) < 0:
            raise errors.ConfigError(f"config.data.crop_size={config.data.crop_size}: must be >= 0 (0 = whole images)")
        make_task(None, None)  # builds the model: unknown decoder, classes, dice reduction, freeze pattern
    return phase


def warn_if_diverged(wd, variables) -> bool:
    """Before evaluating: warns when the last logged training losses (``metrics.jsonl``) or the
    trained weights are non-finite or larger than 1e6 (``classification.warn_if_exploding``).
    Steps the loop refused (``events.jsonl``, kind ``nonfinite``) are left out: their update was
    never applied, so their logged null loss says nothing about the weights evaluated."""
    refused = {e.get("step") for e in wd.read_events() if e.get("kind") == "nonfinite"}
    losses = [r.get("loss") for r in wd.read_metrics() if "loss" in r and r.get("step") not in refused][-3:]
    warned = warn_if_exploding(losses, f"the last logged training losses ({wd.metrics_path})")
    leaves = [np.asarray(x) for x in jax.tree.leaves(variables)]
    norms = [
        float(np.linalg.norm(np.where(np.isfinite(x), x, 0.0))) if np.isfinite(x).all() else float("nan")
        for x in leaves
        if np.issubdtype(x.dtype, np.floating)
    ]
    return warn_if_exploding(norms, "the trained weights (per-tensor norms)") or warned


def run(
    config,
    workdir: str,
    *,
    make_task: Callable,
    load_data: Callable,
    prepare: Callable,
    image_keys,
    report: Callable,
    info: registry.DatasetInfo | None = None,
) -> dict:
    """``make_task(pretrained, train)`` -> task (``train``: the prepared training arrays, which a
    task may fit a constant to, e.g. change detection's ``pos_weight``; None while validating);
    ``load_data(config)`` -> (train, test) raw arrays;
    ``prepare(train, test, info)`` -> (train, test) checked, labels remapped; ``report(wd, task,
    test, pred, info, summary)`` -> metrics (scores, pictures, eval_report.json); ``info``: the
    registry entry of the images (default: ``config.data``'s)."""
    t0 = time.time()
    phase = validate(config, make_task)
    loaded = encoders.load_pretrained(config)
    info = info or registry.data_info(config.data)
    recipe = config.data.pp_dense
    with workdir_lib.Workdir(workdir, config) as wd:
        train_arrays, test_arrays = prepare(*load_data(config), info)
        task = make_task(loaded, train_arrays)
        it = arrays_lib.ArrayIterator(
            train_arrays,
            phase.batch_size,
            phase.seed,
            crop=int(config.data.crop_size),
            transform=normalizer(info, image_keys, recipe),
            source="the training split read from config.data",
        )
        result = train.fit(task, it, phase, wd, config)
        if not result.finished:
            return {**result.summary, "finished": False}
        done = wd.finished_report(result)
        if done is not None:
            return done
        variables = jax.device_get({"params": result.state["params"], "batch_stats": result.state["batch_stats"]})
        warn_if_diverged(wd, variables)

        on_device = device_normalizer(info, image_keys, recipe)

        def fn(v, batch):
            return task.predict(v["params"], v["batch_stats"], on_device(batch))

        inputs = {k: test_arrays[k] for k in image_keys}
        pred = shd.batched_predict(fn, variables, inputs, batch_size=int(config.eval.batch_size), desc="predict test")
        summary = {
            "train_steps": int(phase.total_steps),
            "num_train": int(len(next(iter(train_arrays.values())))),
            "encoder": encoders.pretrained_summary(loaded),
            "nonfinite_steps": result.summary["nonfinite_steps"],
        }
        metrics = report(wd, task, test_arrays, np.asarray(pred), info, summary)
        metrics["seconds"] = time.time() - t0
        return metrics
