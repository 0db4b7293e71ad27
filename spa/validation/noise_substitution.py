"""High-resolution noise substitution (Chen et al. 2013) as an overfitting test, from given poses.

Chen et al. replace the phases of every particle image beyond a frequency
s_sub by random phases, refine the substituted images exactly as the real
ones and compute the FSC of their two half maps, FSC_n.  Beyond s_sub the
substituted images hold no signal, so a refinement that does not overfit
gives FSC_n ≈ 0 there, and the true FSC is

    FSC_true = (FSC_t − FSC_n) / (1 − FSC_n)      (beyond s_sub; FSC_t below it)

with FSC_t the FSC of the real data.

**Cheap mode (what is built here): the given poses are kept, nothing is
re-refined.**  Both the real and the substituted images of the particles are
reconstructed into their two halves (rlnRandomSubset) from the refined poses
(:mod:`spa.validation.halves`), so FSC_t and FSC_n are made the same way.
FSC_n ≈ 0 beyond s_sub then shows that the reconstruction itself puts no
correlation there that the data do not carry — but since the poses were
found on the real images, this cannot show that the *pose search* did not
fit noise; the noise-particle test (:mod:`spa.validation.noise_particles`)
and the gold-standard halves address that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.em.fsc import resolution_at
from spa.fourier import shells_2d
from spa.validation.halves import half_fsc, reconstruct_halves


@dataclass
class NoiseSubstitution:
    """FSC curves per shell: ``real`` (FSC_t), ``substituted`` (FSC_n), ``corrected``; the substitution
    shell and its resolution (Å); the mean |FSC_n| beyond ``from_shell`` + 2 (≈ 0 expected); resolutions
    (Å, FSC 0.143) of the real and corrected curves; particles used."""

    real: np.ndarray
    substituted: np.ndarray
    corrected: np.ndarray
    from_shell: int
    substitution_resolution: float
    mean_abs_beyond: float
    resolution_real: float
    resolution_corrected: float
    particles: int


def randomise_image_phases(images, from_shell: int, rng: np.random.Generator) -> np.ndarray:
    """Images (n, B, B) with the phases of every Fourier pixel at shell ≥ ``from_shell`` replaced by those of
    white noise (amplitudes kept; Hermitian symmetry kept, so the images stay real)."""
    images = np.asarray(images, np.float64)
    box = images.shape[-1]
    f = np.fft.rfft2(images)
    noise = np.fft.rfft2(rng.standard_normal(images.shape))
    beyond = shells_2d(box) >= from_shell  # the rfft2 grid, FFT order
    f[:, beyond] = np.abs(f[:, beyond]) * np.exp(1j * np.angle(noise[:, beyond]))
    return np.fft.irfft2(f, s=(box, box)).astype(np.float32)


def noise_substitution(source, table, subset, *, from_shell: int, symmetry: str = "C1", seed: int = 0,
                       backend: str | None = None) -> NoiseSubstitution:
    """The cheap-mode test (module docstring) on ``table``'s particles (images from ``source``, halves
    ``subset`` 1/2), phases randomised from ``from_shell`` (Fourier pixels of the box) on."""
    pixel = float(table["rlnImagePixelSize"].iloc[0])
    box = int(source.box)
    real = reconstruct_halves(source.read, table, subset, pixel_size=pixel, symmetry=symmetry, backend=backend)
    rng = np.random.default_rng(seed)
    subst = reconstruct_halves(lambda idx: randomise_image_phases(source.read(idx), from_shell, rng), table, subset,
                               pixel_size=pixel, symmetry=symmetry, backend=backend)
    t = half_fsc(*real, pixel)
    n = half_fsc(*subst, pixel)
    corrected = t.curve.copy()
    beyond = np.arange(len(corrected)) > from_shell
    corrected[beyond] = (t.curve[beyond] - n.curve[beyond]) / np.maximum(1.0 - n.curve[beyond], 1e-6)
    tail = n.curve[from_shell + 2:]
    return NoiseSubstitution(
        real=t.curve, substituted=n.curve, corrected=corrected, from_shell=int(from_shell),
        substitution_resolution=float(box * pixel / max(from_shell, 1)),
        mean_abs_beyond=float(np.mean(np.abs(tail))) if tail.size else float("nan"),
        resolution_real=t.resolution, resolution_corrected=resolution_at(corrected, 0.143, box, pixel),
        particles=len(table))


def plot_noise_substitution(path, result: NoiseSubstitution, box: int, pixel_size: float) -> None:
    from spa.plots import plot_fsc

    plot_fsc(path, [(result.real, "real images (FSC_t)"),
                    (result.substituted, f"phases randomised beyond {result.substitution_resolution:.1f} Å (FSC_n)"),
                    (result.corrected, "corrected")], box, pixel_size)
