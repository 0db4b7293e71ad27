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
    """exp(−2πi (kx·sx + ky·sy)) for shifts in pixels (arrays (n,) give (n, ny, nx//2+1)).

    Separable: the product of a ramp along y and one along x, so only 1D exponentials are computed.
    """
    ky, kx = frequencies(ny, nx, xp)
    sx = xp.asarray(np.asarray(shift_x, dtype=np.float64)[..., None, None])
    sy = xp.asarray(np.asarray(shift_y, dtype=np.float64)[..., None, None])
    ramp_x = xp.exp((-2j * np.pi) * (kx.astype(xp.float64) * sx)).astype(xp.complex64)
    ramp_y = xp.exp((-2j * np.pi) * (ky.astype(xp.float64) * sy)).astype(xp.complex64)
    return ramp_y * ramp_x


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
    ly = np.fft.fftfreq(ny, 1.0 / ny)
    lx = np.fft.fftfreq(nx, 1.0 / nx)
    # search only the lags within the radius: a small window of the map, wrapped
    r = int(np.ceil(radius)) + 1
    rows = np.unique(np.round(center_y + np.arange(-r, r + 1)).astype(np.int64) % ny)
    cols = np.unique(np.round(center_x + np.arange(-r, r + 1)).astype(np.int64) % nx)
    window = cc[xp.asarray(rows)[:, None], xp.asarray(cols)[None, :]]
    dist2 = (ly[rows][:, None] - center_y) ** 2 + (lx[cols][None, :] - center_x) ** 2
    window = xp.where(xp.asarray(dist2 <= radius * radius), window, -xp.inf)
    flat = int(xp.argmax(window))
    iy, ix = int(rows[flat // len(cols)]), int(cols[flat % len(cols)])
    c0 = float(cc[iy, ix])
    ym, yp = float(cc[(iy - 1) % ny, ix]), float(cc[(iy + 1) % ny, ix])
    xm, xpl = float(cc[iy, (ix - 1) % nx]), float(cc[iy, (ix + 1) % nx])

    def vertex(m, c, p):
        d = m - 2 * c + p
        return 0.0 if d >= 0 else float(np.clip(0.5 * (m - p) / d, -0.5, 0.5))

    dy = float(ly[iy]) + vertex(ym, c0, yp)
    dx = float(lx[ix]) + vertex(xm, c0, xpl)
    return dy, dx, c0
