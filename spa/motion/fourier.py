"""Fourier tools for rectangular frames: frequencies, sub-pixel shifts, binning by cropping, B-factor filters.

Frames are (…, ny, nx) real arrays; their transforms the ``rfft2`` layout
(…, ny, nx//2 + 1).  Shifts follow :mod:`spa.fourier`: a shift (sx, sy) in
pixels moves the content by +s (g(r) = f(r − s), ĝ = f̂·exp(−2πi k·s)).
"""

from __future__ import annotations

import numpy as np

from spa.backend import array_module


def frequencies(ny: int, nx: int, xp=np, pixel_size: float = 1.0):
    """(ky, kx) of the rfft2 grid, broadcastable ((ny, 1) and (1, nx//2+1)), in cycles/pixel ÷ ``pixel_size``
    (1/Å when the pixel size is in Å)."""
    ky = xp.asarray(np.fft.fftfreq(ny)[:, None] / pixel_size, dtype=xp.float32)
    kx = xp.asarray(np.fft.rfftfreq(nx)[None, :] / pixel_size, dtype=xp.float32)
    return ky, kx


def bfactor_filter(ny: int, nx: int, pixel_size: float, bfactor: float, xp=np):
    """exp(−B k²/4) on the rfft2 grid (B in Å², k in 1/Å): the low-pass that damps noise in correlations."""
    ky, kx = frequencies(ny, nx, xp, pixel_size)
    return xp.exp(-float(bfactor) * (ky * ky + kx * kx) / 4.0).astype(xp.float32)


def phase_ramp(ny: int, nx: int, shift_x, shift_y, xp=np):
    """exp(−2πi (kx·sx + ky·sy)) for shifts in pixels (arrays (n,) give (n, ny, nx//2+1))."""
    ky, kx = frequencies(ny, nx, xp)
    sx = xp.asarray(shift_x, dtype=xp.float32)[..., None, None]
    sy = xp.asarray(shift_y, dtype=xp.float32)[..., None, None]
    return xp.exp((-2j * np.pi) * (kx * sx + ky * sy)).astype(xp.complex64)


def crop_spectrum(f, ny: int, nx: int, new_ny: int, new_nx: int):
    """Crop an rfft2 transform of a (ny, nx) image to that of a (new_ny, new_nx) image (Fourier binning).

    The grey values are kept (the result is scaled so that the inverse
    transform has the same mean per pixel); even sizes only.
    """
    xp = array_module(f)
    if (new_ny, new_nx) == (ny, nx):
        return f
    if new_ny > ny or new_nx > nx or new_ny % 2 or new_nx % 2:
        raise ValueError(f"cannot crop {ny}x{nx} to {new_ny}x{new_nx} (smaller, even sizes only)")
    h = new_ny // 2
    out = xp.concatenate([f[..., :h, : new_nx // 2 + 1], f[..., ny - h:, : new_nx // 2 + 1]], axis=-2)
    out = out * np.float32((new_ny * new_nx) / (ny * nx))
    out[..., h, :] = 0  # the new Nyquist row and column hold no symmetric partner: drop them
    out[..., :, new_nx // 2] = 0
    return out


def subpixel_peak(cc, center_y: float, center_x: float, radius: float):
    """Position (dy, dx) of the highest value of a periodic correlation map ``cc`` (ny, nx, zero lag at
    [0, 0]) within ``radius`` px of (center_y, center_x), refined by a parabola through the peak and its
    neighbours along each axis; returns (dy, dx, height) with dy, dx signed lags in pixels."""
    xp = array_module(cc)
    ny, nx = cc.shape
    ly = xp.asarray(np.fft.fftfreq(ny, 1.0 / ny), dtype=xp.float32)[:, None]
    lx = xp.asarray(np.fft.fftfreq(nx, 1.0 / nx), dtype=xp.float32)[None, :]
    inside = (ly - center_y) ** 2 + (lx - center_x) ** 2 <= radius * radius
    masked = xp.where(inside, cc, -xp.inf)
    flat = int(xp.argmax(masked))
    iy, ix = divmod(flat, nx)
    c0 = float(cc[iy, ix])
    ym, yp = float(cc[(iy - 1) % ny, ix]), float(cc[(iy + 1) % ny, ix])
    xm, xpl = float(cc[iy, (ix - 1) % nx]), float(cc[iy, (ix + 1) % nx])

    def vertex(m, c, p):
        d = m - 2 * c + p
        return 0.0 if d >= 0 else float(np.clip(0.5 * (m - p) / d, -0.5, 0.5))

    dy = float(ly[iy, 0]) + vertex(ym, c0, yp)
    dx = float(lx[0, ix]) + vertex(xm, c0, xpl)
    return dy, dx, c0
