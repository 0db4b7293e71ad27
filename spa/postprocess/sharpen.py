"""Sharpening: Guinier B-factor, FSC weighting, MTF correction, low-pass (as RELION's PostProcess).

A map's rotationally averaged amplitude A(s) (s = 1/d, Å⁻¹) falls at high
resolution as exp(−B s²/4) (Rosenthal & Henderson 2003); the Guinier plot,
ln A against s², is a line of slope −B/4 between ~10 Å and the resolution.
The fitted B (positive for a decaying map) is reported with RELION's sign as
the B-factor *used for sharpening*, −B: sharpening multiplies the map's
Fourier coefficients by exp(−B_used s²/4) = exp(B s²/4).

Then each shell is weighted by √(2·FSC/(1+FSC)) (Rosenthal & Henderson's
figure of merit for the full map from the half-map FSC; zero where FSC ≤ 0),
and the map is low-passed at the resolution with a raised-cosine edge.  With
an MTF (RELION's STAR: rlnResolutionInversePixel, rlnMtfValue), amplitudes
are divided by it first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.fourier import radius_3d, shell_resolution, shells_3d

GUINIER_LOW = 10.0  # Å: where the Guinier fit starts (RELION's default fit_minres)
MIN_FIT_SHELLS = 3  # fewer shells between GUINIER_LOW and the resolution: no B-factor is fitted


@dataclass
class Guinier:
    """The Guinier plot (s² in Å⁻², ln amplitude per shell) and its straight-line fit over ``fitted``."""

    s2: np.ndarray
    ln_amplitude: np.ndarray
    fitted: np.ndarray  # bool per shell: used in the fit
    slope: float
    intercept: float
    correlation: float

    @property
    def ok(self) -> bool:
        """Whether a B-factor was fitted: at least MIN_FIT_SHELLS shells between the fit's low end and the
        resolution (a map resolved only to 12 Å has no Guinier region to fit)."""
        return int(np.count_nonzero(self.fitted)) >= MIN_FIT_SHELLS

    @property
    def bfactor(self) -> float:
        """B (Å²) of exp(−B s²/4): positive for a map whose amplitudes fall."""
        return -4.0 * self.slope


def spherical_amplitudes(volume: np.ndarray) -> np.ndarray:
    """Rotationally averaged Fourier amplitude per shell 0 … B//2 (rfft coefficients weighted by their
    multiplicity in the full transform)."""
    box = volume.shape[-1]
    f = np.fft.rfftn(np.asarray(volume, np.float64))
    n = box // 2 + 1
    sh = shells_3d(box).ravel()
    mult = np.full(f.shape[-1], 2.0)
    mult[0] = 1.0
    if box % 2 == 0:
        mult[-1] = 1.0
    w = np.broadcast_to(mult, f.shape).ravel()
    keep = sh < n
    total = np.bincount(sh[keep], weights=(w * np.abs(f).ravel())[keep], minlength=n)
    count = np.bincount(sh[keep], weights=w[keep], minlength=n)
    return total / np.maximum(count, 1e-12)


def guinier_fit(volume: np.ndarray, pixel_size: float, resolution: float, *, low: float = GUINIER_LOW) -> Guinier:
    """Fit ln A(s) = a + b s² over the shells between ``low`` Å and ``resolution`` Å.

    With fewer than MIN_FIT_SHELLS shells there (the resolution at or worse than ~``low``) nothing is
    fitted: slope 0, ``ok`` False.  (Fitting the lowest shells instead, where the molecule's shape
    and not an envelope sets the amplitudes, gave B-factors of −3000 Å² that overflowed the sharpening.)"""
    box = volume.shape[-1]
    amp = spherical_amplitudes(volume)
    res = shell_resolution(box, pixel_size)[: len(amp)]
    with np.errstate(divide="ignore"):
        s = np.where(np.isfinite(res), 1.0 / res, 0.0)
        ln_a = np.log(np.maximum(amp, 1e-30))
    fitted = (res <= low) & (res >= resolution) & (amp > 0)
    if fitted.sum() < MIN_FIT_SHELLS:
        return Guinier(s**2, ln_a, np.zeros_like(fitted), 0.0, float(ln_a[1]) if len(ln_a) > 1 else 0.0, 0.0)
    x, y = s[fitted] ** 2, ln_a[fitted]
    slope, intercept = np.polyfit(x, y, 1)
    corr = float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 else 1.0
    return Guinier(s**2, ln_a, fitted, float(slope), float(intercept), corr)


def fsc_weights(curve: np.ndarray) -> np.ndarray:
    """√(2·FSC/(1+FSC)) per shell, 0 where FSC ≤ 0 (the full map's figure of merit)."""
    c = np.clip(np.asarray(curve, np.float64), 0.0, 1.0)
    return np.sqrt(2 * c / (1 + c))


def read_mtf(path) -> tuple[np.ndarray, np.ndarray]:
    """An MTF STAR (RELION's: rlnResolutionInversePixel in 1/px, rlnMtfValue) → (frequency 1/px, value)."""
    from spa.errors import SpaInputError
    from spa.io.star import read_star

    blocks = read_star(path)
    for table in blocks.values():
        if hasattr(table, "columns") and {"rlnResolutionInversePixel", "rlnMtfValue"} <= set(table.columns):
            f = table["rlnResolutionInversePixel"].to_numpy(float)
            v = table["rlnMtfValue"].to_numpy(float)
            if len(f) < 2 or np.any(np.diff(f) <= 0) or np.any(v <= 0):
                raise SpaInputError(path, "MTF frequencies must increase and values be > 0")
            return f, v
    raise SpaInputError(path, "no table with rlnResolutionInversePixel and rlnMtfValue (an MTF STAR as RELION's)")


def sharpen(volume: np.ndarray, pixel_size: float, *, bfactor_used: float, resolution: float,
            fsc_curve: np.ndarray | None = None, mtf: tuple[np.ndarray, np.ndarray] | None = None,
            lowpass_width_shells: float = 2.0) -> np.ndarray:
    """The sharpened map: ÷ MTF, × exp(−bfactor_used·s²/4) (RELION's sign: negative sharpens), × FSC
    weights per shell, low-passed at ``resolution`` Å with a raised-cosine edge."""
    box = volume.shape[-1]
    f = np.fft.rfftn(np.asarray(volume, np.float64))
    r = radius_3d(box)  # Fourier pixels
    s = r / (box * pixel_size)
    gain = np.exp(np.minimum(-bfactor_used * s**2 / 4.0, 700.0))  # no inf (× the low-pass's 0 would be NaN)
    if mtf is not None:
        freq, value = mtf
        gain = gain / np.interp(r / box, freq, value, left=value[0], right=value[-1])
    if fsc_curve is not None:
        w = fsc_weights(fsc_curve)
        sh = np.minimum(shells_3d(box), len(w) - 1)
        gain = gain * w[sh]
    cutoff = box * pixel_size / resolution
    edge = np.clip((r - cutoff) / max(lowpass_width_shells, 1e-9), 0.0, 1.0)
    gain = gain * np.where(r <= cutoff, 1.0, np.where(edge < 1.0, 0.5 * (1 + np.cos(np.pi * edge)), 0.0))
    return np.fft.irfftn(f * gain, s=volume.shape, axes=(0, 1, 2)).astype(np.float32)
