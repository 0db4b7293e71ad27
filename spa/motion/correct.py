"""Motion correction of one movie: gain, binning, global and local alignment, sums, trajectory STAR.

:func:`correct_movie` reads a movie, multiplies its frames by the gain
reference, crops each frame's transform to the binned size (Fourier binning:
the pixel size grows by exactly ``binning``), aligns the frames (groups of
``group_frames`` frames, whose shifts are interpolated back to single
frames), optionally measures and fits local motion in patches, and returns
the unweighted sum and the dose-weighted sum (:mod:`spa.motion.dose`) of
the aligned frames, with the trajectories.  :func:`trajectory_blocks` gives
the per-movie STAR in RELION's layout (data_general, data_global_shift,
data_local_shift, data_local_motion_model), shifts in unbinned pixels.

Drift screening (RELION's rlnAccumMotionTotal/Early/Late and spa's largest
frame-to-frame step): from the global trajectory, in Å; "early" is the
motion while the exposure is at most ``early_dose`` e⁻/Å² (RELION: 4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from spa.backend import get_backend
from spa.errors import SpaInputError
from spa.motion.align import align_frames, smooth_trajectory
from spa.motion.dose import DoseWeights
from spa.motion.fourier import crop_spectrum, phase_ramp
from spa.motion.local import LocalMotion, fit_model, measure_patches, warp_frame


@dataclass
class MotionOptions:
    """Options of ``spa motion`` (units in the names' docs; RELION's MotionCorr options where they exist)."""

    binning: float = 1.0  # Fourier binning factor (2 for super-resolution movies)
    bfactor: float = 500.0  # Å², low-pass of the whole-frame correlations (MotionCor2's default)
    patch_bfactor: float = 500.0  # Å², low-pass of the patch correlations
    patches_x: int = 5  # patches along x (0 or 1 with patches_y ≤ 1: whole-frame alignment only)
    patches_y: int = 5
    group_frames: int = 1  # frames summed for alignment
    first_frame: int = 1  # first frame summed (1-based)
    last_frame: int = 0  # last frame summed (0: the last one)
    max_shift: float = 80.0  # Å, largest shift searched
    max_iter: int = 10
    tolerance: float = 0.01  # px, stop when no shift changes more
    smooth: bool = True  # replace the measured global shifts by a robust local cubic fit (11-frame window)
    dose_weighting: bool = True
    early_dose: float = 4.0  # e⁻/Å², end of the 'early' motion (RELION)
    float16: bool = False  # write the micrographs as float16

    @property
    def local(self) -> bool:
        return self.patches_x * self.patches_y > 1

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class MovieResult:
    """What :func:`correct_movie` gives back (sums as float32 NumPy arrays, shifts in unbinned px)."""

    dose_weighted: np.ndarray
    unweighted: np.ndarray
    pixel_size: float  # Å, of the sums
    shifts: np.ndarray  # (F, 2) global shift to apply per frame summed, unbinned px
    frame_numbers: np.ndarray  # (F,) 1-based movie frame numbers
    outliers: np.ndarray  # (F,) frames whose measured shift was replaced by the smooth trajectory
    local: LocalMotion | None
    movie_shape: tuple[int, int, int]
    screening: dict = field(default_factory=dict)


def binned_shape(ny: int, nx: int, binning: float, path=None) -> tuple[int, int]:
    """Frame size after Fourier binning: both sides divided by ``binning`` must give even whole numbers."""
    if binning < 1:
        raise SpaInputError(path, f"binning must be ≥ 1, got {binning:g}")
    out = []
    for n in (ny, nx):
        m = n / binning
        if abs(m - round(m)) > 1e-6 or round(m) % 2:
            raise SpaInputError(path, f"binning {binning:g} does not divide the frame size {ny} x {nx} into even "
                                      "whole numbers of pixels (Fourier binning keeps the pixel size exact)")
        out.append(int(round(m)))
    return out[0], out[1]


def interpolate_shifts(group_times: np.ndarray, group_shifts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Shifts of single frames from their groups' (at the groups' mean times): linear, extended linearly
    beyond the first and last group."""
    if len(group_times) == 1:
        return np.repeat(group_shifts, len(times), axis=0)
    out = np.empty((len(times), 2))
    for a in (0, 1):
        out[:, a] = np.interp(times, group_times, group_shifts[:, a])
        lo, hi = times < group_times[0], times > group_times[-1]
        s0 = (group_shifts[1, a] - group_shifts[0, a]) / (group_times[1] - group_times[0])
        s1 = (group_shifts[-1, a] - group_shifts[-2, a]) / (group_times[-1] - group_times[-2])
        out[lo, a] = group_shifts[0, a] + s0 * (times[lo] - group_times[0])
        out[hi, a] = group_shifts[-1, a] + s1 * (times[hi] - group_times[-1])
    return out


def screening(shifts: np.ndarray, pixel_size: float, dose_per_frame: float, pre_exposure: float,
              first_frame: int, early_dose: float) -> dict:
    """Drift numbers in Å from global shifts (F, 2) in unbinned px of ``pixel_size`` Å (see module docstring)."""
    steps = np.linalg.norm(np.diff(shifts, axis=0), axis=1) * pixel_size
    # the step into frame f (1-based, f ≥ 2) is early when the exposure at the end of frame f is ≤ early_dose
    frame = first_frame + np.arange(1, len(shifts))
    early = pre_exposure + frame * dose_per_frame <= early_dose + 1e-9
    return {
        "rlnAccumMotionTotal": float(steps.sum()),
        "rlnAccumMotionEarly": float(steps[early].sum()),
        "rlnAccumMotionLate": float(steps[~early].sum()),
        "rlnSpaMaxFrameShiftAngst": float(steps.max()) if len(steps) else 0.0,
    }


def correct_movie(frames: np.ndarray, gain: np.ndarray | None, pixel_size: float, dose_per_frame: float,
                  options: MotionOptions, *, pre_exposure: float = 0.0, backend=None, path=None) -> MovieResult:
    """Motion-correct ``frames`` (F, ny, nx) float32 of ``pixel_size`` Å; see the module docstring."""
    be = backend or get_backend()
    xp = be.xp
    n_all, ny0, nx0 = frames.shape
    first = int(options.first_frame)
    last = int(options.last_frame) or n_all
    if not 1 <= first < last <= n_all:
        raise SpaInputError(path, f"frames {first}–{last} asked for, the movie has {n_all} (need at least 2)")
    ny, nx = binned_shape(ny0, nx0, options.binning, path)
    scale = float(options.binning)
    p_out = pixel_size * scale
    gain_dev = None if gain is None else xp.asarray(gain, dtype=xp.float32)
    spectra = []
    for f in range(first - 1, last):
        frame = xp.asarray(frames[f], dtype=xp.float32)
        if gain_dev is not None:
            frame = frame * gain_dev
        spectra.append(crop_spectrum(be.rfftn(frame, axes=(0, 1)), ny0, nx0, ny, nx).astype(xp.complex64))
    spectra = xp.stack(spectra)
    n = spectra.shape[0]
    times = np.arange(n, dtype=np.float64)

    # global alignment on frame groups (DC removed: the mean does not locate anything)
    g = max(1, int(options.group_frames))
    starts = list(range(0, n, g))
    groups = xp.stack([spectra[s:s + g].sum(axis=0) for s in starts])
    groups[:, 0, 0] = 0
    group_times = np.array([times[s:s + g].mean() for s in starts])
    max_shift = options.max_shift / p_out
    res = align_frames(groups, p_out, bfactor=options.bfactor, max_shift=max_shift, max_iter=options.max_iter,
                       tolerance=options.tolerance, times=group_times)
    group_shifts = res.shifts
    if options.smooth and len(starts) >= 5:
        fit, _ = smooth_trajectory(group_times, group_shifts, threshold=1.0)
        group_shifts = fit - fit[0]
    shifts = interpolate_shifts(group_times, group_shifts, times)
    shifts -= shifts[0]
    outliers = np.zeros(n, dtype=bool)
    for k, s in enumerate(starts):
        outliers[s:s + g] = res.outliers[k]
    ramps = phase_ramp(ny, nx, shifts[:, 0], shifts[:, 1], xp)
    aligned = spectra * ramps
    del ramps

    local = None
    z = times  # frame offset from the first frame summed
    if options.local:
        real = be.irfftn(aligned, s=(ny, nx), axes=(-2, -1)).astype(xp.float32)
        rgroups = xp.stack([real[s:s + g].sum(axis=0) for s in starts])
        centres, pshifts, _ = measure_patches(rgroups, p_out, max(options.patches_x, 1), max(options.patches_y, 1),
                                              bfactor=options.patch_bfactor, max_shift=max(4.0, 0.2 * max_shift),
                                              times=group_times)
        pshifts = pshifts * scale  # unbinned px
        norm = np.stack([centres[:, 0] / nx - 0.5, centres[:, 1] / ny - 0.5], axis=1)
        coeffs, offsets, kept, ridge = fit_model(norm, group_times, pshifts, outlier_px=1.0)
        local = LocalMotion(coeffs=coeffs, centres=centres * scale, shifts=pshifts - offsets[:, None, :],
                            frames=group_times, used=kept, ridge=ridge)
        if np.any(coeffs):  # no local motion found: the whole-frame alignment stands, no resampling
            warped = [be.rfftn(warp_frame(real[i], coeffs, float(z[i]), scale), axes=(0, 1)) for i in range(n)]
            aligned = xp.stack(warped).astype(xp.complex64)
            del warped
        del real

    unweighted = be.irfftn(aligned.sum(axis=0), s=(ny, nx), axes=(0, 1))
    if options.dose_weighting:
        weights = DoseWeights(ny, nx, p_out, dose_per_frame, n, pre_exposure, first, xp)
        total = xp.zeros(aligned.shape[1:], dtype=xp.complex64)
        for i in range(n):
            total += aligned[i] * weights.weight(i)
        weighted = be.irfftn(total, s=(ny, nx), axes=(0, 1))
    else:
        weighted = unweighted
    shifts_unbinned = shifts * scale
    return MovieResult(
        dose_weighted=be.to_numpy(weighted).astype(np.float32),
        unweighted=be.to_numpy(unweighted).astype(np.float32),
        pixel_size=p_out, shifts=shifts_unbinned, frame_numbers=np.arange(first, last + 1), outliers=outliers,
        local=local, movie_shape=(n_all, ny0, nx0),
        screening=screening(shifts_unbinned, pixel_size, dose_per_frame, pre_exposure, first, options.early_dose),
    )


def trajectory_blocks(result: MovieResult, general: dict) -> dict:
    """The per-movie STAR blocks (RELION's MotionCorr layout + spa's screening numbers).

    ``general``: rlnMicrographMovieName, rlnMicrographGainName, rlnMicrographOriginalPixelSize,
    rlnMicrographDoseRate, rlnMicrographPreExposure, rlnVoltage, … (added to data_general).
    """
    import pandas as pd  # noqa: PLC0415

    n_all, ny, nx = result.movie_shape
    head = {"rlnImageSizeX": int(nx), "rlnImageSizeY": int(ny), "rlnImageSizeZ": int(n_all)}
    head.update(general)
    head["rlnMicrographStartFrame"] = int(result.frame_numbers[0])
    head["rlnMotionModelVersion"] = 1 if result.local is not None else 0
    head.update(result.screening)
    head["rlnSpaOutlierFrames"] = int(result.outliers.sum())
    if result.local is not None:
        # the local model's shrinkage chosen by cross-validation (inf: the patches showed no local motion)
        head["rlnSpaLocalRidge"] = float(result.local.ridge)
    blocks = {"general": head, "global_shift": pd.DataFrame({
        "rlnMicrographFrameNumber": result.frame_numbers.astype(np.int64),
        "rlnMicrographShiftX": result.shifts[:, 0], "rlnMicrographShiftY": result.shifts[:, 1],
    })}
    if result.local is not None:
        loc = result.local
        P, G, _ = loc.shifts.shape
        blocks["local_shift"] = pd.DataFrame({
            "rlnMicrographFrameNumber": np.tile(loc.frames + result.frame_numbers[0], P),
            "rlnCoordinateX": np.repeat(loc.centres[:, 0], G), "rlnCoordinateY": np.repeat(loc.centres[:, 1], G),
            "rlnMicrographShiftX": loc.shifts[:, :, 0].ravel(), "rlnMicrographShiftY": loc.shifts[:, :, 1].ravel(),
        })
        blocks["local_motion_model"] = pd.DataFrame({
            "rlnMotionModelCoeffsIdx": np.arange(len(loc.coeffs), dtype=np.int64), "rlnMotionModelCoeff": loc.coeffs,
        })
    return blocks
