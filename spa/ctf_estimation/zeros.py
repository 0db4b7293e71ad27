"""A second CTF estimator on different mathematics: 1D fits per angular sector, an ellipse, then the
equiphase-averaged profile fitted with an envelope model (Xmipp/gCTF-like).

1. **Sectors** (as IMOD's Ctfplotter).  First the rotational average of the
   background-subtracted amplitude spectrum gives a mean defocus (1D scan).
   Then the spectrum is split into ``sectors`` wedges of azimuth (0–180°: the
   spectrum has Friedel symmetry); in each wedge the radial profile is
   averaged in rings of one Fourier pixel, and the wedge's defocus is the one,
   near the mean, whose 1D CTF² (no astigmatism) correlates best with the
   profile between ``low_resolution`` and ``high_resolution`` (scan, then a
   bounded 1D refinement): its Thon-ring zeros fall on the profile's minima.
2. **Ellipse.** Astigmatism makes the defocus vary with azimuth θ as
   Δf(θ) = ½(U + V) + ½(U − V)·cos 2(θ − α), linear in
   (½(U+V), ½(U−V)cos 2α, ½(U−V)sin 2α): weighted least squares (weights:
   each wedge's correlation, wedges far from the median dropped) gives U, V, α.
3. **Equiphase profile.** With the ellipse's shape the whole spectrum is
   averaged along equiphase ellipses into one radial profile y(s); the mean
   defocus is refined on it (1D, U − V and α kept).
4. **Envelope and fit resolution.** Ring by ring (one period of χ each) the
   profile is projected on the model: y ≈ a_r·(CTF² − ⟨CTF²⟩) + noise, giving
   the oscillation amplitude a_r and its standard error e_r from the
   residual.  The fit resolution is where a_r / e_r first stays below
   ``SIGNIFICANCE`` for two rings: a signal-to-noise test on the rings'
   amplitudes (not the 2D estimator's correlation threshold).  The spectrum's
   oscillation is ∝ CTF², so with the CTF's envelope exp(−B·s²/4) the
   amplitudes fall as a_r ≈ A·exp(−B·s²/2): their log-linear fit gives the
   envelope B-factor (Å², a diagnostic; it also holds the specimen's and
   the detector's fall-off, so it is an apparent B).

Unlike the CTFFIND-like 2D fit it never evaluates a 2D model during the
search, so its failures differ — which is what the consensus relies on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from spa.ctf import PhaseTerms, electron_wavelength
from spa.ctf_estimation.fit2d import CtfFit, CtfSearch, SpectrumFit, normalised

#: a ring's oscillation amplitude counts as present when it exceeds its standard error this many times
SIGNIFICANCE = 3.0


def _ctf2_1d(s, defocus, voltage, cs, q):
    """CTF² along a radius (no astigmatism), RELION's χ."""
    chi = PhaseTerms(s, np.zeros_like(s), voltage, cs, q).chi(defocus, defocus, 0.0)
    return np.sin(chi) ** 2


def _correlation(model, y):
    m = model - model.mean()
    return float(np.sum(m * y) / (np.sqrt(np.sum(m * m) * len(y)) + 1e-30))


def _ring_model(terms: PhaseTerms, s, defocus, voltage, cs, ring_width):
    """CTF² averaged over rings of ``ring_width`` (1/Å), as the radial profile averages the spectrum:
    ½ − ½·cos 2χ·sinc(|dχ/ds|·width/π).  Where the rings are too coarse for the oscillation (high
    defocus at high frequency) the average tends to ½ instead of an aliased beat that could match noise.
    ``defocus`` in Å, a number or an (n, 1) column for n models."""
    lam = electron_wavelength(voltage)
    chi = defocus * terms.defocus_scale + terms.constant
    slope = 2 * np.pi * lam * defocus * s - 2 * np.pi * cs * 1e7 * lam**3 * s**3
    return 0.5 - 0.5 * np.cos(2 * chi) * np.sinc(slope * ring_width / np.pi)


def _scan(s, y, grid, voltage, cs, q, ring_width):
    """Correlation of a radial profile y(s) (normalised) with the ring-averaged CTF² of each defocus of
    ``grid`` (one array expression)."""
    terms = PhaseTerms(s, np.zeros_like(s), voltage, cs, q)
    models = _ring_model(terms, s[None, :], grid[:, None], voltage, cs, ring_width)
    models -= models.mean(axis=1, keepdims=True)
    cc = (models * y).sum(axis=1) / (np.sqrt((models * models).sum(axis=1) * len(y)) + 1e-30)
    return cc, terms


def _profile(fit: SpectrumFit, select: np.ndarray):
    """Radial profile (rings of one Fourier pixel) of the spectrum's pixels in ``select``, divided by its
    running RMS (a Gaussian window of a fifteenth of the band, at least 3 rings): (s 1/Å, y normalised).
    The division gives every frequency the same say, so that strong low-frequency oscillations of other
    origin (a contaminant's Airy rings look like the Thon rings of a large defocus) cannot outvote the
    Thon rings further out."""
    from scipy.ndimage import gaussian_filter1d  # noqa: PLC0415

    b = fit.box
    radius = np.broadcast_to(np.rint(fit.s * b * fit.pixel_size).astype(int), fit.data.shape)
    rings = radius[select]
    profile = np.bincount(rings, weights=fit.data[select]) / np.maximum(np.bincount(rings), 1)
    used = np.unique(rings)
    y = profile[used] - profile[used].mean()
    y = y / np.sqrt(gaussian_filter1d(y * y, max(3.0, len(y) / 15), mode="nearest") + 1e-30)
    return used / (b * fit.pixel_size), (y - y.mean()) / (y.std() + 1e-30)


def _best(s, y, grid, fit: SpectrumFit, lo: float, hi: float) -> tuple[float, float]:
    """(defocus Å, correlation) of the scan's best point refined by a bounded 1D search."""
    width = 1.0 / (fit.box * fit.pixel_size)
    cc, terms = _scan(s, y, grid, fit.voltage, fit.cs, fit.q, width)
    d0 = grid[int(np.argmax(cc))]
    step = grid[1] - grid[0] if len(grid) > 1 else fit.search.defocus_step
    res = minimize_scalar(lambda d: -_correlation(_ring_model(terms, s, d, fit.voltage, fit.cs, width), y),
                          bounds=(max(d0 - 2 * step, lo), min(d0 + 2 * step, hi)), method="bounded",
                          options={"xatol": 1.0})
    return float(res.x), max(0.0, -float(res.fun))


def rotational_defocus(fit: SpectrumFit) -> float:
    """The mean defocus (Å) from the rotational average of the whole band (CTFFIND's and Ctfplotter's first
    step): the most signal in one profile, so noisy wedges cannot lock onto another set of zeros."""
    o = fit.search
    s, y = _profile(fit, fit.band)
    grid = np.arange(o.defocus_min, o.defocus_max + 1e-6, o.defocus_step / 2)
    return _best(s, y, grid, fit, o.defocus_min, o.defocus_max)[0]


def sector_defoci(fit: SpectrumFit, sectors: int = 12, around: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sector centre angles °, defocus Å, correlation) per azimuthal wedge; with ``around`` (Å) each wedge
    is searched within ± max(2 × the search's astigmatism, half of it) of that defocus."""
    o = fit.search
    b = fit.box
    ky = np.fft.fftfreq(b)[:, None]
    kx = np.fft.rfftfreq(b)[None, :]
    theta = np.broadcast_to(np.degrees(np.arctan2(ky, kx)) % 180.0, fit.data.shape)
    width = 180.0 / sectors
    lo, hi = o.defocus_min, o.defocus_max
    if around is not None:
        half = max(2 * o.max_astigmatism, 0.5 * around)
        lo, hi = max(lo, around - half), min(hi, around + half)
    grid = np.arange(lo, hi + 1e-6, o.defocus_step / 2)
    angles, defoci, quality = [], [], []
    for k in range(sectors):
        centre = (k + 0.5) * width
        wedge = (np.abs(((theta - centre + 90) % 180) - 90) < width / 2) & fit.band
        if wedge.sum() < 50:
            continue
        s, y = _profile(fit, wedge)
        defocus, cc = _best(s, y, grid, fit, lo, hi)
        angles.append(centre)
        defoci.append(defocus)
        quality.append(cc)
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


def robust_wedges(angles, defoci, quality, tolerance: float = 0.15):
    """The wedges whose defocus lies within ``tolerance`` (fraction) of the wedges' median: a wedge whose
    profile locked onto another set of zeros (noisy spectra) would otherwise pull the ellipse far off."""
    keep = np.abs(defoci - np.median(defoci)) <= tolerance * np.median(defoci)
    if keep.sum() < 3:
        keep = np.ones_like(keep)
    return angles[keep], defoci[keep], quality[keep]


@dataclass
class RingAmplitudes:
    """Per Thon ring of the equiphase profile: outer frequency (1/Å), amplitude a_r, standard error e_r."""

    s: np.ndarray
    amplitude: np.ndarray
    error: np.ndarray
    pixel_size: float

    def resolution(self, low_resolution: float) -> float:
        """Finest ring (Å) before the amplitude stays below SIGNIFICANCE·error for two rings in a row."""
        last, misses, started = 1.0 / low_resolution, 0, False
        for s, a, e in zip(self.s, self.amplitude, self.error):
            if a < SIGNIFICANCE * e:
                misses += 1
                if misses == (2 if started else 3):  # before the first significant ring, three
                    break
                continue
            misses, started = 0, True
            last = float(s)
        return max(1.0 / last, 2.0 * self.pixel_size)

    def envelope_bfactor(self, low_resolution: float) -> float:
        """B (Å²) of a_r ≈ A·exp(−B·s²/2) over the significant rings (weighted log-linear fit); NaN if < 3."""
        limit = 1.0 / self.resolution(low_resolution)
        ok = (self.amplitude > SIGNIFICANCE * self.error) & (self.s <= limit + 1e-12)
        if ok.sum() < 3:
            return float("nan")
        slope, _ = np.polyfit(self.s[ok] ** 2, np.log(self.amplitude[ok]), 1, w=self.amplitude[ok] / self.error[ok])
        return float(-2.0 * slope)


def ring_amplitudes(fit: SpectrumFit, u, v, angle) -> RingAmplitudes:
    """Project the equiphase profile on the model, one Thon ring (χ period) at a time."""
    s, y, model, count = fit.equiphase_profile(u, v, angle)
    mean = 0.5 * (u + v)
    chi = PhaseTerms(s, np.zeros_like(s), fit.voltage, fit.cs, fit.q).chi(mean, mean, 0.0)
    ring = np.floor(np.abs(chi) / np.pi).astype(int)
    out_s, amp, err = [], [], []
    for r in np.unique(ring):
        sel = ring == r
        if sel.sum() < 4:
            continue
        m = model[sel] - model[sel].mean()
        d = y[sel] - y[sel].mean()
        a = float(np.dot(m, d) / (np.dot(m, m) + 1e-30))
        resid = d - a * m
        sigma2 = float(np.dot(resid, resid)) / max(sel.sum() - 2, 1)
        out_s.append(float(s[sel].max()))
        amp.append(a)
        err.append(float(np.sqrt(sigma2 / (np.dot(m, m) + 1e-30))))
    return RingAmplitudes(np.array(out_s), np.array(amp), np.array(err), fit.pixel_size)


def refine_mean_defocus(fit: SpectrumFit, u, v, angle) -> tuple[float, float, float]:
    """The mean defocus refined on the equiphase profile (U − V and the angle kept), within one scan step."""
    o = fit.search
    half = 0.5 * (u - v)
    start = 0.5 * (u + v)
    s, y, _, count = fit.equiphase_profile(u, v, angle)
    band = s <= 1.0 / max(o.high_resolution, 2.05 * fit.pixel_size)
    s, y, w = s[band], y[band], np.sqrt(count[band])
    y = (y - np.average(y, weights=w)) * w

    def neg_cc(d):
        m = _ctf2_1d(s, d, fit.voltage, fit.cs, fit.q)
        m = (m - np.average(m, weights=w)) * w
        return -float(np.dot(m, y) / (np.linalg.norm(m) * np.linalg.norm(y) + 1e-30))

    lo = max(start - o.defocus_step, o.defocus_min + half)
    hi = min(start + o.defocus_step, o.defocus_max - half)
    if hi <= lo:
        return u, v, angle
    mean = float(minimize_scalar(neg_cc, bounds=(lo, hi), method="bounded", options={"xatol": 1.0}).x)
    return mean + half, mean - half, angle


def estimate_zeros_fit(fit: SpectrumFit, sectors: int = 12) -> tuple[CtfFit, RingAmplitudes]:
    """The estimate of the module docstring on a prepared spectrum, and its ring amplitudes."""
    angles, defoci, quality = sector_defoci(fit, sectors, around=rotational_defocus(fit))
    if len(angles) < 3:
        raise ValueError("too few usable sectors in the spectrum (micrograph too small or blank)")
    u, v, angle = ellipse(*robust_wedges(angles, defoci, quality))
    u, v, angle = refine_mean_defocus(fit, u, v, angle)
    rings = ring_amplitudes(fit, u, v, angle)
    s, y, model, count = fit.equiphase_profile(u, v, angle)
    band = s <= 1.0 / max(fit.search.high_resolution, 2.05 * fit.pixel_size)
    fom = _correlation(model[band], (y[band] - y[band].mean()) / (y[band].std() + 1e-30))
    return CtfFit(u, v, angle, fom, rings.resolution(fit.search.low_resolution)), rings


def estimate_zeros(micrograph, pixel_size, voltage, cs, amplitude_contrast, search: CtfSearch = CtfSearch(),
                   sectors: int = 12) -> CtfFit:
    """The sector/ellipse/envelope estimate of one micrograph (see the module docstring); the figure of
    merit is the correlation of the equiphase profile with the model over the fit band."""
    fit = SpectrumFit(micrograph, pixel_size, voltage, cs, amplitude_contrast, search)
    return estimate_zeros_fit(fit, sectors)[0]
