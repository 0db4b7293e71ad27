"""Orientation and translation sampling as RELION's ``HealpixSampling``.

Directions come from HEALPix (Górski et al. 2005, https://doi.org/10.1086/427976)
via ``healpy`` in **NESTED** ordering, as RELION uses: the children of pixel ``p``
at order ``n`` are pixels ``p·4ᵒ … p·4ᵒ + 4ᵒ − 1`` at order ``n + o``, which is
what adaptive oversampling needs.  HEALPix order ``n`` has ``N_side = 2ⁿ``,
``12·4ⁿ`` directions and an angular step of ``360 / (6·2ⁿ)`` degrees
(n = 2: 15°, 3: 7.5°, 4: 3.75°); the in-plane angle ψ is sampled at the same step.

A direction (pixel centre at colatitude θ, longitude φ) becomes RELION's
``rot = φ``, ``tilt = θ`` (degrees); its unit vector is the third row of the
Euler matrix (see :func:`spa.geometry.symmetry.directions_from_angles`).
All angles here are degrees; shifts are pixels.
"""

from __future__ import annotations

import numpy as np

from spa.geometry.euler import euler_to_matrix, matrix_to_euler
from spa.geometry.symmetry import asymmetric_unit_filter, directions_from_angles


def _check_order(order) -> int:
    if int(order) != order or order < 0 or order > 13:
        raise ValueError(f"HEALPix order must be an integer in 0..13, got {order!r}")
    return int(order)


def angular_step(order: int) -> float:
    """Angular sampling step of HEALPix order ``order``: ``360 / (6·2ⁿ)`` degrees."""
    return 360.0 / (6 * 2 ** _check_order(order))


def psi_step(order: int) -> float:
    """In-plane (ψ) step at HEALPix order ``order`` (degrees), equal to the direction step."""
    return angular_step(order)


def psi_angles(order: int) -> np.ndarray:
    """The ψ grid at ``order``: ``0, step, …, 360 − step`` degrees (``6·2ⁿ`` values)."""
    n = 6 * 2 ** _check_order(order)
    return np.arange(n) * (360.0 / n)


def healpix_directions(order: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``12·4ⁿ`` HEALPix pixel centres at ``order`` as RELION (rot, tilt) in degrees.

    Index ``i`` of the returned arrays is NESTED pixel ``i``.
    """
    import healpy  # noqa: PLC0415 - import cost only where sampling is used

    nside = 2 ** _check_order(order)
    theta, phi = healpy.pix2ang(nside, np.arange(12 * nside * nside), nest=True)
    return np.rad2deg(phi), np.rad2deg(theta)


def direction_pixel(rot, tilt, order: int) -> np.ndarray:
    """NESTED HEALPix pixel index at ``order`` containing each direction (rot, tilt in degrees)."""
    import healpy  # noqa: PLC0415

    nside = 2 ** _check_order(order)
    return healpy.ang2pix(nside, np.deg2rad(tilt), np.deg2rad(rot), nest=True)


def orientation_grid(order: int, symmetry: str = "C1") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global search grid: directions in the asymmetric unit of ``symmetry`` × all ψ steps.

    Returns (rot, tilt, psi) degree arrays of equal length, direction-major (all ψ
    of the first direction, then the next).  For C1 that is ``12·4ⁿ · 6·2ⁿ``
    orientations (order 2: 192 × 24 = 4608).  The asymmetric unit is that of
    :func:`spa.geometry.symmetry.asymmetric_unit_filter` (≈ 1/|G| of the directions).
    """
    rot, tilt = healpix_directions(order)
    keep = asymmetric_unit_filter(rot, tilt, symmetry)
    rot, tilt = rot[keep], tilt[keep]
    psi = psi_angles(order)
    return np.repeat(rot, psi.size), np.repeat(tilt, psi.size), np.tile(psi, rot.size)


# -- random poses ------------------------------------------------------------------


def random_rotations(n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """``n`` rotation matrices (n, 3, 3) float64 uniform (Haar) on SO(3).

    From normalised 4-D Gaussian vectors, i.e. uniform unit quaternions
    (Shoemake 1992).  ``rng`` is a Generator or a seed.
    """
    rng = np.random.default_rng(rng)
    q = rng.standard_normal((int(n), 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    m = np.empty((int(n), 3, 3))
    m[:, 0, 0] = 1 - 2 * (y * y + z * z)
    m[:, 0, 1] = 2 * (x * y - z * w)
    m[:, 0, 2] = 2 * (x * z + y * w)
    m[:, 1, 0] = 2 * (x * y + z * w)
    m[:, 1, 1] = 1 - 2 * (x * x + z * z)
    m[:, 1, 2] = 2 * (y * z - x * w)
    m[:, 2, 0] = 2 * (x * z - y * w)
    m[:, 2, 1] = 2 * (y * z + x * w)
    m[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return m


def random_euler(n: int, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` uniform random orientations as RELION (rot, tilt, psi) degrees.

    Rot and psi in (−180, 180], tilt in [0, 180] (the ranges of
    :func:`~spa.geometry.euler.matrix_to_euler`).
    """
    return matrix_to_euler(random_rotations(n, rng))


# -- local searches and oversampling --------------------------------------------------


def _wrap180(a):
    """Angle difference folded into [−180, 180)."""
    return (np.asarray(a, dtype=np.float64) + 180.0) % 360.0 - 180.0


def local_neighbourhood(
    rot: float,
    tilt: float,
    psi: float,
    order: int,
    *,
    sigma_deg: float | None = None,
    max_deg: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid orientations at ``order`` near a prior orientation (RELION local searches).

    Kept: HEALPix directions at ``order`` whose angle to the prior direction
    (rot, tilt) is ≤ ``max_deg``, each with the grid ψ values within ``max_deg``
    of that direction's *matching* ψ (see :func:`local_offsets`).  RELION
    bounds direction and ψ separately the same way but compares ψ with the
    prior ψ directly, which near tilt 0° / 180° (where rot and ψ are coupled)
    can miss the prior orientation; the matching ψ equals the prior ψ at the
    prior's own direction and stays correct at the poles.
    ``sigma_deg`` defaults to 2 × the angular step (RELION's σ for local
    searches from order 4), ``max_deg`` to 3σ.  The full sphere of directions is
    searched (no asymmetric-unit restriction), so no symmetry mates of the prior
    are needed.  The grid orientation nearest to the prior is always included,
    even when ``max_deg`` is below half a step.  Returns (rot, tilt, psi)
    degree arrays, direction-major.
    """
    import healpy  # noqa: PLC0415

    order = _check_order(order)
    step = angular_step(order)
    if sigma_deg is None:
        sigma_deg = 2.0 * step
    if max_deg is None:
        max_deg = 3.0 * float(sigma_deg)
    if not max_deg >= 0:
        raise ValueError(f"max_deg must be >= 0, got {max_deg!r}")
    nside = 2**order
    centre = directions_from_angles(rot, tilt)
    radius = np.deg2rad(min(float(max_deg), 180.0))
    pix = healpy.query_disc(nside, centre, radius, inclusive=True, nest=True)
    pix = np.union1d(pix, [direction_pixel(rot, tilt, order)])
    theta, phi = healpy.pix2ang(nside, pix, nest=True)
    drot, dtilt = np.rad2deg(phi), np.rad2deg(theta)

    grid_psi = psi_angles(order)
    dir_dist, psi_ref = _direction_and_matching_psi(drot, dtilt, rot, tilt, psi)
    dpsi = np.abs(_wrap180(grid_psi[None, :] - psi_ref[:, None]))  # (n_dir, n_psi)
    keep = (dir_dist[:, None] <= max_deg) & (dpsi <= max_deg)
    # the nearest grid orientation to the prior (smallest rotation angle) always stays
    i_dir, i_psi = np.unravel_index(
        np.argmin(_rotation_angle(drot[:, None], dtilt[:, None], grid_psi[None, :], rot, tilt, psi)), keep.shape
    )
    keep[i_dir, i_psi] = True
    i_dir, i_psi = np.nonzero(keep)  # row-major: direction-major order
    return drot[i_dir], dtilt[i_dir], grid_psi[i_psi]


def local_offsets(rot, tilt, psi, rot0: float, tilt0: float, psi0: float) -> tuple[np.ndarray, np.ndarray]:
    """(direction angle, in-plane angle) in degrees of orientations from a prior orientation.

    The direction angle is the angle between the projection directions.  The
    in-plane angle is ``psi − ψ_match`` folded into [−180, 180), where
    ``ψ_match`` is the ψ that, at this (rot, tilt), brings the orientation
    closest to the prior (maximises ``tr(A₀ᵀ A)``).  These are the two
    coordinates the local-search range and Gaussian prior are taken on.
    The prior may be arrays broadcasting with the orientations (one prior per
    orientation).
    """
    dist, psi_ref = _direction_and_matching_psi(rot, tilt, rot0, tilt0, psi0)
    return dist, _wrap180(np.asarray(psi, dtype=np.float64) - psi_ref)


def local_prior_weights(rot, tilt, psi, rot0: float, tilt0: float, psi0: float, sigma_deg: float) -> np.ndarray:
    """Unnormalised Gaussian prior ``exp(−(Δdir² + Δψ²) / 2σ²)`` around a prior orientation (degrees)."""
    ddir, dpsi = local_offsets(rot, tilt, psi, rot0, tilt0, psi0)
    return np.exp(-(ddir**2 + dpsi**2) / (2.0 * float(sigma_deg) ** 2))


def _direction_and_matching_psi(rot, tilt, rot0, tilt0, psi0):
    """Direction angle to the prior and the ψ that best matches the prior at each (rot, tilt)."""
    rot, tilt = np.broadcast_arrays(np.asarray(rot, dtype=np.float64), np.asarray(tilt, dtype=np.float64))
    d = directions_from_angles(rot, tilt)
    dist = _vector_angle(d, directions_from_angles(rot0, tilt0))
    # A(rot, tilt, ψ) = Rz(ψ)·B with B = A(rot, tilt, 0); tr(Rz(ψ) B A₀ᵀ) is largest at
    # ψ = atan2(M10 − M01, M00 + M11) with M = B A₀ᵀ (RELION's passive Rz).
    m = euler_to_matrix(rot, tilt, 0.0) @ np.swapaxes(euler_to_matrix(rot0, tilt0, psi0), -1, -2)
    psi_ref = np.rad2deg(np.arctan2(m[..., 1, 0] - m[..., 0, 1], m[..., 0, 0] + m[..., 1, 1]))
    return dist, psi_ref


def _rotation_angle(rot, tilt, psi, rot0, tilt0, psi0):
    """Geodesic angle (degrees) between orientations and one prior orientation."""
    a = euler_to_matrix(rot, tilt, psi)
    a0 = euler_to_matrix(rot0, tilt0, psi0)
    cos = (np.einsum("...ij,ij->...", a, a0) - 1.0) / 2.0
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))


def _vector_angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees between unit vectors (…, 3), accurate at 0° and 180°."""
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.rad2deg(np.arctan2(cross, np.sum(a * b, axis=-1)))


def oversampled_neighbours(
    rot, tilt, psi, order: int, oversampling: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The finer samples RELION's adaptive oversampling puts inside a coarse sample.

    For a coarse orientation at ``order`` (rot, tilt → its NESTED pixel), the
    ``4ᵒ`` child pixels at ``order + o`` × ``2ᵒ`` ψ values centred in the coarse
    ψ bin: ``psi − step/2 + (j + ½)·step/2ᵒ``.  ``oversampling = 0`` returns
    the coarse pixel centre and ψ itself.  Scalars give 1-D arrays of length
    ``4ᵒ·2ᵒ``; arrays of ``n`` coarse samples give (n, 4ᵒ·2ᵒ).  Degrees.
    """
    import healpy  # noqa: PLC0415

    order = _check_order(order)
    o = int(oversampling)
    if o < 0 or o != oversampling:
        raise ValueError(f"oversampling must be a non-negative integer, got {oversampling!r}")
    fine = _check_order(order + o)
    rot_a, tilt_a, psi_a = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (rot, tilt, psi)))
    scalar = rot_a.ndim == 0
    rot_a, tilt_a, psi_a = (x.reshape(-1) for x in (rot_a, tilt_a, psi_a))
    parent = direction_pixel(rot_a, tilt_a, order)  # (n,)
    children = parent[:, None] * 4**o + np.arange(4**o)  # (n, 4^o)
    theta, phi = healpy.pix2ang(2**fine, children.ravel(), nest=True)
    crot, ctilt = np.rad2deg(phi).reshape(children.shape), np.rad2deg(theta).reshape(children.shape)
    step = psi_step(order)
    offsets = -0.5 * step + (np.arange(2**o) + 0.5) * step / 2**o  # (2^o,), 0 for o = 0
    cpsi = psi_a[:, None] + offsets  # (n, 2^o)
    k = 2**o
    out_rot = np.repeat(crot, k, axis=1)
    out_tilt = np.repeat(ctilt, k, axis=1)
    out_psi = np.tile(cpsi, (1, 4**o))
    if scalar:
        return out_rot[0], out_tilt[0], out_psi[0]
    return out_rot, out_tilt, out_psi


# -- translations -----------------------------------------------------------------


def translation_grid(offset_range_px: float, offset_step_px: float) -> np.ndarray:
    """(x, y) shifts in pixels on a square grid of ``offset_step_px`` inside a disc of radius ``offset_range_px``.

    As RELION's ``--offset_range`` / ``--offset_step``: all ``(i·step, j·step)``
    with ``x² + y² ≤ range²``; (0, 0) is always included.  Returns (n, 2) float64.
    """
    if not offset_step_px > 0:
        raise ValueError(f"offset step must be > 0 pixels, got {offset_step_px!r}")
    if not offset_range_px >= 0:
        raise ValueError(f"offset range must be >= 0 pixels, got {offset_range_px!r}")
    m = int(np.floor(offset_range_px / offset_step_px + 1e-9))
    i = np.arange(-m, m + 1) * float(offset_step_px)
    x, y = np.meshgrid(i, i, indexing="xy")
    keep = x**2 + y**2 <= offset_range_px**2 * (1 + 1e-9)
    return np.stack([x[keep], y[keep]], axis=-1)


def oversampled_translations(shifts, offset_step_px: float, oversampling: int = 1) -> np.ndarray:
    """The ``4ᵒ`` finer shifts inside each coarse shift cell (RELION's translational oversampling).

    ``shifts`` (…, 2) in pixels → (…, 4ᵒ, 2): offsets ``−step/2 + (j + ½)·step/2ᵒ``
    in x and y around each coarse shift (the shift itself for ``o = 0``).
    """
    o = int(oversampling)
    if o < 0 or o != oversampling:
        raise ValueError(f"oversampling must be a non-negative integer, got {oversampling!r}")
    k = 2**o
    off = -0.5 * offset_step_px + (np.arange(k) + 0.5) * offset_step_px / k
    ox, oy = np.meshgrid(off, off, indexing="xy")
    sub = np.stack([ox.ravel(), oy.ravel()], axis=-1)  # (4^o, 2)
    return np.asarray(shifts, dtype=np.float64)[..., None, :] + sub

