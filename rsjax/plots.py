"""Pictures a person looks at: loss curves, confusion matrices, bar charts (matplotlib, Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def loss_curve(rows: list[dict], path: str) -> str:
    keys = [k for k in rows[0] if k.startswith("loss")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in rows]
    for k in keys:
        ax.plot(steps, [r.get(k, np.nan) for r in rows], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix(cm: np.ndarray, path: str, class_names=None) -> str:
    cm = np.asarray(cm)
    n = cm.shape[0]
    names = class_names or [str(i) for i in range(n)]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bars(values: dict[str, float], path: str, *, errors: dict[str, float] | None = None, ylabel: str = "",
         title: str = "") -> str:
    names = list(values)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(names), 3.5))
    ax.bar(names, [values[k] for k in names], yerr=[(errors or {}).get(k, 0.0) for k in names], capsize=3)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=45)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------
# Downstream evaluation pictures
# --------------------------------------------------------------------------------------
def pca_2d(features: np.ndarray) -> np.ndarray:
    """First two principal components of ``features`` [N, D] (centred, via SVD) -> [N, 2]."""
    x = np.asarray(features, np.float64)
    x = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[:2].T).astype(np.float32) if vt.shape[0] >= 2 else np.pad(x @ vt.T, ((0, 0), (0, 1)))


def embedding_scatter(features: np.ndarray, labels: np.ndarray, path: str, *, class_names=None,
                      title: str = "PCA of test features", max_points: int = 5000, seed: int = 0) -> str:
    """2-D PCA scatter of features coloured by class (a random subset of ``max_points``)."""
    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    xy = pca_2d(np.asarray(features)[idx])
    lab = labels[idx]
    n = int(labels.max()) + 1 if labels.size else 0
    names = class_names or [str(i) for i in range(n)]
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for c in range(n):
        m = lab == c
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.7, color=cmap(c % cmap.N), label=names[c])
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=2, loc="best", ncol=2 if n > 6 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def display_rgb(x: np.ndarray, rgb_index=(0, 1, 2)) -> np.ndarray:
    """[H, W, C] image (any units) -> [H, W, 3] in [0, 1]: the ``rgb_index`` bands, each
    stretched between its 2nd and 98th percentile."""
    img = np.asarray(x, np.float32)[..., list(rgb_index)]
    lo = np.percentile(img, 2, axis=(0, 1), keepdims=True)
    hi = np.percentile(img, 98, axis=(0, 1), keepdims=True)
    return np.clip((img - lo) / np.maximum(hi - lo, 1e-6), 0, 1)


def label_palette(num_classes: int) -> np.ndarray:
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    return np.asarray([cmap(i % cmap.N)[:3] for i in range(num_classes)], np.float32)


def colorize(mask: np.ndarray, num_classes: int, ignore_index=None) -> np.ndarray:
    """Class-index mask [H, W] -> RGB [H, W, 3]; ``ignore_index`` pixels black."""
    m = np.asarray(mask).astype(np.int64)
    pal = label_palette(num_classes)
    out = pal[np.clip(m, 0, num_classes - 1)]
    bad = (m < 0) | (m >= num_classes)
    if ignore_index is not None:
        bad |= m == ignore_index
    out[bad] = 0.0
    return out


def image_grid(rows: list[list[np.ndarray]], titles: list[str], path: str, *, row_labels=None,
               legend: dict[str, tuple] | None = None) -> str:
    """A grid of RGB/gray images (rows x columns) with column titles, e.g. one row per example
    of (image, ground truth, prediction) or (A, B, ground truth, prediction)."""
    n_r, n_c = len(rows), len(titles)
    fig, axes = plt.subplots(n_r, n_c, figsize=(2.3 * n_c, 2.3 * n_r + (0.4 if legend else 0)), squeeze=False)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray" if np.ndim(img) == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
            if j == 0 and row_labels:
                ax.set_ylabel(row_labels[i], fontsize=8)
    if legend:
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(facecolor=c, edgecolor="0.3", label=k) for k, c in legend.items()], loc="lower center",
                   ncol=min(len(legend), 6), fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def change_overlay(image_a: np.ndarray, image_b: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Prediction vs truth on image B: true positives white, false positives red, misses blue."""
    base = 0.5 * np.asarray(image_b, np.float32)
    t, p = np.asarray(truth).astype(bool), np.asarray(pred).astype(bool)
    base[t & p] = (1.0, 1.0, 1.0)
    base[~t & p] = (1.0, 0.15, 0.15)
    base[t & ~p] = (0.2, 0.5, 1.0)
    del image_a
    return base
