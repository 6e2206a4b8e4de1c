"""Scene classification evaluation job (``config.job = "eval_classification"``, e.g. EuroSAT).

Run::

    python -m rsjax.main --config=configs/eval_eurosat.py --workdir=runs/eval_eurosat \
        --config.pretrained=runs/swimdiff            # '' = random init

Protocol (DESIGN §4):

1. Data: ``pipeline.load_arrays(config.data, split)`` (TFDS, e.g. the ``eurosat_rgb`` builder),
   or, with ``config.data.folder`` set, a EuroSAT-style class-folder tree
   (``<folder>/<Class>/*.jpg|png|tif``) read directly and split as: for each class in sorted
   order, one shared ``numpy.random.default_rng(config.data.folder_seed)``,
   ``perm = rng.permutation(that class's files sorted by name)``, the first
   ``round(test_fraction * n)`` go to test (EuroSAT RGB: 21,600 train / 5,400 test).
2. Encoder: ``config.model`` (random init from ``config.seed``) or the encoder of the
   pretraining run ``config.pretrained`` (``rsjax.evaluate.common.load_pretrained``).
3. Frozen eval-mode features (global-average-pooled layer4) are extracted once per split;
   ``eval.label_fraction`` < 1 keeps a seeded random subset of the training set.
4. kNN (cosine, k = ``eval.knn_k`` = 20, T = ``eval.knn_temperature`` = 0.07) and a linear probe
   (:mod:`rsjax.evaluate.classification`).
5. Optional fine-tuning (``eval.finetune_steps`` > 0): encoder + linear head trained end to end
   with cross-entropy on flipped / rotated training images, then top-1 on the test set.

Writes ``eval_report.json`` (task ``classification``; top-1 of each protocol, per-class
accuracy, confusion matrix), ``confusion_linear.png``, ``per_class_accuracy.png``,
``embedding_pca.png`` (PCA of test features coloured by class) and, when fine-tuning,
``metrics.jsonl`` / ``loss_curve.png``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from rsjax import plots
from rsjax import sharding as shd
from rsjax.data import registry
from rsjax.evaluate import classification as cls
from rsjax.evaluate import common
from rsjax.models import decoders
from rsjax.models import resnet as resnet_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def folder_split(root: str, *, test_fraction: float = 0.2, seed: int = 0, max_per_class: int | None = None):
    """Seeded per-class split of a class-folder tree (see the module docstring).

    Returns ``(train_files, train_labels, test_files, test_labels, class_names)``; labels are
    indices into the sorted class-folder names. ``max_per_class`` keeps the first N files of
    each class's permutation (test first, same fraction) for quick tests.
    """
    from rsjax.data import folders

    if not os.path.isdir(root):
        raise FileNotFoundError(f"config.data.folder={root!r} is not a directory")
    classes, files = folders.class_folder_files(root, IMAGE_EXTENSIONS)
    assign = folders.split_assignments([len(f) for f in files], test_fraction=test_fraction, split_seed=seed)
    tr_f, tr_y, te_f, te_y = [], [], [], []
    for c, (name, fs, a) in enumerate(zip(classes, files, assign)):
        test = [os.path.join(root, name, f) for f, k in zip(fs, a) if k == 1]
        train = [os.path.join(root, name, f) for f, k in zip(fs, a) if k != 1]
        if max_per_class:
            k_test = int(round(test_fraction * max_per_class))
            test, train = test[:k_test], train[:max_per_class - k_test]
        te_f += test
        te_y += [c] * len(test)
        tr_f += train
        tr_y += [c] * len(train)
    return tr_f, np.asarray(tr_y, np.int32), te_f, np.asarray(te_y, np.int32), classes


def read_images(files: Sequence[str], *, desc: str = "images") -> np.ndarray:
    """Reads image files (PIL; tifs with tifffile when installed) into a uint array [N, H, W, C]."""
    from PIL import Image

    out = []
    for f in tqdm(files, desc=desc, leave=False):
        if f.lower().endswith((".tif", ".tiff")):
            try:
                import tifffile

                a = tifffile.imread(f)
            except ImportError:
                a = np.asarray(Image.open(f))
        else:
            with Image.open(f) as im:
                a = np.asarray(im.convert("RGB") if im.mode in ("P", "RGBA", "CMYK") else im)
        out.append(a[..., None] if a.ndim == 2 else a)
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise ValueError(f"images differ in shape {sorted(shapes)[:3]}; first: {files[0]}")
    return np.stack(out)


def _prepare(raw: np.ndarray, info: registry.DatasetInfo, image_size: int | None) -> np.ndarray:
    from rsjax.data import augment

    x = registry.normalize(raw, info)
    if image_size and x.shape[1] != image_size:
        x = np.stack([augment.resize(im, int(image_size)) for im in x])
    return x


def load_data(config):
    """``(x_train, y_train, x_test, y_test, class_names)``: float32 normalized images, labels."""
    d = common.data_config(config)
    info = common.dataset_info(config)
    size = int(d.get("image_size", 0) or 0) or None
    ec = config.eval
    if d.get("folder", ""):
        tr_f, y_tr, te_f, y_te, names = folder_split(d.folder, test_fraction=d.get("test_fraction", 0.2),
                                                     seed=d.get("folder_seed", 0),
                                                     max_per_class=d.get("max_per_class", 0) or None)
        x_tr = _prepare(read_images(tr_f, desc="read train"), info, size)
        x_te = _prepare(read_images(te_f, desc="read test"), info, size)
        if info.class_names and tuple(names) != tuple(info.class_names):
            raise ValueError(f"class folders {names} in {d.folder} differ from the classes of "
                             f"{d.name!r} {list(info.class_names)} (config.data.name)")
        return x_tr, y_tr, x_te, y_te, list(names)
    from rsjax.data import pipeline

    x_tr, y_tr = pipeline.load_arrays(d, ec.train_split, max_examples=ec.get("max_train", 0) or None, image_size=size)
    x_te, y_te = pipeline.load_arrays(d, ec.test_split, max_examples=ec.get("max_test", 0) or None, image_size=size)
    return x_tr, y_tr, x_te, y_te, list(info.class_names)


def label_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random ``fraction`` of ``n`` examples (at least 1)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"config.eval.label_fraction={fraction} must be in (0, 1]")
    if fraction >= 1:
        return np.arange(n)
    k = max(1, int(round(fraction * n)))
    return np.sort(np.random.default_rng([seed, 7]).choice(n, k, replace=False))


# --------------------------------------------------------------------------------------
# Encoder, features, fine-tuning (shared with the multi-label job)
# --------------------------------------------------------------------------------------
_UNSET = object()


def build_encoder(config, num_bands: int, loaded: Any = _UNSET):
    """``(encoder module, variables {'params','batch_stats'}, loaded-or-None)``.

    ``loaded``: the result of ``common.load_pretrained(config)`` when already read.
    """
    common.check_bands(config, num_bands, f"dataset {config.data.name!r}")
    encoder = resnet_lib.create_encoder(config.model.name, dtype=common.compute_dtype(config),
                                        stem=config.model.get("stem", "standard"))
    if loaded is _UNSET:
        loaded = common.load_pretrained(config)  # checks arch / bands before any compilation
    x = jnp.zeros((1, 32, 32, num_bands), jnp.float32)
    variables = jax.jit(lambda k: encoder.init(k, x, train=False))(jax.random.PRNGKey(config.seed))
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    if loaded is not None:
        wrapped = {"params": {"encoder": variables["params"]}, "batch_stats": {"encoder": variables["batch_stats"]}}
        wrapped = decoders.plug_encoder(wrapped, loaded[0], loaded[1])
        variables = {"params": wrapped["params"]["encoder"], "batch_stats": wrapped["batch_stats"]["encoder"]}
    return encoder, variables, loaded


def make_encode_fn(apply_fn, variables):
    """Jitted eval-mode ``x -> float32 [B, F]`` with the batch sharded over every device."""
    mesh = shd.make_mesh()
    rep, dat = shd.replicated(mesh), shd.data_sharded(mesh)
    f = jax.jit(lambda v, x: apply_fn(v, x).astype(jnp.float32), in_shardings=(rep, dat), out_shardings=rep)
    variables = jax.device_put(variables, rep)
    return lambda x: f(variables, x)


def eval_batch_size(config) -> int:
    n = jax.device_count()
    b = int(config.eval.batch_size)
    return max(n, (b // n) * n)


def extract(config, encoder, variables, x: np.ndarray, desc: str) -> np.ndarray:
    encode = make_encode_fn(lambda v, x: encoder.apply(v, x, train=False), variables)
    return cls.extract_features(encode, x, batch_size=eval_batch_size(config), desc=desc)


class EncoderClassifier(nn.Module):
    """Encoder + linear head for fine-tuning; params ``{'encoder', 'head'}``."""

    encoder: nn.Module
    num_outputs: int

    @nn.compact
    def __call__(self, x, *, train: bool):
        feats = self.encoder(x, train=train)
        return nn.Dense(self.num_outputs, name="head")(feats).astype(jnp.float32)


def finetune(config, wd, encoder, variables, x_tr, y_tr, num_outputs: int, *, multilabel: bool):
    """Fine-tunes encoder + linear head; returns a ``predict(x) -> logits`` function.

    Loss: softmax cross-entropy (single label) or mean sigmoid BCE over classes (multi-label).
    Optimizer / schedule: ``config.eval.finetune_*`` (AdamW with cosine decay by default).
    """
    ec = config.eval
    model = EncoderClassifier(encoder.clone(parent=None), num_outputs)
    x0 = jnp.asarray(x_tr[:1])
    head_vars = jax.jit(lambda k: model.init(k, x0, train=False))(jax.random.PRNGKey(config.seed + 1))
    params = {"encoder": variables["params"], "head": head_vars["params"]["head"]}
    batch_stats = {"encoder": variables["batch_stats"]}
    steps = int(ec.finetune_steps)
    tc = _ml_dict(optimizer=ec.get("finetune_optimizer", "adamw"), lr=ec.finetune_lr,
                  weight_decay=ec.get("finetune_weight_decay", 1e-4), schedule="cosine",
                  warmup_steps=ec.get("finetune_warmup_steps", 0))
    tx = common.make_optimizer(tc, steps, params, freeze_encoder=False)

    def loss_fn(params, batch_stats, batch, rng):
        del rng
        logits, upd = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=True,
                                  mutable=["batch_stats"])
        if multilabel:
            per = optax.sigmoid_binary_cross_entropy(logits, batch["label"].astype(jnp.float32)).mean(-1)
        else:
            per = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return per, upd["batch_stats"]

    arrays = {"image": x_tr, "label": y_tr}
    bs = int(ec.finetune_batch_size)
    batch_fn = lambda step: common.sample_batch(arrays, bs, 0, config.seed, step)  # noqa: E731
    out, _ = common.train_loop(loss_fn=loss_fn, variables={"params": params, "batch_stats": batch_stats},
                               tx=tx, batch_fn=batch_fn, steps=steps, seed=config.seed, wd=wd, desc="fine-tune",
                               log_every=max(1, min(config.get("log_every", 10), steps)))
    wd.plot_loss_curve()
    return make_encode_fn(lambda v, x: model.apply(v, x, train=False), out)


def _ml_dict(**kw):
    import ml_collections

    return ml_collections.ConfigDict(kw)


# --------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------
def evaluate_arrays(config, wd, x_tr, y_tr, x_te, y_te, class_names=None, loaded: Any = _UNSET) -> dict:
    """kNN + linear probe (+ fine-tune) on prepared arrays; writes the report and pictures."""
    t0 = time.time()
    y_tr, y_te = np.asarray(y_tr, np.int32), np.asarray(y_te, np.int32)
    num_classes = len(class_names) if class_names else int(max(y_tr.max(), y_te.max()) + 1)
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    ec = config.eval
    keep = label_subset(len(y_tr), float(ec.get("label_fraction", 1.0)), config.seed)
    x_tr, y_tr = x_tr[keep], y_tr[keep]
    encoder, variables, loaded = build_encoder(config, x_tr.shape[-1], loaded)
    f_tr = extract(config, encoder, variables, x_tr, "features train")
    f_te = extract(config, encoder, variables, x_te, "features test")
    knn = cls.knn_predict(f_tr, y_tr, f_te, num_classes=num_classes, k=ec.knn_k, temperature=ec.knn_temperature)
    lin = cls.linear_probe(f_tr, y_tr, f_te, num_classes=num_classes, epochs=ec.linear_epochs,
                           lr=ec.get("linear_lr", 1e-2), weight_decay=ec.get("linear_weight_decay", 1e-4),
                           seed=config.seed)
    cm = cls.confusion_matrix(lin, y_te, num_classes)
    metrics = {
        "linear_top1": cls.accuracy(lin, y_te),
        "knn_top1": cls.accuracy(knn, y_te),
        "linear_per_class": dict(zip(names, cls.per_class_accuracy(lin, y_te, num_classes))),
        "knn_per_class": dict(zip(names, cls.per_class_accuracy(knn, y_te, num_classes))),
        "linear_confusion_matrix": cm.tolist(),
        "num_train": int(len(y_tr)),
        "num_test": int(len(y_te)),
        "label_fraction": float(ec.get("label_fraction", 1.0)),
        "majority_baseline": float(np.bincount(y_te, minlength=num_classes).max() / len(y_te)),
        "encoder": common.pretrained_summary(loaded),
    }
    if int(ec.get("finetune_steps", 0)) > 0:
        predict = finetune(config, wd, encoder, variables, x_tr, y_tr, num_classes, multilabel=False)
        logits = cls.extract_features(predict, x_te, batch_size=eval_batch_size(config), desc="fine-tune test")
        ft = logits.argmax(-1)
        metrics["finetune_top1"] = cls.accuracy(ft, y_te)
        metrics["finetune_per_class"] = dict(zip(names, cls.per_class_accuracy(ft, y_te, num_classes)))
        wd.plot_confusion(cls.confusion_matrix(ft, y_te, num_classes), "confusion_finetune.png", class_names=names)
    metrics["seconds"] = time.time() - t0
    if wd.is_main:
        wd.plot_confusion(cm, "confusion_linear.png", class_names=names)
        plots.bars(metrics["linear_per_class"], os.path.join(wd.path, "per_class_accuracy.png"),
                   ylabel="linear-probe accuracy", title=f"{config.data.name}: per-class accuracy")
        plots.embedding_scatter(f_te, y_te, os.path.join(wd.path, "embedding_pca.png"), class_names=names,
                                title=f"{config.model.name} test features (PCA), {metrics['encoder']['init']}")
        wd.write_eval_report("classification", metrics, config)
        msg = (f"{config.data.name}: linear probe top-1 {metrics['linear_top1']:.2%} | kNN (k={ec.knn_k}) "
               f"{metrics['knn_top1']:.2%}")
        if "finetune_top1" in metrics:
            msg += f" | fine-tune {metrics['finetune_top1']:.2%}"
        print(msg + f" | majority {metrics['majority_baseline']:.2%} ({metrics['num_train']} train / "
              f"{metrics['num_test']} test, {metrics['seconds']:.0f} s)", flush=True)
    return metrics


def run(config, workdir: str) -> dict:
    return common.run_job(config, workdir, load_data,
                          lambda wd, data, loaded: evaluate_arrays(config, wd, *data, loaded))
