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
