"""One EM iteration over a particle set, distributed over Dask workers, and its checkpoints.

Data flow (DESIGN.md, "Data flow of one EM iteration"): the particle stack is
read chunk by chunk on the workers; each task runs the E-step of one chunk
(:mod:`spa.em.estep`) and returns its partial sums (:class:`WsumModel`) and
the per-particle results; partial sums are added as they arrive, in an order
that depends only on the chunks (so 1 or N workers give the same sums) and in
memory that does not grow with the number of particles
(:func:`spa.parallel.map_reduce`); the per-iteration context (references,
noise spectra, priors, sampling) is broadcast once per iteration.  With no
client everything runs in-process, chunk after chunk, through the same code.

The driver of a stage (2D classification, 3D classification, refinement)
owns the loop: it builds an :class:`EStepContext`, calls :func:`run_estep`,
then the M-step (:mod:`spa.em.mstep`), writes its outputs and a checkpoint
(:func:`save_checkpoint`), and resumes from :func:`last_checkpoint`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from spa.backend import get_backend
from spa.ctf import ctf_2d, ctf_phase
from spa.em.estep import ActivePixels, prepare_chunk
from spa.em.expectation import expectation
from spa.em.model import ReferenceModel, Sampling, WsumModel
from spa.em.noise import sigma2_sums
from spa.io.atomic import atomic_path
from spa.parallel import DEFAULT_LANES, map_reduce


# -- particle metadata as plain arrays -------------------------------------------------
def particle_arrays(table, pixel_size: float) -> dict:
    """Per-particle arrays the E-step needs, from a table with RELION columns.

    CTF (rlnDefocusU/V/Angle, rlnVoltage, rlnSphericalAberration,
    rlnAmplitudeContrast, optional rlnPhaseShift, rlnCtfBfactor), optics group
    (rlnOpticsGroup → 0-based ``group``) and current offsets in pixels
    (rlnOriginX/YAngst ÷ pixel size → ``centres``).  ``has_ctf`` is False when
    the defocus columns are missing; ``phase_flipped`` is True for particles whose
    optics group says rlnCtfDataArePhaseFlipped = 1 (their CTF is taken as |CTF|).
    """
    n = len(table)
    out = {}
    has_ctf = all(c in table for c in ("rlnDefocusU", "rlnDefocusV", "rlnVoltage", "rlnSphericalAberration",
                                       "rlnAmplitudeContrast"))
    out["has_ctf"] = np.array(has_ctf)
    if has_ctf:
        out["defocus_u"] = table["rlnDefocusU"].to_numpy(np.float64)
        out["defocus_v"] = table["rlnDefocusV"].to_numpy(np.float64)
        out["defocus_angle"] = table["rlnDefocusAngle"].to_numpy(np.float64) if "rlnDefocusAngle" in table \
            else np.zeros(n)
        out["voltage"] = table["rlnVoltage"].to_numpy(np.float64)
        out["cs"] = table["rlnSphericalAberration"].to_numpy(np.float64)
        out["q"] = table["rlnAmplitudeContrast"].to_numpy(np.float64)
        out["phase_shift"] = table["rlnPhaseShift"].to_numpy(np.float64) if "rlnPhaseShift" in table else np.zeros(n)
        out["bfactor"] = table["rlnCtfBfactor"].to_numpy(np.float64) if "rlnCtfBfactor" in table else np.zeros(n)
        # images phase-flipped at extraction hold |CTF| · P: the model uses |CTF| for them
        out["phase_flipped"] = (table["rlnCtfDataArePhaseFlipped"].to_numpy() != 0) \
            if "rlnCtfDataArePhaseFlipped" in table else np.zeros(n, bool)
    og = table["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in table else np.ones(n, int)
    out["group"] = np.unique(og, return_inverse=True)[1].reshape(-1).astype(np.int64)
    cx = table["rlnOriginXAngst"].to_numpy(np.float64) / pixel_size if "rlnOriginXAngst" in table else np.zeros(n)
    cy = table["rlnOriginYAngst"].to_numpy(np.float64) / pixel_size if "rlnOriginYAngst" in table else np.zeros(n)
    out["centres"] = np.stack([cx, cy], axis=1)
    return out


def random_halves(table, seed: int) -> np.ndarray:
    """rlnRandomSubset (1 or 2) per row: the table's own when it has both halves, else a seeded split.

    Raises SpaInputError for fewer than two rows.
    """
    if "rlnRandomSubset" in table and set(np.unique(table["rlnRandomSubset"])) == {1, 2}:
        subset = table["rlnRandomSubset"].to_numpy().astype(np.int64)
    else:
        rng = np.random.default_rng(seed)
        subset = np.where(rng.permutation(len(table)) % 2 == 0, 1, 2).astype(np.int64)
    if not ((subset == 1).any() and (subset == 2).any()):
        from spa.errors import SpaInputError

        raise SpaInputError(None, "each random half needs at least one particle")
    return subset


def take(arrays: dict, idx) -> dict:
    """Rows ``idx`` of every per-particle array (scalars passed through)."""
    n = len(arrays["group"])
    return {k: (v[idx] if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == n else v) for k, v in arrays.items()}


def first_peak_mask(p: dict, box: int, pixel_size: float):
    """True where |χ| < π/2, i.e. before the CTF's first peak (RELION's --ctf_intact_first_peak)."""
    out = np.empty((len(p["group"]), box, box // 2 + 1), bool)
    keys = np.stack([p["voltage"], p["cs"], p["q"]], axis=1)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    for j, (volt, cs, q) in enumerate(uniq):
        sel = np.nonzero(inv.reshape(-1) == j)[0]
        chi, _ = ctf_phase(box, pixel_size, p["defocus_u"][sel], p["defocus_v"][sel], p["defocus_angle"][sel],
                           volt, cs, q, p["phase_shift"][sel])
        out[sel] = np.abs(chi) < np.pi / 2
    return out


def particle_ctfs(p: dict, box: int, pixel_size: float, *, do_ctf: bool = True, ignore_first_peak: bool = False,
                  premultiplied: bool = False, xp=np):
    """CTFs (n, B, B//2+1) float32 for a chunk (ones without CTF information or with ``do_ctf`` off),
    computed on the backend of ``xp`` (on a GPU, where the E-step uses them: no host transfer).

    ``premultiplied``: the images were already multiplied by their CTF
    (RELION's --ctf_multiplied), so the reference is modulated by CTF².
    Phase-flipped particles (``p["phase_flipped"]``) get |CTF|.
    """
    n = len(p["group"])
    if not (do_ctf and bool(p["has_ctf"])):
        return xp.ones((n, box, box // 2 + 1), xp.float32)
    out = xp.empty((n, box, box // 2 + 1), xp.float32)
    keys = np.stack([p["voltage"], p["cs"], p["q"]], axis=1)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    for j, (volt, cs, q) in enumerate(uniq):
        sel = np.nonzero(inv.reshape(-1) == j)[0]
        out[xp.asarray(sel)] = ctf_2d(box, pixel_size, p["defocus_u"][sel], p["defocus_v"][sel],
                                      p["defocus_angle"][sel], volt, cs, q, p["phase_shift"][sel], p["bfactor"][sel],
                                      xp=xp).reshape(len(sel), box, -1)
    flipped = p.get("phase_flipped")
    if flipped is not None and np.any(flipped):
        out[xp.asarray(np.flatnonzero(flipped))] = xp.abs(out[xp.asarray(np.flatnonzero(flipped))])
    if ignore_first_peak:
        out = xp.where(xp.asarray(first_peak_mask(p, box, pixel_size)), xp.float32(1.0), out)
    if premultiplied:
        out = out * out
    return out


# -- image sources ----------------------------------------------------------------------
class ArrayImages:
    """An in-memory image source with the :class:`spa.io.images.ParticleImages` reading interface."""

    def __init__(self, images: np.ndarray, pixel_size: float = 1.0):
        self.images = np.asarray(images, dtype=np.float32)
        self.box = int(self.images.shape[-1])
        self.pixel_size = float(pixel_size)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def read(self, indices) -> np.ndarray:
        return self.images[np.asarray(indices)]


# -- one E-step task ----------------------------------------------------------------------
@dataclass
class EStepContext:
    """What every E-step task of one iteration shares (broadcast once per iteration).

    ``refs``: a ReferenceModel (see :mod:`spa.em.model`); ``sampling``: the pose
    grid; ``sigma2`` (G, B//2+1); ``log_class_prior`` (K,); ``sigma_offset_px``;
    ``coarse_shells`` / ``fine_shells``: Fourier windows of the two passes;
    ``mask_radius_px``: soft circular mask on the images (None: none).
    """

    refs: ReferenceModel
    sampling: Sampling
    sigma2: np.ndarray
    log_class_prior: np.ndarray
    sigma_offset_px: float
    coarse_shells: int
    fine_shells: int
    pixel_size: float
    mask_radius_px: float | None = None
    do_ctf: bool = True
    ignore_first_peak: bool = False
    ctf_premultiplied: bool = False
    significant_fraction: float = 0.999
    max_significant: int = 64
    backend: str = "numpy"
    balance_classes: bool = False
    significance_per_class: bool = False
    #: keep a chunk's weighted sums where they were made (set by :func:`run_estep` in-process on a GPU:
    #: the sums are then added on the device and copied to the host once per pass, not once per chunk)
    device_sums: bool = False


def estep_chunk(source, ctx: EStepContext, indices, particles: dict):
    """E-step of one chunk → (WsumModel on the host, per-particle results dict of NumPy arrays).

    Results: ``class`` (0-based), ``rot`` (fine rotation index), ``offset``
    (n, 2) absolute offsets in pixels (RELION sign), ``max_prob``
    (rlnMaxValueProbDistribution), ``n_significant``
    (rlnNrOfSignificantSamples), ``loglike`` (rlnLogLikeliContribution), ``class_posterior``
    (n, K): each class's posterior probability summed over poses.
    ``particles["angles"]`` (n, 3), when present, are the prior orientations
    a local search (``ctx.sampling.local``) centres on.
    """
    be = get_backend(ctx.backend)
    xp = be.xp
    refs = ctx.refs.on(xp)
    box = refs.box
    images = xp.asarray(source.read(indices), dtype=xp.float32)
    ctf = xp.asarray(particle_ctfs(particles, box, ctx.pixel_size, xp=xp, do_ctf=ctx.do_ctf,
                                   ignore_first_peak=ctx.ignore_first_peak, premultiplied=ctx.ctf_premultiplied))
    active = ActivePixels.make(box, ctx.fine_shells, xp)
    n_groups = ctx.sigma2.shape[0]
    data = prepare_chunk(images, ctf, particles["group"], particles["centres"], ctx.sigma2, active,
                         ctx.mask_radius_px)
    sums = refs.new_sums()
    resid = xp.zeros((n_groups, active.size), xp.float64)
    post, fine = expectation(data, refs, ctx.sampling, ctx.log_class_prior, ctx.sigma_offset_px,
                             min(ctx.coarse_shells, ctx.fine_shells), ctx.significant_fraction, ctx.max_significant,
                             priors=particles.get("angles"), balance=ctx.balance_classes,
                             per_class=ctx.significance_per_class, sums=sums, resid=resid)
    wsig, count = sigma2_sums(resid, active.shell, active.n_shells, data.power, data.group, n_groups, box)
    n = images.shape[0]
    shifts = xp.asarray(ctx.sampling.fine_translations, dtype=xp.float32)[post.shift]
    t = data.centres[post.img] + shifts
    offset2 = float(((t * t).sum(-1) * post.weight).sum())
    # per image: the candidate with the largest weight
    # one integer sort instead of a two-key lexsort: the bits of a non-negative float32 order as
    # the floats do, so (image, largest weight first) is one int64 key
    w_bits = post.weight.astype(xp.float32).view(xp.int32).astype(xp.int64)
    order = xp.argsort(post.img.astype(xp.int64) * 2**31 + (2**31 - 1 - w_bits), kind="stable")
    first = xp.searchsorted(post.img[order], xp.arange(n))
    best = order[first]
    # each class's posterior probability, marginal over poses (n, K); summed over images, the class weights
    class_post = xp.zeros(n * refs.n_classes, xp.float64)
    be.scatter_add(class_post, post.img * refs.n_classes + post.cls, post.weight.astype(xp.float64))
    class_post = class_post.reshape(n, refs.n_classes)
    class_w = class_post.sum(axis=0)
    results = {
        "class": post.cls[best], "rot": post.rot[best], "offset": t[best],
        "max_prob": post.weight[best], "n_significant": post.n_significant, "loglike": post.log_evidence,
        "class_posterior": _normalised_rows(class_post).astype(xp.float32),
        "signal_z": fine.signal_z(best),
    }
    results = {k: be.to_numpy(v) for k, v in results.items()}
    wsum = WsumModel(sums, wsig, count, class_w, offset2, int(n), float(be.to_numpy(post.log_evidence).sum()))
    return (wsum if ctx.device_sums else wsum.to_host()), results


def _normalised_rows(p):
    """Rows divided by their sums (float32 weights sum to 1 only to ~1e-4 over many candidates)."""
    return p / p.sum(axis=1, keepdims=True)


# -- distribution -------------------------------------------------------------------------
def run_chunks(func, source, particles: dict, chunks: list, shared, client=None, groups=None, progress=None,
               lanes: int = DEFAULT_LANES):
    """``func(source, shared, idx, particles_chunk) -> (partial sum, result)`` on every chunk.

    Returns (the partials added — one total per group with ``groups`` —, per-chunk results in chunk
    order), through :func:`spa.parallel.map_reduce`: partials are added as they arrive, in an order
    that depends only on the chunks, so any number of workers gives the same sums; ``source`` and
    ``shared`` go to each worker once; ``lanes``: see :func:`spa.parallel.map_reduce`.
    """
    tasks = [(idx, take(particles, idx)) for idx in chunks]
    return map_reduce(func, tasks, broadcast=(source, shared), client=client, groups=groups, progress=progress,
                      lanes=lanes)


def run_estep(ctx: EStepContext, source, particles: dict, chunks: list, client=None, groups=None,
              lanes: int = DEFAULT_LANES):
    """E-step of every chunk and the sum of their weighted sums → (WsumModel, per-particle results in
    chunk order).  ``groups``: one WsumModel per group of chunks, as a list (see :func:`run_chunks`)."""
    return estep_over_chunks(estep_chunk, ctx, source, particles, chunks, client, groups, lanes)


def estep_over_chunks(task, ctx: EStepContext, source, particles: dict, chunks: list, client=None, groups=None,
                      lanes: int = DEFAULT_LANES):
    """``task`` (:func:`estep_chunk` or a stage's wrapper of it) over the chunks → (sums on the host,
    per-particle results concatenated in chunk order).  In-process on a GPU the sums stay on the
    device until the pass is done."""
    on_device = client is None and ctx.backend == "cupy"
    if on_device:
        ctx = replace(ctx, device_sums=True)
    wsum, parts = run_chunks(task, source, particles, chunks, ctx, client, groups, lanes=lanes)
    if on_device:
        wsum = [w.to_host() for w in wsum] if isinstance(wsum, list) else wsum.to_host()
    results = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return wsum, results


# -- checkpoints ----------------------------------------------------------------------------
def checkpoint_path(output_dir, iteration: int, rootname: str = "run") -> Path:
    return Path(output_dir) / f"{rootname}_it{iteration:03d}_optimiser.npz"


def save_checkpoint(output_dir, iteration: int, arrays: dict, rootname: str = "run") -> Path:
    """Write ``arrays`` (name → NumPy array) as the checkpoint of ``iteration`` (atomically)."""
    path = checkpoint_path(output_dir, iteration, rootname)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


def load_checkpoint(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def last_checkpoint(output_dir, rootname: str = "run") -> tuple[int, Path] | None:
    """(iteration, path) of the last complete checkpoint in ``output_dir``, or None."""
    pat = re.compile(rf"^{re.escape(rootname)}_it(\d{{3,}})_optimiser\.npz$")
    best = None
    d = Path(output_dir)
    if not d.is_dir():
        return None
    for p in d.iterdir():
        m = pat.match(p.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return best
