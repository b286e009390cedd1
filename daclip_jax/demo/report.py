"""The demo's report: loss curves, confusion matrix, tables and before/after grids.

Writes `report.md` beside the PNGs it references, so it reads on GitHub, in an editor
or converted to HTML. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path: str) -> str:
    """One panel per training stage: loss against step (log scale when it spans decades)."""
    plt = _pyplot()
    n = max(len(curves), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False)
    for ax, (name, points) in zip(axes[0], curves.items()):
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, lw=1.2)
            if min(losses) > 0 and max(losses) / min(losses) > 20:
                ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], path: str,
                   title: str = "degradation classification (held-out)") -> str:
    """Row-normalised confusion matrix (rows: true type, columns: predicted)."""
    plt = _pyplot()
    m = np.asarray(matrix, np.float64)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(path: str, title: str, sections: Sequence[tuple[str, str]]) -> str:
    """`sections`: (heading, markdown body); image links are relative to `path`'s folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# {title}\n\n")
        for heading, body in sections:
            f.write(f"## {heading}\n\n{body.strip()}\n\n")
    return path
