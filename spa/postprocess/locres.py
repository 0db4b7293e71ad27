"""Local resolution: the FSC of the half maps in a sliding soft window (as blocres and RELION's LocalRes).

At points of a grid (``step`` Å apart) inside the mask, a cube of
``window`` Å around the point is cut from each half map, multiplied by a soft
spherical window (raised-cosine edge), and the FSC of the two windowed cubes
gives the local resolution where it first drops below ``threshold`` (0.143 by
default, as RELION's LocalRes; Nyquist where it never does, ∞-capped at the
window's own resolution).  The grid of values is interpolated (trilinear) to
every voxel of the mask.

Local filtering low-passes the map at each voxel's local resolution: the map
is low-passed at a ladder of resolutions and each voxel takes the value of the
map filtered at its own resolution (linear between the two nearest rungs).

The window must be large enough for a meaningful FSC (≥ ~10 px across) and
small enough to resolve the map's variation; its size limits the lowest
resolution it can report (the window's first shell).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spa.em.fsc import resolution_at
from spa.fourier import lowpass, real_radius, shells_3d


@dataclass
class LocalResolution:
    """Local resolution (Å) per voxel (``resolution``; NaN outside the mask), the sample points
    (``points``, (n, 3) voxel indices z, y, x) and their values (``values``, Å)."""

    resolution: np.ndarray
    points: np.ndarray
    values: np.ndarray


def _window_fsc(c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """FSC per shell of stacks of cubes (n, W, W, W) → (n, W//2 + 1)."""
    w = c1.shape[-1]
    f1 = np.fft.rfftn(c1, axes=(1, 2, 3))
    f2 = np.fft.rfftn(c2, axes=(1, 2, 3))
    n_shells = w // 2 + 1
    sh = shells_3d(w).ravel()
    keep = sh < n_shells
    mult = np.full(f1.shape[-1], 2.0)
    mult[0] = 1.0
    if w % 2 == 0:
        mult[-1] = 1.0
    weight = np.broadcast_to(mult, f1.shape[1:]).ravel()[keep]
    onehot = np.zeros((int(keep.sum()), n_shells))
    onehot[np.arange(onehot.shape[0]), sh[keep]] = 1.0
    a = f1.reshape(len(c1), -1)[:, keep]
    b = f2.reshape(len(c2), -1)[:, keep]
    num = ((a * b.conj()).real * weight) @ onehot
    d1 = ((np.abs(a) ** 2) * weight) @ onehot
    d2 = ((np.abs(b) ** 2) * weight) @ onehot
    return num / np.sqrt(np.maximum(d1 * d2, 1e-300))


def whiten(half1: np.ndarray, half2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both halves divided per Fourier shell by their common rms amplitude.

    A window multiplies the map, so it spreads each shell's coefficients over
    neighbouring shells; a map's strong low-resolution signal then leaks into
    shells where the halves hold only noise, and the windowed FSC stays high
    far beyond the region's true resolution (the mask effect that Chen et al.
    correct globally).  With every shell at the same power, what leaks is a
    small fraction of one shell's power against another's, so the local FSC
    reads the region's own signal.  The same per-shell scale on both halves
    leaves the global FSC unchanged.
    """
    box = half1.shape[-1]
    f1 = np.fft.rfftn(np.asarray(half1, np.float64))
    f2 = np.fft.rfftn(np.asarray(half2, np.float64))
    sh = shells_3d(box)
    n = int(sh.max()) + 1
    power = np.bincount(sh.ravel(), weights=(0.5 * (np.abs(f1) ** 2 + np.abs(f2) ** 2)).ravel(), minlength=n)
    count = np.bincount(sh.ravel(), minlength=n)
    scale = 1.0 / np.sqrt(np.maximum(power / np.maximum(count, 1), 1e-30))
    scale[0] = 0.0  # no DC: the windowed FSC ignores the mean anyway
    out = [np.fft.irfftn(f * scale[sh], s=half1.shape, axes=(0, 1, 2)).astype(np.float32) for f in (f1, f2)]
    return out[0], out[1]


def local_resolution(half1: np.ndarray, half2: np.ndarray, mask: np.ndarray, pixel_size: float, *,
                     window: float = 24.0, step: float | None = None, threshold: float = 0.143,
                     batch: int = 256, progress=None) -> LocalResolution:
    """Local resolution of two half maps inside ``mask`` (> 0.5); ``window`` and ``step`` in Å
    (step default: a quarter of the window, at least one voxel)."""
    box = half1.shape[-1]
    w = int(round(window / pixel_size))
    w += w % 2
    w = max(8, min(w, box))
    step_px = max(1, int(round((step if step else window / 4) / pixel_size)))
    # a Gaussian window (σ = w/6, cut at the cube's faces ≈ 3σ): its transform is a Gaussian of σ ≈ 1
    # window shell, with none of a hard sphere's slowly decaying side lobes, so signal leaks ~1 shell
    radius = real_radius(w, 3)
    soft = np.exp(-0.5 * (radius / (w / 6)) ** 2).astype(np.float32)
    inside = mask > 0.5
    grid = np.arange(0, box, step_px)
    zz, yy, xx = np.meshgrid(grid, grid, grid, indexing="ij")
    points = np.column_stack([zz.ravel(), yy.ravel(), xx.ravel()])
    points = points[inside[points[:, 0], points[:, 1], points[:, 2]]]
    pad = w // 2
    white1, white2 = whiten(half1, half2)
    p1 = np.pad(white1, pad, mode="constant")
    p2 = np.pad(white2, pad, mode="constant")
    values = np.empty(len(points))
    for lo in range(0, len(points), batch):
        pts = points[lo:lo + batch]
        c1 = np.stack([p1[z:z + w, y:y + w, x:x + w] for z, y, x in pts]) * soft
        c2 = np.stack([p2[z:z + w, y:y + w, x:x + w] for z, y, x in pts]) * soft
        curves = _window_fsc(c1 - c1.mean(axis=(1, 2, 3), keepdims=True), c2 - c2.mean(axis=(1, 2, 3), keepdims=True))
        values[lo:lo + batch] = [min(resolution_at(c, threshold, w, pixel_size), w * pixel_size) for c in curves]
        if progress:
            progress(min(lo + batch, len(points)), len(points))
    resolution = _interpolate(points, values, step_px, box, inside)
    return LocalResolution(resolution, points, values)


def _interpolate(points, values, step_px, box, inside) -> np.ndarray:
    """Sample values on the coarse grid → every voxel (trilinear on the grid, nearest sample to fill
    grid nodes outside the mask), NaN outside the mask."""
    n = -(-box // step_px)
    coarse = np.full((n, n, n), np.nan)
    idx = points // step_px
    coarse[idx[:, 0], idx[:, 1], idx[:, 2]] = values
    missing = np.isnan(coarse)
    if missing.all():
        return np.full((box,) * 3, np.nan, np.float32)
    nearest = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
    filled = coarse[tuple(nearest)]
    coords = np.meshgrid(*([np.arange(box) / step_px] * 3), indexing="ij")
    full = ndimage.map_coordinates(filled, coords, order=1, mode="nearest")
    return np.where(inside, full, np.nan).astype(np.float32)


def local_filter(volume: np.ndarray, local: np.ndarray, pixel_size: float) -> np.ndarray:
    """The map low-passed at each voxel's local resolution (Å; NaN voxels take the coarsest).

    The map is low-passed at every Fourier shell between the finest and the
    coarsest local resolution (one filtered copy per shell, at most B/2), and
    each voxel interpolates linearly, in spatial frequency, between the two
    copies around its own resolution.
    """
    box = volume.shape[-1]
    finite = local[np.isfinite(local)]
    if finite.size == 0:
        return np.asarray(volume, np.float32)
    shell = np.where(np.isfinite(local), box * pixel_size / np.where(np.isfinite(local), local, 1.0), np.nan)
    lo_shell = max(1, int(np.floor(np.nanmin(shell))))
    hi_shell = min(box // 2, int(np.ceil(np.nanmax(shell))))
    shells = np.arange(lo_shell, hi_shell + 1)
    shell = np.where(np.isfinite(shell), shell, lo_shell)
    out = np.zeros(volume.shape, np.float32)
    for k in shells:  # accumulate the two rungs around each voxel's shell, one filtered copy at a time
        filtered = lowpass(np.asarray(volume, np.float32), pixel_size, box * pixel_size / k, ndim=3)
        weight = np.clip(1.0 - np.abs(shell - k), 0.0, 1.0)
        if k == shells[0]:
            weight = np.where(shell <= k, 1.0, weight)
        if k == shells[-1]:
            weight = np.where(shell >= k, 1.0, weight)
        out += (weight * filtered).astype(np.float32)
    return out
