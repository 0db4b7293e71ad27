"""Density maps of the pseudo-atomic molecule: a sum of 3D Gaussians on a grid.

Each pseudo-atom is a normalised Gaussian of width σ (Å) and mass ``weight``,
sampled at voxel centres: V[z, y, x] = Σ_a w_a · g(x − x_a) g(y − y_a) g(z − z_a)
with g the unit-integral 1D Gaussian in *pixel* units, so a map sums (over z)
to the analytic projection of :mod:`spa.simulate.particles`.  The molecule's
origin sits at voxel (B//2, B//2, B//2).

Widths: σ = max(σ_atom, 0.6 × pixel size) (:func:`effective_sigma`).  A
Gaussian that narrow still falls to 17 % of its peak transform at Nyquist
(2 % of the power), so aliasing stays small, while the data keep signal up
to Nyquist — a map reconstructed from the true poses can reach it, as real
data at a matching pixel size do.  (At a full pixel the signal would vanish
beyond ~0.7 × Nyquist and no method could be tested there.)
"""

from __future__ import annotations

import numpy as np

from spa.simulate.molecule import Molecule

TRUNCATE = 4.0  # Gaussians are evaluated within ± TRUNCATE σ
MIN_SIGMA_PX = 0.6  # narrowest Gaussian, in pixels (see the module docstring)


def effective_sigma(sigmas, pixel_size: float) -> np.ndarray:
    """Per-atom Gaussian width in Å used on a grid of ``pixel_size`` Å (≥ 0.6 pixel)."""
    return np.maximum(np.asarray(sigmas, dtype=np.float64), MIN_SIGMA_PX * float(pixel_size))


def gaussian_windows(centres, sigma_px, half: int) -> tuple[np.ndarray, np.ndarray]:
    """1D unit-integral Gaussians sampled on integer pixels near each centre.

    Parameters
    ----------
    centres : (..., N) float
        Centres in pixels (array index coordinates).
    sigma_px : (N,) float
        Widths in pixels.
    half : int
        Window half-width; the window is ``2·half + 1`` pixels.

    Returns
    -------
    start : (..., N) int64, first pixel index of each window;
    values : (..., N, 2·half + 1) float32, the Gaussian at start + j.
    """
    centres = np.asarray(centres)
    start = np.floor(centres).astype(np.int64) - half
    j = np.arange(2 * half + 1, dtype=np.float32)
    d = (start - centres).astype(np.float32)[..., None] + j
    inv = (-0.5 / np.asarray(sigma_px, np.float32) ** 2)[:, None]
    norm = (1.0 / (np.sqrt(2 * np.pi) * np.asarray(sigma_px, np.float32)))[:, None]
    d *= d
    d *= inv
    values = np.exp(d)
    values *= norm
    return start, values


def window_half(sigma_px) -> int:
    """Half-width (pixels) of the window that holds ± TRUNCATE σ of the widest Gaussian."""
    return int(np.ceil(TRUNCATE * float(np.max(sigma_px)))) if np.size(sigma_px) else 1


def render_map(molecule: Molecule, box: int, pixel_size: float, *, chunk_atoms: int = 2048) -> np.ndarray:
    """The molecule's density on a (box, box, box) grid of ``pixel_size`` Å, float32, [z, y, x].

    Units: mass per voxel (each atom's Gaussian sums to its weight over the
    grid when it lies inside).  Atoms whose window leaves the box are clipped.
    """
    box = int(box)
    vol = np.zeros(box**3, dtype=np.float64)
    if len(molecule) == 0:
        return vol.reshape((box,) * 3).astype(np.float32)
    sig_px = effective_sigma(molecule.sigmas, pixel_size) / pixel_size
    half = window_half(sig_px)
    w = 2 * half + 1
    centre = box // 2
    pos = molecule.coords / pixel_size + centre  # (N, 3) in (x, y, z) pixel coordinates
    for lo in range(0, len(pos), chunk_atoms):
        sl = slice(lo, lo + chunk_atoms)
        sx, gx = gaussian_windows(pos[sl, 0], sig_px[sl], half)
        sy, gy = gaussian_windows(pos[sl, 1], sig_px[sl], half)
        sz, gz = gaussian_windows(pos[sl, 2], sig_px[sl], half)
        gx = gx * molecule.weights[sl, None].astype(np.float32)
        vals = gz[:, :, None, None] * gy[:, None, :, None] * gx[:, None, None, :]
        j = np.arange(w)
        iz = sz[:, None] + j  # (n, w)
        iy = sy[:, None] + j
        ix = sx[:, None] + j
        inside = ((iz >= 0) & (iz < box))[:, :, None, None] & ((iy >= 0) & (iy < box))[:, None, :, None]
        inside = inside & ((ix >= 0) & (ix < box))[:, None, None, :]
        flat = (iz[:, :, None, None] * box + iy[:, None, :, None]) * box + ix[:, None, None, :]
        vol += np.bincount(flat[inside], weights=vals[inside], minlength=box**3)
    return vol.reshape((box,) * 3).astype(np.float32)


def write_map(path, volume: np.ndarray, pixel_size: float, provenance: dict | None = None) -> None:
    """Write a map as MRC (float32, voxel size ``pixel_size`` Å), atomically."""
    from spa.io.mrc import write_mrc  # noqa: PLC0415

    write_mrc(path, np.asarray(volume, dtype=np.float32), pixel_size, provenance=provenance)
