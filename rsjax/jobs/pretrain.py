"""Pretraining job (``config.job = "pretrain"``, the default): an SSL method on the one loop,
then kNN / linear-probe evaluation of the encoder on the dataset's labels.

Run::

    python -m rsjax.main --config=configs/swimdiff.py --workdir=runs/swimdiff
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from rsjax import errors, evaluate, train, trainables
from rsjax import sharding as shd
from rsjax import workdir as workdir_lib
from rsjax.data import input as input_lib
from rsjax.data import pipeline, registry
from rsjax.evaluate import classification as cls


def validate(config: ml_collections.ConfigDict):
    """The whole config, before anything is written: loop and optimizer keys, method, model,
    data keys and ranges, bands. Returns ``(method, phase)``."""
    with errors.config_errors():
        phase = train.Phase.from_config(config, desc=str(config.method))
        phase.validate()
        if "loss" in config and "temperature" in config.loss and not config.loss.temperature > 0:
            raise errors.ConfigError(f"config.loss.temperature={config.loss.temperature!r}: must be > 0")
        if not config.model.in_channels > 0:
            raise errors.ConfigError(f"config.model.in_channels={config.model.in_channels!r}: must be > 0")
        input_lib.validate(config)
        registry.check_bands(config)
        if config.get("eval", {}).get("enabled", True):
            evaluate.check_feature_evaluators(config.eval.get("evaluators", ("knn", "linear")), multilabel=False)
        method = trainables.from_config(config)
    return method, phase


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Pretrains ``config.method`` and evaluates the encoder; returns the final summary."""
    shd.maybe_initialize_distributed()
    method, phase = validate(config)
    mesh = shd.make_mesh()
    with workdir_lib.Workdir(workdir, config, is_main=jax.process_index() == 0) as wd:
        data_iter, transform = input_lib.make_iterator(config, mesh)
        result = train.fit(method, data_iter, phase, wd, config, mesh=mesh, batch_transform=transform)
        summary = dict(result.summary)
        if result.finished and config.get("eval", {}).get("enabled", True):
            summary["eval"] = wd.finished_report(result) or evaluate_pretrained(method, result.state, config, wd)
    return summary


def evaluate_pretrained(method, state, config, wd) -> dict:
    """kNN + linear probe of the frozen encoder on ``eval.train_split`` / ``eval.test_split``."""
    ecfg = config.eval
    data_cfg = config.data
    x_tr, y_tr = pipeline.eval_arrays(
        data_cfg, ecfg.train_split, limit=ecfg.get("max_train", None), split_key="eval.train_split"
    )
    x_te, y_te = pipeline.eval_arrays(
        data_cfg, ecfg.test_split, limit=ecfg.get("max_test", None), split_key="eval.test_split"
    )
    for split, y in ((ecfg.train_split, y_tr), (ecfg.test_split, y_te)):
        if y.ndim != 1 or (y < 0).any():
            raise errors.DataError(
                f"dataset {config.data.name!r} split {split!r} has no single-class labels (missing = -1, or "
                f"multi-hot); the kNN / linear-probe evaluation needs them: set config.eval.enabled=False"
            )
    evaluators = evaluate.check_feature_evaluators(ecfg.get("evaluators", ("knn", "linear")), multilabel=False)
    variables = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
    result = cls.frozen_eval(
        lambda v, x: method.encode(v["params"], v["batch_stats"], x),
        variables,
        x_tr,
        y_tr,
        x_te,
        y_te,
        eval_config=ecfg,
        seed=int(config.seed),
        evaluators=evaluators,
    )
    metrics = result.metrics
    if wd.is_main:
        parts = {
            "knn": lambda: f"kNN top-1 (k={ecfg.knn_k}): {metrics['knn_top1']:.2%}",
            "linear": lambda: f"linear probe top-1: {metrics['linear_top1']:.2%}",
        }
        print(
            " | ".join(
                [parts[n]() for n in evaluators]
                + [f"majority-class baseline {metrics['majority_baseline']:.2%} ({metrics['num_test']} test crops)"]
            ),
            flush=True,
        )
        wd.write_eval_report("pretrain_knn_linear", metrics, config)
        if "linear" in evaluators:
            wd.plot_confusion(np.asarray(metrics["linear_confusion_matrix"]), "confusion_linear.png")
    return metrics
