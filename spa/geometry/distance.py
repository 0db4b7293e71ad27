"""Distances between poses and the global frame between two pose sets.

Poses are RELION rotation matrices ``A`` (volume → image coordinates, see
:mod:`spa.geometry.euler`).  All angles are degrees.

Frames.  Suppose a reconstruction is the true map rotated by ``G``:
``V_est(r) = V_true(Gᵀ r)`` (the ``V'(r) = V(Rᵀ r)`` convention of the Euler
module).  A pose ``A_est`` explains the same image as ``A_true`` when
``∫V_est(A_estᵀ r) dz = ∫V_true(Gᵀ A_estᵀ r) dz = ∫V_true(A_trueᵀ r) dz``, i.e.

    A_true = A_est · G          (G multiplies on the right)

and the map goes back to the true frame with ``V_true(r) = V_est(G r)``.
:func:`align_rotation_sets` estimates this ``G``.

Hand.  A map of the wrong hand is a mirror image, ``V_est(r) = V_true(H r)`` with
det H = −1.  Its projections are those of the true map seen through
``F = diag(1, 1, −1)`` (a projection along z cannot tell z from −z), which gives
``A_true = F · A_est · F · G`` with ``G = F Hᵀ`` a proper rotation.  With
``allow_mirror=True`` both hands are fitted and the better one is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.geometry.symmetry import _matrices, directions_from_angles, parse_group

_F = np.diag([1.0, 1.0, -1.0])


def _angle_of(m: np.ndarray) -> np.ndarray:
    """Rotation angle in degrees of rotation matrices (…, 3, 3), accurate near 0° and 180°."""
    cos = (np.trace(m, axis1=-2, axis2=-1) - 1.0) / 2.0
    sin = 0.5 * np.sqrt(
        (m[..., 2, 1] - m[..., 1, 2]) ** 2 + (m[..., 0, 2] - m[..., 2, 0]) ** 2 + (m[..., 1, 0] - m[..., 0, 1]) ** 2
    )
    return np.rad2deg(np.arctan2(sin, cos))


def angular_distance(R1, R2) -> np.ndarray:
    """Geodesic angle (degrees, 0…180) between rotation matrices ``R1`` and ``R2`` (…, 3, 3), broadcast.

    The angle of the relative rotation ``R1ᵀ R2``.
    """
    R1 = np.asarray(R1, dtype=np.float64)
    R2 = np.asarray(R2, dtype=np.float64)
    return _angle_of(np.swapaxes(R1, -1, -2) @ R2)


def angular_distance_sym(R1, R2, group: str) -> np.ndarray:
    """Smallest angle (degrees) between pose ``R1`` and the symmetry mates ``R2·S`` of ``R2``, ``S`` ∈ group.

    Poses ``A`` and ``A·S`` give identical projections of a map with symmetry
    ``group`` (see :mod:`spa.geometry.symmetry`), so this is the pose error
    modulo symmetry.  Broadcasts over leading axes.
    """
    mats = _matrices(parse_group(group))  # (G, 3, 3)
    R1 = np.asarray(R1, dtype=np.float64)
    R2 = np.asarray(R2, dtype=np.float64)
    rel = np.swapaxes(R1, -1, -2) @ R2  # (…, 3, 3)
    # trace(rel · S) for every S picks the closest mate cheaply, then one accurate angle
    traces = np.einsum("...ij,gji->...g", rel, mats)
    best = mats[np.argmax(traces, axis=-1)]
    return _angle_of(rel @ best)


def direction_distance(rot1, tilt1, rot2, tilt2) -> np.ndarray:
    """Angle (degrees, 0…180) between projection directions given as RELION (rot, tilt) in degrees.

    Ignores ψ (the in-plane angle); broadcasts.  The directions are the third
    rows of the Euler matrices.
    """
    a = directions_from_angles(rot1, tilt1)
    b = directions_from_angles(rot2, tilt2)
    a, b = np.broadcast_arrays(a, b)
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.rad2deg(np.arctan2(cross, np.sum(a * b, axis=-1)))


@dataclass(frozen=True)
class FrameAlignment:
    """Result of :func:`align_rotation_sets`.

    ``rotation``: G (3, 3) with ``R_true ≈ R_est' · G`` where ``R_est' = R_est``
    (``mirrored`` False) or ``F · R_est · F`` with ``F = diag(1, 1, −1)``
    (``mirrored`` True: the estimate has the other hand).
    ``residuals_deg``: per-pose angle between ``R_est' · G`` and ``R_true``.
    ``other_hand_median_deg``: median residual of the other hand's fit (NaN
    when only one hand was fitted), to judge how clearly the hand was decided.
    """

    rotation: np.ndarray
    residuals_deg: np.ndarray
    mirrored: bool
    other_hand_median_deg: float = float("nan")

    def apply(self, R_est) -> np.ndarray:
        """Estimated poses expressed in the true frame: ``R_est' · G``."""
        R = np.asarray(R_est, dtype=np.float64)
        if self.mirrored:
            R = _F @ R @ _F
        return R @ self.rotation


def _fit_right_rotation(R_est: np.ndarray, R_true: np.ndarray) -> np.ndarray:
    """argmin_G Σ ‖R_true − R_est G‖²_F over proper rotations (Kabsch/Umeyama via SVD)."""
    m = np.einsum("nji,njk->ik", R_est, R_true)  # Σ R_estᵀ R_true
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    return u @ np.diag([1.0, 1.0, d]) @ vt


def align_rotation_sets(R_est, R_true, *, allow_mirror: bool = False) -> FrameAlignment:
    """The global rotation ``G`` that best maps estimated poses onto true ones, ``R_true ≈ R_est · G``.

    Least squares over SO(3): ``G`` maximises ``tr(Gᵀ Σᵢ R_est,iᵀ R_true,i)``,
    solved by one SVD (exact for noiseless poses).  The estimated map then is
    the true map rotated by ``G`` (``V_est(r) = V_true(Gᵀ r)``; module docstring).
    With ``allow_mirror``, the other hand (``F R_est F``) is fitted too and the
    fit with the smaller median residual returned.  Residuals are per pose,
    degrees; ignore symmetry (fit symmetry-expanded or symmetry-free poses).
    """
    R_est = np.asarray(R_est, dtype=np.float64).reshape(-1, 3, 3)
    R_true = np.asarray(R_true, dtype=np.float64).reshape(-1, 3, 3)
    if R_est.shape != R_true.shape or R_est.shape[0] == 0:
        raise ValueError(f"need two equal, non-empty sets of rotations, got {R_est.shape} and {R_true.shape}")
    fits = []
    for mirrored in (False, True) if allow_mirror else (False,):
        Re = _F @ R_est @ _F if mirrored else R_est
        g = _fit_right_rotation(Re, R_true)
        res = angular_distance(Re @ g, R_true)
        fits.append((float(np.median(res)), mirrored, g, res))
    fits.sort(key=lambda f: f[0])
    med, mirrored, g, res = fits[0]
    other = fits[1][0] if len(fits) > 1 else float("nan")
    return FrameAlignment(rotation=g, residuals_deg=res, mirrored=mirrored, other_hand_median_deg=other)
