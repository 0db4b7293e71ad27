"""CTFFIND4-like estimation: fit a CTF² model to the background-subtracted amplitude spectrum.

Score of a parameter set (defocus U, V in Å, astigmatism angle and phase
shift in degrees): the normalised cross-correlation, over the Fourier pixels
between ``low_resolution`` and ``high_resolution`` Å, of the
background-subtracted amplitude spectrum with CTF² − ⟨CTF²⟩ (RELION's χ,
:class:`spa.ctf.PhaseTerms`).  Search, as CTFFIND4:

1. exhaustive 1D scan of the mean defocus without astigmatism (steps of
   ``defocus_step`` Å; with ``phase_shift`` also over the phase shift in
   steps of ``phase_shift_step`` degrees);
2. around the best few defoci, an exhaustive 2D grid over the astigmatism
   (0 … ``max_astigmatism`` Å) and its angle (15° steps);
3. the best grid points refined in (U, V, angle[, phase shift]) by
   Nelder–Mead, U and V kept inside [``defocus_min``, ``defocus_max``] and
   U − V within ``max_astigmatism`` (a micrograph whose astigmatism is
   beyond the range then fits poorly, and its fit resolution says so).

The goodness of fit is the final correlation (RELION's
rlnCtfFigureOfMerit); the fit resolution (rlnCtfMaxResolution) is
CTFFIND4's: the spectrum averaged along the fitted CTF's equiphase ellipses,
correlated with the model Thon ring by Thon ring, holds up to where that
correlation drops below ``ring_threshold`` (0.75, CTFFIND4's criterion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from spa.ctf import PhaseTerms
from spa.ctf_estimation.spectrum import subtract_background, tiled_amplitude_spectrum


@dataclass(frozen=True)
class CtfSearch:
    """Search limits: Å for defocus, astigmatism and resolution; degrees for the phase shift; ``tile`` px."""

    defocus_min: float = 3000.0
    defocus_max: float = 50000.0
    defocus_step: float = 200.0
    low_resolution: float = 30.0
    high_resolution: float = 5.0
    tile: int = 512
    ring_threshold: float = 0.75
    max_astigmatism: float = 3000.0
    phase_shift: bool = False  # search an additional phase shift (phase plate) in [0, 180)°
    phase_shift_step: float = 10.0


@dataclass
class CtfFit:
    """Defocus U ≥ V (Å), angle (degrees, RELION's convention), figure of merit, fit resolution (Å), phase
    shift (degrees)."""

    defocus_u: float
    defocus_v: float
    defocus_angle: float
    figure_of_merit: float
    max_resolution: float
    phase_shift: float = 0.0

    @property
    def astigmatism(self) -> float:
        return self.defocus_u - self.defocus_v

    @property
    def defocus(self) -> tuple[float, float, float]:
        return self.defocus_u, self.defocus_v, self.defocus_angle


def normalised(u: float, v: float, angle: float) -> tuple[float, float, float]:
    """(U, V, angle) with U ≥ V and the angle in [0, 180) (swapping U and V turns the axis by 90°)."""
    if v > u:
        u, v, angle = v, u, angle + 90.0
    return float(u), float(v), float(angle % 180.0)


class SpectrumFit:
    """A micrograph's background-subtracted spectrum and the CTF model's score against it.

    ``data`` (B, B//2+1): the spectrum on one tile's rfft grid (unshifted);
    ``band``: the pixels between the search's resolutions; ``s``: |k| (1/Å).
    """

    def __init__(self, micrograph: np.ndarray, pixel_size: float, voltage: float, cs: float, amplitude_contrast: float,
                 search: CtfSearch = CtfSearch()):
        self.pixel_size, self.voltage, self.cs, self.q = pixel_size, voltage, cs, amplitude_contrast
        self.search = search
        spectrum = tiled_amplitude_spectrum(micrograph, search.tile)
        self.box = spectrum.shape[0]
        # the background varies over ~ a Thon ring at the band's fine end: blur over a few Fourier pixels
        self.data = subtract_background(spectrum, background_px=max(2.0, self.box / 64))
        ky = np.fft.fftfreq(self.box)[:, None] / pixel_size
        kx = np.fft.rfftfreq(self.box)[None, :] / pixel_size
        kx, ky = np.broadcast_arrays(kx, ky)
        self.s = np.sqrt(kx**2 + ky**2)
        hi = 1.0 / max(search.high_resolution, 2.05 * pixel_size)
        self.band = (self.s >= 1.0 / search.low_resolution) & (self.s <= hi)
        self.terms = PhaseTerms(kx, ky, voltage, cs, amplitude_contrast)  # every pixel (figures, rings)
        self.band_terms = PhaseTerms(kx[self.band], ky[self.band], voltage, cs, amplitude_contrast)
        d = self.data[self.band]
        self.d = (d - d.mean()) / (d.std() + 1e-30)

    def model(self, u, v, angle, phase_shift=0.0) -> np.ndarray:
        """CTF² on the whole rfft grid."""
        return np.sin(self.terms.chi(u, v, angle, phase_shift)) ** 2

    def score(self, u, v, angle, phase_shift=0.0) -> float:
        m = np.sin(self.band_terms.chi(u, v, angle, phase_shift)) ** 2
        m -= m.mean()
        # element-wise sums, not BLAS: a multi-threaded dot of this size is slower on a shared machine
        return float(np.sum(m * self.d) / (np.sqrt(np.sum(m * m) * len(self.d)) + 1e-30))

    def _bounded_score(self, u, v, angle, phase_shift=0.0) -> float:
        o = self.search
        if min(u, v) < o.defocus_min or max(u, v) > o.defocus_max or abs(u - v) > o.max_astigmatism:
            return -1.0
        return self.score(u, v, angle, phase_shift)

    def fit(self) -> CtfFit:
        """The search of the module docstring."""
        o = self.search
        grid = np.arange(o.defocus_min, o.defocus_max + 1e-6, o.defocus_step)
        phases = np.arange(0.0, 180.0, o.phase_shift_step) if o.phase_shift else np.zeros(1)
        scan = np.array([[self.score(d, d, 0.0, p) for p in phases] for d in grid])  # (defocus, phase)
        best_phase = phases[np.argmax(scan, axis=1)]
        profile = scan.max(axis=1)
        # the best few local maxima of the 1D scan (distinct Thon-ring matches)
        peaks = [i for i in range(len(grid)) if profile[i] >= profile[max(i - 1, 0)] and
                 profile[i] >= profile[min(i + 1, len(grid) - 1)]]
        peaks = sorted(peaks, key=lambda i: -profile[i])[:3]
        astig_step = max(o.defocus_step, o.max_astigmatism / 8)
        astigs = np.arange(0.0, o.max_astigmatism + 1e-6, astig_step)
        candidates = []
        for i in peaks:
            mean, phase = grid[i], best_phase[i]
            for a in astigs:
                for angle in np.arange(0.0, 180.0, 15.0) if a > 0 else (0.0,):
                    u, v = mean + a / 2, mean - a / 2
                    candidates.append((self._bounded_score(u, v, angle, phase), u, v, angle, phase))
        candidates.sort(key=lambda c: -c[0])
        best = None
        for _, u, v, angle, phase in candidates[:3]:
            if o.phase_shift:
                f = lambda p: -self._bounded_score(p[0], p[1], p[2], p[3])  # noqa: E731
                x0, step = [u, v, angle, phase], [astig_step / 2, astig_step / 2, 10.0, o.phase_shift_step / 2]
            else:
                f = lambda p: -self._bounded_score(p[0], p[1], p[2])  # noqa: E731
                x0, step = [u, v, angle], [astig_step / 2, astig_step / 2, 10.0]
            simplex = np.vstack([x0, np.asarray(x0) + np.diag(step)])
            res = minimize(f, x0=x0, method="Nelder-Mead",
                           options={"xatol": 2.0, "fatol": 1e-6, "maxiter": 600, "initial_simplex": simplex})
            if best is None or res.fun < best.fun:
                best = res
        u, v, angle = normalised(*best.x[:3])
        phase = float(best.x[3] % 180.0) if o.phase_shift else 0.0
        return CtfFit(u, v, angle, -float(best.fun), self.fit_resolution(u, v, angle, phase), phase)

    def fit_resolution(self, u, v, angle, phase_shift=0.0) -> float:
        """CTFFIND4's fit resolution (Å): the spectrum averaged along the model's equiphase ellipses is
        correlated with the model in windows of two Thon rings (χ from (r − ½)π to (r + 1½)π, wider where
        that holds fewer than 8 Fourier pixels), ring r by ring; the resolution is the outer edge of the last
        ring before the correlation stays below ``ring_threshold`` (CTFFIND's 0.75) for two rings in a row."""
        s, data, model, _ = self.equiphase_profile(u, v, angle, phase_shift)
        mean = 0.5 * (u + v)
        chi = np.abs(PhaseTerms(s, np.zeros_like(s), self.voltage, self.cs, self.q).chi(mean, mean, 0.0, phase_shift))
        last, misses, started = 1.0 / self.search.low_resolution, 0, False
        for r in range(int(chi.min() / np.pi), int(chi.max() / np.pi) + 1):
            half = 0.5  # widen the window where the rings are narrower than a few Fourier pixels
            sel = (chi >= (r - half) * np.pi) & (chi < (r + 1 + half) * np.pi)
            while sel.sum() < 8 and half < 3:
                half += 0.5
                sel = (chi >= (r - half) * np.pi) & (chi < (r + 1 + half) * np.pi)
            if sel.sum() < 5:
                continue
            a, b = model[sel] - model[sel].mean(), data[sel] - data[sel].mean()
            cc = float(np.sum(a * b) / (np.sqrt(np.sum(a * a) * np.sum(b * b)) + 1e-30))
            if cc < self.search.ring_threshold:
                misses += 1
                # two rings in a row end the fit (one noisy ring does not); before the first good ring
                # three (the lowest rings carry the background's edge and the amplitude contrast)
                if misses == (2 if started else 3):
                    break
                continue
            misses, started = 0, True
            ring = (chi >= r * np.pi) & (chi < (r + 1) * np.pi)
            last = float(s[ring].max(initial=s[sel].min()))
        return max(1.0 / last, 2.0 * self.pixel_size)

    def equiphase_profile(self, u, v, angle, phase_shift=0.0):
        """The spectrum averaged along the model's equiphase ellipses (astigmatism undone): pixels binned by
        s·√(Δf(θ)/Δf̄) in steps of one Fourier pixel.  Returns (s 1/Å, data mean, CTF² at the mean defocus,
        pixel count) for the bins with pixels, from the band's low end to Nyquist."""
        mean = 0.5 * (u + v)
        s_eff = self.s * np.sqrt(np.maximum(self.terms.defocus(u, v, angle), 1.0) / max(mean, 1.0))
        step = 1.0 / (self.box * self.pixel_size)
        sel = (s_eff >= 1.0 / self.search.low_resolution) & (self.s <= 0.5 / self.pixel_size)
        idx = np.rint(s_eff[sel] / step).astype(int)
        count = np.bincount(idx)
        used = np.nonzero(count)[0]
        data = np.bincount(idx, weights=self.data[sel])[used] / count[used]
        s = used * step
        chi = PhaseTerms(s, np.zeros_like(s), self.voltage, self.cs, self.q).chi(mean, mean, 0.0, phase_shift)
        return s, data, np.sin(chi) ** 2, count[used]


def estimate_ctffind(micrograph, pixel_size, voltage, cs, amplitude_contrast, search: CtfSearch = CtfSearch()) -> CtfFit:
    """CTFFIND4-like estimate of one micrograph (see the module docstring)."""
    return SpectrumFit(micrograph, pixel_size, voltage, cs, amplitude_contrast, search).fit()
