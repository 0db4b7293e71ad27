"""High-resolution noise substitution (Chen et al. 2013) as an overfitting test.

Chen et al. replace the phases of every particle image beyond a frequency
s_sub by random phases, refine the substituted images exactly as the real
ones and compute the FSC of their two half maps, FSC_n.  Beyond s_sub the
substituted images hold no signal, so a refinement that does not overfit
gives FSC_n ≈ 0 there, and the true FSC is

    FSC_true = (FSC_t − FSC_n) / (1 − FSC_n)      (beyond s_sub; FSC_t below it)

with FSC_t the FSC of the real data.

Two modes:

* ``given`` (cheap, the default): **the given poses are kept, nothing is
  re-refined.**  The real and the substituted images are reconstructed into
  their two halves (rlnRandomSubset) from the refined poses
  (:mod:`spa.validation.halves`), so FSC_t and FSC_n are made the same way.
  FSC_n ≈ 0 beyond s_sub shows that the reconstruction puts no correlation
  there that the data do not carry — but since the poses were found on the
  real images, it cannot show that the *pose search* did not fit noise.
* ``refine``: the substituted images of a subset are refined again by
  refine3d's own gold-standard refinement (:class:`spa.refine3d.refine.Refine3D`):
  local searches around the given poses at the final HEALPix order, the
  reference the refined map low-passed to s_sub (it knows nothing the
  substituted images do not), a few iterations; FSC_n is that refinement's
  half-map FSC.  A refinement that fits noise makes FSC_n rise beyond s_sub;
  the gold standard keeps it at ≈ 0.
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
    (Å, FSC 0.143) of the real and corrected curves; particles used; the mode (given poses or refined)."""

    real: np.ndarray
    substituted: np.ndarray
    corrected: np.ndarray
    from_shell: int
    substitution_resolution: float
    mean_abs_beyond: float
    resolution_real: float
    resolution_corrected: float
    particles: int
    mode: str = "given"


def randomise_image_phases(images, from_shell: int, rng: np.random.Generator | None = None, *,
                           white=None) -> np.ndarray:
    """Images (n, B, B) with the phases of every Fourier pixel at shell ≥ ``from_shell`` replaced by those of
    white noise (``white`` (n, B, B), else drawn from ``rng``; amplitudes kept; Hermitian symmetry kept, so
    the images stay real)."""
    images = np.asarray(images, np.float64)
    box = images.shape[-1]
    f = np.fft.rfft2(images)
    noise = np.fft.rfft2(rng.standard_normal(images.shape) if white is None else white)
    beyond = shells_2d(box) >= from_shell  # the rfft2 grid, FFT order
    f[:, beyond] = np.abs(f[:, beyond]) * np.exp(1j * np.angle(noise[:, beyond]))
    return np.fft.irfft2(f, s=(box, box)).astype(np.float32)


class SubstitutedImages:
    """An image source (``box``, ``pixel_size``, ``read``): the images of ``source`` with phases randomised
    from ``from_shell`` on; image i always gets the same noise (seeded by ``seed`` and i)."""

    def __init__(self, source, from_shell: int, seed: int = 0):
        self.source = source
        self.from_shell = int(from_shell)
        self.seed = int(seed)
        self.box = int(source.box)
        self.pixel_size = float(source.pixel_size)

    def __len__(self) -> int:
        return len(self.source)

    def read(self, idx) -> np.ndarray:
        idx = np.asarray(idx).reshape(-1)
        white = np.stack([np.random.default_rng([self.seed, int(i)]).standard_normal((self.box, self.box))
                          for i in idx]) if idx.size else np.zeros((0, self.box, self.box))
        return randomise_image_phases(self.source.read(idx), self.from_shell, white=white)


def refine_substituted(source, table, volume, *, from_shell: int, symmetry: str = "C1", order: int = 4,
                       iterations: int = 3, offset_range: float = 2.0, seed: int = 0, backend: str | None = None,
                       log=None):
    """Half maps (two (B, B, B)) of refine3d's gold-standard refinement of the substituted images (the
    ``refine`` mode of the module docstring), in a temporary folder."""
    import tempfile

    from spa.refine3d.refine import Refine3D, Refine3DOptions

    box = int(source.box)
    pixel = float(table["rlnImagePixelSize"].iloc[0])
    opts = Refine3DOptions(symmetry=symmetry, healpix_order=order, auto_local_healpix_order=order,
                           max_healpix_order=order, max_iter=iterations, ini_high=box * pixel / from_shell,
                           offset_range=offset_range, seed=seed, backend=backend)
    with tempfile.TemporaryDirectory(prefix="spa-noise-substitution-") as tmp:
        run = Refine3D(table.reset_index(drop=True).copy(), SubstitutedImages(source, from_shell, seed),
                       np.asarray(volume, np.float32), opts, tmp, log=log or (lambda *a: None))
        _, halves, _, _ = run.run()
    return [np.asarray(h, np.float32) for h in halves]


def noise_substitution(source, table, subset, *, from_shell: int, symmetry: str = "C1", seed: int = 0,
                       backend: str | None = None, mode: str = "given", volume=None, order: int = 4,
                       iterations: int = 3, log=None) -> NoiseSubstitution:
    """The test (module docstring) on ``table``'s particles (images from ``source``, halves ``subset`` 1/2),
    phases randomised from ``from_shell`` (Fourier pixels of the box) on; ``mode`` ``given`` or ``refine``
    (which needs the refined map ``volume``)."""
    pixel = float(table["rlnImagePixelSize"].iloc[0])
    box = int(source.box)
    real = reconstruct_halves(source.read, table, subset, pixel_size=pixel, symmetry=symmetry, backend=backend)
    if mode == "refine":
        posed = table.copy()
        posed["rlnRandomSubset"] = np.asarray(subset)
        subst = refine_substituted(source, posed, volume, from_shell=from_shell, symmetry=symmetry, order=order,
                                   iterations=iterations, seed=seed, backend=backend, log=log)
    else:
        subst = reconstruct_halves(SubstitutedImages(source, from_shell, seed).read, table, subset,
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
        particles=len(table), mode=mode)


def plot_noise_substitution(path, result: NoiseSubstitution, box: int, pixel_size: float) -> None:
    from spa.plots import plot_fsc

    plot_fsc(path, [(result.real, "real images (FSC_t)"),
                    (result.substituted, f"phases randomised beyond {result.substitution_resolution:.1f} Å (FSC_n)"),
                    (result.corrected, "corrected")], box, pixel_size)
