"""Choosing between initial-model candidates by how well their reprojections match 2D images.

As Sorzano et al. do for initial volumes: for every candidate map and every
2D class average (or, without class averages, a random subset of particles
with their CTFs), the best normalised correlation over projection directions,
in-plane rotations and shifts is found by exhaustive projection matching;
the candidate with the highest median correlation wins, and the histogram of
correlations per candidate is reported.  The score is the mean over Fourier
shells of per-shell correlations (an average Fourier ring correlation), so
candidates with different effective filters compare by shape.  A candidate
built from the very class averages it is scored against (common lines) is
cross-validated: each average is scored against a map made without it.

Projection matching is written as matrix products (the E-step's form): with
X_i the image transform at the active Fourier pixels (shells 1 … s, DC left
out so background levels do not matter), C_i its CTF (1 for class averages),
P_t a shift's phase factor and A_r the central slice at rotation r, per shell σ

    cc_σ(i, t, r) = Re Σ_f∈σ w·X_i·P_t·C_i·conj(A_r) / √(Σ_f∈σ w|X_i|² · Σ_f∈σ w·C_i²|A_r|²)

is one real GEMM (N·T × 2F_σ)(2F_σ × R) for the numerators and one
(N × F_σ)(F_σ × R) for the norms, over chunks of rotations (w: rfft
multiplicity); the score is the mean of cc_σ over the shells (pixels are
sorted by radius, so a shell is a contiguous slice).
Handedness cannot be told from projections: a map and its mirror image
score the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from spa.em.estep import ActivePixels
from spa.em.projector import Projector
from spa.fourier import rfft_centered, soft_circular_mask
from spa.geometry.euler import euler_to_matrix
from spa.geometry.sampling import orientation_grid, translation_grid

ROTATION_CHUNK = 2048


@dataclass
class MatchResult:
    """Per image: best correlation ``scores`` (N,), ``rotations`` (N, 3) Euler degrees, ``shifts`` (N, 2) px
    (RELION sign: moving the image by +shift centres it on the projection)."""

    scores: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray


def _prepare_images(images, mask_radius_px):
    img = np.asarray(images, np.float32)
    box = img.shape[-1]
    if mask_radius_px is not None:
        mask = soft_circular_mask(box, mask_radius_px, 3.0)
        outside = mask < 1e-3
        if outside.any():
            img = img - img[:, outside].mean(axis=1)[:, None, None]
        img = img * mask
    return rfft_centered(img, 2).astype(np.complex64)


def match_images(volume, images, pixel_size: float, *, ctfs=None, resolution: float = 20.0,
                 mask_radius_px: float | None = None, offset_range_px: float = 2.0, offset_step_px: float = 1.0,
                 grid_order: int = 3, per_shell: bool = False) -> MatchResult:
    """Exhaustive projection matching of images (N, b, b) against a map (b, b, b) (see module docstring).

    ``ctfs`` (N, b, b//2+1) or None (images already CTF-corrected, e.g. class
    averages); ``resolution`` Å limits the frequencies used; orientations on the
    HEALPix grid of ``grid_order`` × ψ at the same step (order 3: 7.5°).
    ``per_shell``: the score is the mean over Fourier shells of the per-shell
    normalised correlation (an average Fourier ring correlation), so every
    shell counts equally and a map's radial filter does not matter; otherwise
    one correlation over all pixels (dominated by the strong low shells).
    """
    vol = np.asarray(volume, np.float32)
    box = vol.shape[-1]
    n = len(images)
    shells = int(min(box // 2, np.floor(box * pixel_size / resolution))) + 1
    act = ActivePixels.make(box, shells, np)
    first = act.count(1)
    index, jx, jy = act.index[first:], act.jx[first:], act.jy[first:]
    # pixels are sorted by radius: each shell is one contiguous range
    if per_shell:
        bounds = [act.count(s) - first for s in range(1, shells + 1)]
        ranges = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1) if bounds[i + 1] > bounds[i]]
    else:
        ranges = [(0, index.size)]
    w = np.where(jx > 0, 2.0, 1.0).astype(np.float32)
    f = _prepare_images(images, mask_radius_px).reshape(n, -1)[:, index]
    c = np.ones((n, index.size), np.float32) if ctfs is None else np.asarray(ctfs, np.float32).reshape(n, -1)[:, index]
    shifts = translation_grid(offset_range_px, offset_step_px) if offset_range_px > 0 else np.zeros((1, 2))
    s = len(shifts)
    ph = np.exp((-2j * np.pi / box) * (shifts[:, :1] * jx[None] + shifts[:, 1:] * jy[None])).astype(np.complex64)
    y = ((f * c * w)[:, None, :] * ph[None]).reshape(n * s, -1)
    c2w = c * c * w
    fw2 = w * (f.real**2 + f.imag**2)
    rot, tilt, psi = orientation_grid(grid_order, "C1")
    euler = np.column_stack([rot, tilt, psi])
    proj = Projector(vol)
    best = np.full(n, -np.inf)
    best_r = np.zeros(n, np.int64)
    best_s = np.zeros(n, np.int64)
    for r0 in range(0, len(euler), ROTATION_CHUNK):
        sl = slice(r0, min(len(euler), r0 + ROTATION_CHUNK))
        a = proj.project_active(euler_to_matrix(*euler[sl].T).astype(np.float32), index, jx, jy)  # (Rc, F)
        a2 = a.real**2 + a.imag**2
        cc = np.zeros((n, s, a.shape[0]), np.float32)
        for lo, hi in ranges:
            yb = y[:, lo:hi]
            cross = np.concatenate([yb.real, yb.imag], axis=1) @ np.concatenate([a.real[:, lo:hi], a.imag[:, lo:hi]],
                                                                                axis=1).T  # (N·S, Rc) GEMM
            norm = c2w[:, lo:hi] @ a2[:, lo:hi].T  # (N, Rc) GEMM
            x2 = fw2[:, lo:hi].sum(axis=1)
            cc += cross.reshape(n, s, -1) / np.sqrt(np.maximum(x2[:, None, None] * norm[:, None, :], 1e-30))
        cc /= len(ranges)
        flat = cc.reshape(n, -1)
        k = np.argmax(flat, axis=1)
        val = flat[np.arange(n), k]
        better = val > best
        best[better] = val[better]
        si, ri = np.divmod(k, cc.shape[2])
        best_r[better] = ri[better] + r0
        best_s[better] = si[better]
    return MatchResult(best.astype(np.float64), euler[best_r], shifts[best_s].astype(np.float64))


# -- candidates ------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """A candidate initial map at the working box: ``name``, ``method`` (sgd, commonlines, …), ``volume``."""

    name: str
    method: str
    volume: np.ndarray
    seed: int | None = None
    note: str = ""
    # cross-validation for a map built from the very images it is scored against (common lines from class
    # averages): [(image indices held out, map made without them)]; those images are scored against that map
    folds: list | None = None


def score_candidates(candidates: list[Candidate], images, pixel_size: float, *, ctfs=None, resolution: float = 20.0,
                     mask_radius_px: float | None = None, offset_range_px: float = 2.0, grid_order: int = 3,
                     per_shell: bool = True, log=None) -> list[np.ndarray]:
    """Best reprojection correlation of every image, per candidate (list of (N,) arrays).

    ``per_shell``: score by the mean per-shell correlation (see
    :func:`match_images`), so candidates with different effective filters
    compare by shape.  A candidate with ``folds`` is cross-validated: each
    image is scored against the fold map that was made without it.
    """
    out = []
    kw = dict(pixel_size=pixel_size, resolution=resolution, mask_radius_px=mask_radius_px,
              offset_range_px=offset_range_px, grid_order=grid_order, per_shell=per_shell)
    for cand in candidates:
        if cand.folds and ctfs is None:
            scores = np.full(len(images), np.nan)
            for held, vol in cand.folds:
                held = np.asarray(held)
                scores[held] = match_images(vol, np.asarray(images)[held], **kw).scores
        else:
            scores = match_images(cand.volume, images, ctfs=ctfs, **kw).scores
        out.append(scores)
        if log:
            log(f"initial-model: candidate {cand.name} ({cand.method}): median reprojection correlation "
                f"{np.median(scores):.3f}")
    return out


def choose_candidate(scores: list[np.ndarray], methods: list[str] | None = None, *,
                     preferred: str = "sgd", alpha: float = 0.05) -> int:
    """Index of the candidate to keep: the best median correlation, unless that is within noise of a
    ``preferred`` candidate's (ties: the first).

    Candidates of the ``preferred`` method (SGD) are fitted to every particle
    at the working resolution; the others (common lines from class averages)
    are made at the chooser's low resolution, where near-equal scores cannot
    tell a right map from a wrong one at finer detail (measured on the demo:
    a common-lines map scoring 0.955 against the SGD maps' 0.952 was correct
    only to 22 Å, the SGD map to 10.5 Å, and a refinement from it converged
    to wrong poses).  So a non-preferred candidate wins only when it beats the
    best preferred one image by image: a one-sided sign test on the paired
    per-image scores at level ``alpha``.  ``methods`` None: the plain best.
    """
    med = [float(np.median(s)) if len(s) else -np.inf for s in scores]
    best = int(np.argmax(med))
    if methods is None or methods[best] == preferred:
        return best
    pref = [i for i, m in enumerate(methods) if m == preferred]
    if not pref:
        return best
    rival = max(pref, key=lambda i: med[i])
    diff = np.asarray(scores[best], float) - np.asarray(scores[rival], float)
    diff = diff[np.isfinite(diff) & (diff != 0)]
    from scipy.stats import binomtest

    if len(diff) and binomtest(int((diff > 0).sum()), len(diff), 0.5, alternative="greater").pvalue < alpha:
        return best
    return rival


def scores_table(candidates: list[Candidate], scores: list[np.ndarray], chosen: int, files: list[str], *,
                 agreement=None) -> pd.DataFrame:
    """One row per candidate: file, method, seed, median / mean / quartiles of the correlations, chosen flag,
    and with ``agreement`` (per candidate) its median aligned correlation with the other candidates."""
    rows = []
    for i, (c, s) in enumerate(zip(candidates, scores)):
        rows.append({
            "rlnReferenceImage": files[i],
            "spaCandidateName": c.name,
            "spaCandidateMethod": c.method,
            "spaCandidateSeed": -1 if c.seed is None else int(c.seed),
            "spaMedianCorrelation": float(np.median(s)),
            "spaMeanCorrelation": float(np.mean(s)),
            "spaCorrelationQ25": float(np.quantile(s, 0.25)),
            "spaCorrelationQ75": float(np.quantile(s, 0.75)),
            "spaNumberOfImages": int(len(s)),
            "spaChosen": int(i == chosen),
        })
        if agreement is not None:
            rows[-1]["spaCandidateAgreement"] = float(agreement[i])
    return pd.DataFrame(rows)


def plot_scores(path, candidates: list[Candidate], scores: list[np.ndarray], chosen: int, what: str) -> None:
    """Histogram of reprojection correlations per candidate (PNG, atomic)."""
    from spa.io.atomic import atomic_path
    from spa.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    lo = min(float(np.min(s)) for s in scores)
    hi = max(float(np.max(s)) for s in scores)
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 31)
    for i, (c, s) in enumerate(zip(candidates, scores)):
        label = f"{c.name} ({c.method}) median {np.median(s):.3f}" + ("  [chosen]" if i == chosen else "")
        ax.hist(s, bins=bins, histtype="step", lw=2.0 if i == chosen else 1.0, label=label)
    ax.set_xlabel(f"best reprojection correlation per {what}")
    ax.set_ylabel("count")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
