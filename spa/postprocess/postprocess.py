"""The PostProcess job on two half maps: masked, corrected FSC → resolution → B-factor → sharpened map.

1. FSC of the half maps unmasked and with a solvent mask, corrected by phase
   randomisation (:mod:`~spa.postprocess.phase_randomisation`); the resolution
   is where the corrected curve first drops below 0.143 — "≥ Nyquist" when it
   never does (the data may hold more than the pixel size shows).
2. The average of the halves, masked, divided by the MTF (optional) and
   weighted per shell by √(2·FSC/(1+FSC)); its Guinier plot fitted between
   10 Å and the resolution gives the B-factor, unless the user gives one.
   A map resolved to ~10 Å or worse has no such range: no B-factor is
   fitted and none applied (``bfactor_fitted`` False).
3. Sharpening by that B (RELION's sign: the B-factor *used* is negative),
   FSC weighting and a low-pass at the resolution give ``postprocess.mrc``;
   times the mask, ``postprocess_masked.mrc``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.em.fsc import reaches_threshold_at_nyquist, resolution_at
from spa.postprocess.phase_randomisation import CorrectedFSC, corrected_fsc
from spa.postprocess.sharpen import Guinier, guinier_fit, sharpen, spherical_amplitudes


@dataclass
class PostprocessResult:
    """What :func:`postprocess` computes (maps float32 (B,B,B); resolution Å; B-factors Å², RELION sign)."""

    curves: CorrectedFSC
    resolution: float
    at_nyquist: bool
    guinier: Guinier
    bfactor_used: float
    bfactor_automatic: bool
    bfactor_fitted: bool  # automatic and a Guinier region to fit (else 0 is used: no sharpening)
    sharpened: np.ndarray
    sharpened_masked: np.ndarray
    guinier_weighted: np.ndarray
    guinier_sharpened: np.ndarray


def _log_amplitudes(volume: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(spherical_amplitudes(volume), 1e-30))


def postprocess(half1: np.ndarray, half2: np.ndarray, mask: np.ndarray, pixel_size: float, *,
                bfactor: float | None = None, mtf=None, seed: int = 0, fit_low: float = 10.0,
                threshold: float = 0.143) -> PostprocessResult:
    """Postprocess two half maps with a solvent mask (see the module docstring).

    ``bfactor``: the B-factor to sharpen with, Å², RELION's sign (negative
    sharpens); None fits it.  ``mtf``: (frequency 1/px, value) or None.
    """
    box = half1.shape[-1]
    curves = corrected_fsc(half1, half2, mask, seed=seed)
    resolution = resolution_at(curves.corrected, threshold, box, pixel_size)
    at_nyquist = reaches_threshold_at_nyquist(curves.corrected, threshold)
    average = 0.5 * (np.asarray(half1, np.float32) + np.asarray(half2, np.float32))
    weighted = sharpen(average * mask, pixel_size, bfactor_used=0.0, resolution=2 * pixel_size * 0.999,
                       fsc_curve=curves.corrected, mtf=mtf)
    guinier = guinier_fit(weighted, pixel_size, resolution, low=fit_low)
    automatic = bfactor is None
    fitted = automatic and guinier.ok
    used = (-guinier.bfactor if fitted else 0.0) if automatic else float(bfactor)
    sharpened = sharpen(average, pixel_size, bfactor_used=used, resolution=resolution,
                        fsc_curve=curves.corrected, mtf=mtf)
    sharpened_masked = sharpened * mask
    return PostprocessResult(
        curves=curves, resolution=float(resolution), at_nyquist=bool(at_nyquist), guinier=guinier,
        bfactor_used=float(used), bfactor_automatic=automatic, bfactor_fitted=fitted, sharpened=sharpened,
        sharpened_masked=sharpened_masked.astype(np.float32), guinier_weighted=_log_amplitudes(weighted),
        guinier_sharpened=_log_amplitudes(sharpened_masked))


def star_blocks(result: PostprocessResult, box: int, pixel_size: float, names: dict) -> dict:
    """RELION's postprocess.star blocks: data_general, data_fsc, data_guinier."""
    import pandas as pd

    from spa.fourier import shell_resolution

    c = result.curves
    n = len(c.corrected)
    res = shell_resolution(box, pixel_size)[:n]
    with np.errstate(divide="ignore"):
        inv = np.where(np.isfinite(res), 1.0 / res, 0.0)
    general = {
        "rlnFinalResolution": round(result.resolution, 4),
        "rlnSpaResolutionAtNyquist": int(result.at_nyquist),
        "rlnBfactorUsedForSharpening": round(result.bfactor_used, 3),
        "rlnSpaBfactorAutomatic": int(result.bfactor_automatic),
        "rlnSpaBfactorFitted": int(result.bfactor_fitted),
        "rlnFittedSlopeGuinierPlot": round(result.guinier.slope, 4),
        "rlnFittedInterceptGuinierPlot": round(result.guinier.intercept, 4),
        "rlnCorrelationFitGuinierPlot": round(result.guinier.correlation, 4),
        "rlnRandomiseFrom": round(float(res[c.randomise_from]), 4),
        **names,
    }
    fsc_table = pd.DataFrame({
        "rlnSpectralIndex": np.arange(n, dtype=int),
        "rlnResolution": inv,
        "rlnAngstromResolution": np.where(np.isfinite(res), res, 999.0),
        "rlnFourierShellCorrelationCorrected": c.corrected,
        "rlnFourierShellCorrelationUnmaskedMaps": c.unmasked,
        "rlnFourierShellCorrelationMaskedMaps": c.masked,
        "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps": c.randomised,
    })
    g = result.guinier
    rows = inv > 0
    guinier_table = pd.DataFrame({
        "rlnResolutionSquared": g.s2[rows],
        "rlnLogAmplitudesOriginal": g.ln_amplitude[rows],
        "rlnLogAmplitudesWeighted": result.guinier_weighted[rows],
        "rlnLogAmplitudesSharpened": result.guinier_sharpened[rows],
        "rlnLogAmplitudesIntercept": g.intercept + g.slope * g.s2[rows],
        "rlnSpaUsedInFit": g.fitted[rows].astype(int),
    })
    return {"general": general, "fsc": fsc_table, "guinier": guinier_table}
