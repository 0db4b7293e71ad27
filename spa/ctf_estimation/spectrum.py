"""A micrograph's amplitude spectrum, averaged over tiles, with its smooth background removed.

The micrograph is cut into square tiles of ``tile`` px (half overlapping),
each tile's mean removed and an edge taper applied; the squared moduli of
their transforms are averaged (periodogram averaging) and the square root
taken: the amplitude spectrum on the rfft grid of one tile, ~|CTF|·envelope
plus a smooth background.  The background is the spectrum blurred over
about a Thon ring's width (a Gaussian of ``background_px`` Fourier pixels),
subtracted, leaving the oscillation the CTF model is fitted to.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def tiled_amplitude_spectrum(micrograph: np.ndarray, tile: int = 512) -> np.ndarray:
    """Average amplitude spectrum (tile, tile//2 + 1) of half-overlapping tiles (rfft layout, unshifted)."""
    img = np.asarray(micrograph, np.float64)
    rows, cols = img.shape
    tile = int(min(tile, rows, cols)) // 2 * 2
    step = tile // 2
    taper = np.outer(np.hanning(tile), np.hanning(tile))
    acc = np.zeros((tile, tile // 2 + 1))
    count = 0
    for r in range(0, rows - tile + 1, step):
        for c in range(0, cols - tile + 1, step):
            t = img[r:r + tile, c:c + tile]
            acc += np.abs(np.fft.rfft2((t - t.mean()) * taper)) ** 2
            count += 1
    return np.sqrt(acc / max(count, 1))


def full_plane(half: np.ndarray) -> np.ndarray:
    """The rfft half plane (B, B//2+1) as a centred full plane (B, B) (Friedel symmetry), for smoothing."""
    b = half.shape[0]
    full = np.empty((b, b))
    full[:, : b // 2 + 1] = half
    # F(-k) = conj F(k): mirror through the origin for the missing columns
    cols = np.arange(b // 2 + 1, b)
    full[:, cols] = half[(-np.arange(b)) % b][:, b - cols]
    return np.fft.fftshift(full)


def subtract_background(spectrum: np.ndarray, background_px: float) -> np.ndarray:
    """Spectrum minus its Gaussian-blurred self (σ = ``background_px`` Fourier pixels), rfft layout."""
    b = spectrum.shape[0]
    full = full_plane(spectrum)
    smooth = ndimage.gaussian_filter(full, background_px, mode="nearest")
    diff = np.fft.ifftshift(full - smooth)
    return diff[:, : b // 2 + 1]
