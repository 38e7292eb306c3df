"""Analysis plots: accuracy sensitivity per group and level; each group's share of the dense latency."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_sensitivity(result: dict, out: Path) -> Path:
    """Grouped bars: mAP50-95 drop (points) per group, one bar per level."""
    groups, levels = result["groups"], result["levels"]
    fig, ax = plt.subplots(figsize=(max(8, 0.22 * len(groups) * len(levels)), 4))
    width = 0.8 / len(levels)
    for k, lv in enumerate(levels):
        ax.bar([i + k * width for i in range(len(groups))],
               [100 * g["accuracy"][f"{lv:g}"]["map_drop"] for g in groups], width, label=f"-{lv:.0%} channels")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], [g["id"].removesuffix(".conv") for g in groups],
                  rotation=90, fontsize=6)
    ax.set_ylabel("mAP50-95 drop (points)")
    ax.set_title("Accuracy sensitivity per coupled channel group")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_latency_share(result: dict, out: Path) -> Path:
    """Per group and engine: predicted latency saved at the highest level, as % of the dense latency."""
    groups, top = result["groups"], f"{max(result['levels']):g}"
    fig, ax = plt.subplots(figsize=(max(8, 0.18 * len(groups)), 4))
    engines = list(result["latency"])
    width = 0.8 / len(engines)
    for k, engine in enumerate(engines):
        dense = result["latency"][engine]["dense_ms"]
        ax.bar([i + k * width for i in range(len(groups))],
               [100 * g["latency_saving_ms"][engine][top] / dense for g in groups], width, label=engine)
    ax.set_xticks(range(len(groups)), [g["id"].removesuffix(".conv") for g in groups], rotation=90, fontsize=6)
    ax.set_ylabel(f"latency saved at -{float(top):.0%} (% of dense)")
    ax.set_title("Latency share per coupled channel group")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
