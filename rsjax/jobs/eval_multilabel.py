"""Multi-label classification evaluation job (``config.job = "eval_multilabel"``, e.g. BigEarthNet-19).

Run::

    python -m rsjax.main --config=configs/eval_bigearthnet.py --workdir=runs/eval_ben \
        --config.data.data_dir=/path/to/tfds --config.pretrained=runs/<pretraining workdir> \
        --config.eval.label_fraction=0.1

Protocol: frozen eval-mode features of the encoder (``config.pretrained`` or random init)
are extracted once; the ``linear_multilabel`` evaluator (one dense layer on standardized
features, full-batch AdamW with cosine decay, mean sigmoid binary cross-entropy over the
classes) is trained on a seeded ``eval.label_fraction`` (0.01 / 0.1 / 1.0) of the training set
and scores the test set; optional end-to-end fine-tuning (``finetune.total_steps`` > 0, same
loss, :class:`rsjax.tasks.ClassifierTask` on :func:`rsjax.train.fit`, phase ``finetune``).
Metrics: micro and macro mAP (scikit-learn's average-precision definition,
:mod:`rsjax.evaluate.metrics`) and per-class AP.

Targets: the dataset's ``label`` feature as a multi-hot [N, C] vector (BigEarthNet builder),
or, with ``data.multilabel_from_mask=True`` (synthetic smoke / demo), derived from the
segmentation ``mask``: class c is present in a crop -> 1.

Writes ``eval_report.json`` (task ``multilabel``), ``per_class_ap.png`` and, when
fine-tuning, ``finetune/`` (metrics.jsonl, loss_curve.png, checkpoints).
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from rsjax import errors, plots
from rsjax import sharding as shd
from rsjax import workdir as workdir_lib
from rsjax.data import pipeline, registry
from rsjax.evaluate import classification as cls
from rsjax.evaluate import classifier as clf
from rsjax.evaluate import encoders
from rsjax.evaluate import metrics as M


def load_data(config):
    """``(x_train, t_train, x_test, t_test, class_names)`` with multi-hot targets."""
    d = config.data  # complete (configs.common.data_config; old workdirs: rsjax.workdir.complete_config)
    info = registry.data_info(config.data)
    ec = config.eval
    out = []
    for role in ("train", "test"):
        split, cap, key = ec[f"{role}_split"], ec[f"max_{role}"], f"eval.{role}_split"
        if d.multilabel_from_mask:
            f = pipeline.read_split(
                d, split, fields={"image": d.image_key, "mask": d.mask_key}, limit=cap, split_key=key
            )
            x = pipeline.prepare(f["image"], info, d.pp_eval, image_size=d.image_size)
            t = cls.targets_from_mask(f["mask"], info.num_classes)
        else:
            x, t = pipeline.eval_arrays(d, split, limit=cap, image_size=d.image_size, split_key=key)
            if t.ndim != 2:
                raise errors.DataError(
                    f"dataset {d.name!r} has single labels {t.shape}; eval_multilabel needs multi-hot [N, C] "
                    f"labels (or config.data.multilabel_from_mask=True)"
                )
        out += [x, t]
    return (*out, list(info.class_names))


def evaluate_arrays(
    config, wd, x_tr, t_tr, x_te, t_te, class_names=None, *, loaded=None, phase=None, mesh=None
) -> dict:
    t0 = time.time()
    mesh = mesh or shd.make_mesh()
    t_tr, t_te = np.asarray(t_tr, np.int32), np.asarray(t_te, np.int32)
    num_classes = t_tr.shape[1]
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    ec = config.eval
    frac = float(ec.get("label_fraction", 1.0))
    keep = cls.label_subset(len(t_tr), frac, config.seed)
    x_tr, t_tr = x_tr[keep], t_tr[keep]
    registry.check_bands(config, x_tr.shape[-1], f"dataset {config.data.name!r}")
    task = clf.make_task(config, num_outputs=num_classes, multilabel=True, loaded=loaded)
    frozen = cls.frozen_eval(
        clf.encode_fn(task),
        clf.init_variables(task, config.seed),
        x_tr,
        t_tr,
        x_te,
        t_te,
        eval_config=ec,
        seed=config.seed,
        evaluators=("linear_multilabel",),
        mesh=mesh,
    )  # eval.evaluators: checked by clf.validate
    fm = frozen.metrics
    metrics = {
        "linear_micro_map": fm["linear_micro_map"],
        "linear_macro_map": fm["linear_macro_map"],
        "linear_per_class_ap": dict(zip(names, fm["linear_per_class_ap"])),
        "test_classes_with_positives": fm["linear_classes_with_positives"],
        # mAP of a constant score: the prevalence baseline a useless probe would get.
        "prevalence_micro_map": fm["prevalence_micro_map"],
        "label_fraction": frac,
        "num_train": fm["num_train"],
        "num_test": fm["num_test"],
        "encoder": encoders.pretrained_summary(loaded),
    }
    if phase is not None:
        logits, result = clf.finetune(config, wd, task, phase, x_tr, t_tr, x_te, mesh)
        if logits is None:  # stopped by stop_after_steps: the rerun continues and reports
            return {**metrics, "finetune_step": result.step, "finetune_finished": False}
        ft = M.multilabel_map(logits, t_te)
        metrics.update(
            finetune_micro_map=ft["micro_map"],
            finetune_macro_map=ft["macro_map"],
            finetune_per_class_ap=dict(zip(names, ft["per_class_ap"])),
            finetune_nonfinite_steps=int(result.summary.get("nonfinite_steps", 0)),
        )
    metrics["seconds"] = time.time() - t0
    if wd.is_main:
        short = [n if len(n) <= 28 else n[:26] + ".." for n in names]
        plots.bars(
            {s: (0.0 if np.isnan(v) else v) for s, v in zip(short, fm["linear_per_class_ap"])},
            os.path.join(wd.path, "per_class_ap.png"),
            ylabel="average precision",
            title=f"{config.data.name}: linear-probe AP per class ({frac:g} of labels)",
        )
        wd.write_eval_report("multilabel", metrics, config)
        msg = (
            f"{config.data.name}: linear probe mAP micro {metrics['linear_micro_map']:.4f} macro "
            f"{metrics['linear_macro_map']:.4f}"
        )
        if "finetune_micro_map" in metrics:
            msg += f" | fine-tune micro {metrics['finetune_micro_map']:.4f} macro {metrics['finetune_macro_map']:.4f}"
        print(
            msg + f" ({metrics['num_train']} train at label_fraction {frac:g} / {metrics['num_test']} test)", flush=True
        )
    return metrics


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Validates the config, checks ``config.pretrained``, then opens the workdir, reads the data,
    evaluates (and fine-tunes) and writes the report."""
    shd.maybe_initialize_distributed()
    phase = clf.validate(config, multilabel=True)
    clf.make_task(config, num_outputs=2, multilabel=True)  # model name / stem errors before anything is written
    loaded = encoders.load_pretrained(config)
    with workdir_lib.Workdir(workdir, config, is_main=jax.process_index() == 0) as wd:
        x_tr, t_tr, x_te, t_te, names = load_data(config)
        return evaluate_arrays(config, wd, x_tr, t_tr, x_te, t_te, names, loaded=loaded, phase=phase)
