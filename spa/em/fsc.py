"""Fourier shell correlation and the resolution read from it.

FSC(s) = Re Σ F₁·F₂* / √(Σ|F₁|²·Σ|F₂|²) over shell s (Fourier pixels, 0 … B//2),
computed on rfft grids with each coefficient weighted by its multiplicity so
the sums equal those over the full transform.
"""

from __future__ import annotations

import numpy as np

from spa.backend import array_module, backend_of
from spa.fourier import shell_resolution, shells_3d


def fsc(map1, map2, mask=None) -> np.ndarray:
    """FSC per shell 0 … B//2 (NumPy float64) between two (B,B,B) maps, optionally both multiplied by ``mask``."""
    xp = array_module(map1)
    if mask is not None:
        map1 = map1 * mask
        map2 = map2 * mask
    be = backend_of(map1)
    box = map1.shape[-1]
    f1 = be.rfftn(xp.asarray(map1, dtype=xp.float32))
    f2 = be.rfftn(xp.asarray(map2, dtype=xp.float32))
    sh = shells_3d(box, xp).reshape(-1)
    mult = xp.full(box // 2 + 1, 2.0)
    mult[0] = 1.0
    if box % 2 == 0:
        mult[-1] = 1.0
    w = xp.broadcast_to(mult, f1.shape).reshape(-1)
    n = box // 2 + 1
    keep = sh < n
    sh, w = sh[keep], w[keep]
    a = f1.reshape(-1)[keep]
    b = f2.reshape(-1)[keep]
    num = xp.bincount(sh, weights=w * (a * b.conj()).real, minlength=n)
    d1 = xp.bincount(sh, weights=w * (a.real**2 + a.imag**2), minlength=n)
    d2 = xp.bincount(sh, weights=w * (b.real**2 + b.imag**2), minlength=n)
    out = num / xp.sqrt(xp.maximum(d1 * d2, 1e-300))
    return be.to_numpy(out).astype(np.float64)


def resolution_at(curve, threshold: float, box: int, pixel_size: float) -> float:
    """Resolution (Å) where the curve first drops below ``threshold``.

    Interpolates linearly between the last shell above and the first below;
    returns Nyquist (2·pixel) if it never drops, ∞ if shell 1 is already below.
    """
    curve = np.asarray(curve, dtype=np.float64)
    below = np.nonzero(curve[1:] < threshold)[0]
    if below.size == 0:
        return 2.0 * pixel_size
    s = below[0] + 1
    if s == 1:
        return float("inf")
    c0, c1 = curve[s - 1], curve[s]
    frac = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
    shell = (s - 1) + frac
    return float(box * pixel_size / shell)


def reaches_threshold_at_nyquist(curve, threshold: float = 0.143) -> bool:
    """True when the curve never drops below ``threshold`` up to Nyquist: the resolution is then
    "≥ Nyquist" — a bound set by the pixel size, not a measurement (:func:`resolution_at` returns
    Nyquist for it)."""
    return not bool(np.any(np.asarray(curve, dtype=np.float64)[1:] < threshold))


def resolution_text(curve, threshold: float, box: int, pixel_size: float) -> str:
    """The resolution at ``threshold`` for people: '5.23 Å' or '≥ Nyquist (4.00 Å)'."""
    res = resolution_at(curve, threshold, box, pixel_size)
    return f"≥ Nyquist ({res:.2f} Å)" if reaches_threshold_at_nyquist(curve, threshold) else f"{res:.2f} Å"


def fsc_table(curve, box: int, pixel_size: float):
    """A RELION-style ``data_fsc`` table (pandas DataFrame)."""
    import pandas as pd

    n = len(curve)
    res = shell_resolution(box, pixel_size)[:n]
    with np.errstate(divide="ignore"):
        inv = np.where(np.isfinite(res), 1.0 / res, 0.0)
    return pd.DataFrame(
        {
            "rlnSpectralIndex": np.arange(n, dtype=int),
            "rlnResolution": inv,
            "rlnAngstromResolution": np.where(np.isfinite(res), res, 999.0),
            "rlnFourierShellCorrelation": np.asarray(curve, dtype=float),
        }
    )


def ssnr_from_fsc(curve, tau2_fudge: float = 1.0, whole: bool = False) -> np.ndarray:
    """Spectral SNR from a half-map FSC: T·FSC/(1 − FSC), FSC clipped to [0.001, 0.999].

    ``whole=True`` uses √(2·FSC/(1+FSC)) (the FSC of the full-data map against
    the truth) in place of FSC, for the final reconstruction from both halves.
    """
    f = np.clip(np.asarray(curve, dtype=np.float64), 0.001, 0.999)
    if whole:
        f = np.clip(np.sqrt(2 * f / (1 + f)), 0.001, 0.999)
    return tau2_fudge * f / (1 - f)
