"""Cutting particle boxes out of a micrograph, as RELION's extraction does.

Conventions (CONVENTIONS.md): a coordinate (rlnCoordinateX = column,
rlnCoordinateY = row, 0-based) is the pixel that becomes the box's centre
pixel B//2 (a fractional coordinate is rounded to the nearest pixel).
Micrographs are recorded with protein dark; ``invert`` makes particles white
on black, as every later stage expects.  ``phase_flip`` multiplies each box's
transform by the sign of its CTF (computed on the box at the micrograph's
pixel size), so that what remains is |CTF| — later stages must then model
|CTF| (rlnCtfDataArePhaseFlipped = 1 in the optics group).  Optional Fourier
binning resamples the box to ``rescaled_box`` pixels (pixel size × box /
rescaled_box).  Each image is then normalised to zero mean and unit standard
deviation of its *background* (the pixels outside a circle of
``background_radius`` px around the centre), and pixels beyond
±``dust_sigma`` σ of that background (hot pixels, dust) are replaced by
Gaussian noise of the background's statistics.  Boxes that would cross the
micrograph's edge are dropped (and counted), as RELION does.

Array code runs on the backend of the micrograph handed in (NumPy or CuPy);
the dust noise comes from a NumPy generator, so both give the same images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from spa.backend import array_module
from spa.fourier import fourier_resize, irfft_centered, real_radius, rfft_centered


@dataclass(frozen=True)
class ExtractOptions:
    box: int  # px on the micrograph
    rescaled_box: int | None = None  # px after Fourier binning; None keeps ``box``
    invert: bool = True
    background_radius: float | None = None  # px of the OUTPUT box; None: 75 % of its half-width
    dust_sigma: float | None = 5.0  # None: no dust removal
    phase_flip: bool = False  # multiply by the sign of the micrograph's CTF

    def __post_init__(self):
        if self.box < 8 or self.box % 2:
            raise ValueError(f"box must be an even number of pixels ≥ 8, not {self.box}")
        if self.rescaled_box is not None and (self.rescaled_box < 8 or self.rescaled_box % 2 or
                                              self.rescaled_box > self.box):
            raise ValueError(f"rescaled box must be even, ≥ 8 and ≤ the box ({self.box}), not {self.rescaled_box}")
        if self.background_radius is not None and self.background_radius <= 0:
            raise ValueError(f"background radius must be > 0 px, not {self.background_radius}")

    @property
    def output_box(self) -> int:
        return self.rescaled_box or self.box

    @property
    def radius(self) -> float:
        """Background radius in px of the output box."""
        return self.background_radius if self.background_radius else 0.75 * self.output_box / 2

    def as_dict(self) -> dict:
        return asdict(self)


def inside(shape, x, y, box: int) -> np.ndarray:
    """True for the (x, y) px centres whose box lies wholly inside a micrograph of ``shape`` (rows, cols)."""
    rows, cols = int(shape[-2]), int(shape[-1])
    cx = np.rint(np.asarray(x, float)).astype(np.int64)
    cy = np.rint(np.asarray(y, float)).astype(np.int64)
    half = box // 2
    return (cx - half >= 0) & (cy - half >= 0) & (cx - half + box <= cols) & (cy - half + box <= rows)


def cut_boxes(micrograph, x, y, box: int):
    """(boxes (n, box, box) float32 on the micrograph's backend, kept mask (N,) NumPy) for centres at rounded
    (x, y) px; boxes crossing an edge are not cut."""
    xp = array_module(micrograph)
    keep = inside(micrograph.shape, x, y, box)
    half = box // 2
    cx = np.rint(np.asarray(x, float)[keep]).astype(np.int64) - half
    cy = np.rint(np.asarray(y, float)[keep]).astype(np.int64) - half
    windows = getattr(getattr(getattr(xp, "lib", None), "stride_tricks", None), "sliding_window_view", None)
    if windows is not None:  # a (rows, cols, box, box) view: one gather, 4× faster than 3D fancy indexing
        boxes = windows(micrograph, (box, box))[xp.asarray(cy), xp.asarray(cx)]
    else:
        offsets = np.arange(box)
        boxes = micrograph[xp.asarray(cy[:, None, None] + offsets[None, :, None]),
                           xp.asarray(cx[:, None, None] + offsets[None, None, :])]
    return boxes.astype(xp.float32, copy=False), keep


def ctf_signs(box: int, pixel_size: float, ctf: dict, xp=np):
    """Sign (±1, float32, (n or 1, B, B//2+1) rfft layout) of each particle's CTF on a ``box`` at ``pixel_size`` Å.

    ``ctf`` holds per-particle arrays defocus_u, defocus_v (Å), defocus_angle, phase_shift (°) and
    scalars voltage (kV), cs (mm), amplitude_contrast; a zero of the CTF counts as +1.
    """
    from spa.ctf import ctf_2d

    per_particle = np.stack([np.atleast_1d(np.asarray(ctf[k], np.float64)) for k in
                             ("defocus_u", "defocus_v", "defocus_angle", "phase_shift")], axis=1)
    distinct, which = np.unique(per_particle, axis=0, return_inverse=True)  # usually one per micrograph
    values = ctf_2d(box, pixel_size, distinct[:, 0], distinct[:, 1], distinct[:, 2], ctf["voltage"], ctf["cs"],
                    ctf["amplitude_contrast"], distinct[:, 3], xp=xp).reshape(-1, box, box // 2 + 1)
    signs = xp.where(values < 0, xp.float32(-1.0), xp.float32(1.0))
    return signs if len(distinct) == 1 else signs[xp.asarray(which.reshape(-1))]  # (1, …) broadcasts


def phase_flip(boxes, signs):
    """Boxes whose transform is multiplied by ``signs`` (:func:`ctf_signs`): CTF · P becomes |CTF| · P."""
    box = boxes.shape[-1]
    return irfft_centered(rfft_centered(boxes) * signs, box).astype(boxes.dtype, copy=False)


def normalise(images, background_radius: float, dust_sigma: float | None, rng, ids=None):
    """Zero mean, unit σ of each image's background (outside ``background_radius`` px); dust replaced.

    ``rng``: a NumPy Generator (one stream for the whole batch), or a sequence of ints (a seed): then image k
    draws its noise from ``default_rng([*rng, ids[k]])`` (``ids`` default 0, 1, …), so an image's pixels do
    not depend on which other images share its batch.
    """
    xp = array_module(images)
    box = images.shape[-1]
    outside = real_radius(box, 2, xp) > background_radius
    if int(outside.sum()) < 10:
        raise ValueError(f"background radius {background_radius:.1f} px leaves too few background pixels in a "
                         f"{box}-px box")
    bg = images[:, outside]
    mean = bg.mean(axis=1)[:, None, None]
    sd = xp.maximum(bg.std(axis=1), 1e-12)[:, None, None]
    out = ((images - mean) / sd).astype(xp.float32)
    if dust_sigma is not None:
        dust = xp.abs(out) > dust_sigma
        if isinstance(rng, np.random.Generator):
            count = int(dust.sum())
            if count:
                out[dust] = xp.asarray(rng.standard_normal(count), dtype=xp.float32)
            return out
        ids = np.arange(len(out)) if ids is None else np.asarray(ids)
        for k in np.flatnonzero(np.asarray(dust.any(axis=(1, 2)).tolist(), bool)):  # ~1 % of images at 5 σ
            pixels = dust[int(k)]
            noise = np.random.default_rng([*[int(v) for v in rng], int(ids[k])]).standard_normal(int(pixels.sum()))
            out[int(k)][pixels] = xp.asarray(noise, dtype=xp.float32)
    return out


def extract(micrograph, x, y, opts: ExtractOptions, rng, *, ctf: dict | None = None,
            pixel_size: float | None = None, ids=None):
    """Particle images of one micrograph: (images (n, B', B') float32 on the micrograph's backend, kept mask
    over the coordinates).

    ``rng`` and ``ids`` (one per coordinate) as :func:`normalise` takes them: with a seed and the particles'
    numbers on the micrograph as ``ids``, any subset of a micrograph's particles gets the same images as the
    whole.  ``ctf`` and ``pixel_size`` (the micrograph's, Å) are needed with ``opts.phase_flip``:
    per-coordinate arrays as :func:`ctf_signs` takes them (all N coordinates; the kept ones are used).
    """
    xp = array_module(micrograph)
    boxes, keep = cut_boxes(xp.asarray(micrograph, dtype=xp.float32), x, y, opts.box)
    if opts.invert:
        boxes = -boxes
    if opts.phase_flip and len(boxes):
        if ctf is None or pixel_size is None:
            raise ValueError("phase flipping needs the micrograph's CTF and pixel size")
        kept = {k: (np.asarray(v)[keep] if np.ndim(v) else v) for k, v in ctf.items()}
        boxes = phase_flip(boxes, ctf_signs(opts.box, pixel_size, kept, xp))
    if opts.rescaled_box and opts.rescaled_box != opts.box and len(boxes):
        boxes = fourier_resize(boxes, opts.rescaled_box, ndim=2)
    if ids is not None:
        ids = np.asarray(ids)[keep]
    images = normalise(boxes, opts.radius, opts.dust_sigma, rng, ids) if len(boxes) else boxes
    return images, keep
