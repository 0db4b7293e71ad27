"""The masked FSC corrected by phase randomisation (Chen et al. 2013), as RELION's PostProcess.

A mask correlates the two half maps by itself (both are multiplied by the same
function), so the masked FSC is too high, the more so the tighter the mask.
Chen et al. measure that excess: the half maps' phases are randomised beyond
the resolution where the unmasked FSC falls below 0.8 (there the two halves'
signal no longer correlates once phases are random), the randomised halves are
masked and their FSC, FSC_n, is what the mask alone contributes.  Beyond the
randomisation shell

    FSC_true = (FSC_t − FSC_n) / (1 − FSC_n)

with FSC_t the masked FSC; at and below it FSC_true = FSC_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.em.fsc import fsc
from spa.fourier import shells_3d


def randomise_phases(volume: np.ndarray, from_shell: int, rng: np.random.Generator) -> np.ndarray:
    """The map with the phases of every Fourier coefficient at shell ≥ ``from_shell`` replaced by uniform
    random phases (amplitudes kept).  The phases are those of real white noise's transform, so they keep
    the Hermitian symmetry of a real map and the result's amplitudes are exactly the map's."""
    box = volume.shape[-1]
    f = np.fft.rfftn(np.asarray(volume, np.float64))
    noise = np.fft.rfftn(rng.standard_normal(volume.shape))
    beyond = shells_3d(box) >= from_shell
    f[beyond] = np.abs(f[beyond]) * np.exp(1j * np.angle(noise[beyond]))
    return np.fft.irfftn(f, s=volume.shape, axes=(0, 1, 2)).astype(np.float32)


def randomisation_shell(unmasked_fsc: np.ndarray, threshold: float = 0.8) -> int:
    """First shell (≥ 1) where the unmasked FSC drops below ``threshold`` (RELION's randomize_fsc_at);
    the last shell when it never does."""
    below = np.nonzero(np.asarray(unmasked_fsc)[1:] < threshold)[0]
    return int(below[0] + 1) if below.size else len(unmasked_fsc) - 1


@dataclass
class CorrectedFSC:
    """FSC curves per shell 0 … B//2: unmasked, masked, masked phase-randomised, corrected; the shell
    from which phases were randomised."""

    unmasked: np.ndarray
    masked: np.ndarray
    randomised: np.ndarray
    corrected: np.ndarray
    randomise_from: int


def corrected_fsc(half1: np.ndarray, half2: np.ndarray, mask: np.ndarray, *, seed: int = 0,
                  threshold: float = 0.8) -> CorrectedFSC:
    """The masked FSC of two half maps corrected by phase randomisation (see the module docstring)."""
    unmasked = fsc(half1, half2)
    masked = fsc(half1, half2, mask)
    start = randomisation_shell(unmasked, threshold)
    rng = np.random.default_rng(seed)
    r1 = randomise_phases(half1, start, rng)
    r2 = randomise_phases(half2, start, rng)
    randomised = fsc(r1, r2, mask)
    corrected = masked.copy()
    beyond = np.arange(len(masked)) > start
    denom = np.maximum(1.0 - randomised[beyond], 1e-6)
    corrected[beyond] = (masked[beyond] - randomised[beyond]) / denom
    return CorrectedFSC(unmasked, masked, randomised, corrected, start)
