"""The classification evaluation's library part, shared by the classification and multi-label
jobs (:mod:`rsjax.jobs.eval_classification`, :mod:`rsjax.jobs.eval_multilabel`): config checks,
the task, image preparation (the ``normalize`` op), the data of either input, and fine-tuning on
the one training loop. The protocol is in the classification job's docstring."""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from rsjax import errors, evaluate, optim, train, trainable
from rsjax import sharding as shd
from rsjax.data import folders, pipeline, registry
from rsjax.data.arrays import ArrayIterator
from rsjax.data.defaults import check_complete
from rsjax.tasks import ClassifierTask


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------
def complete(config: ml_collections.ConfigDict) -> None:
    """Fills ``config.finetune.optimizer`` with every key of :func:`rsjax.optim.default_block`
    (the configs give only what differs), so config.json and the checkpoints hold the whole block."""
    with config.unlocked():
        ft = config.finetune
        given = ft.optimizer.to_dict() if "optimizer" in ft else {}
        ft.optimizer = optim.default_block(**given)


def validate(config: ml_collections.ConfigDict, *, multilabel: bool = False, task_cls: Any = None):
    """Completes and checks the whole config before anything is written (ConfigError naming the
    key). Returns the fine-tune :class:`rsjax.train.Phase` (None without fine-tuning)."""
    with errors.config_errors():
        complete(config)
        ec, ft = config.eval, config.finetune

        need = errors.require
        need(int(ec.batch_size) > 0, "eval.batch_size", ec.batch_size, "must be > 0")
        evaluate.check_feature_evaluators(
            ec.get("evaluators", ("linear_multilabel",) if multilabel else ("knn", "linear")), multilabel=multilabel
        )
        need(
            0 < float(ec.get("label_fraction", 1.0)) <= 1,
            "eval.label_fraction",
            ec.get("label_fraction"),
            "must be in (0, 1]",
        )
        for key in ("max_train", "max_test"):
            need(int(ec.get(key, 0) or 0) >= 0, f"eval.{key}", ec.get(key), "must be >= 0 (0 = all)")
        if not multilabel:
            need(int(ec.knn_k) > 0, "eval.knn_k", ec.knn_k, "must be > 0")
            need(float(ec.knn_temperature) > 0, "eval.knn_temperature", ec.knn_temperature, "must be > 0")
        need(int(ec.linear_epochs) > 0, "eval.linear_epochs", ec.linear_epochs, "must be > 0")
        need(float(ec.get("linear_lr", 1e-2)) > 0, "eval.linear_lr", ec.get("linear_lr"), "must be > 0")
        need(int(ft.total_steps) >= 0, "finetune.total_steps", ft.total_steps, "must be >= 0 (0 = no fine-tune)")
        phase = None
        if int(ft.total_steps) > 0:
            phase = train.Phase.from_config(config, ft, name="finetune", desc="fine-tune", where="finetune")
            phase.validate()
        else:
            optim.validate(ft.optimizer, "finetune.optimizer")
        check_complete(config.data)  # read directly below: unknown, former or missing keys, named
        d = config.data
        folder = d.folder
        if folder and not os.path.isdir(folder):
            raise errors.ConfigError(f"config.data.folder={folder!r} is not a directory (a <Class>/<image> tree)")
        info = registry.data_info(config.data)  # unknown data.name / builder_config -> error naming it
        if info.bands:
            registry.check_bands(config, len(info.bands), f"dataset {d.name!r}")
        trainable.compute_dtype(config)
    return phase


def make_task(config, *, num_outputs: int, multilabel: bool, loaded=None):
    with errors.config_errors():  # unknown model name / stem
        return ClassifierTask(
            config,
            num_outputs=num_outputs,
            multilabel=multilabel,
            image_size=int(config.data.image_size or 32),  # 0 = stored size
            optimizer=config.finetune.optimizer,
            pretrained=loaded,
        )


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def load_data(config):
    """``(x_train, y_train, x_test, y_test, class_names)``: float32 images prepared by the
    ``data.pp_eval`` recipe (:func:`rsjax.data.pipeline.eval_arrays`), int32 labels."""
    d = config.data
    info = registry.data_info(config.data)
    names = list(info.class_names)
    if d.folder:
        names = folders.class_folder_files(d.folder)[0]
        if info.class_names and tuple(names) != tuple(info.class_names):
            raise errors.DataError(
                f"class folders {names} in {d.folder} differ from the classes of "
                f"{d.name!r} {list(info.class_names)} (config.data.name)"
            )
    ec = config.eval
    out = []
    for role in ("train", "test"):
        x, y = pipeline.eval_arrays(
            d,
            ec[f"{role}_split"],
            limit=ec.get(f"max_{role}", 0),
            image_size=d.image_size,
            split_key=f"eval.{role}_split",
        )
        out += [x, y]
    return (*out, list(names))


# --------------------------------------------------------------------------------------
# Shared with eval_multilabel
# --------------------------------------------------------------------------------------
def init_variables(task, seed: int) -> dict:
    """The task's initial ``{"params", "batch_stats"}`` (pretrained encoder plugged in) on the
    host: the same ``init(PRNGKey(seed), sample_batch(2))`` the fine-tune starts from."""
    params, batch_stats, _ = jax.jit(lambda k, b: task.init(k, b))(jax.random.PRNGKey(seed), task.sample_batch(2))
    return jax.device_get({"params": params, "batch_stats": batch_stats})


def encode_fn(task):
    """``(variables, x) -> float32 [B, F]``: the task's frozen eval-mode encoder features."""
    return lambda v, x: task.encode(v["params"], v["batch_stats"], x)


def finetune(config, wd, task, phase, x_tr, y_tr, x_te, mesh):
    """Fine-tunes ``task`` on ``(x_tr, y_tr)`` (phase ``finetune`` of the one loop) and returns
    ``(test logits [N, K] or None when stopped early, FitResult)``."""
    it = ArrayIterator(
        {"image": x_tr, "label": y_tr},
        phase.batch_size,
        phase.seed,
        source="the fine-tune's training images: config.data, eval.max_train, eval.label_fraction",
    )
    result = train.fit(task, it, phase, wd, config, mesh=mesh)
    if not result.finished:
        return None, result
    variables = {"params": result.state["params"], "batch_stats": result.state["batch_stats"]}
    logits = shd.batched_predict(
        lambda v, b: task.predict(v["params"], v["batch_stats"], b),
        variables,
        {"image": x_te},
        batch_size=int(config.eval.batch_size),
        desc="fine-tune test",
        mesh=mesh,
    )
    return np.asarray(logits, np.float32), result
