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
    """Average amplitude spectrum (tile, tile//2 + 1) of half-overlapping tiles (rfft layout, unshifted).

    The tiles of one row go through one batched single-precision FFT (scipy.fft); the power is summed in
    double precision."""
    import scipy.fft as sfft

    img = np.asarray(micrograph, np.float32)
    rows, cols = img.shape
    tile = int(min(tile, rows, cols)) // 2 * 2
    step = tile // 2
    taper = np.outer(np.hanning(tile), np.hanning(tile)).astype(np.float32)
    starts = range(0, cols - tile + 1, step)
    acc = np.zeros((tile, tile // 2 + 1))
    count = 0
    for r in range(0, rows - tile + 1, step):
        band = img[r:r + tile]
        tiles = np.stack([band[:, c:c + tile] for c in starts])  # (n, tile, tile)
        tiles -= tiles.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)
        tiles *= taper
        f = sfft.rfft2(tiles, axes=(-2, -1))
        acc += (f.real * f.real + f.imag * f.imag).sum(axis=0, dtype=np.float64)
        count += len(tiles)
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
