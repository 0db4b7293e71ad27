"""The extraction's figure for the report: a sample of the extracted particles."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def particle_gallery(folder, rows, images: np.ndarray, n: int, *, columns: int = 10) -> None:
    """``particles.png`` (the particles at stack rows ``rows``, 0-based, of ``n``; grey scale ±3 σ of the
    background) and ``figures.json`` in ``folder``."""
    from spa.plots import _pyplot, save_figure, write_figures_index

    if not len(rows):
        return
    plt = _pyplot()
    box, nrow = images.shape[-1], -(-len(rows) // columns)
    mosaic = np.full((nrow * (box + 2), columns * (box + 2)), np.nan, np.float32)  # one image: fast to draw
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        mosaic[r * (box + 2) + 1:r * (box + 2) + 1 + box, c * (box + 2) + 1:c * (box + 2) + 1 + box] = image
    fig, ax = plt.subplots(figsize=(columns * 0.9, nrow * 0.9 + 0.4))
    ax.imshow(np.ma.masked_invalid(mosaic), cmap="gray", vmin=-3, vmax=3, interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"{len(rows)} of {n} extracted particles, left to right, top to bottom "
                 f"(rows {rows[0] + 1}–{rows[-1] + 1} of particles.star)", fontsize=8)
    save_figure(fig, Path(folder) / "particles.png")
    write_figures_index(folder, [{
        "file": "particles.png", "title": "Extracted particles",
        "caption": f"{len(rows)} of the {n} extracted particles, evenly spaced through the stack, after contrast "
                   "inversion and normalisation: protein should be white on a background of mean 0 and σ 1, shown from −3 σ (black) to +3 σ (white)."}])
