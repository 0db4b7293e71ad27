"""Whole-frame (global) alignment of movie frames by iterative frame-to-sum cross-correlation.

Each frame (or group of frames) is correlated with the sum of all the OTHER
frames, each moved by its current shift (leaving the frame out of its own
reference removes the bias towards zero shift that its own noise would give),
after a B-factor low-pass exp(−B k²/4) that keeps the correlation peak
smooth and above the shot noise.  The peak within ``max_shift`` px is refined
to sub-pixel precision by a parabola along each axis.  The frames' new shifts
make the next reference; iterations stop when no shift changes by more than
``tolerance`` px (MotionCor2's scheme; Zheng et al. 2017, doi:10.1038/nmeth.4193).

Robustness to outlier frames (a frame without signal, a sudden jump):
frames whose correlation peak is much weaker than the others' are left out
of the reference, and after the iterations a smooth trajectory (a cubic in
time over a sliding window of 11 frames, fitted with iterative outlier
rejection) replaces any shift that lies
further from it than ``outlier_px`` and 4 robust standard deviations.

Shifts are the shifts to APPLY to each frame (RELION's rlnMicrographShiftX/Y),
in pixels of the frames given, relative to the first frame (frame 1 = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.backend import array_module, backend_of
from spa.motion.fourier import bfactor_filter, phase_ramp, subpixel_peak


@dataclass
class GlobalAlignment:
    """Result of :func:`align_frames`: shifts (n, 2) as (x, y) px, peak heights, outlier flags, iterations."""

    shifts: np.ndarray
    peaks: np.ndarray
    outliers: np.ndarray
    iterations: int


def _local_fit(times: np.ndarray, values: np.ndarray, keep: np.ndarray, half: int, degree: int) -> np.ndarray:
    """At each point, the value of a polynomial of ``degree`` fitted to the kept points among the
    2·half + 1 nearest in order (the window slides in at the ends, keeping its size)."""
    n = len(times)
    width = min(n, 2 * half + 1)
    out = np.empty_like(values)
    for i in range(n):
        lo = int(np.clip(i - half, 0, n - width))
        idx = np.arange(lo, lo + width)
        idx = idx[keep[idx]]
        deg = int(min(degree, max(len(idx) - 2, 0)))
        if len(idx) == 0:
            out[i] = values[i]
            continue
        basis = np.vander(times[idx] - times[i], deg + 1)
        coef, *_ = np.linalg.lstsq(basis, values[idx], rcond=None)
        out[i] = coef[-1]
    return out


def smooth_trajectory(times: np.ndarray, values: np.ndarray, degree: int = 3, threshold: float = 1.0,
                      rounds: int = 3, half: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Robust local-polynomial smoothing of a trajectory (n, 2) in ``times``: (smoothed values, outlier flags).

    Each point's smoothed value is a cubic (``degree``) fitted to the 2·``half`` + 1 nearest frames
    (a sliding window, so long movies whose drift turns are followed, unlike a single polynomial).  A
    point is an outlier when it lies further than ``threshold`` px and 4 robust (median-absolute-
    deviation) standard deviations from the fit made without the outliers found so far.
    """
    n = len(times)
    keep = np.ones(n, dtype=bool)
    fit = values.copy()
    if n < 4:
        return fit, ~keep
    for _ in range(rounds):
        fit = _local_fit(np.asarray(times, dtype=np.float64), values, keep, half, degree)
        dist = np.linalg.norm(values - fit, axis=1)
        mad = np.median(dist[keep]) * 1.4826
        new = dist <= max(threshold, 4.0 * mad)
        if np.array_equal(new, keep):
            break
        keep = new
    return fit, ~keep


def align_frames(spectra, pixel_size: float, *, bfactor: float = 150.0, max_shift: float = 40.0,
                 max_iter: int = 10, tolerance: float = 0.01, outlier_px: float = 1.0,
                 times: np.ndarray | None = None, initial: np.ndarray | None = None) -> GlobalAlignment:
    """Align frames given as rfft2 transforms ``spectra`` (n, ny, nx//2+1) of (ny, nx) frames.

    ``pixel_size`` (Å) sets the B-factor filter (``bfactor``, Å²); ``max_shift``
    bounds |shift| (px); ``times`` (n,) the frames' times for the smooth
    trajectory (default 0 … n−1); ``initial`` (n, 2) starting shifts.
    """
    xp = array_module(spectra)
    be = backend_of(spectra)
    n, ny, nxh = spectra.shape
    nx = 2 * (nxh - 1)
    times = np.arange(n, dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
    filt = bfactor_filter(ny, nx, pixel_size, bfactor, xp)
    shifts = np.zeros((n, 2)) if initial is None else np.array(initial, dtype=np.float64)
    peaks = np.zeros(n)
    use = np.ones(n, dtype=bool)
    radius = float(min(max_shift, 0.45 * min(ny, nx)))
    iteration = 0
    for iteration in range(1, max_iter + 1):
        moved = spectra * phase_ramp(ny, nx, shifts[:, 0], shifts[:, 1], xp)
        weights = xp.asarray(use.astype(np.float32))[:, None, None]
        total = (moved * weights).sum(axis=0)
        new = shifts.copy()
        for i in range(n):
            reference = total - moved[i] * weights[i]
            cc = be.irfftn(spectra[i] * xp.conj(reference) * filt, s=(ny, nx), axes=(-2, -1))
            # the frame's content sits at +t relative to the reference: the shift to apply is −t
            centre = -shifts[i]
            window = radius if iteration == 1 else min(radius, 6.0)  # later rounds refine near the last peak
            dy, dx, peaks[i] = subpixel_peak(cc, centre[1], centre[0], window)
            new[i] = (-dx, -dy)
        change = np.abs(new - shifts).max()
        shifts = new
        if n > 3:
            med = np.median(peaks)
            use = peaks >= 0.3 * med if med > 0 else np.ones(n, dtype=bool)
        if change < tolerance:
            break
    fit, outliers = smooth_trajectory(times, shifts, threshold=outlier_px)
    shifts = np.where(outliers[:, None], fit, shifts)
    shifts = shifts - shifts[0]
    return GlobalAlignment(shifts=shifts, peaks=peaks, outliers=outliers, iterations=iteration)
