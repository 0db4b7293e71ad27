"""The extraction's figure for the report: a sample of the extracted particles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def particle_gallery(folder, particles: pd.DataFrame, star_path, *, count: int = 40, columns: int = 10) -> None:
    """``particles.png`` (``count`` particles evenly spaced through the stack, grey scale ±3 σ of the
    background) and ``figures.json`` in ``folder``."""
    from spa.io.images import ParticleImages
    from spa.plots import _pyplot, save_figure, write_figures_index

    n = len(particles)
    if not n:
        return
    rows = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))
    source = ParticleImages(particles.iloc[rows].reset_index(drop=True), star_path)
    images = source.read_all()
    source.close()
    plt = _pyplot()
    nrow = -(-len(rows) // columns)
    fig, axes = plt.subplots(nrow, columns, figsize=(columns * 0.9, nrow * 0.9 + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, row in zip(axes.ravel(), images, rows):
        ax.imshow(image, cmap="gray", vmin=-3, vmax=3)
        ax.set_title(str(row + 1), fontsize=6)
    fig.suptitle(f"{len(rows)} of {n} extracted particles", fontsize=9)
    save_figure(fig, Path(folder) / "particles.png")
    write_figures_index(folder, [{
        "file": "particles.png", "title": "Extracted particles",
        "caption": f"{len(rows)} of the {n} extracted particles, evenly spaced through the stack (numbers: "
                   "row in particles.star), after contrast inversion and normalisation: protein should be "
                   "white on a background of mean 0 and σ 1, shown from −3 σ (black) to +3 σ (white)."}])
