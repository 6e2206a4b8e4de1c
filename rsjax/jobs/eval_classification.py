"""Scene classification evaluation job (``config.job = "eval_classification"``, e.g. EuroSAT).

Run::

    python -m rsjax.main --config=configs/eval_eurosat.py --workdir=runs/eval_eurosat \
        --config.pretrained=runs/swimdiff            # '' = random init

Protocol (DESIGN §4):

1. Data: ``pipeline.load_arrays(config.data, split)`` (TFDS, e.g. the ``eurosat_rgb`` builder),
   or, with ``config.data.folder`` set, a EuroSAT-style class-folder tree
   (``<folder>/<Class>/<image>``, any of ``rsjax.data.folders.IMAGE_EXTS``) read directly with
   the builders' image reader (a bad or odd-shaped file is named) and split by
   :func:`rsjax.data.folders.folder_split` with seed ``data.folder_seed`` (EuroSAT RGB: 21,600
   train / 5,400 test); ``eval.max_train`` / ``eval.max_test`` keep a fixed random subset.
   ``data.image_size`` larger than the stored images upsamples them, with a warning.
2. Encoder: ``config.model`` (random init from ``config.seed``) or the encoder of the
   pretraining run ``config.pretrained`` (``rsjax.evaluate.common.load_pretrained``).
3. Frozen eval-mode features (global-average-pooled last stage) of both splits;
   ``eval.label_fraction`` < 1 keeps a seeded random subset of the training set.
4. Evaluators ``knn`` (cosine, k = ``eval.knn_k``, T = ``eval.knn_temperature``) and ``linear``
   (:func:`rsjax.evaluate.classification.frozen_eval`).
5. Optional fine-tuning (``finetune.total_steps`` > 0): encoder + linear head
   (:class:`rsjax.tasks.ClassifierTask`) trained end to end with cross-entropy on flipped /
   rotated training images on the one training loop (:func:`rsjax.train.fit`, phase
   ``finetune``: resumable, ``stop_after_steps``, non-finite refusal, ``finetune/metrics.jsonl``),
   optimizer ``finetune.optimizer`` (:mod:`rsjax.optim` block); then top-1 on the test set.
   A run stopped by ``stop_after_steps`` writes no report; rerunning the command continues the
   fine-tune and gives the same report as an uninterrupted run.

Writes ``eval_report.json`` (task ``classification``; top-1 of each protocol, per-class
accuracy, confusion matrices), ``confusion_linear.png``, ``per_class_accuracy.png``,
``embedding_pca.png`` (PCA of test features coloured by class) and, when fine-tuning,
``confusion_finetune.png`` and ``finetune/`` (metrics.jsonl, events.jsonl, loss_curve.png,
checkpoints).
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from rsjax import errors, plots
from rsjax import sharding as shd
from rsjax.data import registry
from rsjax.data.defaults import check_complete
from rsjax.evaluate import classification as cls
from rsjax.evaluate import common


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------
def complete(config: ml_collections.ConfigDict) -> None:
    """Fills ``config.finetune.optimizer`` with every key of :func:`rsjax.optim.default_block`
    (the configs give only what differs), so config.json and the checkpoints hold the whole block."""
    from rsjax import optim

    with config.unlocked():
        ft = config.finetune
        given = ft.optimizer.to_dict() if "optimizer" in ft else {}
        ft.optimizer = optim.default_block(**given)


def validate(config: ml_collections.ConfigDict, *, multilabel: bool = False, task_cls: Any = None):
    """Completes and checks the whole config before anything is written (ConfigError naming the
    key). Returns the fine-tune :class:`rsjax.train.Phase` (None without fine-tuning)."""
    from rsjax import optim, train

    with errors.config_errors():
        complete(config)
        ec, ft = config.eval, config.finetune

        def need(cond, key, value, msg):
            if not cond:
                raise errors.ConfigError(f"config.{key}={value!r}: {msg}")

        need(int(ec.batch_size) > 0, "eval.batch_size", ec.batch_size, "must be > 0")
        need(0 < float(ec.get("label_fraction", 1.0)) <= 1, "eval.label_fraction", ec.get("label_fraction"),
             "must be in (0, 1]")
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
        info = common.dataset_info(config)  # unknown data.name / builder_config -> error naming it
        if info.bands:
            common.check_bands(config, len(info.bands), f"dataset {d.name!r}")
        common.compute_dtype(config)
    return phase


def make_task(config, *, num_outputs: int, multilabel: bool, loaded=None):
    from rsjax.tasks import ClassifierTask

    with errors.config_errors():  # unknown model name / stem
        return ClassifierTask(config, num_outputs=num_outputs, multilabel=multilabel,
                              image_size=int(config.data.image_size or 32),  # 0 = stored size
                              optimizer=config.finetune.optimizer, pretrained=loaded)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def prepare_images(raw: np.ndarray, info: registry.DatasetInfo, image_size: int | None) -> np.ndarray:
    """Normalised float32 images (``registry.normalize``), resized to ``image_size`` when set
    (a warning when that upsamples: :func:`rsjax.data.registry.warn_if_upsampling`)."""
    from rsjax.data import ops

    if image_size:
        registry.warn_if_upsampling(int(image_size), raw.shape[1:3], what=f"dataset {info.name!r}")
    x = registry.normalize(raw, info)
    if image_size and x.shape[1] != image_size:
        resize = ops.cached(f"resize({int(image_size)})")  # the resize op, as the view recipes
        x = np.stack([resize.image(im, None) for im in x])
    return x


def load_data(config):
    """``(x_train, y_train, x_test, y_test, class_names)``: float32 normalized images, labels."""
    from rsjax.data import folders

    d = config.data
    info = common.dataset_info(config)
    size = int(d.image_size or 0) or None  # 0 = the stored size
    ec = config.eval
    if d.folder:
        names = folders.class_folder_files(d.folder)[0]
        if info.class_names and tuple(names) != tuple(info.class_names):
            raise errors.DataError(f"class folders {names} in {d.folder} differ from the classes of "
                                   f"{d.name!r} {list(info.class_names)} (config.data.name)")
        out = []
        for split, cap in (("train", ec.get("max_train", 0)), ("test", ec.get("max_test", 0))):
            raw, y, _ = folders.load_class_folder(d.folder, split, seed=int(d.folder_seed),
                                                  cache_dir=d.cache_dir or None,
                                                  max_examples=int(cap or 0) or None)
            out += [prepare_images(raw, info, size), y]
        return (*out, list(names))
    from rsjax.data import pipeline

    x_tr, y_tr = pipeline.load_arrays(d, ec.train_split, max_examples=ec.get("max_train", 0) or None, image_size=size,
                                      split_key="eval.train_split")
    x_te, y_te = pipeline.load_arrays(d, ec.test_split, max_examples=ec.get("max_test", 0) or None, image_size=size,
                                      split_key="eval.test_split")
    return x_tr, y_tr, x_te, y_te, list(info.class_names)


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
    from rsjax import train
    from rsjax.data.arrays import ArrayIterator

    it = ArrayIterator({"image": x_tr, "label": y_tr}, phase.batch_size, phase.seed,
                       source="the fine-tune's training images: config.data, eval.max_train, eval.label_fraction")
    result = train.fit(task, it, phase, wd, config, mesh=mesh)
    if not result.finished:
        return None, result
    variables = {"params": result.state["params"], "batch_stats": result.state["batch_stats"]}
    logits = shd.batched_predict(lambda v, b: task.predict(v["params"], v["batch_stats"], b), variables,
                                 {"image": x_te}, batch_size=int(config.eval.batch_size), desc="fine-tune test",
                                 mesh=mesh)
    return np.asarray(logits, np.float32), result


# --------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------
def evaluate_arrays(config, wd, x_tr, y_tr, x_te, y_te, class_names=None, *, loaded=None, phase=None,
                    mesh=None) -> dict:
    """kNN + linear probe (+ fine-tune) on prepared arrays; writes the report and pictures."""
    t0 = time.time()
    mesh = mesh or shd.make_mesh()
    y_tr, y_te = np.asarray(y_tr, np.int32), np.asarray(y_te, np.int32)
    num_classes = len(class_names) if class_names else int(max(y_tr.max(), y_te.max()) + 1)
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    ec = config.eval
    keep = cls.label_subset(len(y_tr), float(ec.get("label_fraction", 1.0)), config.seed)
    x_tr, y_tr = x_tr[keep], y_tr[keep]
    common.check_bands(config, x_tr.shape[-1], f"dataset {config.data.name!r}")
    task = make_task(config, num_outputs=num_classes, multilabel=False, loaded=loaded)
    frozen = cls.frozen_eval(encode_fn(task), init_variables(task, config.seed), x_tr, y_tr, x_te, y_te,
                             eval_config=ec, seed=config.seed, num_classes=num_classes, mesh=mesh)
    metrics = dict(frozen.metrics)
    for m in ("linear", "knn"):
        metrics[f"{m}_per_class"] = dict(zip(names, metrics[f"{m}_per_class"]))
    metrics["label_fraction"] = float(ec.get("label_fraction", 1.0))
    metrics["encoder"] = common.pretrained_summary(loaded)
    if phase is not None:
        logits, result = finetune(config, wd, task, phase, x_tr, y_tr, x_te, mesh)
        if logits is None:  # stopped by stop_after_steps: the rerun continues and reports
            return {**metrics, "finetune_step": result.step, "finetune_finished": False}
        ft = logits.argmax(-1)
        metrics["finetune_top1"] = cls.accuracy(ft, y_te)
        metrics["finetune_per_class"] = dict(zip(names, cls.per_class_accuracy(ft, y_te, num_classes)))
        metrics["finetune_confusion_matrix"] = cls.confusion_matrix(ft, y_te, num_classes).tolist()
        metrics["finetune_nonfinite_steps"] = int(result.summary.get("nonfinite_steps", 0))
        if wd.is_main:
            wd.plot_confusion(np.asarray(metrics["finetune_confusion_matrix"]), "confusion_finetune.png",
                              class_names=names)
    metrics["seconds"] = time.time() - t0
    if wd.is_main:
        wd.plot_confusion(np.asarray(metrics["linear_confusion_matrix"]), "confusion_linear.png", class_names=names)
        plots.bars(metrics["linear_per_class"], os.path.join(wd.path, "per_class_accuracy.png"),
                   ylabel="linear-probe accuracy", title=f"{config.data.name}: per-class accuracy")
        plots.embedding_scatter(frozen.test_features, y_te, os.path.join(wd.path, "embedding_pca.png"),
                                class_names=names,
                                title=f"{config.model.name} test features (PCA), {metrics['encoder']['init']}")
        wd.write_eval_report("classification", metrics, config)
        msg = (f"{config.data.name}: linear probe top-1 {metrics['linear_top1']:.2%} | kNN (k={ec.knn_k}) "
               f"{metrics['knn_top1']:.2%}")
        if "finetune_top1" in metrics:
            msg += f" | fine-tune {metrics['finetune_top1']:.2%}"
        print(msg + f" | majority {metrics['majority_baseline']:.2%} ({metrics['num_train']} train / "
              f"{metrics['num_test']} test, {metrics['seconds']:.0f} s)", flush=True)
    return metrics


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Validates the config, checks ``config.pretrained``, then opens the workdir, reads the data,
    evaluates (and fine-tunes) and writes the report."""
    from rsjax import workdir as workdir_lib

    shd.maybe_initialize_distributed()
    phase = validate(config)
    make_task(config, num_outputs=2, multilabel=False)  # model name / stem errors before anything is written
    loaded = common.load_pretrained(config)
    with workdir_lib.Workdir(workdir, config, is_main=jax.process_index() == 0) as wd:
        x_tr, y_tr, x_te, y_te, names = load_data(config)
        return evaluate_arrays(config, wd, x_tr, y_tr, x_te, y_te, names, loaded=loaded, phase=phase)
