"""Noise models of the simulated images.

Particle noise is Gaussian with a power spectrum that is part white, part
coloured (a Lorentzian fall-off, like the structured ice and detector MTF of
real data).  The spectrum is normalised so that the real-space variance of the
noise equals the requested ``variance`` exactly in expectation: the mean of the
power over the full Fourier grid is 1 (Parseval).

Micrograph backgrounds use smooth random fields (low-pass filtered white
noise) and 1/f-like textures made the same way.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from spa.fourier import rfft_weights


def _k_grid(shape: tuple[int, int], pixel_size: float) -> np.ndarray:
    """|k| in 1/Å on the rfft grid of a (ny, nx) image."""
    ky = np.fft.fftfreq(shape[0])[:, None] / pixel_size
    kx = np.fft.rfftfreq(shape[1])[None, :] / pixel_size
    return np.sqrt(ky * ky + kx * kx)


def _full_grid_mean(power: np.ndarray, nx: int) -> float:
    """Mean of ``power`` (on an rfft grid of width nx//2+1) over the full Fourier grid."""
    w = rfft_weights(nx).astype(np.float64)
    return float((power * w).sum() / (power.shape[0] * nx))


def noise_filter(box: int, pixel_size: float, white_fraction: float = 0.5, corner_res: float = 20.0) -> np.ndarray:
    """Amplitude filter H (B, B//2+1) float32 on the rfft grid; white noise × H has unit variance.

    Power = ``white_fraction`` + (1 − ``white_fraction``) · L(k)/mean(L), with
    the Lorentzian L(k) = 1 / (1 + (k · corner_res)²) (k in 1/Å, corner_res Å).
    """
    k = _k_grid((box, box), pixel_size)
    lor = 1.0 / (1.0 + (k * corner_res) ** 2)
    lor /= _full_grid_mean(lor, box)
    power = white_fraction + (1.0 - white_fraction) * lor
    return np.sqrt(power / _full_grid_mean(power, box)).astype(np.float32)


def coloured_noise(rng: np.random.Generator, n: int, box: int, filt: np.ndarray, workers: int = 1) -> np.ndarray:
    """(n, box, box) float32 Gaussian noise whose power spectrum is |filt|² (unit variance if normalised)."""
    white = rng.standard_normal((n, box, box), dtype=np.float32)
    return sfft.irfft2(sfft.rfft2(white, workers=workers) * filt, s=(box, box), workers=workers).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], pixel_size: float, length: float) -> np.ndarray:
    """A smooth random field (zero mean, unit SD) varying over ``length`` Å (Gaussian low-pass)."""
    white = rng.standard_normal(shape)
    k = _k_grid(shape, pixel_size)
    f = sfft.rfft2(white) * np.exp(-0.5 * (k * length) ** 2)
    out = sfft.irfft2(f, s=shape)
    sd = out.std()
    return (out - out.mean()) / (sd if sd > 0 else 1.0)


def pink_field(rng: np.random.Generator, shape: tuple[int, int], pixel_size: float, corner_res: float = 30.0) -> np.ndarray:
    """Zero-mean, unit-SD texture with a 1/f-like (1/(k + k₀)) amplitude spectrum, as amorphous ice."""
    white = rng.standard_normal(shape)
    k = _k_grid(shape, pixel_size)
    f = sfft.rfft2(white) / (k + 1.0 / corner_res) ** 0.5
    f[0, 0] = 0.0
    out = sfft.irfft2(f, s=shape)
    return out / out.std()
