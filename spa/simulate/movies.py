"""Simulated dose-fractionated movies of a micrograph scene, with drift, damage and gain.

For a scene of relative contrast c(x) (:func:`spa.simulate.micrographs.make_scene`),
frame f (1 … F) has expected counts

    λ_f(x) = d · p² · (1 + c_f(x − s_f − u_f(x))) · S(x)

* d — dose per frame (e⁻/Å²), p — pixel size (Å);
* c_f — c after radiation damage: each spatial frequency k (1/Å) is attenuated
  by exp(−N_f / (2 N_e(k))), N_f the exposure accumulated at the middle of
  frame f and N_e(k) = 0.245 k^−1.665 + 2.81 e⁻/Å² (Grant & Grigorieff 2015);
* s_f — global drift (pixels), a smooth trajectory with s_1 = 0, fast at first
  and slowing down (a few Å per frame decaying);
* u_f — smooth local deformation, a quadratic polynomial in (X, Y) ∈ [−1, 1]²
  times τ_f and τ_f², τ_f = (N_f − N_1)/total dose, zero on frame 1;
* S — per-pixel detector sensitivity.  The recorded frame is Poisson(λ_f)
  (integers); the **gain reference** written with the movies is 1/S, so, as for
  a real counting detector, raw frames × gain reference = gain-corrected
  counts with expectation d · p² · (1 + c_f(…)).

Frames are stored as an MRC stack (uint16, MRC mode 6) or as TIFF (uint8 or
uint16).  TIFF frames are written flipped along the slow axis (row 0 of the
array is the last image row in the file), as RELION, MotionCor2 and IMOD do, so
a reader that flips them back gets the array orientation of the MRC files and
of the gain reference (which is MRC, float32, never flipped).

Truth of movie NNNN (``truth/motion/movNNNN.star``, RELION's motion-correction
layout): ``data_general`` (image size, frames, dose per frame, pixel size,
voltage) and ``data_global_shift`` with rlnMicrographFrameNumber,
rlnMicrographShiftX/Y = the shift in pixels to APPLY to frame f to bring it
onto frame 1 (= −s_f), plus rlnSpaDriftXAngst/YAngst = s_f · p, the specimen's
displacement in Å; ``data_spa_local_motion`` holds the polynomial coefficients.
``truth/micrographs/movNNNN.mrc`` is the noise-free, undamaged aligned sum
F · d · p² · (1 + c), what perfect motion correction without dose weighting
would approach.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft as sfft
from scipy.ndimage import map_coordinates, spline_filter

from spa.simulate.micrographs import MicrographSpec, contrast_scale, make_scene, molecules_for, optics_table, write_truth


def critical_exposure(k) -> np.ndarray:
    """Grant & Grigorieff (2015) critical exposure N_e(k) in e⁻/Å² at spatial frequency k (1/Å)."""
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 0.245 * np.power(k, -1.665) + 2.81


@dataclass
class MovieSpec(MicrographSpec):
    """Options of simulated movies: a :class:`MicrographSpec` plus the exposure."""

    n_frames: int = 24
    dose_per_frame: float = 1.5  # e⁻/Å²/frame
    drift: float = 3.0  # Å, displacement during the first frame (decays)
    local_motion: float = 1.5  # Å, largest local deformation at the end
    damage: bool = True
    gain_sd: float = 0.05  # SD of the per-pixel sensitivity
    tiff: bool = False

    def __post_init__(self):
        self.dose = self.n_frames * self.dose_per_frame
        super().__post_init__()
        if self.n_frames < 2 or self.dose_per_frame <= 0:
            raise ValueError("need ≥ 2 frames and a dose per frame > 0")


def drift_trajectory(rng, n_frames: int, first_step: float, pixel_size: float) -> np.ndarray:
    """(F, 2) specimen displacement (sx, sy) in pixels, frame 1 at 0: decaying steps, slowly turning."""
    steps = np.zeros((n_frames, 2))
    theta = rng.uniform(0, 2 * np.pi)
    tau = rng.uniform(3.0, 6.0)
    for f in range(1, n_frames):
        theta += rng.normal(0, 0.25)
        length = first_step * np.exp(-(f - 1) / tau) + 0.1 * first_step
        steps[f] = length * np.array([np.cos(theta), np.sin(theta)]) + rng.normal(0, 0.05 * first_step, 2)
    return np.cumsum(steps, axis=0) / pixel_size


def _basis(size: int) -> np.ndarray:
    x = np.linspace(-1, 1, size)
    X, Y = np.meshgrid(x, x)  # X varies along columns, Y along rows
    return np.stack([X, Y, X * X, X * Y, Y * Y])


def local_coefficients(rng, amplitude_px: float, size: int) -> np.ndarray:
    """(2 axes, 2 time powers, 5 terms) coefficients; the field at τ = 1 peaks at ``amplitude_px``."""
    coef = rng.normal(size=(2, 2, 5))
    if amplitude_px <= 0:
        return np.zeros_like(coef)
    field = np.einsum("atj,jyx->ayx", coef.sum(1)[:, None, :], _basis(65))
    return coef * (amplitude_px / np.abs(field).max())


def local_field(coef: np.ndarray, tau: float, size: int) -> np.ndarray:
    """(2, size, size) local displacement (ux, uy) in pixels at time τ."""
    w = coef[:, 0, :] * tau + coef[:, 1, :] * tau * tau
    return np.einsum("aj,jyx->ayx", w, _basis(size))


def expected_frames(contrast, spec: MovieSpec, drift_px, coef, *, damage=None, sensitivity=None):
    """Expected counts per frame (F, H, W) float32 (noise-free); see the module docstring.

    ``damage`` overrides ``spec.damage``; ``sensitivity`` (H, W) multiplies the
    counts (None: an ideal detector).  Yields frames one at a time.
    """
    size = contrast.shape[0]
    p = spec.pixel_size
    damage = spec.damage if damage is None else damage
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    k = np.sqrt(ky * ky + kx * kx) / p
    ne = critical_exposure(np.where(k > 0, k, 1.0))
    ne = np.where(k > 0, ne, np.inf)
    chat = sfft.rfft2(contrast.astype(np.float64))
    rows, cols = np.mgrid[:size, :size].astype(np.float64)
    for f in range(spec.n_frames):
        g = chat
        if damage:
            exposure = spec.dose_per_frame * (f + 0.5)
            g = g * np.exp(-exposure / (2.0 * ne))
        sx, sy = drift_px[f]
        g = g * (np.exp(-2j * np.pi * ky * sy) * np.exp(-2j * np.pi * kx * sx))  # content moved by +s_f
        frame = sfft.irfft2(g, s=(size, size))
        tau = f / max(spec.n_frames - 1, 1)
        if np.any(coef):
            u = local_field(coef, tau, size)
            frame = map_coordinates(spline_filter(frame, order=3, mode="grid-wrap"), [rows - u[1], cols - u[0]],
                                    order=3, mode="grid-wrap", prefilter=False)
        lam = spec.dose_per_frame * p * p * (1.0 + frame)
        if sensitivity is not None:
            lam = lam * sensitivity
        yield np.clip(lam, 0.0, None).astype(np.float32)


def detector_sensitivity(rng, size: int, sd: float) -> np.ndarray:
    """Per-pixel sensitivity S (mean 1): pixel-to-pixel and column-to-column variation."""
    s = 1.0 + sd * rng.standard_normal((size, size)) + 0.5 * sd * rng.standard_normal(size)[None, :]
    return np.clip(s, 0.5, 1.5)


class _FrameWriter:
    """Writes frames one by one to an MRC stack (uint16, mode 6) or a TIFF (slow axis flipped), atomically."""

    def __init__(self, path, shape: tuple[int, int, int], dtype, pixel_size: float, provenance, tiff: bool):
        from spa.io.atomic import atomic_path  # noqa: PLC0415

        self.shape, self.dtype, self.tiff = shape, np.dtype(dtype), tiff
        self.pixel_size, self.provenance = pixel_size, provenance
        self._ctx = atomic_path(path)
        self._tmp = self._ctx.__enter__()
        if tiff:
            import tifffile  # noqa: PLC0415

            self._file = tifffile.TiffWriter(self._tmp)
        else:
            import mrcfile  # noqa: PLC0415

            mode = {np.dtype(np.uint16): 6, np.dtype(np.int16): 1, np.dtype(np.float32): 2}[self.dtype]
            self._file = mrcfile.new_mmap(self._tmp, shape=shape, mrc_mode=mode, overwrite=True)
        self._next = 0

    def write(self, frame: np.ndarray) -> None:
        top = np.iinfo(self.dtype).max if self.dtype.kind in "iu" else None
        frame = np.clip(frame, 0, top) if top is not None else frame
        frame = frame.astype(self.dtype)
        if self.tiff:
            self._file.write(np.ascontiguousarray(frame[::-1, :]), photometric="minisblack", contiguous=True)
        else:
            self._file.data[self._next] = frame
        self._next += 1

    def close(self, ok: bool = True) -> None:
        from spa.provenance import mrc_labels  # noqa: PLC0415

        try:
            if not self.tiff and ok:
                self._file.set_image_stack()
                self._file.voxel_size = self.pixel_size
                for label in mrc_labels(self.provenance):
                    self._file.add_label(label)
                self._file.update_header_stats()
            self._file.close()
        finally:
            if ok:
                self._ctx.__exit__(None, None, None)
            else:
                exc = RuntimeError("movie not complete")
                self._ctx.__exit__(type(exc), exc, None)


def simulate_movies(output_dir, spec: MovieSpec, seed: int = 0, *, provenance: dict | None = None,
                    progress=None) -> Path:
    """Write movies, ``gain.mrc``, ``movies.star`` and the truth; returns the STAR path.  ``progress(done,
    total)`` after each movie."""
    from spa.io.mrc import write_mrc  # noqa: PLC0415
    from spa.io.star import write_optics_table, write_star  # noqa: PLC0415

    out = Path(output_dir)
    molecules = molecules_for(spec, seed)
    kappa, proj_sd = contrast_scale(spec, molecules, seed)
    sensitivity = detector_sensitivity(np.random.default_rng([int(seed), 8]), spec.size, spec.gain_sd)
    write_mrc(out / "gain.mrc", (1.0 / sensitivity).astype(np.float32), spec.pixel_size, provenance)
    names, truth_names, info, regions = [], [], [], []
    ext = "tif" if spec.tiff else "mrc"
    for m in range(spec.n):
        scene = make_scene(spec, m, seed, molecules, kappa, proj_sd)
        rng = np.random.default_rng([int(seed), 9, m])
        drift = drift_trajectory(rng, spec.n_frames, spec.drift, spec.pixel_size)
        coef = local_coefficients(rng, spec.local_motion / spec.pixel_size, spec.size)
        name = f"movies/mov{m + 1:04d}.{ext}"
        # 8-bit TIFF when counts stay small (as counting detectors write); counts beyond the type are clipped
        small = spec.tiff and spec.dose_per_frame * spec.pixel_size**2 < 20.0
        writer = _FrameWriter(out / name, (spec.n_frames, spec.size, spec.size), np.uint8 if small else np.uint16,
                              spec.pixel_size, provenance, spec.tiff)
        try:
            for lam in expected_frames(scene.contrast, spec, drift, coef, sensitivity=sensitivity):
                writer.write(rng.poisson(lam))
        except BaseException:
            writer.close(ok=False)
            raise
        writer.close()
        stem = f"mov{m + 1:04d}"
        total = spec.n_frames * spec.dose_per_frame * spec.pixel_size**2
        write_mrc(out / "truth" / "micrographs" / f"{stem}.mrc", (total * (1.0 + scene.contrast)).astype(np.float32),
                  spec.pixel_size, provenance)
        general = {
            "rlnImageSizeX": spec.size, "rlnImageSizeY": spec.size, "rlnImageSizeZ": spec.n_frames,
            "rlnMicrographMovieName": name, "rlnMicrographGainName": "gain.mrc", "rlnMicrographBinning": 1.0,
            "rlnMicrographOriginalPixelSize": spec.pixel_size, "rlnMicrographDoseRate": spec.dose_per_frame,
            "rlnMicrographPreExposure": 0.0, "rlnVoltage": spec.voltage, "rlnMicrographStartFrame": 1,
        }
        shifts = pd.DataFrame({
            "rlnMicrographFrameNumber": np.arange(1, spec.n_frames + 1),
            "rlnMicrographShiftX": 0.0 - drift[:, 0], "rlnMicrographShiftY": 0.0 - drift[:, 1],
            "rlnSpaDriftXAngst": drift[:, 0] * spec.pixel_size, "rlnSpaDriftYAngst": drift[:, 1] * spec.pixel_size,
        })
        local = pd.DataFrame({
            "rlnSpaAxis": np.repeat(["x", "y"], 10), "rlnSpaTimePower": np.tile(np.repeat([1, 2], 5), 2),
            "rlnSpaTerm": np.tile(["X", "Y", "X2", "XY", "Y2"], 4), "rlnSpaCoefficientPx": coef.ravel(),
        })
        write_star(out / "truth" / "motion" / f"{stem}.star",
                   {"general": general, "global_shift": shifts, "spa_local_motion": local}, provenance)
        names.append(name)
        truth_names.append(f"truth/micrographs/{stem}.mrc")
        info.append((scene.coordinates, scene.defocus, scene.carbon))
        regions.append(scene.regions)
        if progress:
            progress(m + 1, spec.n)
    write_truth(out, spec, truth_names, info, molecules, provenance, {"rlnMicrographMovieName": names}, regions=regions)
    star = out / "movies.star"
    write_optics_table(star, "movies", pd.DataFrame({"rlnMicrographMovieName": names, "rlnOpticsGroup": 1}),
                       optics_table(spec), provenance)
    return star
