"""One E-step of a particle subset against a given map: the pose searches of the validation checks.

The checks that re-align particles (alignability, the noise-particle test)
run refinement's own E-step (:func:`spa.em.expectation.expectation`, with
its coarse-to-fine passes, CTF, noise model and shift search) once, against
a fixed map, without an M-step:

* a **global** search: every orientation of the HEALPix grid at ``order``
  (asymmetric unit × ψ, :class:`spa.em.sampling3d.Sampling3D`) and shifts up
  to ``offset_range`` px around the given centres;
* a **local** search around given poses (:class:`spa.em.sampling3d.LocalSampling`,
  Gaussian prior of twice the fine step, as refinement's local searches).

The map is put on the images' grey scale as refinement does
(:func:`spa.em.driver3d.grey_scale`), masked to the particle radius and
low-passed to ``resolution`` Å, which also sets the Fourier window of the
search.  Per particle the result holds the best pose and the spread of the
posterior over orientations: the posterior-weighted RMS angle (degrees,
modulo the point group, :func:`spa.geometry.distance.angular_distance_sym`)
between each candidate and the best, i.e. how precisely the data pin the
pose down (0 when one fine sample holds all the weight: then the precision
is finer than the fine step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.backend import get_backend
from spa.em.driver3d import data_statistics, grey_scale, prepare_reference
from spa.em.engine import EStepContext, particle_arrays, particle_ctfs, run_chunks
from spa.em.estep import ActivePixels, prepare_chunk
from spa.em.expectation import expectation
from spa.em.run import coarse_shells_for, mask_radius_px
from spa.em.sampling3d import LocalSampling, Sampling3D
from spa.em.volume_refs import VolumeReferences
from spa.fourier import shells_to
from spa.geometry.distance import angular_distance_sym
from spa.geometry.euler import euler_to_matrix
from spa.geometry.symmetry import symmetry_matrices
from spa.parallel import make_chunks


@dataclass
class PoseSearch:
    """Per particle: ``angles`` (n, 3) RELION Euler degrees, ``offsets`` (n, 2) px (RELION's origin sign),
    ``spread`` (n,) degrees, ``max_prob`` (n,) (rlnMaxValueProbDistribution)."""

    angles: np.ndarray
    offsets: np.ndarray
    spread: np.ndarray
    max_prob: np.ndarray


@dataclass
class _Shared:
    ctx: EStepContext
    symmetry: str


def _search_chunk(source, shared: _Shared, idx, particles):
    """E-step of one chunk (no sums kept) → (None, best pose and posterior spread per image)."""
    ctx = shared.ctx
    be = get_backend(ctx.backend)
    xp = be.xp
    refs = ctx.refs.on(xp)
    box = refs.box
    images = xp.asarray(source.read(idx), dtype=xp.float32)
    ctf = particle_ctfs(particles, box, ctx.pixel_size, xp=xp, do_ctf=ctx.do_ctf)
    active = ActivePixels.make(box, ctx.fine_shells, xp)
    data = prepare_chunk(images, ctf, particles["group"], particles["centres"], ctx.sigma2, active,
                         ctx.mask_radius_px)
    post, _ = expectation(data, refs, ctx.sampling, ctx.log_class_prior, ctx.sigma_offset_px,
                          min(ctx.coarse_shells, ctx.fine_shells), ctx.significant_fraction, ctx.max_significant,
                          priors=particles.get("angles"))
    img, rot, shift, w = (be.to_numpy(a) for a in (post.img, post.rot, post.shift, post.weight))
    n = images.shape[0]
    w64 = w.astype(np.float64)
    if np.any(np.diff(img) < 0):  # image-major order, as the fine pass makes it
        o = np.argsort(img, kind="stable")
        img, rot, shift, w64 = img[o], rot[o], shift[o], w64[o]
    # candidates are image-major (sorted by image): the best of each image by a segment maximum
    starts = np.searchsorted(img, np.arange(n))
    top = np.nonzero(w64 == np.maximum.reduceat(w64, starts)[img])[0]
    best = top[np.searchsorted(img[top], np.arange(n))]
    # the spread: weights summed over shifts per (image, rotation), negligible ones dropped, one angle each
    keep = w64 > 1e-6
    pair, inverse = np.unique(img[keep].astype(np.int64) * (int(rot.max()) + 1) + rot[keep], return_inverse=True)
    pw = np.bincount(inverse.reshape(-1), weights=w64[keep])
    p_img, p_rot = np.divmod(pair, int(rot.max()) + 1)
    rots, r_idx = np.unique(np.concatenate([p_rot, rot[best]]), return_inverse=True)
    mats = euler_to_matrix(*np.asarray(ctx.sampling.fine_rotations[rots], np.float64).T)
    best_mats = mats[r_idx[len(p_rot):]]
    angle = angular_distance_sym(best_mats[p_img], mats[r_idx[:len(p_rot)]], shared.symmetry)
    spread = np.sqrt(np.bincount(p_img, weights=pw * angle**2, minlength=n) /
                     np.maximum(np.bincount(p_img, weights=pw, minlength=n), 1e-300))
    euler = np.asarray(ctx.sampling.fine_rotations[rot[best]], np.float64)
    centres = np.asarray(particles["centres"], np.float64)
    shifts = np.asarray(ctx.sampling.fine_translations, np.float64)[shift[best]]
    return None, {"angles": euler, "offsets": centres + shifts, "spread": spread,
                  "max_prob": w64[best]}


def search_poses(source, table, volume, *, symmetry: str = "C1", resolution: float, order: int = 2,
                 local_priors=None, offset_range: float = 3.0, offset_step: float = 1.0, centres=None,
                 particle_diameter: float | None = None, chunk_size: int = 128, backend: str | None = None,
                 client=None, progress=None) -> PoseSearch:
    """Best pose and posterior spread of each particle of ``table`` (images from ``source``) against
    ``volume`` (see the module docstring).

    ``local_priors`` (n, 3) Euler degrees: a local search around them at ``order``, else a global one.
    ``centres`` (n, 2) px: where the shift search is centred (default the table's origins).
    """
    box = int(source.box)
    pixel = float(table["rlnImagePixelSize"].iloc[0])
    be = get_backend(backend)
    particles = particle_arrays(table, pixel)
    if centres is not None:
        particles["centres"] = np.asarray(centres, np.float64).reshape(-1, 2)
    n_groups = int(particles["group"].max()) + 1
    radius = mask_radius_px(particle_diameter, box, pixel)
    chunks = make_chunks(len(table), chunk_size)
    stats = data_statistics(source, particles, chunks, box, pixel, n_groups, radius, bool(particles["has_ctf"]),
                            client, be.name)
    ref = prepare_reference(volume, pixel, resolution, radius)
    ref = ref * grey_scale(ref, stats, pixel, low_res=max(2 * resolution, 40.0), high_res=resolution)
    if local_priors is None:
        sampling = Sampling3D(order, offset_range, offset_step, 1, symmetry)
    else:
        sampling = LocalSampling(order, offset_range, offset_step, 1, symmetry)
        particles["angles"] = np.asarray(local_priors, np.float64).reshape(-1, 3)
    window = int(min(box // 2 + 1, shells_to(resolution, box, pixel) + 2))
    ctx = EStepContext(
        refs=VolumeReferences(be.xp.asarray(ref[None]), symmetry=symmetry_matrices(symmetry)), sampling=sampling,
        sigma2=stats.sigma2, log_class_prior=np.zeros(1), sigma_offset_px=max(offset_range / 2.0, offset_step),
        coarse_shells=min(window, coarse_shells_for(sampling.angular_step, radius, box)), fine_shells=window,
        pixel_size=pixel, mask_radius_px=radius, do_ctf=bool(particles["has_ctf"]), max_significant=512,
        backend=be.name)
    _, parts = run_chunks(_search_chunk, source, particles, chunks, _Shared(ctx, symmetry), client,
                          progress=progress)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return PoseSearch(out["angles"], out["offsets"], out["spread"], out["max_prob"])
