"""A second CTF estimator on different mathematics: 1D fits per angular sector, then an ellipse.

The background-subtracted amplitude spectrum is split into ``sectors`` wedges
of azimuth (0–180°: the spectrum has Friedel symmetry).  In each wedge the
radial profile is averaged in rings of one Fourier pixel, and the wedge's
defocus is the one whose 1D CTF² (no astigmatism) correlates best with the
profile between ``low_resolution`` and ``high_resolution`` (scan, then a
bounded 1D refinement): its Thon-ring zeros fall on the profile's minima.
Astigmatism makes the defocus vary with azimuth θ as

    Δf(θ) = ½(U + V) + ½(U − V)·cos 2(θ − α),

which is linear in (½(U+V), ½(U−V)cos 2α, ½(U−V)sin 2α): a weighted least
squares (weights: each wedge's correlation) gives U, V and α.  Unlike the
CTFFIND-like 2D fit it never evaluates a 2D model, so its failures differ.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from spa.ctf import electron_wavelength
from spa.ctf_estimation.fit2d import CtfFit, CtfSearch, SpectrumFit, normalised


def _ctf2_1d(s, defocus, voltage, cs, q):
    lam = electron_wavelength(voltage)
    chi = np.pi * lam * defocus * s**2 - 0.5 * np.pi * cs * 1e7 * lam**3 * s**4 + np.arctan(q / np.sqrt(1 - q * q))
    return np.sin(chi) ** 2


def sector_defoci(fit: SpectrumFit, sectors: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sector centre angles °, defocus Å, correlation) per azimuthal wedge."""
    o = fit.search
    b = fit.box
    ky = np.fft.fftfreq(b)[:, None]
    kx = np.fft.rfftfreq(b)[None, :]
    theta = np.degrees(np.arctan2(ky, kx)) % 180.0
    theta = np.broadcast_to(theta, fit.data.shape)
    radius = np.rint(np.sqrt(kx**2 + ky**2) * b).astype(int)
    radius = np.broadcast_to(radius, fit.data.shape)
    width = 180.0 / sectors
    angles, defoci, quality = [], [], []
    for k in range(sectors):
        centre = (k + 0.5) * width
        wedge = (np.abs(((theta - centre + 90) % 180) - 90) < width / 2) & fit.band
        rings = radius[wedge]
        if rings.size < 50:
            continue
        profile = np.bincount(rings, weights=fit.data[wedge]) / np.maximum(np.bincount(rings), 1)
        used = np.unique(rings)
        s = used / (b * fit.pixel_size)
        y = profile[used]
        y = (y - y.mean()) / (y.std() + 1e-30)

        def neg_cc(d):
            m = _ctf2_1d(s, d, fit.voltage, fit.cs, fit.q)
            m = m - m.mean()
            return -float(np.dot(m, y) / (np.linalg.norm(m) * np.sqrt(len(y)) + 1e-30))

        grid = np.arange(o.defocus_min, o.defocus_max + 1, o.defocus_step / 2)
        cc = np.array([neg_cc(d) for d in grid])
        d0 = grid[int(np.argmin(cc))]
        res = minimize_scalar(neg_cc, bounds=(d0 - o.defocus_step, d0 + o.defocus_step), method="bounded",
                              options={"xatol": 1.0})
        angles.append(centre)
        defoci.append(float(res.x))
        quality.append(max(0.0, -float(res.fun)))
    return np.array(angles), np.array(defoci), np.array(quality)


def ellipse(angles, defoci, weights) -> tuple[float, float, float]:
    """(U, V, angle °) of Δf(θ) = a + b·cos 2θ + c·sin 2θ fitted by weighted least squares."""
    t = np.radians(angles)
    design = np.column_stack([np.ones_like(t), np.cos(2 * t), np.sin(2 * t)])
    w = np.sqrt(np.maximum(weights, 1e-6))
    (a, bc, bs), *_ = np.linalg.lstsq(design * w[:, None], defoci * w, rcond=None)
    half_astig = float(np.hypot(bc, bs))
    angle = 0.5 * np.degrees(np.arctan2(bs, bc))
    return normalised(a + half_astig, a - half_astig, angle)


def estimate_zeros(micrograph, pixel_size, voltage, cs, amplitude_contrast, search: CtfSearch = CtfSearch(),
                   sectors: int = 12) -> CtfFit:
    """The sector/ellipse estimate of one micrograph (see the module docstring); the figure of merit is the
    mean wedge correlation, the fit resolution measured as for the CTFFIND-like fit."""
    fit = SpectrumFit(micrograph, pixel_size, voltage, cs, amplitude_contrast, search)
    angles, defoci, quality = sector_defoci(fit, sectors)
    if len(angles) < 3:
        raise ValueError("too few usable sectors in the spectrum (micrograph too small or blank)")
    u, v, angle = ellipse(*robust_wedges(angles, defoci, quality))
    return CtfFit(u, v, angle, float(np.mean(quality)), fit.fit_resolution(u, v, angle))


def robust_wedges(angles, defoci, quality, tolerance: float = 0.15):
    """The wedges whose defocus lies within ``tolerance`` (fraction) of the wedges' median: a wedge whose
    profile locked onto another set of zeros (noisy spectra) would otherwise pull the ellipse far off."""
    keep = np.abs(defoci - np.median(defoci)) <= tolerance * np.median(defoci)
    if keep.sum() < 3:
        keep = np.ones_like(keep)
    return angles[keep], defoci[keep], quality[keep]
