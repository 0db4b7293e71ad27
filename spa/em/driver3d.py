"""What the 3D stages (3D classification, auto-refinement) add to the shared driver (:mod:`spa.em.run`).

* :class:`Options3D` (point group, starting HEALPix order) and :class:`Run3D`
  (the starting map(s) and the point group; the E-step with Euler angles),
* loading the particle set and a reference map (rescaled to the particles'
  box and pixel size, low-passed to ``ini_high``, put on the data's grey scale),
* the initial noise spectra from the images' power,
* particle tables with poses, and joining the half maps at low resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from spa.backend import get_backend
from spa.em.engine import EStepContext, estep_chunk, estep_over_chunks, particle_ctfs, run_chunks
from spa.em.estep import ActivePixels, prepare_chunk
from spa.em.model import WsumModel
from spa.em.noise import group_power, initial_sigma2
from spa.em.options import EMOptions
from spa.em.run import EMRun, array_digest, coarse_shells_for, mask_radius_px  # noqa: F401  (re-exported)
from spa.errors import SpaInputError
from spa.fourier import fourier_resize, lowpass, shells_2d, soft_circular_mask, soft_spherical_mask
from spa.parallel import DEFAULT_LANES, make_chunks


# -- options and the run every 3D stage starts from ---------------------------------------------
@dataclass(kw_only=True)
class Options3D(EMOptions):
    """What 3D classification and refinement add to :class:`EMOptions`."""

    symmetry: str = "C1"  # point group (RELION's --sym)
    healpix_order: int = 2  # starting orientation grid: 360/(6·2ⁿ) degrees

    def check_stage(self) -> None:
        from spa.geometry.symmetry import parse_group

        try:
            parse_group(self.symmetry)
        except ValueError as exc:
            raise SpaInputError(None, f"option symmetry: {exc}") from None
        if not 0 <= int(self.healpix_order) <= 8:
            raise SpaInputError(None, f"option healpix_order must be within 0 … 8, got {self.healpix_order!r}")


class Run3D(EMRun):
    """A 3D stage's run: :class:`EMRun` plus the starting map(s) and the point group."""

    def __init__(self, table, source, reference, opts, output_dir, *, optics=None, client=None, provenance=None,
                 log=print, progress=None):
        from spa.geometry.symmetry import symmetry_matrices

        super().__init__(table, source, opts, output_dir, optics=optics, client=client, provenance=provenance,
                         log=log, progress=progress)
        self.reference = reference
        self.sym = symmetry_matrices(opts.symmetry)

    def extra_inputs(self) -> dict:
        return {"reference": array_digest(self.reference)}

    def chunks_of(self, rows):
        """Rows split into E-step tasks of at most ``opts.chunk_size`` particles."""
        return make_chunks(rows, self.opts.chunk_size)

    def estep(self, model, refs, sampling, chunks, coarse_shells: int, **extra):
        """E-step over ``chunks`` → (WsumModel, per-particle results with Euler angles, in chunk order)."""
        ctx = self.context(model, refs, sampling, coarse_shells, **extra)
        return run_estep_3d(ctx, self.source, self.particles, chunks, self.client, lanes=self.opts.reduction_lanes)


# -- inputs ----------------------------------------------------------------------------------
def load_particles(star_path, *, need_ctf: bool = True):
    """(table, optics, image source, pixel size Å, box px) of a RELION-format particle STAR."""
    from spa.io.images import ParticleImages
    from spa.io.star import CTF_COLUMNS, has_ctf, read_particles

    table, optics = read_particles(star_path, require=("rlnImageName",))
    if need_ctf and not has_ctf(table, star_path):
        raise SpaInputError(star_path, f"has no CTF columns ({', '.join(CTF_COLUMNS)}); give them, or run with "
                                       "--no-ctf")
    if len(table) == 0:
        raise SpaInputError(star_path, "the particle table is empty")
    source = ParticleImages(table, star_path)
    return table.reset_index(drop=True), optics, source, float(source.pixel_size), int(source.box)


def load_reference(path, box: int, pixel_size: float) -> np.ndarray:
    """A reference map resampled to (box, pixel size) of the particles (Fourier crop/pad + box crop/pad)."""
    from spa.io.mrc import read_mrc

    vol, ref_pixel = read_mrc(path)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise SpaInputError(path, f"a reference must be a cubic 3D map, got shape {vol.shape}")
    if abs(ref_pixel - pixel_size) > 1e-3 * pixel_size:
        # resample so the pixel size matches: new box = old box · ref_pixel / pixel_size
        target = int(round(vol.shape[0] * ref_pixel / pixel_size))
        if target < 8:
            raise SpaInputError(path, f"pixel size {ref_pixel:.3f} Å is too coarse for particles at {pixel_size:.3f} Å")
        vol = fourier_resize(vol, target, ndim=3)
    n = vol.shape[0]
    if n != box:  # crop or zero-pad around the centre voxel
        out = np.zeros((box,) * 3, np.float32)
        lo_src, lo_dst = max(0, n // 2 - box // 2), max(0, box // 2 - n // 2)
        m = min(n, box)
        out[lo_dst:lo_dst + m, lo_dst:lo_dst + m, lo_dst:lo_dst + m] = vol[lo_src:lo_src + m, lo_src:lo_src + m,
                                                                           lo_src:lo_src + m]
        vol = out
    return vol.astype(np.float32)


def prepare_reference(volume, pixel_size: float, ini_high: float, radius_px: float) -> np.ndarray:
    """Low-pass to ``ini_high`` Å (no high-resolution bias from the start), mask, zero the solvent mean."""
    vol = lowpass(np.asarray(volume, np.float32), pixel_size, ini_high, ndim=3)
    mask = soft_spherical_mask(vol.shape[0], radius_px, 5.0)
    outside = mask < 0.5
    if outside.any():
        vol = vol - vol[outside].mean()
    return (vol * mask).astype(np.float32)


# -- noise, grey scale ------------------------------------------------------------------------
@dataclass
class _PowerShared:
    box: int
    pixel_size: float
    n_groups: int
    mask_radius_px: float
    do_ctf: bool
    backend: str


def _power_chunk(source, shared: _PowerShared, idx, particles):
    """Per-group image power per shell (inside the mask), the outside-mask power and Σ CTF² per shell."""
    be = get_backend(shared.backend)
    xp = be.xp
    box = shared.box
    images = xp.asarray(source.read(idx), dtype=xp.float32)
    n = images.shape[0]
    active = ActivePixels.make(box, box // 2 + 1, xp)
    ones = xp.ones((n, box, box // 2 + 1), xp.float32)
    sig = np.ones((shared.n_groups, box // 2 + 1))
    inside = prepare_chunk(images, ones, particles["group"], np.zeros((n, 2)), sig, active, shared.mask_radius_px)
    mask = soft_circular_mask(box, shared.mask_radius_px, 5.0, xp)
    outside = prepare_chunk(images * (1 - mask), ones, particles["group"], np.zeros((n, 2)), sig, active, None)
    ctf = xp.asarray(particle_ctfs(particles, box, shared.pixel_size, do_ctf=shared.do_ctf))
    from spa.fourier import shell_sum

    ctf2 = shell_sum(ctf.astype(xp.float64) ** 2, shells_2d(box, xp), box // 2 + 1).sum(axis=0)
    g = inside.group
    sums = {
        "outside": group_power(outside.power, g, shared.n_groups).sum(axis=0),
        "ctf2": ctf2,
    }
    counts = xp.bincount(g, minlength=shared.n_groups).astype(xp.float64)
    w = WsumModel(sums, group_power(inside.power, g, shared.n_groups), counts,
                  xp.zeros(1, xp.float64), 0.0, int(n), 0.0)
    return w.to_host(), None


@dataclass
class DataStatistics:
    """Initial noise spectra (G, B//2+1) and the per-shell signal power the references should carry."""

    sigma2: np.ndarray
    signal_power: np.ndarray  # (B//2+1,) mean |signal|² per pixel inside the mask, CTF divided out
    n_images: int


def data_statistics(source, particles, chunks, box, pixel_size, n_groups, radius_px, do_ctf=True, client=None,
                    backend: str | None = None, lanes: int = DEFAULT_LANES, progress=None) -> DataStatistics:
    """Image power → σ² (as RELION: the first M-step corrects it) and an estimate of the signal power.

    The signal power per shell is (power inside the mask − the outside-mask
    power scaled to the inside area) ÷ mean CTF²: what a reference's
    projections must carry to be on the data's grey scale.
    """
    shared = _PowerShared(box, pixel_size, n_groups, radius_px, do_ctf, get_backend(backend).name)
    wsum, _ = run_chunks(_power_chunk, source, particles, chunks, shared, client, lanes=lanes, progress=progress)
    sigma2 = initial_sigma2(wsum.sigma2, wsum.sigma2_count, box)
    mask = soft_circular_mask(box, radius_px, 5.0)
    area_in, area_out = float((mask**2).sum()), float(((1 - mask) ** 2).sum())
    n = max(wsum.n_images, 1)
    counts = np.bincount(shells_2d(box).reshape(-1), minlength=box)[: box // 2 + 1].astype(np.float64)
    p_in = np.asarray(wsum.sigma2, np.float64).sum(axis=0) / n / np.maximum(counts, 1)
    p_out = np.asarray(wsum.sums["outside"], np.float64) / n / np.maximum(counts, 1)
    ctf2 = np.asarray(wsum.sums["ctf2"], np.float64) / n / np.maximum(counts, 1)
    signal = np.maximum(p_in - p_out * area_in / max(area_out, 1e-9), 0.0) / np.maximum(ctf2, 1e-3)
    return DataStatistics(sigma2, signal, int(wsum.n_images))


def grey_scale(volume, stats: DataStatistics, pixel_size: float, low_res: float = 40.0, high_res: float = 12.0):
    """Factor that puts a reference's projections on the data's grey scale (ratio of low-resolution power).

    Compares the mean power of the reference's central sections (random
    directions) with the estimated signal power of the images, over the
    shells between ``low_res`` and ``high_res`` Å where the signal dominates.
    """
    from spa.em.projector import Projector
    from spa.geometry.sampling import random_rotations

    box = volume.shape[0]
    rots = random_rotations(64, 0)
    slices = Projector(volume).project(rots)
    sh = shells_2d(box)
    lo = max(1, int(np.floor(box * pixel_size / low_res)))
    hi = max(lo + 1, min(box // 2, int(np.ceil(box * pixel_size / high_res))))
    band = (sh >= lo) & (sh <= hi)
    ref_power = float((np.abs(slices) ** 2)[:, band].mean())
    counts = np.bincount(sh.reshape(-1), minlength=box)[: box // 2 + 1].astype(np.float64)
    data_power = float((stats.signal_power[lo:hi + 1] * counts[lo:hi + 1]).sum() / max(counts[lo:hi + 1].sum(), 1))
    if ref_power <= 0 or data_power <= 0:
        return 1.0
    return float(np.sqrt(data_power / ref_power))


# -- the 3D E-step task ---------------------------------------------------------------------
def estep_chunk_3d(source, ctx: EStepContext, idx, particles):
    """:func:`spa.em.engine.estep_chunk` plus the Euler angles (n, 3) of each particle's best pose."""
    wsum, results = estep_chunk(source, ctx, idx, particles)
    results["angles"] = np.asarray(ctx.sampling.fine_rotations[results["rot"]])
    return wsum, results


def run_estep_3d(ctx: EStepContext, source, particles: dict, chunks: list, client=None, lanes: int = DEFAULT_LANES):
    """E-step over ``chunks`` → (WsumModel, per-particle results concatenated in chunk order)."""
    return estep_over_chunks(estep_chunk_3d, ctx, source, particles, chunks, client, lanes=lanes)


# -- outputs ---------------------------------------------------------------------------------
def particles_table_3d(table: pd.DataFrame, rows, angles, offsets_px, pixel_size: float, *, classes=None,
                       max_prob=None, n_significant=None, loglike=None, class_posterior=None) -> pd.DataFrame:
    """Copy of ``table`` with poses (and posterior statistics) set on ``rows``.

    ``class_posterior``: the posterior probability of each particle's class, summed over
    its poses (written as rlnSpaClassPosterior; RELION has no such column).
    """
    out = table
    r = np.asarray(rows)
    for col, vals in (("rlnAngleRot", angles[:, 0]), ("rlnAngleTilt", angles[:, 1]), ("rlnAnglePsi", angles[:, 2]),
                      ("rlnOriginXAngst", offsets_px[:, 0] * pixel_size),
                      ("rlnOriginYAngst", offsets_px[:, 1] * pixel_size)):
        if col not in out:
            out[col] = 0.0
        out.loc[r, col] = np.asarray(vals, np.float64)
    for col, vals, dtype in (("rlnClassNumber", classes, np.int64), ("rlnMaxValueProbDistribution", max_prob, float),
                             ("rlnNrOfSignificantSamples", n_significant, np.int64),
                             ("rlnLogLikeliContribution", loglike, float),
                             ("rlnSpaClassPosterior", class_posterior, float)):
        if vals is None:
            continue
        if col not in out:
            out[col] = np.zeros(len(out), dtype)
        out.loc[r, col] = np.asarray(vals).astype(dtype)
    return out


def join_low_resolution(half1, half2, pixel_size: float, resolution: float = 40.0):
    """Average the two half maps' Fourier components coarser than ``resolution`` Å (RELION keeps the
    halves in one frame this way; detail finer than ~40 Å stays independent)."""
    from spa.fourier import irfft_centered, radius_3d, rfft_centered

    box = half1.shape[-1]
    f1, f2 = rfft_centered(half1, 3), rfft_centered(half2, 3)
    low = radius_3d(box) < box * pixel_size / resolution
    mean = 0.5 * (f1 + f2)
    f1 = np.where(low, mean, f1)
    f2 = np.where(low, mean, f2)
    return irfft_centered(f1, box, 3).astype(np.float32), irfft_centered(f2, box, 3).astype(np.float32)


__all__ = [
    "Options3D", "Run3D", "load_particles", "load_reference", "mask_radius_px", "prepare_reference", "data_statistics",
    "grey_scale", "estep_chunk_3d", "run_estep_3d", "coarse_shells_for", "particles_table_3d", "join_low_resolution",
]
