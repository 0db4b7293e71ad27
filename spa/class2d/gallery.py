"""Class-average gallery: one PNG with the classes sorted by size, with % of particles and resolution."""

from __future__ import annotations

import math

import numpy as np

from spa.io.atomic import atomic_path


def write_gallery(path, images: np.ndarray, fractions, resolutions, *, selected=None, columns: int | None = None,
                  title: str | None = None, notes: list[str] | None = None) -> list[int]:
    """Write ``images`` (K, B, B) as a grid sorted by ``fractions`` (largest first).

    Each panel is labelled "class N · x.x % · y.y Å"; classes in ``selected``
    (1-based numbers) get a green frame; ``notes`` (per class, may hold "\n") are printed under each
    panel, lines starting with "✗" in red.  Returns the 1-based class order used.
    """
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    images = np.asarray(images, np.float32)
    k = images.shape[0]
    order = [int(i) for i in np.argsort(-np.asarray(fractions), kind="stable")]
    cols = columns or min(k, max(1, int(math.ceil(math.sqrt(k * 1.5)))))
    rows = int(math.ceil(k / cols)) if k else 1
    extra = 0.45 if notes else 0.0
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, (2.1 + extra) * rows), squeeze=False)
    sel = set(selected or [])
    for ax in axes.ravel():
        ax.axis("off")
    for j, c in enumerate(order):
        ax = axes.ravel()[j]
        im = images[c]
        lo, hi = np.percentile(im, [1, 99.5]) if np.ptp(im) > 0 else (0, 1)
        ax.imshow(im, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower")
        res = resolutions[c]
        res_txt = f"{res:.1f} Å" if np.isfinite(res) and res < 900 else "– Å"
        ax.set_title(f"{c + 1} · {100 * fractions[c]:.1f}% · {res_txt}", fontsize=7)
        if notes and notes[c]:
            for j, line in enumerate(notes[c].split("\n")):
                ax.text(0.5, -0.04 - 0.11 * j, line, transform=ax.transAxes, ha="center", va="top", fontsize=5,
                        color="red" if line.startswith("✗") else "black")
        if (c + 1) in sel:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_edgecolor("lime")
                s.set_linewidth(2.5)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return [c + 1 for c in order]


def write_residual_examples(path, examples) -> None:
    """One row per (title, image, model, residual): the particle, its posed CTF-modulated class average and
    what is left (same grey scale for the three)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    n = len(examples)
    fig, axes = plt.subplots(n, 3, figsize=(5.4, 1.8 * n), squeeze=False)
    for row, (title, image, model, residual) in zip(axes, examples):
        lo, hi = np.percentile(image, [1, 99])
        for ax, im, name in zip(row, (image, model, residual), ("particle", "class average at its pose", "residual")):
            ax.imshow(im, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=6)
        row[0].set_ylabel(title, fontsize=5)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
