"""Dose weighting of aligned frames (Grant & Grigorieff 2015, doi:10.7554/eLife.06980).

Radiation damage removes high-resolution signal as the exposure grows: at
spatial frequency k (1/Å) the amplitude left after an exposure N (e⁻/Å²) is
exp(−N / (2 N_e(k))) with the critical exposure

    N_e(k) = 0.245 · k^−1.665 + 2.81   (e⁻/Å²).

Frame f (1-based) is weighted by that amplitude at its mid-exposure
N_f = pre-exposure + (f − ½) · dose per frame, and the weights are
normalised per frequency so that Σ_f w_f(k)² = number of frames: the
shot noise of the weighted sum is white and as strong as that of the plain
sum (and the zero frequency, where nothing is damaged, gets weight 1), while
the signal gains wherever later frames have lost it.
"""

from __future__ import annotations

import numpy as np

from spa.motion.fourier import frequencies


def critical_exposure(k, xp=np):
    """N_e(k) in e⁻/Å² at spatial frequency k (1/Å); infinite at k = 0."""
    k = xp.asarray(k, dtype=xp.float32)
    safe = xp.where(k > 0, k, 1.0)
    return xp.where(k > 0, 0.245 * safe ** -1.665 + 2.81, xp.inf).astype(xp.float32)


class DoseWeights:
    """Per-frame weights on the rfft2 grid of (ny, nx) frames of ``pixel_size`` Å (computed frame by frame)."""

    def __init__(self, ny: int, nx: int, pixel_size: float, dose_per_frame: float, n_frames: int,
                 pre_exposure: float = 0.0, first_frame: int = 1, xp=np):
        self.xp = xp
        ky, kx = frequencies(ny, nx, xp, pixel_size)
        self._half_ne = 2.0 * critical_exposure(xp.sqrt(ky * ky + kx * kx), xp)
        self.dose, self.pre, self.first = float(dose_per_frame), float(pre_exposure), int(first_frame)
        self.n_frames = int(n_frames)
        norm = xp.zeros(self._half_ne.shape, dtype=xp.float32)
        for i in range(self.n_frames):
            norm += self._raw(i) ** 2
        self._scale = xp.sqrt(np.float32(self.n_frames) / norm).astype(xp.float32)

    def exposure(self, index: int) -> float:
        """Mid-frame exposure (e⁻/Å²) of the ``index``-th frame summed (0-based, counted from the first frame)."""
        return self.pre + (self.first - 1 + index + 0.5) * self.dose

    def _raw(self, index: int):
        return self.xp.exp(-self.exposure(index) / self._half_ne).astype(self.xp.float32)

    def weight(self, index: int):
        """Normalised weight (ny, nx//2+1) of the ``index``-th frame summed."""
        return self._raw(index) * self._scale
