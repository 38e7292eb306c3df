"""PNG plots people look at: per-layer sparsity and sparsity over epochs (matplotlib, Agg, bundled fonts only)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_layer_sparsity(layer_sparsity: dict[str, float], out: str | Path, title: str = "Sparsity per layer") -> Path:
    """Horizontal bar chart, one bar per layer in model order."""
    names = list(layer_sparsity)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.18 * len(names) + 1)))
    ax.barh(range(len(names)), [layer_sparsity[n] * 100 for n in names], color="#3b7dd8")
    ax.set_yticks(range(len(names)), [n.removesuffix(".weight") for n in names], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("zeros (%)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_sparsity_over_epochs(history: list[tuple[float, float]], out: str | Path) -> Path:
    """Overall sparsity (%) against (fractional) epoch."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if history:
        xs, ys = zip(*history)
        ax.plot(xs, [y * 100 for y in ys], marker="o", color="#d8633b")
    ax.set_xlabel("epoch")
    ax.set_ylabel("overall sparsity (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
