"""Template picking: normalised cross-correlation with CTF-modulated, low-passed templates.

Image model (CONVENTIONS.md, :mod:`spa.simulate.micrographs`): a recorded
micrograph is I = 1 − κ·(CTF ⊛ φ) + noise, protein DARK (black on white),
while a template t (2D class average, or projection of a map) is WHITE on
black.  The particle's expected image is therefore −CTF ⊛ t; the micrograph
is negated (``invert``, as extraction does) and every template is multiplied
by the micrograph's own CTF (:func:`spa.ctf.ctf_phase`, RELION's convention,
from rlnDefocusU/V/Angle, rlnVoltage, rlnSphericalAberration,
rlnAmplitudeContrast, rlnPhaseShift of the micrographs STAR) before it is
compared.

Working grid: the micrograph is binned by an integer factor f in Fourier
space (no aliasing) so that the pixel is about ``lowpass``/3 Å; templates
are resampled to the same pixel by Fourier cropping/padding (after padding
their box so that the new box is a whole number of pixels at the exact
pixel-size ratio).  On that grid, with M̂ the micrograph's transform, T̂ a
template's (centre at the origin), C the CTF, L a band-pass (soft high-pass
at 1/``diameter``, soft low-pass at 1/``lowpass``) and W = 1/√PSD the
whitening filter (PSD: the micrograph's rotationally averaged power
spectrum, so that 1/f ice texture and the amplitude-contrast background do not
dominate — the matched filter for coloured noise):

    m_w = F⁻¹(M̂·L·W)           (whitened micrograph)
    h   = F⁻¹(T̂·C·L·W)         (whitened CTF-modulated template, Σh = 0)
    c(x) = Σ_r m_w(x + r)·h(r) = F⁻¹(M̂·L²·W²·C·conj T̂)
    NCC(x) = c(x) / (‖h‖ · √(Σ_disc (m_w − mean_disc)²))

the disc being the particle's (diameter) centred at x (its sums by FFT
convolution, once per micrograph).  NCC is the Pearson correlation of the
whitened template with the whitened micrograph where h lies inside the disc
(h spreads a little beyond it by the CTF's delocalisation, so values are
slightly below a strict NCC).  The score map is the largest NCC over all
templates and in-plane rotations (every ``angular_step``°, default
≈ lowpass/2 of arc at the particle's radius).

Picks are local maxima of the score map at least ``min_distance`` Å apart
(default 0.8 × diameter), none closer than half the diameter to an edge.  The
figure of merit rlnAutopickFigureOfMerit is the score in *robust standard
deviations of the score map*: (NCC − median) / (1.4826·MAD), which does not
depend on how many templates are compared (the maximum over more templates is
higher everywhere); ``threshold`` applies to it.  The raw NCC is written too,
as rlnSpaTemplateNCC, and the best template (1-based, before rotation) as
rlnSpaTemplate, its in-plane angle (°) as rlnAnglePsi.  Coordinates follow
RELION: rlnCoordinateX = column, rlnCoordinateY = row of the full-size
micrograph, 0-based pixel of the centre.

Everything heavy runs on the :mod:`spa.backend` array module (NumPy with
scipy.fft, or CuPy); peak finding on the (small) binned score map is on the
host.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import ndimage

from spa.picking.peaks import pick_peaks


@dataclass(frozen=True)
class TemplateOptions:
    """Lengths in Å, angles in degrees; ``threshold`` in robust standard deviations of the score map."""

    diameter: float
    threshold: float = 4.0
    min_distance: float | None = None  # Å between picks; None: 0.8 × diameter
    lowpass: float = 20.0  # Å: finest detail compared
    highpass: float | None = None  # Å: coarsest detail compared; None: 2 × diameter
    angular_step: float | None = None  # in-plane step; None: lowpass/2 of arc at the particle's radius
    invert: bool = True  # micrographs black on white (as recorded), templates white on black
    whiten: bool = True
    edge: float | None = None  # Å kept free at the edges; None: diameter / 2
    batch: int = 16  # templates correlated at once (memory: batch × binned micrograph)

    def __post_init__(self):
        if not self.diameter > 0:
            raise ValueError(f"particle diameter must be > 0 Å, got {self.diameter}")
        if not self.lowpass > 0:
            raise ValueError(f"low-pass resolution must be > 0 Å, got {self.lowpass}")
        if self.angular_step is not None and not 0 < self.angular_step <= 180:
            raise ValueError(f"in-plane angular step must be in (0, 180]°, got {self.angular_step}")

    def binning(self, pixel_size: float) -> int:
        """Integer factor that brings the micrograph pixel to about lowpass/3 Å (never finer)."""
        return max(1, int(np.floor(self.lowpass / 3.0 / pixel_size)))

    def psi_step(self) -> float:
        if self.angular_step:
            return float(self.angular_step)
        return float(min(30.0, np.degrees(0.5 * self.lowpass / (0.5 * self.diameter))))


@dataclass(frozen=True)
class CTFParams:
    """One micrograph's CTF (RELION's columns): defocus in Å, angles in degrees, kV, mm, fraction."""

    defocus_u: float
    defocus_v: float
    defocus_angle: float
    voltage: float
    cs: float
    amplitude_contrast: float
    phase_shift: float = 0.0

    @classmethod
    def from_row(cls, row) -> "CTFParams":
        g = (lambda k, d=None: getattr(row, k, d)) if not isinstance(row, dict) else row.get
        return cls(float(g("rlnDefocusU")), float(g("rlnDefocusV")), float(g("rlnDefocusAngle")),
                   float(g("rlnVoltage")), float(g("rlnSphericalAberration")), float(g("rlnAmplitudeContrast")),
                   float(g("rlnPhaseShift", 0.0) or 0.0))


CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
               "rlnAmplitudeContrast")


# --------------------------------------------------------------------------- templates
def even_directions(n: int) -> np.ndarray:
    """(rot, tilt) in degrees of ``n`` nearly evenly spread directions over the whole sphere (Fibonacci
    lattice; the whole sphere because opposite directions give mirror images, not rotations)."""
    from spa.validation.angular import fibonacci_sphere

    d = fibonacci_sphere(int(n))
    return np.column_stack([np.degrees(np.arctan2(d[:, 1], d[:, 0])), np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))])


def project_map(volume: np.ndarray, n_directions: int) -> np.ndarray:
    """Projections (N, B, B) float32 of a (B, B, B) map along ``n_directions`` even directions (ψ = 0: the
    picker adds in-plane rotations), with the project's Fourier-slice projector."""
    from spa.em.projector import Projector
    from spa.geometry.euler import euler_to_matrix

    angles = even_directions(n_directions)
    rot = euler_to_matrix(angles[:, 0], angles[:, 1], np.zeros(len(angles))).astype(np.float32)
    return np.asarray(Projector(np.asarray(volume, np.float32)).project_images(rot), np.float32)


def _exact_resample(images: np.ndarray, pixel: float, new_pixel: float) -> np.ndarray:
    """Images (N, B, B) at ``pixel`` Å resampled to ``new_pixel`` Å by Fourier cropping/padding, the box first
    zero-padded (up to 2×) so that box·pixel/new_pixel is as close to a whole number as it gets."""
    from spa.fourier import fourier_resize

    box = images.shape[-1]
    if abs(pixel - new_pixel) < 1e-6 * new_pixel:
        return images.astype(np.float32)
    candidates = np.arange(box, 2 * box + 1)
    exact = candidates * pixel / new_pixel
    err = np.abs(exact - np.round(exact)) / np.maximum(exact, 1)
    padded = int(candidates[np.argmin(err + 1e-9 * candidates)])  # the smallest box among the best
    if padded > box:
        lo = padded // 2 - box // 2  # keep the centre at B//2
        out = np.zeros(images.shape[:-2] + (padded, padded), np.float32)
        out[..., lo:lo + box, lo:lo + box] = images
        images = out
    new_box = max(8, int(round(padded * pixel / new_pixel)))
    return np.asarray(fourier_resize(np.asarray(images, np.float32), new_box), np.float32)


class TemplateSet:
    """Template images (N, B, B), white on black, at ``pixel_size`` Å; :meth:`prepared` gives them at a working
    pixel: background-subtracted, softly masked to the particle, rotated in-plane."""

    def __init__(self, images: np.ndarray, pixel_size: float, source: str = ""):
        images = np.asarray(images, np.float32)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or images.shape[-1] != images.shape[-2] or len(images) == 0:
            raise ValueError(f"templates must be square images (N, B, B), got shape {images.shape}")
        if not np.isfinite(images).all():
            raise ValueError("templates hold NaN/inf values")
        if not pixel_size > 0:
            raise ValueError(f"template pixel size must be > 0 Å, got {pixel_size}")
        self.images, self.pixel_size, self.source = images, float(pixel_size), source

    @lru_cache(maxsize=4)
    def prepared(self, working_pixel: float, diameter: float, psi_step: float):
        """(templates (K, b, b) float32, source index (K,), ψ (K,) °) at ``working_pixel`` Å."""
        from spa.fourier import real_radius

        imgs = _exact_resample(self.images, self.pixel_size, working_pixel)
        box = imgs.shape[-1]
        r = real_radius(box)
        radius = 0.5 * diameter / working_pixel
        outside = r > min(radius * 1.1, box / 2 - 1)
        if outside.any():  # class averages: background to zero
            imgs = imgs - np.median(imgs[:, outside], axis=1)[:, None, None]
        width = max(2.0, 0.1 * radius)
        mask = np.clip((radius + width - r) / width, 0, 1).astype(np.float32)  # linear soft edge
        if box < 2 * (radius + width) + 2:  # room for the rotated mask
            pad = int(np.ceil(radius + width + 1 - box / 2))
            imgs = np.pad(imgs, ((0, 0), (pad, pad), (pad, pad)))
            box = imgs.shape[-1]
            r = real_radius(box)
            mask = np.clip((radius + width - r) / width, 0, 1).astype(np.float32)
        imgs = imgs * mask
        psis = np.arange(0.0, 360.0 - 1e-6, psi_step)
        out = np.empty((len(imgs) * len(psis), box, box), np.float32)
        k = 0
        for img in imgs:
            for psi in psis:
                # rotation about the box centre B//2 (scipy rotates about (B−1)/2: shift by the difference)
                out[k] = _rotate_about(img, psi, box // 2)
                k += 1
        out *= mask
        source = np.repeat(np.arange(len(imgs)), len(psis))
        return out, source, np.tile(psis, len(imgs))

    def __hash__(self):
        return id(self)


def _rotate_about(img: np.ndarray, angle: float, centre: int) -> np.ndarray:
    """``img`` rotated by ``angle``° counter-clockwise (x = column, y = row) about pixel (centre, centre)."""
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])  # output (row, col) → input
    c = np.array([centre, centre], float)
    return ndimage.affine_transform(img, rot, offset=c - rot @ c, order=3, mode="constant", cval=0.0)


# --------------------------------------------------------------------------- scoring
def _bin(xp, be, image, factor: int):
    """Binned (rows//f, cols//f) image by cropping its transform (pixel (i, j) at (i·f, j·f) of the input)."""
    img = xp.asarray(image, dtype=xp.float32)
    if factor <= 1:
        return img
    rows, cols = img.shape
    out_r, out_c = rows // factor, cols // factor
    f = be.rfftn(img)
    half = out_r // 2
    cropped = xp.concatenate([f[: half + out_r % 2, : out_c // 2 + 1], f[rows - half:, : out_c // 2 + 1]], axis=0)
    return (be.irfftn(cropped, s=(out_r, out_c)) / factor**2).astype(xp.float32)


def _rfft_padded(be, images, shape):
    """rfft over the last two axes of ``images`` zero-padded (at the end) to ``shape``."""
    if be.name == "numpy":
        import scipy.fft as sfft

        return sfft.rfftn(images, s=shape, axes=(-2, -1), workers=be.fft_workers)
    return be.xp.fft.rfftn(images, s=shape, axes=(-2, -1))


def _ctf_grid(shape, pixel: float, ctf: CTFParams):
    """sin χ on the rfft grid of a (rows, cols) image at ``pixel`` Å (host, float32)."""
    from spa.ctf import PhaseTerms

    ky = np.fft.fftfreq(shape[0])[:, None] / pixel
    kx = np.fft.rfftfreq(shape[1])[None, :] / pixel
    kx, ky = np.broadcast_arrays(kx, ky)
    terms = PhaseTerms(kx, ky, ctf.voltage, ctf.cs, ctf.amplitude_contrast)
    return np.sin(terms.chi(ctf.defocus_u, ctf.defocus_v, ctf.defocus_angle, ctf.phase_shift)).astype(np.float32)


def _soft_step(s, edge: float, width: float, xp):
    """0 below ``edge − width``, 1 above ``edge + width``, raised cosine between (s, edge, width in 1/Å)."""
    t = xp.clip((s - (edge - width)) / (2 * width), 0.0, 1.0)
    return 0.5 - 0.5 * xp.cos(np.pi * t)


def score_map(micrograph, pixel_size: float, templates: TemplateSet, opts: TemplateOptions,
              ctf: CTFParams | None = None, backend=None):
    """(score map (rows//f, cols//f) of the largest NCC, index of the best prepared template there, factor f,
    prepared templates' (source, ψ)) of one micrograph — see the module docstring.  Host arrays."""
    from spa.backend import get_backend

    be = backend or get_backend()
    xp = be.xp
    factor = opts.binning(pixel_size)
    apix = pixel_size * factor
    temps, source, psis = templates.prepared(round(apix, 6), opts.diameter, opts.psi_step())
    m = _bin(xp, be, micrograph, factor)
    m = m - m.mean()
    if opts.invert:
        m = -m  # protein white, as the templates
    rows, cols = m.shape
    if temps.shape[-1] >= min(rows, cols):
        raise ValueError(f"templates ({temps.shape[-1]} px at {apix:.2f} Å) larger than the micrograph "
                         f"({rows}×{cols} px binned)")
    M = be.rfftn(m)
    ky = xp.asarray(np.fft.fftfreq(rows)[:, None] / apix, dtype=xp.float32)
    kx = xp.asarray(np.fft.rfftfreq(cols)[None, :] / apix, dtype=xp.float32)
    s = xp.sqrt(ky * ky + kx * kx)  # 1/Å
    dk = 1.0 / (min(rows, cols) * apix)
    hp = 1.0 / (opts.highpass or 2.0 * opts.diameter)
    band = _soft_step(s, hp, min(0.5 * hp, 2 * dk), xp) \
        * (1.0 - _soft_step(s, 1.0 / opts.lowpass, min(0.1 / opts.lowpass, 2 * dk) + 1e-9, xp))
    band[0, 0] = 0.0
    if opts.whiten:
        shell = xp.minimum(xp.rint(s / dk).astype(xp.int32), int(s.max() / dk))
        n_shells = int(shell.max()) + 1
        w = xp.ones_like(s)
        w[:, 1:cols // 2 + (cols % 2)] = 2.0  # rfft columns that stand for two
        power = xp.bincount(shell.ravel(), weights=(w * (M.real**2 + M.imag**2)).ravel(), minlength=n_shells)
        count = xp.bincount(shell.ravel(), weights=w.ravel(), minlength=n_shells)
        psd = power / xp.maximum(count, 1)
        psd = xp.maximum(psd, psd[psd > 0].min() if bool((psd > 0).any()) else 1.0)
        white = (1.0 / xp.sqrt(psd[shell])).astype(xp.float32)
        white = white / white[band > 0.5].max() if bool((band > 0.5).any()) else white
    else:
        white = xp.ones_like(s)
    C = xp.asarray(_ctf_grid((rows, cols), apix, ctf)) if ctf is not None else xp.ones_like(s)
    filt = band * white  # L·W
    data = M * (filt * filt * C)  # M̂·L²·W²·C: correlate with conj(T̂)
    # local Σ(m_w − mean)² over the particle's disc, by FFT convolution with the disc
    m_w = be.irfftn(M * filt, s=(rows, cols))
    radius = 0.5 * opts.diameter / apix
    yy = xp.asarray(np.minimum(np.arange(rows), rows - np.arange(rows))[:, None], dtype=xp.float32)
    xx = xp.asarray(np.minimum(np.arange(cols), cols - np.arange(cols))[None, :], dtype=xp.float32)
    disc = ((yy * yy + xx * xx) <= radius * radius).astype(xp.float32)
    n_disc = float(disc.sum())
    D = be.rfftn(disc)
    s1 = be.irfftn(be.rfftn(m_w) * xp.conj(D), s=(rows, cols))
    s2 = be.irfftn(be.rfftn(m_w * m_w) * xp.conj(D), s=(rows, cols))
    spread = xp.sqrt(xp.maximum(s2 - s1 * s1 / n_disc, 1e-30))
    # weights of the rfft grid for Parseval: ‖h‖² = Σ_full |T̂·C·L·W|² / (rows·cols)
    wgt = xp.ones((1, cols // 2 + 1), dtype=xp.float32)
    wgt[:, 1:cols // 2 + (cols % 2)] = 2.0
    hfilt2 = (filt * C) ** 2 * wgt
    box = temps.shape[-1]
    best = xp.full((rows, cols), -xp.inf, dtype=xp.float32)
    which = xp.zeros((rows, cols), dtype=xp.int32)
    temps_x = xp.asarray(temps)
    for lo in range(0, len(temps), max(1, opts.batch)):
        # templates at the top-left corner, zero-padded by the FFT itself: the correlation peaks box//2 pixels
        # before the centre, undone once on the final map
        T = _rfft_padded(be, temps_x[lo:lo + opts.batch], (rows, cols))
        norm = xp.sqrt(xp.sum((T.real**2 + T.imag**2) * hfilt2, axis=(-2, -1)) / (rows * cols))
        corr = be.irfftn(data[None] * xp.conj(T), s=(rows, cols), axes=(-2, -1))
        corr /= xp.maximum(norm, 1e-30)[:, None, None]
        k = xp.argmax(corr, axis=0)
        top = xp.max(corr, axis=0)
        better = top > best
        best = xp.where(better, top, best)
        which = xp.where(better, (k + lo).astype(xp.int32), which)
    shift = (box // 2, box // 2)
    best = xp.roll(best, shift, axis=(0, 1)) / spread  # the local spread is the same for every template
    which = xp.roll(which, shift, axis=(0, 1))
    return be.to_numpy(best), be.to_numpy(which), factor, (source, psis)


def pick_template(micrograph, pixel_size: float, templates: TemplateSet, opts: TemplateOptions,
                  ctf: CTFParams | None = None, backend=None) -> pd.DataFrame:
    """Picks of one micrograph (rows, cols), sorted by figure of merit: rlnCoordinateX, rlnCoordinateY
    (full-size pixels), rlnAutopickFigureOfMerit (robust σ of the score map), rlnSpaTemplateNCC,
    rlnSpaTemplate (1-based), rlnAnglePsi (°)."""
    best, which, factor, (source, psis) = score_map(micrograph, pixel_size, templates, opts, ctf, backend)
    apix = pixel_size * factor
    distance = (opts.min_distance if opts.min_distance else 0.8 * opts.diameter) / apix
    edge = (opts.edge if opts.edge is not None else 0.5 * opts.diameter) / apix
    rows, cols, merit = pick_peaks(best, distance, edge, opts.threshold)
    ri, ci = np.rint(rows).astype(int), np.rint(cols).astype(int)
    ri = np.clip(ri, 0, best.shape[0] - 1)
    ci = np.clip(ci, 0, best.shape[1] - 1)
    k = which[ri, ci]
    return pd.DataFrame({
        "rlnCoordinateX": np.round(cols * factor, 1),
        "rlnCoordinateY": np.round(rows * factor, 1),
        "rlnAutopickFigureOfMerit": merit.astype(float),
        "rlnSpaTemplateNCC": np.round(best[ri, ci].astype(float), 5),
        "rlnSpaTemplate": (source[k] + 1).astype(np.int64),
        "rlnAnglePsi": psis[k].astype(float),
    })
