"""Noise decoys: how well pure noise matches the references, measured with the run's own noise model.

A particle's best match to the references is scored by the whitened
matched-filter statistic of the E-step (``signal_z``: Re Σ X·C·conj(A)/σ²
over √Σ C²|A|²/σ², centred with about unit variance at any one pose for an
image of pure noise — a little more, ≈ 1.2 for compact references, as the
rfft half grid holds both conjugate halves of its kx = 0 column; see
:meth:`spa.em.finepass.FinePass.score`).  Maximised over classes, rotations and
shifts, noise alone reaches z ≈ 4–6, depending on the number of poses, the
window and the references, so no fixed threshold separates particles from
noise.  Instead decoys, images of Gaussian noise with the run's noise
spectrum σ² (per optics group), each standing in for a randomly chosen
particle (its CTF, optics group and offsets), are scored by the same E-step
against the same references (in class2d: each random half's averages, for
the particles of the other half).  A particle's noise p-value is the fraction of
decoys that match at least as well (the target–decoy approach of
proteomics; Heymann's noise substitution in spirit).  A small p-value: the
particle matches better than noise can; a large one: it is indistinguishable
from an image of pure noise.

Why not phase-randomised particle images: they keep the particles' low-
resolution signal power (a blob's amplitudes), which noise does not have, and
match the references better than real pure-noise images do (measured: 95th
percentile z 6.5 against 5.7).
"""

from __future__ import annotations

import numpy as np

from spa.fourier import irfft_centered, rfft_centered, shells_2d, soft_circular_mask


def noise_images(row_ids, group, sigma2, box: int, mask_radius_px: float | None, seed: int,
                 mask_edge_px: float = 5.0):
    """Images (N, B, B) float32 of stationary Gaussian noise whose masked transform has spectrum σ².

    σ² (G, B//2+1) is per real component of :func:`rfft_centered` of the
    *masked* images (:mod:`spa.em.noise`); masking stationary noise scales its
    power by mean(mask²), so the unmasked noise is drawn with σ²/mean(mask²).
    Image n uses optics group ``group[n]`` and a generator seeded by
    (seed, row_ids[n]): the same decoy whatever chunk it is made in.
    """
    sigma2 = np.asarray(sigma2, np.float64)
    mask2 = 1.0
    if mask_radius_px is not None:
        mask2 = float(np.mean(soft_circular_mask(box, mask_radius_px, mask_edge_px) ** 2))
    shells = np.minimum(shells_2d(box), sigma2.shape[1] - 1)
    # unit white noise has E|F|² = B² per rfft pixel, i.e. B²/2 per real component
    scale = np.sqrt(sigma2[:, shells] / (0.5 * box * box * mask2))
    out = np.empty((len(row_ids), box, box), np.float32)
    for n, (row, g) in enumerate(zip(np.asarray(row_ids, np.int64), np.asarray(group, np.int64))):
        white = np.random.default_rng([int(seed), int(row)]).standard_normal((box, box))
        out[n] = irfft_centered(rfft_centered(white, 2) * scale[g], box).astype(np.float32)
    return out


class DecoySource:
    """An image source of noise decoys: row j stands in for particle ``rows[j]`` (see :func:`noise_images`)."""

    def __init__(self, rows, group, sigma2, box: int, mask_radius_px: float | None, seed: int, pixel_size=None):
        self.rows = np.asarray(rows, np.int64)
        self.group = np.asarray(group, np.int64)
        self.sigma2 = np.asarray(sigma2, np.float64)
        self.box = int(box)
        self.mask_radius_px = mask_radius_px
        self.seed = int(seed)
        self.pixel_size = pixel_size

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, idx):
        idx = np.asarray(idx, np.int64)
        return noise_images(self.rows[idx], self.group[idx], self.sigma2, self.box, self.mask_radius_px, self.seed)


def decoy_rows(n_particles: int, n_decoys: int, seed: int) -> np.ndarray:
    """Sorted row indices of the particles made into decoys (all of them when n_decoys ≥ n)."""
    if n_decoys >= n_particles:
        return np.arange(n_particles)
    rng = np.random.default_rng([int(seed), 0xDEC0])
    return np.sort(rng.choice(n_particles, int(n_decoys), replace=False))


def noise_pvalue(signal_z, decoy_z) -> np.ndarray:
    """P(decoy z ≥ z) per particle, as (1 + #decoys ≥ z) / (1 + #decoys) (never 0)."""
    null = np.sort(np.asarray(decoy_z, np.float64))
    z = np.asarray(signal_z, np.float64)
    above = len(null) - np.searchsorted(null, z, side="left")
    return (1.0 + above) / (1.0 + len(null))
