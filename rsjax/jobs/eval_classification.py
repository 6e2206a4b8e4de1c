"""Scene classification evaluation job (``config.job = "eval_classification"``, e.g. EuroSAT).

Run::

    python -m rsjax.main --config=configs/eval_eurosat.py --workdir=runs/eval_eurosat \
        --config.pretrained=runs/swimdiff            # '' = random init

Protocol (DESIGN §4):

1. Data: ``pipeline.eval_arrays(config.data, split)`` (TFDS, e.g. the ``eurosat_rgb`` builder),
   or, with ``config.data.folder`` set, a EuroSAT-style class-folder tree
   (``<folder>/<Class>/<image>``, any of ``rsjax.data.folders.IMAGE_EXTS``) read directly with
   the builders' image reader (a bad or odd-shaped file is named) and split by
   :func:`rsjax.data.folders.folder_split` with seed ``data.folder_seed`` (EuroSAT RGB: 21,600
   train / 5,400 test); ``eval.max_train`` / ``eval.max_test`` keep the one subset rule's
   fixed random subset; the ``data.pp_eval`` recipe prepares the images (normalize, resize to
   ``data.image_size``; larger than the stored images upsamples them, with a warning).
2. Encoder: ``config.model`` (random init from ``config.seed``) or the encoder of the
   pretraining run ``config.pretrained`` (``rsjax.evaluate.encoders.load_pretrained``).
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

import jax
import ml_collections
import numpy as np

from rsjax import evaluate, plots
from rsjax import sharding as shd
from rsjax import workdir as workdir_lib
from rsjax.data import registry
from rsjax.evaluate import classification as cls
from rsjax.evaluate import classifier as clf
from rsjax.evaluate import encoders
from rsjax.evaluate import metrics as M


# --------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------
def evaluate_arrays(
    config, wd, x_tr, y_tr, x_te, y_te, class_names=None, *, loaded=None, phase=None, mesh=None
) -> dict:
    """kNN + linear probe (+ fine-tune) on prepared arrays; writes the report and pictures."""
    t0 = time.time()
    mesh = mesh or shd.make_mesh()
    y_tr, y_te = np.asarray(y_tr, np.int32), np.asarray(y_te, np.int32)
    num_classes = len(class_names) if class_names else int(max(y_tr.max(), y_te.max()) + 1)
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    ec = config.eval
    keep = cls.label_subset(len(y_tr), float(ec.get("label_fraction", 1.0)), config.seed)
    x_tr, y_tr = x_tr[keep], y_tr[keep]
    registry.check_bands(config, x_tr.shape[-1], f"dataset {config.data.name!r}")
    task = clf.make_task(config, num_outputs=num_classes, multilabel=False, loaded=loaded)
    evaluators = evaluate.check_feature_evaluators(ec.get("evaluators", ("knn", "linear")), multilabel=False)
    frozen = cls.frozen_eval(
        clf.encode_fn(task),
        clf.init_variables(task, config.seed),
        x_tr,
        y_tr,
        x_te,
        y_te,
        eval_config=ec,
        seed=config.seed,
        evaluators=evaluators,
        num_classes=num_classes,
        mesh=mesh,
    )
    metrics = dict(frozen.metrics)
    for m in evaluators:
        metrics[f"{m}_per_class"] = dict(zip(names, metrics[f"{m}_per_class"]))
    metrics["label_fraction"] = float(ec.get("label_fraction", 1.0))
    metrics["encoder"] = encoders.pretrained_summary(loaded)
    if phase is not None:
        logits, result = clf.finetune(config, wd, task, phase, x_tr, y_tr, x_te, mesh)
        if logits is None:  # stopped by stop_after_steps: the rerun continues and reports
            return {**metrics, "finetune_step": result.step, "finetune_finished": False}
        ft = logits.argmax(-1)
        metrics["finetune_top1"] = M.accuracy(ft, y_te)
        metrics["finetune_per_class"] = dict(zip(names, M.per_class_accuracy(ft, y_te, num_classes)))
        metrics["finetune_confusion_matrix"] = M.confusion_matrix(ft, y_te, num_classes).tolist()
        metrics["finetune_nonfinite_steps"] = int(result.summary.get("nonfinite_steps", 0))
        if wd.is_main:
            wd.plot_confusion(
                np.asarray(metrics["finetune_confusion_matrix"]), "confusion_finetune.png", class_names=names
            )
    metrics["seconds"] = time.time() - t0
    if wd.is_main:
        if "linear" in evaluators:
            wd.plot_confusion(np.asarray(metrics["linear_confusion_matrix"]), "confusion_linear.png", class_names=names)
        first = evaluators[0]
        label = {"linear": "linear-probe", "knn": "kNN"}
        plots.bars(
            metrics[f"{first}_per_class"],
            os.path.join(wd.path, "per_class_accuracy.png"),
            ylabel=f"{label[first]} accuracy",
            title=f"{config.data.name}: per-class accuracy",
        )
        plots.embedding_scatter(
            frozen.test_features,
            y_te,
            os.path.join(wd.path, "embedding_pca.png"),
            class_names=names,
            title=f"{config.model.name} test features (PCA), {metrics['encoder']['init']}",
        )
        wd.write_eval_report("classification", metrics, config)
        parts = {
            "linear": lambda: f"linear probe top-1 {metrics['linear_top1']:.2%}",
            "knn": lambda: f"kNN (k={ec.knn_k}) {metrics['knn_top1']:.2%}",
        }
        msg = f"{config.data.name}: " + " | ".join(parts[n]() for n in sorted(evaluators, key=("linear", "knn").index))
        if "finetune_top1" in metrics:
            msg += f" | fine-tune {metrics['finetune_top1']:.2%}"
        print(
            msg + f" | majority {metrics['majority_baseline']:.2%} ({metrics['num_train']} train / "
            f"{metrics['num_test']} test, {metrics['seconds']:.0f} s)",
            flush=True,
        )
    return metrics


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Validates the config, checks ``config.pretrained``, then opens the workdir, reads the data,
    evaluates (and fine-tunes) and writes the report."""
    shd.maybe_initialize_distributed()
    phase = clf.validate(config)
    clf.make_task(config, num_outputs=2, multilabel=False)  # model name / stem errors before anything is written
    loaded = encoders.load_pretrained(config)
    with workdir_lib.Workdir(workdir, config, is_main=jax.process_index() == 0) as wd:
        x_tr, y_tr, x_te, y_te, names = clf.load_data(config)
        return evaluate_arrays(config, wd, x_tr, y_tr, x_te, y_te, names, loaded=loaded, phase=phase)
