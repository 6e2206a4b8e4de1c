"""Frozen-feature classification: the one kNN, the one linear probe (single and multi-label),
and :func:`frozen_eval`, the protocol every caller shares (pretraining's final evaluation,
the classification job, the EuroSAT study).

kNN (Wu et al. 2018, as used by DINO / solo-learn): features L2-normalised, cosine similarity
``s_ij = <f_i, f_j>`` of test sample i to every training sample j; the k most similar vote,
each with weight ``exp(s_ij / T)``::

    score_i(c) = sum_{j in topk(i)} exp(s_ij / T) * [y_j == c],   pred_i = argmax_c score_i(c)

with k = 20 and T = 0.07 by default.

Linear probe: features standardised with the training mean / std (``std + 1e-6``), one dense
layer ``z = x W + b`` (W ~ N(0, 0.01^2) from the seed, b = 0) trained for ``epochs`` full-batch
AdamW steps with cosine-decayed lr (deterministic given the seed), on

* single label: ``mean_i CE(softmax(z_i), y_i)``; prediction ``argmax_c z_ic``;
* multi-label: ``mean_{i,c} BCE(sigmoid(z_ic), t_ic)``; scores ``z_ic`` (mAP uses their order).

Evaluators (``rsjax.evaluate.get(name)``) wrap these as ``(train_feats, train_targets,
test_feats, test_targets, **options) -> (metrics, predictions)``.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rsjax import evaluate, sharding
from rsjax.data import ops
from rsjax.errors import ConfigError
from rsjax.evaluate import metrics as M
from rsjax.evaluate.metrics import accuracy, confusion_matrix, per_class_accuracy


def _l2n(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_predict(
    train_feats,
    train_labels,
    test_feats,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> np.ndarray:
    """Weighted cosine kNN (module docstring) -> predicted labels [N_test] (int)."""
    train = _l2n(jnp.asarray(train_feats, jnp.float32))
    labels = jnp.asarray(train_labels, jnp.int32)
    k = min(int(k), train.shape[0])

    @jax.jit
    def predict(q):
        sim = _l2n(q) @ train.T  # [n, N_train]
        top_s, top_i = jax.lax.top_k(sim, k)  # [n, k]
        w = jnp.exp(top_s / temperature)
        votes = jax.nn.one_hot(labels[top_i], num_classes) * w[..., None]
        return jnp.argmax(votes.sum(axis=1), axis=-1)

    test = np.asarray(test_feats, np.float32)
    preds = [np.asarray(predict(test[i : i + chunk])) for i in range(0, test.shape[0], chunk)]
    return np.concatenate(preds) if preds else np.zeros((0,), np.int32)


def linear_probe_logits(
    train_feats,
    train_targets,
    test_feats,
    *,
    num_outputs: int,
    multilabel: bool = False,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> np.ndarray:
    """THE linear probe (module docstring): trains on standardised frozen features and returns
    the test logits [N_test, num_outputs] (float32).

    ``train_targets``: int labels [N] (softmax CE) or, with ``multilabel``, multi-hot [N, C]
    (sigmoid BCE averaged over classes).
    """
    x = jnp.asarray(train_feats, jnp.float32)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    xt = (jnp.asarray(test_feats, jnp.float32) - mean) / std
    if multilabel:
        t = jnp.asarray(train_targets, jnp.float32)
        if t.ndim != 2 or t.shape[1] != num_outputs:
            raise ValueError(f"multi-label probe needs targets [N, {num_outputs}], got {t.shape}")
        per_example = lambda z: optax.sigmoid_binary_cross_entropy(z, t).mean(-1)  # noqa: E731
    else:
        y = jnp.asarray(train_targets, jnp.int32)
        per_example = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, y)  # noqa: E731
    w0 = {
        "w": jax.random.normal(jax.random.PRNGKey(seed), (x.shape[1], num_outputs)) * 0.01,
        "b": jnp.zeros((num_outputs,)),
    }
    tx = optax.adamw(optax.cosine_decay_schedule(lr, epochs), weight_decay=weight_decay)

    def loss_fn(p):
        return per_example(x @ p["w"] + p["b"]).mean()

    @jax.jit
    def train(p):
        def body(carry, _):
            p, s = carry
            u, s = tx.update(jax.grad(loss_fn)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=epochs)
        return p

    p = train(w0)
    return np.asarray(xt @ p["w"] + p["b"], np.float32)


def linear_probe(
    train_feats,
    train_labels,
    test_feats,
    *,
    num_classes: int,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> np.ndarray:
    """Single-label linear probe; returns the predicted test labels [N_test]."""
    return linear_probe_logits(
        train_feats,
        train_labels,
        test_feats,
        num_outputs=num_classes,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
    ).argmax(-1)


def linear_probe_multilabel(
    train_feats,
    train_targets,
    test_feats,
    *,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> np.ndarray:
    """Multi-label linear probe; returns the test logits [N_test, C]."""
    return linear_probe_logits(
        train_feats,
        train_targets,
        test_feats,
        num_outputs=np.shape(train_targets)[1],
        multilabel=True,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
    )


# --------------------------------------------------------------------------------------
# Metrics of class predictions (re-exported by rsjax.evaluate.metrics)
# --------------------------------------------------------------------------------------
def _num_classes(train_targets, test_targets, num_classes: int | None) -> int:
    if num_classes:
        return int(num_classes)
    return int(max(np.max(train_targets, initial=0), np.max(test_targets, initial=0)) + 1)


def _class_metrics(pred, labels, num_classes: int) -> dict:
    return {
        "top1": accuracy(pred, labels),
        "per_class": per_class_accuracy(pred, labels, num_classes),
        "confusion_matrix": confusion_matrix(pred, labels, num_classes).tolist(),
    }


def label_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random ``fraction`` of ``n`` training examples (at least 1):
    ``default_rng([seed, 7]).choice(n, round(fraction * n), replace=False)``."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"config.eval.label_fraction={fraction} must be in (0, 1]")
    if fraction >= 1:
        return np.arange(n)
    k = max(1, int(round(fraction * n)))
    return np.sort(np.random.default_rng([seed, 7]).choice(n, k, replace=False))


def targets_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot [N, C] (int32): 1 where class c occurs anywhere in the example's mask [N, H, W]
    (the ``multi_hot`` op of :mod:`rsjax.data.ops`)."""
    return ops.apply(f"multi_hot({int(num_classes)})", {"mask": np.asarray(mask)})["label"]


# --------------------------------------------------------------------------------------
# Evaluators (registered by name in rsjax.evaluate)
# --------------------------------------------------------------------------------------
def knn_evaluator(
    train_feats,
    train_labels,
    test_feats,
    test_labels,
    *,
    num_classes: int | None = None,
    k: int = 20,
    temperature: float = 0.07,
    **_,
) -> tuple[dict, np.ndarray]:
    """``"knn"``: ``({"top1", "per_class", "confusion_matrix"}, predicted labels)``."""
    c = _num_classes(train_labels, test_labels, num_classes)
    pred = knn_predict(train_feats, train_labels, test_feats, num_classes=c, k=k, temperature=temperature)
    return _class_metrics(pred, test_labels, c), pred


def linear_evaluator(
    train_feats,
    train_labels,
    test_feats,
    test_labels,
    *,
    num_classes: int | None = None,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
    **_,
) -> tuple[dict, np.ndarray]:
    """``"linear"``: ``({"top1", "per_class", "confusion_matrix"}, predicted labels)``."""
    c = _num_classes(train_labels, test_labels, num_classes)
    pred = linear_probe(
        train_feats, train_labels, test_feats, num_classes=c, epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed
    )
    return _class_metrics(pred, test_labels, c), pred


def linear_multilabel_evaluator(
    train_feats,
    train_targets,
    test_feats,
    test_targets,
    *,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
    **_,
) -> tuple[dict, np.ndarray]:
    """``"linear_multilabel"``: ``({"micro_map", "macro_map", "per_class_ap",
    "classes_with_positives"}, test logits [N, C])`` (:func:`rsjax.evaluate.metrics.multilabel_map`)."""
    scores = linear_probe_multilabel(
        train_feats, train_targets, test_feats, epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed
    )
    return M.multilabel_map(scores, test_targets), scores


def evaluator_options(name: str, eval_config, seed: int) -> dict:
    """The keyword options of evaluator ``name`` from an ``eval`` config block.

    ``knn``: ``knn_k`` (20), ``knn_temperature`` (0.07); ``linear`` / ``linear_multilabel``:
    ``linear_epochs`` (300), ``linear_lr`` (1e-2), ``linear_weight_decay`` (1e-4), ``seed``.
    """
    get = eval_config.get
    if name == "knn":
        return {"k": int(get("knn_k", 20)), "temperature": float(get("knn_temperature", 0.07))}
    if name in ("linear", "linear_multilabel"):
        return {
            "epochs": int(get("linear_epochs", 300)),
            "lr": float(get("linear_lr", 1e-2)),
            "weight_decay": float(get("linear_weight_decay", 1e-4)),
            "seed": int(seed),
        }
    return {}


# --------------------------------------------------------------------------------------
# Numerical blow-up
# --------------------------------------------------------------------------------------
EXPLOSION_LIMIT = 1e6  # a feature norm or loss above this is a diverged run, not a result


def warn_if_exploding(values, what: str, *, limit: float = EXPLOSION_LIMIT) -> bool:
    """Warns (``UserWarning``) when ``values`` show a numerical blow-up; returns True when it warned.

    ``values``: features ``[N, F]`` (each row's L2 norm is tested) or scalars ``[N]`` such as
    logged losses (their absolute value; ``None`` = a non-finite value logged as null). A
    blow-up is any non-finite entry or a norm ``> limit`` (1e6): the scores computed from such
    numbers are meaningless (a kNN / linear probe at chance), typically after a learning rate
    far too high. ``what`` names the values in the message.
    """
    x = np.asarray(
        [np.nan if v is None else v for v in values] if isinstance(values, (list, tuple)) else values, np.float64
    )
    if x.size == 0:
        return False
    rows = x.reshape(len(x), -1)
    finite = np.isfinite(rows).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(rows), rows, 0.0), axis=1)
    huge = finite & (norms > limit)
    if finite.all() and not huge.any():
        return False
    parts = []
    if not finite.all():
        parts.append(f"{int((~finite).sum())} of {len(rows)} non-finite")
    if huge.any():
        parts.append(f"{int(huge.sum())} of {len(rows)} with norm > {limit:g} (largest {norms[finite].max():.3g})")
    warnings.warn(
        f"numerical blow-up in {what}: {', '.join(parts)}; the training diverged (e.g. a learning rate "
        f"far too high: config.optimizer.lr) and the evaluation that follows is meaningless",
        UserWarning,
        stacklevel=2,
    )
    return True


# --------------------------------------------------------------------------------------
# The frozen-encoder protocol
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class FrozenEval:
    """Result of :func:`frozen_eval`.

    ``metrics`` (JSON-ready): ``<evaluator>_top1``, ``<evaluator>_per_class`` (list),
    ``<evaluator>_confusion_matrix`` (``linear_multilabel``: ``linear_micro_map``,
    ``linear_macro_map``, ``linear_per_class_ap``, ``linear_classes_with_positives``),
    ``num_train``, ``num_test`` and ``majority_baseline`` (single label: share of the most
    frequent test class) or ``prevalence_micro_map`` (multi-label: mAP of a constant score).
    ``predictions[name]``: the evaluator's test predictions; ``train_features`` /
    ``test_features``: the frozen features [N, F] (float32).
    """

    metrics: dict
    predictions: dict
    train_features: np.ndarray
    test_features: np.ndarray


def frozen_eval(
    encode_fn: Callable[[Any, jax.Array], jax.Array],
    variables: Any,
    x_train,
    y_train,
    x_test,
    y_test,
    *,
    eval_config,
    seed: int,
    evaluators=None,
    num_classes: int | None = None,
    mesh=None,
) -> FrozenEval:
    """Frozen-feature evaluation of one encoder, shared by pretraining, the eval jobs and the study.

    Features ``encode_fn(variables, x) -> [B, F]`` (eval mode, row-wise) are extracted once per
    split with :func:`rsjax.sharding.batched_predict` (``eval_config.batch_size``), then each
    evaluator named in ``evaluators`` (default: ``eval_config.evaluators``, else ``("knn",
    "linear")``; ``rsjax.evaluate.get``) scores the test split with its options from
    ``eval_config`` (:func:`evaluator_options`). Non-finite features or feature
    norms > 1e6 are warned about first (:func:`warn_if_exploding`).
    """
    bs = int(eval_config.get("batch_size", 256))
    if evaluators is None:
        evaluators = tuple(eval_config.get("evaluators", None) or ("knn", "linear"))

    def features(x, desc):
        out = sharding.batched_predict(encode_fn, variables, x, batch_size=bs, desc=desc, mesh=mesh)
        return np.asarray(out, np.float32)

    f_tr = features(x_train, "features train")
    f_te = features(x_test, "features test")
    warn_if_exploding(
        np.concatenate([f_tr, f_te]) if len(f_tr) and len(f_te) else f_tr, "the frozen encoder features (train + test)"
    )
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    multilabel = any(name == "linear_multilabel" for name in evaluators)
    metrics: dict = {}
    predictions: dict = {}
    c = None if multilabel else _num_classes(y_train, y_test, num_classes)
    for name in evaluators:
        m, pred = evaluate.get(name)(
            f_tr, y_train, f_te, y_test, num_classes=c, **evaluator_options(name, eval_config, seed)
        )
        predictions[name] = pred
        prefix = "linear" if name == "linear_multilabel" else name  # linear_micro_map, not ..._multilabel_...
        metrics.update({f"{prefix}_{k}": v for k, v in m.items()})
    metrics["num_train"] = int(len(y_train))
    metrics["num_test"] = int(len(y_test))
    if multilabel:
        metrics["prevalence_micro_map"] = float(y_test.mean()) if y_test.size else float("nan")
    elif len(y_test):
        metrics["majority_baseline"] = float(np.bincount(y_test, minlength=c).max() / len(y_test))
    return FrozenEval(metrics, predictions, f_tr, f_te)
