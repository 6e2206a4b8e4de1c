"""Multi-label classification evaluation job (``config.job = "eval_multilabel"``, e.g. BigEarthNet-19).

Run::

    python -m rsjax.main --config=configs/eval_bigearthnet.py --workdir=runs/eval_ben \
        --config.data.data_dir=/path/to/tfds --config.pretrained=runs/<pretraining workdir> \
        --config.eval.label_fraction=0.1

Protocol: frozen eval-mode features of the encoder (``config.pretrained`` or random init)
are extracted once; a linear probe (one dense layer on standardized features, full-batch
AdamW with cosine decay, mean sigmoid binary cross-entropy over the classes) is trained on
a seeded ``eval.label_fraction`` (0.01 / 0.1 / 1.0) of the training set and scores the test
set; optional end-to-end fine-tuning (``eval.finetune_steps`` > 0, same loss). Metrics: micro
and macro mAP (scikit-learn's average-precision definition, :mod:`rsjax.evaluate.metrics`)
and per-class AP.

Targets: the dataset's ``label`` feature as a multi-hot [N, C] vector (BigEarthNet builder),
or, with ``data.multilabel_from_mask=True`` (synthetic smoke / demo), derived from the
segmentation ``mask``: class c is present in a crop -> 1.

Writes ``eval_report.json`` (task ``multilabel``), ``per_class_ap.png`` and, when
fine-tuning, ``metrics.jsonl`` / ``loss_curve.png``.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rsjax import plots
from rsjax.evaluate import classification as cls
from rsjax.evaluate import classification_job as cjob
from rsjax.evaluate import common
from rsjax.evaluate import metrics as M


def targets_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot [N, C] (int32): 1 where class c occurs anywhere in the example's mask [N, H, W]."""
    m = np.asarray(mask).reshape(len(mask), -1)
    return np.stack([(m == c).any(axis=1) for c in range(num_classes)], axis=1).astype(np.int32)


def load_data(config):
    """``(x_train, t_train, x_test, t_test, class_names)`` with multi-hot targets."""
    d = common.data_config(config)
    info = common.dataset_info(config)
    ec = config.eval
    size = int(d.get("image_size", 0) or 0) or None
    out = []
    for split, cap in ((ec.train_split, ec.get("max_train", 0)), (ec.test_split, ec.get("max_test", 0))):
        if d.get("multilabel_from_mask", False):
            f = common.load_fields(d, split, {"image": d.get("image_key", "image"), "mask": d.get("mask_key", "mask")},
                                   max_examples=cap or None)
            x = cjob._prepare(f["image"], info, size)
            t = targets_from_mask(f["mask"], info.num_classes)
        else:
            from rsjax.data import pipeline

            x, t = pipeline.load_arrays(d, split, max_examples=cap or None, image_size=size)
            if t.ndim != 2:
                raise ValueError(f"dataset {d.name!r} has single labels {t.shape}; eval_multilabel needs multi-hot "
                                 f"[N, C] labels (or data.multilabel_from_mask=True)")
        out += [x, t]
    return (*out, list(info.class_names))


def linear_probe_multilabel(train_feats, train_targets, test_feats, *, epochs: int = 300, lr: float = 1e-2,
                            weight_decay: float = 1e-4, seed: int = 0) -> np.ndarray:
    """Linear classifier on standardized frozen features with sigmoid BCE; returns test logits [N, C]."""
    x = jnp.asarray(train_feats, jnp.float32)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    t = jnp.asarray(train_targets, jnp.float32)
    xt = (jnp.asarray(test_feats, jnp.float32) - mean) / std
    w0 = {"w": jax.random.normal(jax.random.PRNGKey(seed), (x.shape[1], t.shape[1])) * 0.01,
          "b": jnp.zeros((t.shape[1],))}
    tx = optax.adamw(optax.cosine_decay_schedule(lr, epochs), weight_decay=weight_decay)

    def loss_fn(p):
        return optax.sigmoid_binary_cross_entropy(x @ p["w"] + p["b"], t).mean()

    @jax.jit
    def train(p):
        def body(carry, _):
            p, s = carry
            u, s = tx.update(jax.grad(loss_fn)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=epochs)
        return p

    p = train(w0)
    return np.asarray(xt @ p["w"] + p["b"])


def evaluate_arrays(config, wd, x_tr, t_tr, x_te, t_te, class_names=None, loaded=cjob._UNSET) -> dict:
    t0 = time.time()
    t_tr, t_te = np.asarray(t_tr, np.int32), np.asarray(t_te, np.int32)
    num_classes = t_tr.shape[1]
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    ec = config.eval
    frac = float(ec.get("label_fraction", 1.0))
    keep = cjob.label_subset(len(t_tr), frac, config.seed)
    x_tr, t_tr = x_tr[keep], t_tr[keep]
    encoder, variables, loaded = cjob.build_encoder(config, x_tr.shape[-1], loaded)
    f_tr = cjob.extract(config, encoder, variables, x_tr, "features train")
    f_te = cjob.extract(config, encoder, variables, x_te, "features test")
    scores = linear_probe_multilabel(f_tr, t_tr, f_te, epochs=ec.linear_epochs, lr=ec.get("linear_lr", 1e-2),
                                     weight_decay=ec.get("linear_weight_decay", 1e-4), seed=config.seed)
    lin = M.multilabel_map(scores, t_te)
    metrics = {
        "linear_micro_map": lin["micro_map"],
        "linear_macro_map": lin["macro_map"],
        "linear_per_class_ap": dict(zip(names, lin["per_class_ap"])),
        "test_classes_with_positives": lin["classes_with_positives"],
        # mAP of a constant score: the prevalence baseline a useless probe would get.
        "prevalence_micro_map": float(t_te.mean()),
        "label_fraction": frac,
        "num_train": int(len(t_tr)),
        "num_test": int(len(t_te)),
        "encoder": common.pretrained_summary(loaded),
    }
    if int(ec.get("finetune_steps", 0)) > 0:
        predict = cjob.finetune(config, wd, encoder, variables, x_tr, t_tr, num_classes, multilabel=True)
        ft = M.multilabel_map(cls.extract_features(predict, x_te, batch_size=cjob.eval_batch_size(config),
                                                   desc="fine-tune test"), t_te)
        metrics.update(finetune_micro_map=ft["micro_map"], finetune_macro_map=ft["macro_map"],
                       finetune_per_class_ap=dict(zip(names, ft["per_class_ap"])))
    metrics["seconds"] = time.time() - t0
    if wd.is_main:
        short = [n if len(n) <= 28 else n[:26] + ".." for n in names]
        plots.bars({s: (0.0 if np.isnan(v) else v) for s, v in zip(short, lin["per_class_ap"])},
                   os.path.join(wd.path, "per_class_ap.png"), ylabel="average precision",
                   title=f"{config.data.name}: linear-probe AP per class ({frac:g} of labels)")
        wd.write_eval_report("multilabel", metrics, config)
        msg = (f"{config.data.name}: linear probe mAP micro {metrics['linear_micro_map']:.4f} macro "
               f"{metrics['linear_macro_map']:.4f}")
        if "finetune_micro_map" in metrics:
            msg += f" | fine-tune micro {metrics['finetune_micro_map']:.4f} macro {metrics['finetune_macro_map']:.4f}"
        print(msg + f" ({metrics['num_train']} train at label_fraction {frac:g} / {metrics['num_test']} test)",
              flush=True)
    return metrics


def run(config, workdir: str) -> dict:
    return common.run_job(config, workdir, load_data,
                          lambda wd, data, loaded: evaluate_arrays(config, wd, *data, loaded))
