"""The noise-particle test (Heymann 2015, "Validation of 3DEM reconstructions: the phantom in the noise").

Images of pure noise aligned against a reference reproduce the reference
("Einstein from noise"): a refinement can make a map out of nothing.  The
test replaces the particles by noise with the same power spectrum (the mean
2D power spectrum of the real images, so CTF rings and the noise colour are
the same), aligns them exactly as the real particles — one global search
against the refined map low-passed to ``resolution`` Å
(:func:`spa.validation.search.search_poses`) — and reconstructs each set's
two random halves from the poses found (:mod:`spa.validation.halves`).

Both noise halves were aligned against the same reference, so their FSC is
not gold-standard: it shows what the alignment alone puts into a map, up to
about the reference's resolution.  A pipeline that is sound gives the noise
map a resolution no better than the reference's low-pass, and clearly worse
than the real particles reach through the same search; a noise map that
reaches the real data's resolution says the resolution comes from the
reference, not from the particles.  Cheap: a random subset, one global
search at a coarse HEALPix order, no iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.em.fsc import fsc
from spa.validation.halves import HalfFSC, half_fsc, reconstruct_halves
from spa.validation.search import search_poses


@dataclass
class NoiseParticles:
    """The real subset's and the noise subset's half-map FSC after the same search; the reference's low-pass
    (Å) and the finest resolution it holds any of (the end of its 2-shell raised-cosine edge, Å); the
    correlation of the noise map with the reference (inside the low-pass: the phantom); particles."""

    real: HalfFSC
    noise: HalfFSC
    reference_resolution: float
    reference_limit: float
    noise_vs_reference: float
    particles: int

    @property
    def passed(self) -> bool:
        """The noise map reaches no further than the reference holds, and less far than the real particles."""
        return self.noise.resolution >= 0.98 * self.reference_limit and self.noise.resolution > self.real.resolution


class NoiseImages:
    """Noise images with a given mean 2D power spectrum (an image source: ``box``, ``pixel_size``, ``read``);
    image i is always the same (seeded by ``seed`` and i)."""

    def __init__(self, power, box: int, pixel_size: float, seed: int = 0):
        self.amplitude = np.sqrt(np.asarray(power, np.float64)) / box  # |F| of unit white noise is B on average
        self.box = int(box)
        self.pixel_size = float(pixel_size)
        self.seed = int(seed)

    def read(self, idx) -> np.ndarray:
        out = []
        for i in np.asarray(idx).reshape(-1):
            white = np.random.default_rng([self.seed, int(i)]).standard_normal((self.box, self.box))
            out.append(np.fft.irfft2(np.fft.rfft2(white) * self.amplitude, s=(self.box, self.box)))
        return np.asarray(out, np.float32).reshape(-1, self.box, self.box)


def mean_power(source, n: int, chunk: int = 256) -> np.ndarray:
    """Mean |rfft2|² (B, B//2+1) of images 0 … n−1 of ``source``."""
    total = None
    for lo in range(0, n, chunk):
        f = np.fft.rfft2(np.asarray(source.read(np.arange(lo, min(n, lo + chunk))), np.float64))
        p = (np.abs(f) ** 2).sum(axis=0)
        total = p if total is None else total + p
    return total / max(n, 1)


def noise_particle_test(source, table, subset, volume, *, resolution: float, symmetry: str = "C1", order: int = 2,
                        offset_range: float = 3.0, seed: int = 0, backend: str | None = None,
                        progress=None) -> NoiseParticles:
    """The test of the module docstring on ``table``'s particles (images ``source``, halves ``subset``)."""
    pixel = float(table["rlnImagePixelSize"].iloc[0])
    box = int(source.box)
    noise = NoiseImages(mean_power(source, len(table)), box, pixel, seed)
    results = []
    zero = np.zeros((len(table), 2))
    for k, images in enumerate((source, noise)):
        found = search_poses(images, table, volume, symmetry=symmetry, resolution=resolution, order=order,
                             offset_range=offset_range, centres=zero, backend=backend)
        posed = table.copy()
        posed["rlnAngleRot"], posed["rlnAngleTilt"], posed["rlnAnglePsi"] = found.angles.T
        posed["rlnOriginXAngst"], posed["rlnOriginYAngst"] = (found.offsets * pixel).T
        halves = reconstruct_halves(images.read, posed, subset, pixel_size=pixel, symmetry=symmetry, backend=backend)
        results.append((half_fsc(*halves, pixel), halves))
        if progress:
            progress(k + 1, 2)
    (real, _), (fake, fake_maps) = results
    from spa.fourier import lowpass

    shell = max(1, int(box * pixel / resolution))
    phantom = fsc(0.5 * (fake_maps[0] + fake_maps[1]), lowpass(np.asarray(volume, np.float32), pixel, resolution,
                                                                   ndim=3))
    limit = box * pixel / (box * pixel / resolution + 2.0)  # lowpass()'s edge: 2 shells beyond the cut-off
    return NoiseParticles(real, fake, float(resolution), float(limit), float(np.mean(phantom[1:shell + 1])),
                          len(table))


def plot_noise_particles(path, result: NoiseParticles, box: int, pixel_size: float) -> None:
    from spa.plots import plot_fsc

    plot_fsc(path, [(result.real.curve, f"real particles ({result.particles})"),
                    (result.noise.curve, "noise particles, same spectrum")], box, pixel_size)
