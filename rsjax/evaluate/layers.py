"""Per-layer view of a segmentation network during training (the noisy-label study, DESIGN §3.4).

* Weight statistics per group (``enc_stem``, ``enc_layer1..4``; UNet ``dec_block0..4``,
  ``dec_head``; other decoders by their top-level module): ``||W||`` and
  ``||W - W_0|| / ||W_0||`` over the conv / dense kernels (:func:`weight_stats`).
* Feature discriminability: the Fisher ratio ``J = tr(S_b) / tr(S_w)`` of a feature map
  (encoder stage outputs ``enc_c1..c4``; UNet block outputs ``dec_block0..4`` coarse to fine;
  DeepLabv3+ ``dec_aspp`` / ``dec_fuse``; PSPNet ``dec_bottleneck``) with the pixel labels
  pooled to the map's resolution as class fractions (soft assignment ``w_ik``)::

      S_b = sum_k n_k ||mu_k - mu||^2,   S_w = sum_k sum_i w_ik ||x_i - mu_k||^2

  accumulated over batches from the sufficient statistics of :func:`fisher_stats`.

:func:`segmentation_probe` evaluates a ``SegmentationModel`` on clean labels through the one
padded predict loop (``rsjax.sharding.batched_predict``): confusion matrix, Fisher ratio per
level and the first predictions.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import sharding as shd
from rsjax.data import ops
from rsjax.evaluate import metrics
from rsjax.models import resnet as resnet_lib


def fisher_stats(feat, labels, num_classes: int):
    """Per-class sufficient statistics of one feature map for the Fisher ratio.

    ``feat`` [B, h, w, C]; ``labels`` [B, H, W] int (negative = ignore). Labels become one-hot
    class fractions pooled to (h, w) (antialiased linear resize = area average for integer
    factors). Returns ``(n [K], s [K, C], q [K])``: ``n_k = sum_i w_ik``,
    ``s_k = sum_i w_ik x_i``, ``q_k = sum_i w_ik ||x_i||^2``.
    """
    f = feat.astype(jnp.float32)
    b, h, w, _ = f.shape
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # -1 -> all zeros
    if onehot.shape[1:3] != (h, w):
        onehot = jax.image.resize(onehot, (b, h, w, num_classes), method="linear", antialias=True)
    n = jnp.sum(onehot, axis=(0, 1, 2))
    s = jnp.einsum("bhwk,bhwc->kc", onehot, f)
    q = jnp.einsum("bhwk,bhw->k", onehot, jnp.sum(f * f, axis=-1))
    return n, s, q


def fisher_ratio(n, s, q) -> float:
    """``tr(S_b) / tr(S_w)`` from accumulated :func:`fisher_stats` (classes with n_k = 0 skipped):
    ``tr(S_w) = sum_k (q_k - n_k ||mu_k||^2)`` with ``mu_k = s_k / n_k``. NaN with fewer than two
    classes present."""
    n, s, q = (np.asarray(a, np.float64) for a in (n, s, q))
    keep = n > 1e-9
    if keep.sum() < 2:
        return float("nan")
    n, s, q = n[keep], s[keep], q[keep]
    mu_k = s / n[:, None]
    mu = s.sum(0) / n.sum()
    within = float(np.sum(q - n * np.sum(mu_k**2, axis=1)))
    between = float(np.sum(n * np.sum((mu_k - mu) ** 2, axis=1)))
    return between / within if within > 0 else float("inf")


def weight_groups(params) -> dict[str, list[np.ndarray]]:
    """Conv / dense kernels (ndim > 1) grouped per encoder stage and decoder level."""
    groups: dict[str, list] = {}
    for part in ("encoder", "decoder"):
        for top, sub in params.get(part, {}).items():
            if part == "encoder":
                g = "enc_stem" if not top.startswith("layer") else "enc_" + top.split("_")[0]
            else:
                g = "dec_" + (top.split("_")[0] if top.startswith("block") else top)
            leaves = [np.asarray(x) for x in jax.tree.leaves(sub) if np.ndim(x) > 1]
            if leaves:
                groups.setdefault(g, []).extend(leaves)
    return groups


def weight_stats(params, init_params) -> dict[str, dict[str, float]]:
    """Per group: ``norm`` = ||W||, ``rel_change`` = ||W - W_0|| / ||W_0||."""
    now, ref = weight_groups(params), weight_groups(init_params)
    out = {}
    for g, ws in now.items():
        w0 = ref[g]
        norm = math.sqrt(sum(float(np.sum(np.square(w, dtype=np.float64))) for w in ws))
        norm0 = math.sqrt(sum(float(np.sum(np.square(w, dtype=np.float64))) for w in w0))
        diff = math.sqrt(sum(float(np.sum(np.square(a.astype(np.float64) - b))) for a, b in zip(ws, w0)))
        out[g] = {"norm": norm, "rel_change": diff / norm0 if norm0 else float("nan")}
    return out


def feature_modules(encoder_name: str, decoder: str) -> list[tuple[str, str, str]]:
    """(level name, parent module, module name) of the analysed feature maps, shallow to deep
    in the encoder and coarse to fine in the decoder."""
    stages = resnet_lib.ARCHS[encoder_name][0]
    out = [(f"enc_c{i + 1}", "encoder", f"layer{i + 1}_{n - 1}") for i, n in enumerate(stages)]
    if decoder == "unet":
        out += [(f"dec_block{i}", "decoder", f"block{i}_conv2") for i in range(5)]
    elif decoder == "deeplabv3plus":
        out += [("dec_aspp", "decoder", "aspp"), ("dec_fuse", "decoder", "fuse2")]
    elif decoder == "pspnet":
        out += [("dec_bottleneck", "decoder", "bottleneck")]
    return out


class SegmentationProbe:
    """Eval-mode predictions (+ per-level Fisher statistics) of a ``SegmentationModel``.

    ``model``: the flax module; ``levels``: :func:`feature_modules` rows (empty = predictions
    only). One instance per model keeps its jitted function (compiled once per batch shape).
    """

    def __init__(
        self,
        model,
        num_classes: int,
        levels=(),
        *,
        info=None,
        recipe: str = ops.DEFAULT_PP_DENSE,
        batch_size: int = 8,
        ignore_index: int = -1,
    ):
        self.model, self.num_classes, self.levels = model, int(num_classes), list(levels)
        self.batch_size, self.ignore_index, self.info = int(batch_size), int(ignore_index), info
        self.prepare = ops.dense_recipe(recipe, "jax")

    def _fn(self, variables, batch):
        x, labels = batch["image"], batch["mask"]
        if self.info is not None:  # raw stored pixels: the dense recipe (data.pp_dense) on the device
            x = self.prepare.image(x, None, ops.Context(info=self.info))
        if not self.levels:
            logits = self.model.apply(variables, x, train=False)
            return {"pred": jnp.argmax(logits, -1).astype(jnp.int32)}
        wanted = {m for _, _, m in self.levels}
        logits, state = self.model.apply(
            variables,
            x,
            train=False,
            mutable=["intermediates"],
            capture_intermediates=lambda mdl, name: name == "__call__" and mdl.name in wanted,
        )
        inter = state["intermediates"]
        out = {"pred": jnp.argmax(logits, -1).astype(jnp.int32)}
        for level, parent, mod in self.levels:
            feat = inter[parent][mod]["__call__"][0]
            # per row (batched_predict pads the last batch; padded rows are cut before the sum)
            out[level] = jax.vmap(lambda f, y: fisher_stats(f[None], y[None], self.num_classes))(feat, labels)
        return out

    def __call__(
        self, params, batch_stats, images: np.ndarray, labels: np.ndarray, *, keep_pred: int = 0, desc: str = "evaluate"
    ):
        """``(confusion [K, K] on labels != ignore, {level: Fisher ratio}, first keep_pred predictions)``.
        ``images`` [N, H, W, C]: stored pixels when the probe has an ``info`` (normalised on the
        device), else normalised float32; ``labels`` [N, H, W] int."""
        if not hasattr(self, "_jfn"):
            self._jfn = self._fn  # one function object: batched_predict caches its jit per function
        out = shd.batched_predict(
            self._jfn,
            {"params": params, "batch_stats": batch_stats},
            {"image": images, "mask": np.asarray(labels, np.int32)},
            batch_size=self.batch_size,
            desc=desc,
            progress=False,
        )
        cm = metrics.dense_confusion_matrix(out["pred"], labels, self.num_classes, self.ignore_index)
        fisher = {lvl: fisher_ratio(*(np.sum(a, 0) for a in out[lvl])) for lvl, _, _ in self.levels}
        return cm, fisher, (out["pred"][:keep_pred] if keep_pred else None)
