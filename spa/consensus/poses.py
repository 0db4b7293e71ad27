"""Pose consensus: keep the particles whose poses two refinements agree on.

Two refinements of the same particles (two runs, or two settings) give each
particle a pose ``A`` (RELION rotation matrix, :mod:`spa.geometry.euler`) and
an origin (rlnOriginX/YAngst).  Independent refinements can live in frames that
differ by one global rotation ``G``: map B is map A rotated,
``V_B(r) = V_A(Gᵀ r)``, and then ``A_A = A_B · G`` for every particle
(:mod:`spa.geometry.distance`).  With a symmetric map each pose is only defined
up to a symmetry mate ``A · S``.  So the comparison is

    difference_i = min_S angle(A_A,i, A_B,i · G · S)     (degrees)

after ``G`` is estimated robustly (a consensus set can hold many outliers):
candidates ``A_B,iᵀ A_A,i`` from a random sample of particles are scored by how
many particles they bring within ``inlier_deg``; the best is refined by least
squares (:func:`spa.geometry.distance.align_rotation_sets`) on its inliers,
with each particle's best symmetry mate.  ``G`` is defined up to ``G·S``; the
representative with the smallest rotation angle is reported.

The shift difference is ``|origin_A − origin_B|`` in pixels.  A global shift
between the frames (maps recentred differently) is not modelled: it is zero
for refinements against the same reference box.  Particles within
``max_angle`` and ``max_shift`` are kept (Sorzano et al. 2021: 2.5°, 4 px).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.geometry.distance import align_rotation_sets, angular_distance, angular_distance_sym
from spa.geometry.symmetry import symmetry_matrices

_F = np.diag([1.0, 1.0, -1.0])


@dataclass
class PoseConsensus:
    """Result of :func:`pose_consensus` for N particles.

    ``rotation``: G (3, 3) with ``A_A ≈ A_B' · G`` modulo symmetry, where
    ``A_B' = A_B`` or ``F A_B F`` (``mirrored``: run B has the other hand).
    ``rotation_angle_deg``: rotation angle of G (the smallest among G·S).
    ``frame_inliers``: particles used for the final fit of G.
    ``angular_difference``: (N,) degrees, modulo symmetry, after the frame
    alignment.  ``shift_difference``: (N,) pixels.  ``kept``: (N,) bool.
    """

    rotation: np.ndarray
    rotation_angle_deg: float
    mirrored: bool
    frame_inliers: int
    angular_difference: np.ndarray
    shift_difference: np.ndarray
    kept: np.ndarray

    @property
    def fraction_kept(self) -> float:
        return float(np.mean(self.kept)) if self.kept.size else 0.0


def _best_mates(rel: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """Index of the group element S maximising trace(Sᵀ · rel) per particle (the closest mate)."""
    return np.argmax(np.einsum("gij,nij->ng", mats, rel), axis=1)


def smallest_representative(rotation, group: str = "C1") -> np.ndarray:
    """Among ``rotation · S`` (S ∈ group), the rotation with the smallest angle."""
    mats = symmetry_matrices(group)
    cands = np.asarray(rotation, dtype=np.float64) @ mats
    return cands[int(np.argmin(angular_distance(np.eye(3), cands)))]


def estimate_frame(
    R_a,
    R_b,
    group: str = "C1",
    *,
    inlier_deg: float = 10.0,
    allow_mirror: bool = False,
    n_candidates: int = 64,
    n_score: int = 2000,
    iterations: int = 3,
    rng: np.random.Generator | int | None = 0,
) -> tuple[np.ndarray, bool, np.ndarray]:
    """Global rotation ``G`` with ``R_a ≈ R_b' · G · S_i`` (S_i ∈ group per particle), robust to outliers.

    ``R_a``, ``R_b``: (N, 3, 3) poses of the same particles in runs A and B.
    Returns ``(G, mirrored, inliers)``: ``inliers`` (N,) bool marks the
    particles within ``inlier_deg`` degrees after the fit; ``mirrored`` says
    that ``R_b' = F R_b F`` (other hand) fitted better (only with
    ``allow_mirror``).  ``G`` is the smallest-angle representative.
    """
    R_a = np.asarray(R_a, dtype=np.float64).reshape(-1, 3, 3)
    R_b = np.asarray(R_b, dtype=np.float64).reshape(-1, 3, 3)
    n = R_a.shape[0]
    if R_b.shape[0] != n or n == 0:
        raise ValueError(f"need two equal, non-empty pose sets, got {R_a.shape[0]} and {R_b.shape[0]}")
    rng = np.random.default_rng(rng)
    mats = symmetry_matrices(group)
    pick = rng.choice(n, size=min(n_candidates, n), replace=False)
    score = rng.choice(n, size=min(n_score, n), replace=False)

    best = (-1, None, False)
    for mirrored in (False, True) if allow_mirror else (False,):
        Rb = _F @ R_b @ _F if mirrored else R_b
        # one candidate per sampled particle: G_i = R_bᵀ R_a (its symmetry mates G_i·S score the same)
        cands = np.swapaxes(Rb[pick], -1, -2) @ R_a[pick]
        for g in cands:
            count = int(np.sum(angular_distance_sym(R_a[score], Rb[score] @ g, group) < inlier_deg))
            if count > best[0]:
                best = (count, g, mirrored)
    _, g, mirrored = best
    Rb = _F @ R_b @ _F if mirrored else R_b

    inliers = angular_distance_sym(R_a, Rb @ g, group) < inlier_deg
    for _ in range(iterations):
        if inliers.sum() < 3:
            break
        # each inlier's symmetry mate closest to the current fit, then least squares over SO(3)
        rel = np.swapaxes(R_a[inliers], -1, -2) @ Rb[inliers] @ g  # R_aᵀ R_b G ≈ S_i
        mates = mats[_best_mates(rel, mats)]
        g = align_rotation_sets(Rb[inliers], R_a[inliers] @ mates).rotation
        inliers = angular_distance_sym(R_a, Rb @ g, group) < inlier_deg
    return smallest_representative(g, group), mirrored, inliers


def pose_consensus(
    R_a,
    R_b,
    shift_a_px,
    shift_b_px,
    *,
    group: str = "C1",
    max_angle: float = 2.5,
    max_shift_px=4.0,
    align: bool = True,
    allow_mirror: bool = False,
    inlier_deg: float | None = None,
    rng: np.random.Generator | int | None = 0,
) -> PoseConsensus:
    """Compare two refinements' poses of the same N particles and keep those that agree.

    ``R_a``, ``R_b``: (N, 3, 3) rotation matrices (``euler_to_matrix`` of
    rlnAngleRot/Tilt/Psi).  ``shift_a_px``, ``shift_b_px``: (N, 2) origins in
    pixels (rlnOriginX/YAngst ÷ pixel size).  ``max_angle`` in degrees;
    ``max_shift_px`` in pixels, a scalar or (N,) (for a limit given in Å over
    several pixel sizes).  ``align=False`` assumes both runs share one frame.
    ``inlier_deg`` (default max(10°, 4·max_angle)) is the frame fit's inlier
    radius.  A particle is kept when its angular difference ≤ ``max_angle``
    and its shift difference ≤ ``max_shift_px``.
    """
    R_a = np.asarray(R_a, dtype=np.float64).reshape(-1, 3, 3)
    R_b = np.asarray(R_b, dtype=np.float64).reshape(-1, 3, 3)
    n = R_a.shape[0]
    sa = np.asarray(shift_a_px, dtype=np.float64).reshape(n, 2)
    sb = np.asarray(shift_b_px, dtype=np.float64).reshape(n, 2)
    if inlier_deg is None:
        inlier_deg = max(10.0, 4.0 * float(max_angle))
    if align:
        g, mirrored, inliers = estimate_frame(
            R_a, R_b, group, inlier_deg=inlier_deg, allow_mirror=allow_mirror, rng=rng
        )
        n_in = int(inliers.sum())
    else:
        g, mirrored, n_in = np.eye(3), False, n
    Rb = _F @ R_b @ _F if mirrored else R_b
    ang = angular_distance_sym(R_a, Rb @ g, group)
    shift = np.linalg.norm(sa - sb, axis=1)
    kept = (ang <= max_angle) & (shift <= np.asarray(max_shift_px, dtype=np.float64))
    return PoseConsensus(
        rotation=g,
        rotation_angle_deg=float(angular_distance(np.eye(3), g)),
        mirrored=bool(mirrored),
        frame_inliers=n_in,
        angular_difference=ang,
        shift_difference=shift,
        kept=kept,
    )
