"""Frozen-feature classification: feature extraction, kNN and a linear probe.

kNN (Wu et al. 2018, as used by DINO / solo-learn): cosine similarity s between L2-normalised
features, the k nearest training samples vote with weight exp(s / T); T = 0.07, k = 20.

Linear probe: features standardised with the training mean/std, one dense layer trained
with AdamW on the full-batch cross-entropy (deterministic given the seed).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm


def extract_features(
    encode_fn: Callable[[jax.Array], jax.Array],
    images: np.ndarray,
    *,
    batch_size: int = 256,
    desc: str = "features",
    progress: bool = True,
) -> np.ndarray:
    """Runs ``encode_fn`` (jitted, eval mode) over ``images`` in batches; returns float32 [N, F].

    The last batch is padded to ``batch_size`` so the function compiles once.
    """
    n = images.shape[0]
    out = []
    steps = math.ceil(n / batch_size)
    for i in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        chunk = images[i * batch_size : (i + 1) * batch_size]
        m = chunk.shape[0]
        if m < batch_size:
            pad = np.zeros((batch_size - m,) + chunk.shape[1:], chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        out.append(np.asarray(encode_fn(chunk))[:m])
    return np.concatenate(out).astype(np.float32)


def _l2n(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_predict(train_feats, train_labels, test_feats, *, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 1024) -> np.ndarray:
    """Weighted cosine kNN class scores -> predicted labels [N_test]."""
    train = _l2n(jnp.asarray(train_feats, jnp.float32))
    labels = jnp.asarray(train_labels, jnp.int32)
    k = min(k, train.shape[0])

    @jax.jit
    def predict(q):
        sim = _l2n(q) @ train.T                          # [n, N_train]
        top_s, top_i = jax.lax.top_k(sim, k)             # [n, k]
        w = jnp.exp(top_s / temperature)
        votes = jax.nn.one_hot(labels[top_i], num_classes) * w[..., None]
        return jnp.argmax(votes.sum(axis=1), axis=-1)

    test = np.asarray(test_feats, np.float32)
    preds = [np.asarray(predict(test[i : i + chunk])) for i in range(0, test.shape[0], chunk)]
    return np.concatenate(preds) if preds else np.zeros((0,), np.int32)


def linear_probe(train_feats, train_labels, test_feats, *, num_classes: int, epochs: int = 300,
                 lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0) -> np.ndarray:
    """Trains a linear classifier on standardised frozen features; returns test predictions."""
    x = jnp.asarray(train_feats, jnp.float32)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    y = jnp.asarray(train_labels, jnp.int32)
    xt = (jnp.asarray(test_feats, jnp.float32) - mean) / std
    d = x.shape[1]
    w0 = {"w": jax.random.normal(jax.random.PRNGKey(seed), (d, num_classes)) * 0.01,
          "b": jnp.zeros((num_classes,))}
    tx = optax.adamw(optax.cosine_decay_schedule(lr, epochs), weight_decay=weight_decay)

    def loss_fn(p):
        logits = x @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train(p):
        def body(carry, _):
            p, s = carry
            g = jax.grad(loss_fn)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None
        (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=epochs)
        return p

    p = train(w0)
    return np.asarray(jnp.argmax(xt @ p["w"] + p["b"], axis=-1))


def accuracy(pred, labels) -> float:
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float((pred == labels).mean()) if labels.size else float("nan")


def per_class_accuracy(pred, labels, num_classes: int) -> list[float]:
    pred, labels = np.asarray(pred), np.asarray(labels)
    return [float((pred[labels == c] == c).mean()) if (labels == c).any() else float("nan")
            for c in range(num_classes)]


def confusion_matrix(pred, labels, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(pred)), 1)
    return cm
