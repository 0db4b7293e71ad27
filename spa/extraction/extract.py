"""Cutting particle boxes out of a micrograph, as RELION's extraction does.

Conventions (CONVENTIONS.md): a coordinate (rlnCoordinateX = column,
rlnCoordinateY = row, 0-based) is the pixel that becomes the box's centre
pixel B//2.  Micrographs are recorded with protein dark; ``invert`` makes
particles white on black, as every later stage expects.  Each image is then
normalised to zero mean and unit standard deviation of its *background* (the
pixels outside a circle of ``background_radius`` px around the centre), and
pixels beyond ±``dust_sigma`` σ of that background (hot pixels, dust) are
replaced by Gaussian noise of the background's statistics.  Optional Fourier
binning resamples the box to ``rescaled_box`` pixels (pixel size × box /
rescaled_box).  Boxes that would cross the micrograph's edge are dropped (and
counted), as RELION does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.fourier import fourier_resize, real_radius


@dataclass(frozen=True)
class ExtractOptions:
    box: int  # px on the micrograph
    rescaled_box: int | None = None  # px after Fourier binning; None keeps ``box``
    invert: bool = True
    background_radius: float | None = None  # px of the OUTPUT box; None: 75 % of its half-width
    dust_sigma: float | None = 5.0  # None: no dust removal

    def __post_init__(self):
        if self.box < 8 or self.box % 2:
            raise ValueError(f"box must be an even number of pixels ≥ 8, not {self.box}")
        if self.rescaled_box is not None and (self.rescaled_box < 8 or self.rescaled_box % 2 or
                                              self.rescaled_box > self.box):
            raise ValueError(f"rescaled box must be even, ≥ 8 and ≤ the box ({self.box}), not {self.rescaled_box}")

    @property
    def output_box(self) -> int:
        return self.rescaled_box or self.box


def cut_boxes(micrograph: np.ndarray, x, y, box: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (n, box, box) float32, kept mask (N,)) for centres at rounded (x, y) px; boxes crossing an
    edge are not cut."""
    rows, cols = micrograph.shape
    cx = np.rint(np.asarray(x, float)).astype(int)
    cy = np.rint(np.asarray(y, float)).astype(int)
    half = box // 2
    keep = (cx - half >= 0) & (cy - half >= 0) & (cx - half + box <= cols) & (cy - half + box <= rows)
    out = np.empty((int(keep.sum()), box, box), np.float32)
    for k, (i, j) in enumerate(zip(cy[keep], cx[keep])):
        out[k] = micrograph[i - half:i - half + box, j - half:j - half + box]
    return out, keep


def normalise(images: np.ndarray, background_radius: float, dust_sigma: float | None,
              rng: np.random.Generator) -> np.ndarray:
    """Zero mean, unit σ of each image's background (outside ``background_radius`` px); dust replaced."""
    box = images.shape[-1]
    outside = real_radius(box, 2) > background_radius
    if outside.sum() < 10:
        raise ValueError(f"background radius {background_radius:.1f} px leaves too few background pixels in a "
                         f"{box}-px box")
    bg = images[:, outside]
    mean = bg.mean(axis=1)[:, None, None]
    sd = np.maximum(bg.std(axis=1), 1e-12)[:, None, None]
    out = (images - mean) / sd
    if dust_sigma is not None:
        dust = np.abs(out) > dust_sigma
        if dust.any():
            out[dust] = rng.standard_normal(int(dust.sum()))
    return out.astype(np.float32)


def extract(micrograph: np.ndarray, x, y, opts: ExtractOptions, rng: np.random.Generator):
    """Particle images of one micrograph: (images (n, B', B') float32, kept mask over the coordinates)."""
    boxes, keep = cut_boxes(np.asarray(micrograph, np.float32), x, y, opts.box)
    if opts.invert:
        boxes = -boxes
    if opts.rescaled_box and opts.rescaled_box != opts.box and len(boxes):
        boxes = fourier_resize(boxes, opts.rescaled_box, ndim=2)
    radius = opts.background_radius if opts.background_radius else 0.75 * opts.output_box / 2
    images = normalise(boxes, radius, opts.dust_sigma, rng) if len(boxes) else boxes
    return images, keep
