"""ResLog (Stagg et al. 2014): resolution against the number of particles, and the B-factor of the data.

Random subsets of N particles (N halving from the whole set), each split into
its two random halves and reconstructed from the refined poses; the resolution
d where their FSC drops below 0.143.  With a B-factor envelope, the signal at
spatial frequency s falls as exp(−B s²/2) in power, so the N needed to reach
s grows as exp(B s²/2): 1/d² = (2/B)·ln N + const.  The slope of 1/d² against
ln N gives B = 2/slope (Rosenthal & Henderson 2003); a steeper curve (smaller
B) means particles that are worth more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.em.fsc import fsc, reaches_threshold_at_nyquist, resolution_at
from spa.reconstruct import reconstruct_table


@dataclass
class ResLog:
    """Subset sizes, resolutions (Å), whether each reached Nyquist, and the fit (B in Å², or None)."""

    sizes: np.ndarray
    resolutions: np.ndarray
    at_nyquist: np.ndarray
    bfactor: float | None
    slope: float | None
    intercept: float | None


def reslog(table, star_path, *, sizes=None, symmetry: str = "C1", seed: int = 0, steps: int = 5,
           min_particles: int = 100, progress=None) -> ResLog:
    """ResLog of a refined particle table (poses, CTF); ``sizes`` default: the whole set halved ``steps``
    times (none below ``min_particles``).  Points at Nyquist are reported but not fitted (a bound)."""
    n = len(table)
    if sizes is None:
        sizes = [n // 2**k for k in range(steps) if n // 2**k >= min_particles]
    rng = np.random.default_rng(seed)
    res, nyq = [], []
    pixel = float(table["rlnImagePixelSize"].iloc[0])
    for i, size in enumerate(sizes):
        rows = table.iloc[np.sort(rng.choice(n, size, replace=False))].reset_index(drop=True)
        halves = np.arange(size) % 2
        maps = [reconstruct_table(rows[halves == h].reset_index(drop=True), star_path, symmetry=symmetry)[0]
                for h in (0, 1)]
        box = maps[0].shape[-1]
        radius = box // 2 - 2
        from spa.fourier import soft_spherical_mask

        sphere = soft_spherical_mask(box, radius, 3.0)
        curve = fsc(maps[0], maps[1], sphere)
        res.append(resolution_at(curve, 0.143, box, pixel))
        nyq.append(reaches_threshold_at_nyquist(curve, 0.143))
        if progress:
            progress(i + 1, len(sizes))
    sizes, res, nyq = np.asarray(sizes, float), np.asarray(res), np.asarray(nyq)
    fit = (~nyq) & np.isfinite(res)
    bfactor = slope = intercept = None
    if fit.sum() >= 2:
        slope, intercept = np.polyfit(np.log(sizes[fit]), 1.0 / res[fit] ** 2, 1)
        bfactor = float(2.0 / slope) if slope > 0 else None
        slope, intercept = float(slope), float(intercept)
    return ResLog(sizes, res, nyq, bfactor, slope, intercept)


def plot_reslog(path, result: ResLog) -> None:
    from spa.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    x, y = np.log(result.sizes), 1.0 / result.resolutions**2
    ax.plot(x[~result.at_nyquist], y[~result.at_nyquist], "o", label="subsets")
    if result.at_nyquist.any():
        ax.plot(x[result.at_nyquist], y[result.at_nyquist], "^", label="at Nyquist (a bound, not fitted)")
    if result.slope is not None:
        xx = np.linspace(x.min(), x.max(), 20)
        label = f"fit: B = {result.bfactor:.0f} Å²" if result.bfactor else "fit"
        ax.plot(xx, result.intercept + result.slope * xx, "k--", label=label)
    ax.set_xlabel("ln(number of particles)")
    ax.set_ylabel("1 / resolution² (Å⁻²)")
    ax.legend(fontsize=8)
    save_figure(fig, path)
