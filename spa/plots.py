"""Figures (matplotlib, Agg: no display needed), written atomically as PNG."""

from __future__ import annotations

import numpy as np

from spa.io.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fsc(path, curves, box: int, pixel_size: float, thresholds=(0.143, 0.5)) -> None:
    """FSC curves against resolution (1/Å) with threshold lines; ``curves`` = [(values, label), …]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for values, label in curves:
        s = np.arange(len(values))
        ax.plot(s / (box * pixel_size), values, label=label)
    for t in thresholds:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("resolution (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=8)
    top = ax.secondary_xaxis("top", functions=(lambda x: 1 / np.maximum(x, 1e-6), lambda x: 1 / np.maximum(x, 1e-6)))
    top.set_xlabel("Å")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
