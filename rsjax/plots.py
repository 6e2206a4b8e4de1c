"""Pictures a person looks at: loss curves, confusion matrices, bar charts (matplotlib, Agg)."""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _pyplot():
    """matplotlib.pyplot on the Agg backend, imported when the first picture is drawn."""
    import matplotlib  # heavy: a CLI that draws nothing (an error, --help) skips it

    matplotlib.use("Agg")
    import matplotlib.pyplot  # heavy: see above

    return matplotlib.pyplot


class _LazyPyplot:
    """``plt`` for the functions below: attribute access imports pyplot (see :func:`_pyplot`)."""

    def __getattr__(self, name):
        return getattr(_pyplot(), name)


plt = _LazyPyplot()


def loss_curve(rows: list[dict], path: str) -> str:
    keys = [k for k in rows[0] if k.startswith("loss")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in rows]
    for k in keys:
        # None: a non-finite loss, written as null in metrics.jsonl (strict JSON)
        ax.plot(steps, [np.nan if r.get(k) is None else r[k] for r in rows], label=k)
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
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bars(
    values: dict[str, float], path: str, *, errors: dict[str, float] | None = None, ylabel: str = "", title: str = ""
) -> str:
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


def embedding_scatter(
    features: np.ndarray,
    labels: np.ndarray,
    path: str,
    *,
    class_names=None,
    title: str = "PCA of test features",
    max_points: int = 5000,
    seed: int = 0,
) -> str:
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


def image_grid(
    rows: list[list[np.ndarray]],
    titles: list[str],
    path: str,
    *,
    row_labels=None,
    legend: dict[str, tuple] | None = None,
) -> str:
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
        from matplotlib.patches import Patch  # heavy import (matplotlib): only when drawing

        fig.legend(
            handles=[Patch(facecolor=c, edgecolor="0.3", label=k) for k, c in legend.items()],
            loc="lower center",
            ncol=min(len(legend), 6),
            fontsize=7,
            frameon=False,
        )
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


CHANGE_TITLES = ["image A", "image B", "ground truth", "prediction", "errors on B"]
CHANGE_LEGEND = {"hit": (1, 1, 1), "false alarm": (1, 0.15, 0.15), "miss": (0.2, 0.5, 1)}


def change_panels(
    image_a: np.ndarray, image_b: np.ndarray, truth: np.ndarray, pred: np.ndarray, rgb_index=(0, 1, 2)
) -> list[np.ndarray]:
    """The :data:`CHANGE_TITLES` panels of one change pair (raw ``[H, W, C]`` images, ``truth`` and
    ``pred`` ``[H, W]`` {0, 1}): A and B as RGB stretched together (so colours compare across
    dates), truth, prediction, and the errors on B (:func:`change_overlay`). A row of
    :func:`image_grid` (titles :data:`CHANGE_TITLES`, legend :data:`CHANGE_LEGEND`)."""
    w = image_a.shape[1]
    ab = display_rgb(np.concatenate([image_a, image_b], axis=1), rgb_index)
    a, b = ab[:, :w], ab[:, w:]
    t, p = (np.asarray(truth) == 1).astype(np.float32), (np.asarray(pred) == 1).astype(np.float32)
    return [a, b, t, p, change_overlay(a, b, t, p)]


def change_overlay(image_a: np.ndarray, image_b: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Prediction vs truth on image B: true positives white, false positives red, misses blue."""
    base = 0.5 * np.asarray(image_b, np.float32)
    t, p = np.asarray(truth).astype(bool), np.asarray(pred).astype(bool)
    base[t & p] = (1.0, 1.0, 1.0)
    base[~t & p] = (1.0, 0.15, 0.15)
    base[t & ~p] = (0.2, 0.5, 1.0)
    del image_a
    return base


# --------------------------------------------------------------------------------------
# Noisy-label pretraining (rsjax.jobs.noisy_label / noisy_label_study)
# --------------------------------------------------------------------------------------
def class_map_rows(
    path: str,
    rgb: np.ndarray,
    columns: list[tuple[str, np.ndarray]],
    num_classes: int,
    class_names=None,
    panel_inches: float = 2.2,
) -> str:
    """One row per example: the display image ``rgb`` [N, H, W, 3] in [0, 1], then one class map
    per ``(title, masks [N, H, W])`` column (negative labels = ignore, left blank); each panel
    ``panel_inches`` wide."""
    n = min([len(rgb)] + [len(m) for _, m in columns])
    cmap = plt.get_cmap("tab10", max(num_classes, 2))
    fig, axes = plt.subplots(
        n, 1 + len(columns), figsize=(panel_inches * (1 + len(columns)), panel_inches * n), squeeze=False
    )
    for i in range(n):
        axes[i, 0].imshow(rgb[i])
        for j, (_, masks) in enumerate(columns):
            axes[i, j + 1].imshow(
                np.ma.masked_less(masks[i], 0),
                cmap=cmap,
                vmin=-0.5,
                vmax=max(num_classes, 2) - 0.5,
                interpolation="nearest",
            )
        for j, title in enumerate(["image (RGB)"] + [t for t, _ in columns]):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(title, fontsize=8)
    names = list(class_names or [])[:num_classes]
    if names:
        from matplotlib.patches import Patch  # heavy import (matplotlib): only when drawing

        fig.legend(
            handles=[Patch(color=cmap(c), label=nm) for c, nm in enumerate(names)],
            loc="lower center",
            ncol=min(len(names), 6),
            fontsize=7,
            frameon=False,
        )
        fig.tight_layout(rect=(0, 0.05, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def transfer_miou(path: str, results: dict, title: str) -> str:
    """Grouped bars: downstream mIoU per decoder (``results[tag][decoder]["miou"]``) for each encoder tag."""
    tags = list(results)
    decs = list(next(iter(results.values())))
    fig, ax = plt.subplots(figsize=(1.5 + 1.4 * len(decs) * max(1, len(tags)) / 2, 3.4))
    w = 0.8 / max(1, len(tags))
    for i, tag in enumerate(tags):
        vals = [results[tag][d]["miou"] for d in decs]
        ax.bar(np.arange(len(decs)) + (i - (len(tags) - 1) / 2) * w, vals, w, label=tag)
    ax.set_xticks(range(len(decs)), decs)
    ax.set_ylabel("downstream mIoU")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def noise_study_miou(path: str, table: list[dict], decoders) -> str:
    """Downstream mIoU against the pixel noise rate of each arm; the random-init encoder dashed."""
    arms = [r for r in table if r["arm"] != "random_init"]
    rnd = next((r for r in table if r["arm"] == "random_init"), None)
    x = [r["pixel_noise_rate"] for r in arms]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, d in enumerate(decoders):
        color = plt.get_cmap("tab10")(i)
        ax.plot(x, [r["downstream_miou"][d] for r in arms], "o-", color=color, label=f"{d} (pretrained)")
        if rnd is not None:
            ax.axhline(rnd["downstream_miou"][d], color=color, ls="--", lw=1, label=f"{d} (random init)")
    ax.set_xlabel("pixel label-noise rate of the pretraining masks")
    ax.set_ylabel("downstream mIoU (clean test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def noise_study_layers(path: str, analysis: dict[str, list[dict]]) -> str | None:
    """2 x 2: final relative weight change and Fisher ratio per layer (all arms), and both over
    training for the first and the last arm (rows of ``rsjax.evaluate.layers``)."""
    arms = list(analysis)
    last = {a: analysis[a][-1] for a in arms if analysis[a]}
    if not last:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    groups = list(next(iter(last.values()))["weights"])
    levels = list(next(iter(last.values()))["fisher"])
    for i, a in enumerate(last):
        color = plt.get_cmap("viridis")(i / max(1, len(last) - 1))
        axes[0, 0].plot(groups, [last[a]["weights"][g]["rel_change"] for g in groups], "o-", color=color, label=a)
        axes[0, 1].plot(levels, [last[a]["fisher"][lv] for lv in levels], "o-", color=color, label=a)
    axes[0, 0].set_title("weight change from init ||W - W0|| / ||W0|| (end of pretraining)", fontsize=9)
    axes[0, 1].set_title("Fisher ratio of clean classes per feature level (end)", fontsize=9)
    axes[0, 1].set_yscale("log")
    pair = [arms[0], arms[-1]] if len(arms) > 1 else arms
    styles = ["-", "--"]
    for j, a in enumerate(pair):
        rows = analysis[a]
        steps = [r["step"] for r in rows]
        for i, g in enumerate(groups):
            axes[1, 0].plot(
                steps,
                [r["weights"][g]["rel_change"] for r in rows],
                styles[j],
                color=plt.get_cmap("tab20")(i % 20),
                label=g if j == 0 else None,
            )
        for i, lv in enumerate(levels):
            axes[1, 1].plot(
                steps,
                [np.nan if r["fisher"][lv] is None else r["fisher"][lv] for r in rows],
                styles[j],
                color=plt.get_cmap("tab20")(i % 20),
                label=f"{lv} ({a})",
            )
    axes[1, 0].set_title(f"weight change over training: {pair[0]} (solid) vs {pair[-1]} (dashed)", fontsize=9)
    axes[1, 1].set_title(f"Fisher ratio over training: {pair[0]} (solid) vs {pair[-1]} (dashed)", fontsize=9)
    axes[1, 1].set_yscale("log")
    for ax in axes[1]:
        ax.set_xlabel("step")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=5, ncol=2)
    axes[1, 1].legend(fontsize=5, ncol=2)
    for ax in axes[0]:
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
