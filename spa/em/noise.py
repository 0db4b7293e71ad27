"""Noise spectra σ² per optics group and Fourier shell (RELION's rlnSigma2Noise).

σ² is the variance of one real component of a Fourier coefficient (so
E|X − C·A|² = 2σ²), in the units of :func:`spa.fourier.rfft_centered` of the
(masked) particle images.  Shells are rint(|k|·B), 0 … B//2, on the rfft half
grid.
"""

from __future__ import annotations

import numpy as np

from spa.backend import array_module
from spa.fourier import shells_2d


def shell_pixel_counts(box: int) -> np.ndarray:
    """Number of rfft half-grid pixels in each shell 0 … B//2 (float64)."""
    sh = shells_2d(box, np).reshape(-1)
    return np.bincount(sh[sh <= box // 2], minlength=box // 2 + 1).astype(np.float64)


def group_power(power, group, n_groups: int):
    """Σ over images of each optics group of a per-image per-shell power (N, S) → (G, S) float64."""
    xp = array_module(power)
    onehot = (xp.asarray(group)[None, :] == xp.arange(n_groups)[:, None]).astype(xp.float64)
    return onehot @ xp.asarray(power, dtype=xp.float64)


def window_to_shells(values, shell, n_shells: int):
    """Sum (G, F) values over the active pixels of each shell → (G, n_shells) float64."""
    xp = array_module(values)
    onehot = (xp.asarray(shell)[:, None] == xp.arange(n_shells)[None, :]).astype(xp.float64)
    return xp.asarray(values, dtype=xp.float64) @ onehot


def sigma2_sums(resid_active, shell_active, window_shells: int, power, group, n_groups: int, box: int):
    """Per-group, per-shell residual sums and pixel counts of one chunk.

    ``resid_active`` (G, F): Σ Γ·|X·P − C·A|² at the active pixels (shells
    < ``window_shells``); beyond the window the prediction is zero, so the
    residual is the image power itself (``power`` (N, B//2+1) from
    :func:`spa.em.estep.prepare_chunk`).  Returns (wsum (G, S), count (G, S)).
    """
    xp = array_module(resid_active)
    nsh = box // 2 + 1
    inside = window_to_shells(resid_active, shell_active, nsh)
    outside = group_power(power, group, n_groups)
    sel = xp.arange(nsh) >= window_shells
    wsum = xp.where(sel[None, :], outside, inside)
    n_per_group = xp.bincount(xp.asarray(group), minlength=n_groups).astype(xp.float64)
    count = n_per_group[:, None] * xp.asarray(shell_pixel_counts(box))[None, :]
    return wsum, count


def initial_sigma2(power_sum, n_per_group, box: int) -> np.ndarray:
    """σ² from the mean image power spectrum: Σ|X|² / (2 · images · pixels per shell).

    (RELION starts from the images' power spectrum too; it overestimates the
    noise by the signal power, which the first M-step corrects.)
    """
    count = np.asarray(n_per_group, np.float64)[:, None] * shell_pixel_counts(box)[None, :]
    return _finalise(np.asarray(power_sum, np.float64), count, None)


def update_sigma2(wsum, count, previous) -> np.ndarray:
    """σ² = Σ residual² / (2·count) per group and shell; keeps ``previous`` where nothing was summed."""
    return _finalise(np.asarray(wsum, np.float64), np.asarray(count, np.float64), previous)


def _finalise(wsum, count, previous):
    with np.errstate(invalid="ignore", divide="ignore"):
        s2 = wsum / (2.0 * count)
    good = (count > 0) & np.isfinite(s2) & (s2 > 0)
    if previous is not None:
        s2 = np.where(good, s2, previous)
    else:
        fill = np.nanmedian(np.where(good, s2, np.nan)) if good.any() else 1.0
        s2 = np.where(good, s2, fill)
    # a shell with zero power (e.g. the DC of zero-mean images) would give 1/σ² = ∞
    floor = 1e-6 * np.max(s2, axis=-1, keepdims=True)
    return np.maximum(s2, np.maximum(floor, 1e-30))
