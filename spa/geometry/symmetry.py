"""Point-group symmetry in RELION's settings: matrices, map symmetrisation, asymmetric units.

Supported groups (names parsed case-insensitively, as RELION's ``--sym``):

======  ======  ===========================================================
group   order   orientation (RELION ``SymList::fill_symmetry_class``)
======  ======  ===========================================================
C<n>    n       n-fold on Z
D<n>    2n      n-fold on Z, a 2-fold on X
T       12      a 3-fold on Z, a 2-fold at (0, √(2/3), √(1/3)) (RELION, not Heymann)
O       24      4-folds on X, Y, Z (3-fold on (1, 1, 1))
I, I2   60      Crowther 222: 2-folds on X, Y, Z; front 5-folds in the XZ plane,
                e.g. (1, 0, φ)
I1      60      2-folds on X, Y, Z; front 5-folds in the YZ plane, e.g. (0, 1, φ)
                (I2 turned 90° about Z)
I3      60      5-fold on Z, 2-fold on Y, a 2-fold at (−1, 0, φ) in the XZ plane
I4      60      5-fold on Z, 2-fold on Y, a 2-fold at (+1, 0, φ) in the XZ plane
                (I3 turned 180° about Z)
======  ======  ===========================================================

φ is the golden ratio; the settings are those of Heymann, Chagoyen & Belnap (2005)
J. Struct. Biol. 151:196, https://doi.org/10.1016/j.jsb.2005.06.001, except T.

Conventions.  A symmetric map satisfies ``V(Rᵀ r) = V(r)`` for every group element
``R``.  Poses ``A`` and ``A·R`` then give the same projection
(``∫V(Rᵀ Aᵀ r) dz = ∫V(Aᵀ r) dz``), so the projection direction ``d`` (third row
of ``A``, a vector in volume coordinates) is equivalent to every ``Rᵀ d`` — the
same set as ``{R d}`` because the group holds the inverses.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from spa.backend import array_module, backend_of
from spa.errors import SpaInputError

_PHI = (1.0 + np.sqrt(5.0)) / 2.0

# Generators per group: (fold, axis).  Axes are the geometric facts of each setting
# (same axes as RELION's tables); the group is their closure.
_GENERATORS: dict[str, list[tuple[int, tuple[float, float, float]]]] = {
    "T": [(3, (0.0, 0.0, 1.0)), (2, (0.0, np.sqrt(2.0 / 3.0), np.sqrt(1.0 / 3.0)))],
    "O": [(3, (1.0, 1.0, 1.0)), (4, (0.0, 0.0, 1.0))],
    "I2": [(2, (0.0, 0.0, 1.0)), (5, (1.0, 0.0, _PHI)), (3, (0.0, 1.0, _PHI**2))],
    "I1": [(2, (1.0, 0.0, 0.0)), (5, (_PHI, 0.0, -1.0)), (3, (_PHI**2, 1.0, 0.0))],
    "I3": [(2, (-1.0, 0.0, _PHI)), (5, (0.0, 0.0, 1.0))],
    "I4": [(2, (1.0, 0.0, _PHI)), (5, (0.0, 0.0, 1.0))],
}

_SLAB_VOXELS = 1 << 21  # voxels per map_coordinates call: bounds the coordinate arrays' memory

_NAME = re.compile(r"^\s*([CD])\s*(\d+)\s*$|^\s*(T|O|I[1-4]?)\s*$", re.IGNORECASE)


class SymmetryError(SpaInputError, ValueError):
    """An unknown or malformed symmetry group name (a user-input error)."""

    def __init__(self, problem: str):
        super().__init__(None, problem)


def parse_group(group: str) -> str:
    """Canonical name of a point group: ``'c4' → 'C4'``, ``'i' → 'I2'`` (RELION's default I).

    Raises :class:`SymmetryError` (a :class:`~spa.errors.SpaInputError` and a
    ``ValueError``) for anything else.
    """
    if not isinstance(group, str):
        raise SymmetryError(f"symmetry group must be a string like 'C1', 'D7', 'O' or 'I1', got {group!r}")
    m = _NAME.match(group)
    if m is None:
        raise SymmetryError(
            f"unknown symmetry group {group!r}: expected C<n>, D<n>, T, O, I (= I2), I1, I2, I3 or I4"
        )
    if m.group(1):
        n = int(m.group(2))
        if n < 1:
            raise SymmetryError(f"symmetry group {group!r}: the order n must be at least 1")
        return f"{m.group(1).upper()}{n}"
    name = m.group(3).upper()
    return "I2" if name == "I" else name


def axis_rotation(axis, angle_deg: float) -> np.ndarray:
    """Right-handed rotation matrix (3, 3) by ``angle_deg`` about ``axis`` (x, y, z), Rodrigues' formula."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    t = np.deg2rad(angle_deg)
    k = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return np.eye(3) + np.sin(t) * k + (1.0 - np.cos(t)) * (k @ k)


def _close_group(generators: list[np.ndarray], expected: int) -> np.ndarray:
    """All products of ``generators`` (breadth first, identity first), deduplicated numerically."""
    elements = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for a in frontier:
            for g in generators:
                c = g @ a
                if not any(np.abs(c - e).max() < 1e-8 for e in elements):
                    elements.append(c)
                    new.append(c)
        frontier = new
        if len(elements) > expected:
            break
    if len(elements) != expected:  # a wrong axis table, never user input
        raise RuntimeError(f"symmetry closure gave {len(elements)} elements, expected {expected}")
    out = np.stack(elements)
    out[np.abs(out) < 1e-14] = 0.0  # exact zeros keep printed matrices readable
    return out


@lru_cache(maxsize=64)
def _matrices(name: str) -> np.ndarray:
    kind = name[0]
    if kind in "CD":
        n = int(name[1:])
        gens = [axis_rotation((0, 0, 1), 360.0 / n)]
        if kind == "D":
            gens.append(axis_rotation((1, 0, 0), 180.0))
        order = n if kind == "C" else 2 * n
    else:
        gens = [axis_rotation(axis, 360.0 / fold) for fold, axis in _GENERATORS[name]]
        order = {"T": 12, "O": 24}.get(name, 60)
    m = _close_group(gens, order)
    m.setflags(write=False)
    return m


def symmetry_matrices(group: str) -> np.ndarray:
    """Rotation matrices (n, 3, 3) float64 of point group ``group``, identity first.

    A map with this symmetry satisfies ``V(Rᵀ r) = V(r)`` for every returned ``R``
    (r = (x, y, z) from the box centre).  See the module docstring for the settings.
    """
    return _matrices(parse_group(group)).copy()


def group_order(group: str) -> int:
    """Number of rotations in ``group`` (C1 → 1, D7 → 14, T → 12, O → 24, I* → 60)."""
    return int(_matrices(parse_group(group)).shape[0])


# -- maps -------------------------------------------------------------------------


def rotate_volume(volume, rotation, *, order: int = 1):
    """``V'(r) = V(Rᵀ r)``: the map rotated by ``R`` about the box centre (B//2 per axis).

    ``volume`` is indexed [z, y, x]; ``rotation`` (3, 3) acts on (x, y, z), so a
    feature at ``p`` moves to ``R p``.  Values from outside the box are 0.
    ``order`` is the spline order of ``scipy.ndimage.map_coordinates``
    (1 = trilinear, as RELION's real-space symmetrisation; 3 = cubic).  A CuPy
    input is computed on the host and returned on the device; float32 stays float32.
    """
    return _on_host(volume, np.asarray(rotation, dtype=np.float64)[None], order)


def _on_host(volume, rotations: np.ndarray, order: int):
    """Mean over ``rotations`` of ``V(Rᵀ r)``, computed with SciPy, returned on ``volume``'s device."""
    be = backend_of(volume)
    vol = be.to_numpy(volume)
    dtype = vol.dtype if np.issubdtype(vol.dtype, np.floating) else np.float32
    out = (_rotate_sum(vol, rotations, order=order) / rotations.shape[0]).astype(dtype, copy=False)
    return out if array_module(volume) is np else be.asarray(out)


def _rotate_sum(vol: np.ndarray, rotations: np.ndarray, *, order: int) -> np.ndarray:
    """Sum over ``rotations`` of ``V(Rᵀ r)`` (float64), in z-slabs to bound memory."""
    from scipy import ndimage  # noqa: PLC0415 - keeps `import spa.geometry` light

    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D [z, y, x], got shape {vol.shape}")
    nz, ny, nx = vol.shape
    centre = np.array([nx // 2, ny // 2, nz // 2], dtype=np.float64)  # (cx, cy, cz)
    data = vol.astype(np.float64)
    if order > 1:
        data = ndimage.spline_filter(data, order=order, mode="constant")
    y, x = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64), indexing="ij")
    out = np.zeros(vol.shape, dtype=np.float64)
    slab = max(1, _SLAB_VOXELS // (ny * nx))
    for z0 in range(0, nz, slab):
        z = np.arange(z0, min(nz, z0 + slab), dtype=np.float64)
        zz = np.broadcast_to(z[:, None, None], (z.size, ny, nx))
        r = np.stack([np.broadcast_to(x, zz.shape), np.broadcast_to(y, zz.shape), zz], axis=-1).reshape(-1, 3)
        r -= centre
        acc = out[z0 : z0 + z.size].reshape(-1)
        for rot in rotations:
            src = r @ rot + centre  # row-vector form of Rᵀ r, back to voxel coordinates (x, y, z)
            acc += ndimage.map_coordinates(
                data, src[:, ::-1].T, order=order, mode="constant", cval=0.0, prefilter=False
            )
    return out


def symmetrise_volume(volume, group: str, *, order: int = 1):
    """Average of a map over ``group``: ``(1/|G|) Σ_R V(Rᵀ r)``, rotations about the box centre.

    ``volume`` indexed [z, y, x].  Real-space interpolation with
    ``scipy.ndimage.map_coordinates`` (``order`` 1 = trilinear, RELION's choice;
    3 = cubic, sharper); outside the box counts as 0.  A CuPy input is computed
    on the host and returned on the device; float32 stays float32.
    """
    return _on_host(volume, _matrices(parse_group(group)), order)


# -- asymmetric units of projection directions -------------------------------------


def _reference_direction(name: str) -> np.ndarray:
    """The generic direction ``u`` whose Dirichlet cell is the asymmetric unit.

    For C<n>/D<n>, ``u`` sits just off the Z axis at azimuth 180/n (+ a tiny
    irrational offset so that no HEALPix pixel centre lies exactly on a cell
    border): the cell is then the wedge rot ∈ [ε, 360/n + ε) and, for D<n>,
    (nearly) the upper hemisphere, close to RELION's limits.  For T/O/I any
    direction off all axes works; this one is fixed once for reproducibility.
    """
    if name[0] in "CD":
        n = int(name[1:])
        az = np.deg2rad(180.0 / n + 0.0123456)
        tilt = np.deg2rad(0.5)
        return np.array([np.sin(tilt) * np.cos(az), np.sin(tilt) * np.sin(az), np.cos(tilt)])
    u = np.array([0.0912345, 0.1432101, 0.9854321])
    return u / np.linalg.norm(u)


def directions_from_angles(rot, tilt) -> np.ndarray:
    """Unit projection directions (…, 3) from RELION (rot, tilt) in degrees.

    This is the third row of the Euler matrix, ``(sin tilt cos rot, sin tilt sin rot, cos tilt)``,
    a vector in volume coordinates (the beam direction seen from the map).
    """
    a = np.deg2rad(np.asarray(rot, dtype=np.float64))
    b = np.deg2rad(np.asarray(tilt, dtype=np.float64))
    a, b = np.broadcast_arrays(a, b)
    return np.stack([np.sin(b) * np.cos(a), np.sin(b) * np.sin(a), np.cos(b)], axis=-1)


def asymmetric_unit_filter(rot, tilt, group: str) -> np.ndarray:
    """Boolean mask: which directions (rot, tilt in degrees) lie in ``group``'s asymmetric unit.

    The asymmetric unit is the Dirichlet cell of a fixed generic direction ``u``:
    ``d`` is kept iff ``(R d)·u ≤ d·u`` for every group element ``R``, i.e. ``d``
    is the canonical representative of its orbit ``{R d}``.  The cells of the
    orbit of ``u`` tile the sphere, so a uniform grid keeps ≈ 1/|G| of its
    directions and the group maps the kept ones back onto the whole sphere.
    Directions exactly on a cell border (measure zero; none on HEALPix grids in
    practice) may be kept in two cells.
    """
    name = parse_group(group)
    mats = _matrices(name)
    d = directions_from_angles(rot, tilt)
    u = _reference_direction(name)
    orbit_u = mats.transpose(0, 2, 1) @ u  # (G, 3): (R d)·u = d·(Rᵀ u)
    scores = d @ orbit_u.T  # (..., G), column 0 is the identity
    return scores[..., 0] >= scores.max(axis=-1) - 1e-12


def to_asymmetric_unit(rot, tilt, group: str) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) in degrees of the symmetry mate of each direction that lies in the asymmetric unit.

    The same cell as :func:`asymmetric_unit_filter`: returns ``R d`` with the
    largest ``(R d)·u``.  Tilt in [0, 180], rot in (−180, 180].
    """
    name = parse_group(group)
    mats = _matrices(name)
    d = directions_from_angles(rot, tilt)
    u = _reference_direction(name)
    scores = d @ (mats.transpose(0, 2, 1) @ u).T
    best = mats[np.argmax(scores, axis=-1)]  # (..., 3, 3)
    dd = np.einsum("...ij,...j->...i", best, d)
    tilt_out = np.rad2deg(np.arctan2(np.hypot(dd[..., 0], dd[..., 1]), dd[..., 2]))
    rot_out = np.rad2deg(np.arctan2(dd[..., 1], dd[..., 0]))
    return rot_out, tilt_out
