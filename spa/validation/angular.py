"""How well a set of projection directions samples Fourier space (Baldwin & Lyumkis 2020).

By the central-section theorem every particle fills the plane through the
origin perpendicular to its projection direction d (the third row of its
Euler matrix).  On a sphere of points k in Fourier space, the sampling S(k) is
the number of planes passing within ``width`` degrees of k (|k·d| < sin width),
counted over the symmetry-expanded directions.  Three numbers summarise it:

* the *sampling compensation factor* SCF = 1 / (⟨1/S⟩ · ⟨S⟩) over the points
  that are sampled: 1 for a uniform set, lower the more uneven the sampling
  (it multiplies the number of particles a reconstruction effectively has, in
  Baldwin & Lyumkis's analysis of the FSC);
* the fraction of the sphere that no plane reaches (a missing cone or wedge:
  no number of particles fills it);
* the *efficiency of the orientation distribution* E_od (Naydenova & Russo
  2017, https://doi.org/10.1038/s41467-017-00782-3): the point-spread
  function of a reconstruction from these directions is narrowest along a
  direction k in proportion to √S(k) (the SSNR there grows with S), so the
  directional resolution goes as √S; E_od is the harmonic mean of √S over the
  sphere divided by its arithmetic mean — 1 for a uniform set, lower the more
  the resolution varies with direction, 0 when a direction is not sampled at
  all.  (cryoEF evaluates the same ratio on its own transfer function; ours
  is the plane count S with the given width, so values agree in trend, not to
  the digit.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.geometry.symmetry import directions_from_angles, symmetry_matrices


@dataclass
class Sampling:
    """``points`` (M, 3) on the unit sphere, ``counts`` (M,) planes near each; ``scf``; ``empty_fraction``;
    ``efficiency`` (E_od)."""

    points: np.ndarray
    counts: np.ndarray
    scf: float
    empty_fraction: float
    efficiency: float


def fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly uniform points on the unit sphere (M, 3)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z * z)
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z])


def expanded_directions(rot, tilt, symmetry: str = "C1") -> np.ndarray:
    """Projection directions (N·|G|, 3) of (rot, tilt) in degrees, expanded by the point group."""
    d = directions_from_angles(rot, tilt).reshape(-1, 3)
    return np.concatenate([d @ r.T for r in symmetry_matrices(symmetry)], axis=0)


def fourier_sampling(rot, tilt, symmetry: str = "C1", *, width: float = 3.0, points: int = 2000,
                     max_directions: int = 20000, seed: int = 0) -> Sampling:
    """Sampling of Fourier space by the central planes of the given directions (see the module docstring).
    More than ``max_directions`` directions are a seeded random subset (the measure is a ratio)."""
    d = expanded_directions(rot, tilt, symmetry)
    if len(d) > max_directions:
        d = d[np.random.default_rng(seed).choice(len(d), max_directions, replace=False)]
    k = fibonacci_sphere(points)
    near = np.sin(np.deg2rad(width))
    counts = np.zeros(len(k))
    for lo in range(0, len(d), 2048):
        counts += (np.abs(k @ d[lo:lo + 2048].T) < near).sum(axis=1)
    sampled = counts > 0
    empty = float(1 - sampled.mean())
    scf = float(1.0 / (np.mean(1.0 / counts[sampled]) * np.mean(counts[sampled]))) if sampled.any() else 0.0
    return Sampling(k, counts, scf, empty, orientation_efficiency(counts))


def orientation_efficiency(counts) -> float:
    """E_od of a sampling S(k) on the sphere: harmonic mean of √S over its arithmetic mean (0 when some
    direction is unsampled; see the module docstring)."""
    root = np.sqrt(np.asarray(counts, np.float64))
    if root.size == 0 or np.any(root == 0):
        return 0.0
    return float(1.0 / (np.mean(1.0 / root) * np.mean(root)))


def plot_distribution(path, rot, tilt, sampling: Sampling, title: str = "", symmetry: str = "C1") -> None:
    """Two panels: particle directions folded into the asymmetric unit of ``symmetry`` (Mollweide, counts
    per cell) and the Fourier-space sampling S(k)."""
    from spa.geometry.symmetry import to_asymmetric_unit
    from spa.plots import _pyplot, save_figure

    plt = _pyplot()
    fig = plt.figure(figsize=(11, 3.4), dpi=90)
    ax = fig.add_subplot(1, 2, 1, projection="mollweide")
    rot, tilt = to_asymmetric_unit(np.asarray(rot, float), np.asarray(tilt, float), symmetry)
    lon = np.deg2rad((rot + 180) % 360 - 180)
    lat = np.deg2rad(90 - tilt)
    hb = ax.hexbin(lon, lat, gridsize=36, mincnt=1, cmap="viridis")
    fig.colorbar(hb, ax=ax, shrink=0.6, label="particles")
    ax.set_title(f"projection directions (rot, 90° − tilt), {symmetry} asymmetric unit", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2, projection="mollweide")
    k = sampling.points
    sc = ax2.scatter(np.arctan2(k[:, 1], k[:, 0]), np.arcsin(np.clip(k[:, 2], -1, 1)), c=sampling.counts, s=6,
                     cmap="magma")
    fig.colorbar(sc, ax=ax2, shrink=0.6, label="planes within the width")
    ax2.set_title(f"Fourier sampling: E_od {sampling.efficiency:.2f}, SCF {sampling.scf:.2f}, "
                  f"empty {100 * sampling.empty_fraction:.1f} %", fontsize=9)
    ax2.grid(True, alpha=0.3)
    for a in (ax, ax2):
        a.set_xticklabels([])  # longitude labels overlap on a small Mollweide; the grid says enough
        a.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.03, right=0.97, bottom=0.04, top=0.88, wspace=0.12)
    save_figure(fig, path, tight=False)
