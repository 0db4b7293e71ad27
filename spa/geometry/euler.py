"""Euler angles ↔ rotation matrices exactly as RELION's ``Euler_angles2matrix``.

Angles are (rot, tilt, psi) in degrees, ZYZ.  The matrix ``A`` maps volume
coordinates to image coordinates: the projection of a volume ``V`` in direction
``A`` is ``∫ V(Aᵀ r) dz`` and, by the central-slice theorem, image frequency
(kx, ky) samples the volume's transform at ``Aᵀ (kx, ky, 0)``.
"""

from __future__ import annotations

import numpy as np


def euler_to_matrix(rot, tilt, psi) -> np.ndarray:
    """Rotation matrices (…, 3, 3) from RELION Euler angles in degrees."""
    a, b, g = (np.deg2rad(np.asarray(x, dtype=np.float64)) for x in (rot, tilt, psi))
    a, b, g = np.broadcast_arrays(a, b, g)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty(a.shape + (3, 3))
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m


def matrix_to_euler(m) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rot, tilt, psi) in degrees from rotation matrices (…, 3, 3), as RELION's
    ``Euler_matrix2angles`` (tilt in [0, 180]; at tilt 0 or 180 all in-plane
    rotation is put in psi with rot = 0)."""
    m = np.asarray(m, dtype=np.float64)
    sb = np.hypot(m[..., 2, 0], m[..., 2, 1])
    tilt = np.arctan2(sb, m[..., 2, 2])
    regular = sb > 16 * np.finfo(np.float64).eps
    rot = np.where(regular, np.arctan2(m[..., 2, 1], m[..., 2, 0]), 0.0)
    psi = np.where(regular, np.arctan2(m[..., 1, 2], -m[..., 0, 2]), np.arctan2(-m[..., 1, 0], m[..., 0, 0]))
    # at tilt = 180°, A = [[-cos(psi - rot) ...]]: with rot = 0 the in-plane angle has the other sign
    flipped = (~regular) & (m[..., 2, 2] < 0)
    psi = np.where(flipped, np.arctan2(m[..., 1, 0], -m[..., 0, 0]), psi)
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)
