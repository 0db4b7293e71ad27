"""CTFFIND4-like estimation: fit a CTF² model to the background-subtracted amplitude spectrum.

Score of a parameter set (defocus U, V in Å, astigmatism angle in degrees):
the normalised cross-correlation, over the Fourier pixels between
``low_resolution`` and ``high_resolution`` Å, of the background-subtracted
amplitude spectrum with CTF² − ⟨CTF²⟩ (RELION's CTF, :func:`spa.ctf.ctf_2d`).
Search: an exhaustive scan of the mean defocus without astigmatism (steps of
``defocus_step`` Å), then the best few starts refined in (U, V, angle) by
Nelder–Mead.  The goodness of fit is the final correlation (RELION's
rlnCtfFigureOfMerit); the fit resolution (rlnCtfMaxResolution) is where the
correlation between model and data, measured ring by ring over one Thon ring
at a time, first drops below ``ring_threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from spa.ctf import ctf_2d, ctf_phase
from spa.ctf_estimation.spectrum import subtract_background, tiled_amplitude_spectrum


@dataclass(frozen=True)
class CtfSearch:
    """Search limits: Å for defocus and resolution; ``tile`` px."""

    defocus_min: float = 3000.0
    defocus_max: float = 50000.0
    defocus_step: float = 200.0
    low_resolution: float = 30.0
    high_resolution: float = 5.0
    tile: int = 512
    ring_threshold: float = 0.3


@dataclass
class CtfFit:
    """Defocus U ≥ V (Å), angle (degrees, RELION's convention), figure of merit, fit resolution (Å)."""

    defocus_u: float
    defocus_v: float
    defocus_angle: float
    figure_of_merit: float
    max_resolution: float

    @property
    def astigmatism(self) -> float:
        return self.defocus_u - self.defocus_v


def normalised(u: float, v: float, angle: float) -> tuple[float, float, float]:
    """(U, V, angle) with U ≥ V and the angle in [0, 180) (swapping U and V turns the axis by 90°)."""
    if v > u:
        u, v, angle = v, u, angle + 90.0
    return float(u), float(v), float(angle % 180.0)


class SpectrumFit:
    """A micrograph's background-subtracted spectrum and the CTF model's score against it."""

    def __init__(self, micrograph: np.ndarray, pixel_size: float, voltage: float, cs: float, amplitude_contrast: float,
                 search: CtfSearch = CtfSearch()):
        self.pixel_size, self.voltage, self.cs, self.q = pixel_size, voltage, cs, amplitude_contrast
        self.search = search
        spectrum = tiled_amplitude_spectrum(micrograph, search.tile)
        self.box = spectrum.shape[0]
        # the background varies over ~ a Thon ring at the band's fine end: blur over a few Fourier pixels
        self.data = subtract_background(spectrum, background_px=max(2.0, self.box / 64))
        ky = np.fft.fftfreq(self.box)[:, None]
        kx = np.fft.rfftfreq(self.box)[None, :]
        s = np.sqrt(kx**2 + ky**2) / pixel_size
        hi = 1.0 / max(search.high_resolution, 2.05 * pixel_size)
        self.band = (s >= 1.0 / search.low_resolution) & (s <= hi)
        self.s = s
        d = self.data[self.band]
        self.d = (d - d.mean()) / (d.std() + 1e-30)

    def model(self, u, v, angle):
        return ctf_2d(self.box, self.pixel_size, float(u), float(v), float(angle), self.voltage, self.cs, self.q) ** 2

    def score(self, u, v, angle) -> float:
        m = self.model(u, v, angle)[self.band]
        m = m - m.mean()
        return float(np.dot(m, self.d) / (np.linalg.norm(m) * np.sqrt(len(self.d)) + 1e-30))

    def fit(self) -> CtfFit:
        o = self.search
        grid = np.arange(o.defocus_min, o.defocus_max + 1, o.defocus_step)
        scores = np.array([self.score(d, d, 0.0) for d in grid])
        starts = grid[np.argsort(-scores)[:3]]
        best = None
        for d in starts:
            for angle in (0.0, 45.0, 90.0, 135.0):
                res = minimize(lambda p: -self.score(p[0], p[1], p[2]), x0=[d + 200, d - 200, angle],
                               method="Nelder-Mead", options={"xatol": 5.0, "fatol": 1e-5, "maxiter": 300})
                if best is None or res.fun < best.fun:
                    best = res
        u, v, angle = normalised(*best.x)
        fom = -float(best.fun)
        return CtfFit(u, v, angle, fom, self.fit_resolution(u, v, angle))

    def fit_resolution(self, u, v, angle) -> float:
        """Where the ring-by-ring correlation of model and data first drops below the threshold (Å)."""
        chi, _ = ctf_phase(self.box, self.pixel_size, u, v, angle, self.voltage, self.cs, self.q)
        ring = np.floor(np.abs(chi[0]) / np.pi).astype(int)  # Thon ring index (one CTF period per ring)
        m = self.model(u, v, angle)
        low = self.s >= 1.0 / self.search.low_resolution
        last = 1.0 / self.search.low_resolution
        misses = 0
        for r in range(int(ring[low].min()), int(ring.max()) + 1):
            sel = low & (ring == r) & (self.s <= 0.5 / self.pixel_size)
            if sel.sum() < 20:
                continue
            a, b = m[sel] - m[sel].mean(), self.data[sel] - self.data[sel].mean()
            cc = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
            if cc < self.search.ring_threshold:
                misses += 1
                if misses == 2:  # two rings in a row: one noisy ring (or the background's edge) is not the end
                    break
                continue
            misses = 0
            last = float(self.s[sel].max())
        return 1.0 / last


def estimate_ctffind(micrograph, pixel_size, voltage, cs, amplitude_contrast, search: CtfSearch = CtfSearch()) -> CtfFit:
    """CTFFIND4-like estimate of one micrograph (see the module docstring)."""
    return SpectrumFit(micrograph, pixel_size, voltage, cs, amplitude_contrast, search).fit()
