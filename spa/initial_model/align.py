"""Rotational searches on maps: symmetry-axis alignment, map-to-map alignment, and the hand.

Both searches score a rotation by a correlation of Fourier coefficients at
low resolution, sampled on a fixed set of frequency points k (1 ≤ |k| ≤
``k_max`` Fourier pixels) by trilinear interpolation of the padded transform
(:class:`spa.em.projector.Projector`), so one batch of rotations costs one
gather:

    c(M) = Re Σ_k Û(k)·conj V̂(Mᵀk) / √(Σ|Û(k)|² Σ|V̂(Mᵀk)|²)

which is the real-space correlation of U(r) with V(Mᵀr) (V rotated by M,
the ``V'(r) = V(Mᵀr)`` convention of :func:`spa.geometry.symmetry.rotate_volume`)
restricted to low frequencies.  A coarse SO(3) grid (HEALPix directions × ψ)
is scored exhaustively; the best few are polished by Nelder–Mead on a rotation
vector.

Symmetry axes: a map V whose symmetry axes are arbitrarily oriented is
brought to the standard setting of group G (CONVENTIONS.md) by the rotation
Q maximising the mean over S ∈ G, S ≠ I, of c(QᵀSQ) between V and itself:
then W(r) = V(Qᵀr) satisfies W(Sᵀr) ≈ W(r) for the group as RELION sets it.

Hand: projections cannot tell a map from its mirror image; the mirror
V(x, y, −z) about the box centre is written beside the chosen map.
"""

from __future__ import annotations

import numpy as np

from spa.fourier import phase_ramp_3d
from spa.em.projector import Projector, trilinear_setup
from spa.geometry.euler import euler_to_matrix
from spa.geometry.sampling import orientation_grid
from spa.geometry.symmetry import parse_group, rotate_volume, symmetrise_volume, symmetry_matrices

_CHUNK_POINTS = 1 << 22  # rotations × points per gather


def fourier_points(k_max: float, k_min: float = 1.0) -> np.ndarray:
    """Integer frequency points (P, 3) = (kx, ky, kz) with k_min ≤ |k| ≤ k_max (Fourier pixels), kx ≥ 0 half.

    The half space suffices: the other half holds the complex conjugates, so
    the real part of a correlation sum over it is half the full sum.
    """
    m = int(np.floor(k_max))
    g = np.arange(-m, m + 1)
    kz, ky, kx = np.meshgrid(g, g, g, indexing="ij")
    r = np.sqrt(kx**2 + ky**2 + kz**2)
    keep = (r >= k_min) & (r <= k_max) & ((kx > 0) | ((kx == 0) & (ky > 0)) | ((kx == 0) & (ky == 0) & (kz > 0)))
    return np.stack([kx[keep], ky[keep], kz[keep]], axis=-1).astype(np.float32)


class FourierSampler:
    """A map's padded transform, sampled at rotated copies of a fixed point set."""

    def __init__(self, volume, k_max: float):
        self.proj = Projector(np.asarray(volume, np.float32))
        self.points = fourier_points(k_max)
        self.ref = self.sample(np.eye(3)[None])[0]

    def sample(self, mats) -> np.ndarray:
        """V̂(Mᵀk) for rotations (or reflections) M (n, 3, 3) → complex (n, P)."""
        mats = np.asarray(mats, np.float32)
        out = np.empty((mats.shape[0], self.points.shape[0]), np.complex64)
        step = max(1, _CHUNK_POINTS // max(1, self.points.shape[0]))
        flat = self.proj.fourier.reshape(-1)
        for s in range(0, mats.shape[0], step):
            m = mats[s:s + step]
            q = (self.points[None] @ m) * np.float32(self.proj.pad)  # row form of Mᵀk
            idx, w, conj = trilinear_setup(q, self.proj.padded)
            vals = (flat[idx] * w).sum(axis=-1)
            out[s:s + step] = np.where(conj, vals.conj(), vals)
        return out

    def correlation(self, other_values) -> np.ndarray:
        """c between this map's own samples and ``other_values`` (n, P) → (n,)."""
        num = (other_values.conj() * self.ref[None]).real.sum(axis=1)
        den = np.sqrt((np.abs(self.ref) ** 2).sum() * (np.abs(other_values) ** 2).sum(axis=1))
        return num / np.maximum(den, 1e-30)


def _rotation_grid(order: int) -> np.ndarray:
    rot, tilt, psi = orientation_grid(order, "C1")
    return euler_to_matrix(rot, tilt, psi)


def _polish(score, q0: np.ndarray, step_deg: float) -> tuple[np.ndarray, float]:
    """Nelder–Mead on a rotation vector δ around q0 (Q = q0·exp(δ)); returns (Q, score)."""
    from scipy.optimize import minimize
    from scipy.spatial.transform import Rotation

    def f(v):
        return -score(q0 @ Rotation.from_rotvec(v).as_matrix())

    simplex = np.vstack([np.zeros(3), np.eye(3) * np.deg2rad(step_deg) * 0.5])
    res = minimize(f, np.zeros(3), method="Nelder-Mead",
                   options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-6, "maxiter": 300})
    return q0 @ Rotation.from_rotvec(res.x).as_matrix(), float(-res.fun)


# -- symmetry axes ------------------------------------------------------------------------------
def symmetry_score(sampler: FourierSampler, group_mats: np.ndarray, Q) -> np.ndarray:
    """Mean c(QᵀSQ) over the non-identity S for rotations Q (n, 3, 3) → (n,)."""
    Q = np.asarray(Q, np.float64).reshape(-1, 3, 3)
    others = group_mats[1:]
    if len(others) == 0:
        return np.ones(Q.shape[0])
    m = np.einsum("qji,sjk,qkl->qsil", Q, others, Q).reshape(-1, 3, 3)  # Qᵀ S Q
    c = sampler.correlation(sampler.sample(m))
    return c.reshape(Q.shape[0], len(others)).mean(axis=1)


def align_symmetry_axes(volume, group: str, *, pixel_size: float, resolution: float = 15.0,
                        grid_order: int | None = None, n_polish: int = 4) -> tuple[np.ndarray, float]:
    """Rotation Q (3, 3) that puts the symmetry axes of ``volume`` in ``group``'s standard setting.

    The aligned map is ``rotate_volume(volume, Q)``.  Scores use frequencies
    up to ``resolution`` Å.  Returns (Q, mean symmetry correlation of the
    aligned map, 1 = perfectly symmetric).  C1: the identity.
    """
    name = parse_group(group)
    mats = symmetry_matrices(name)
    if len(mats) == 1:
        return np.eye(3), 1.0
    vol = np.asarray(volume, np.float32)
    box = vol.shape[-1]
    k_max = max(3.0, min(box / 2 - 1, box * pixel_size / resolution))
    sampler = FourierSampler(vol, k_max)
    if grid_order is None:
        grid_order = 2 if len(mats) <= 8 else 1
    grid = _rotation_grid(grid_order)
    scores = np.concatenate([symmetry_score(sampler, mats, grid[s:s + 512]) for s in range(0, len(grid), 512)])
    best = np.argsort(-scores)[: max(1, n_polish) * 8]
    step = 360.0 / (6 * 2**grid_order)
    # polish distinct starts only (the grid's neighbours of one optimum look alike)
    starts: list[np.ndarray] = []
    for i in best:
        if all(_angle(grid[i], s) > step * 1.5 for s in starts):
            starts.append(grid[i])
        if len(starts) >= n_polish:
            break
    results = [_polish(lambda q: float(symmetry_score(sampler, mats, q)[0]), s, step) for s in starts]
    q, score = max(results, key=lambda r: r[1])
    return q, score


def _angle(a, b) -> float:
    c = (np.trace(a.T @ b) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


def symmetrise_aligned(volume, group: str, *, pixel_size: float, resolution: float = 15.0):
    """(map rotated into the standard setting and averaged over ``group``, Q, symmetry score)."""
    q, score = align_symmetry_axes(volume, group, pixel_size=pixel_size, resolution=resolution)
    if parse_group(group) == "C1":
        return np.asarray(volume, np.float32), q, score
    rotated = rotate_volume(np.asarray(volume, np.float32), q, order=3)
    return symmetrise_volume(rotated, group, order=3), q, score


# -- map-to-map alignment ----------------------------------------------------------------------
def mirror_volume(volume) -> np.ndarray:
    """V(x, y, −z) about the box centre B//2 (the other hand)."""
    v = np.asarray(volume)
    out = v[::-1]
    if v.shape[0] % 2 == 0:  # index z ↦ B − z keeps the centre B//2 fixed
        out = np.roll(out, 1, axis=0)
    return np.ascontiguousarray(out)


def centre_of_mass_shift(volume) -> np.ndarray:
    """(x, y, z) offset in voxels of the positive density's centre of mass from the box centre."""
    v = np.maximum(np.asarray(volume, np.float64), 0)
    box = v.shape[-1]
    c = np.arange(box) - box // 2
    tot = max(v.sum(), 1e-30)
    return np.array([(v.sum((0, 1)) * c).sum(), (v.sum((0, 2)) * c).sum(), (v.sum((1, 2)) * c).sum()]) / tot


def shift_volume(volume, shift_xyz) -> np.ndarray:
    """Map moved by (+x, +y, +z) voxels (sub-voxel, periodic, by a Fourier phase ramp)."""
    v = np.asarray(volume, np.float32)
    ramp = phase_ramp_3d(v.shape[-1], shift_xyz)
    return np.fft.irfftn(np.fft.rfftn(v) * ramp, s=v.shape, axes=(0, 1, 2)).astype(np.float32)


def _best_translation(moving, reference) -> np.ndarray:
    """(x, y, z) shift (voxels, sub-voxel by a parabola) that best overlays ``moving`` on ``reference``."""
    fa = np.fft.rfftn(moving)
    fb = np.fft.rfftn(reference)
    cc = np.fft.irfftn(fb * fa.conj(), s=moving.shape, axes=(0, 1, 2))
    peak = np.array(np.unravel_index(np.argmax(cc), cc.shape))
    box = np.array(cc.shape)
    sub = np.zeros(3)
    for ax in range(3):
        lo = peak.copy()
        hi = peak.copy()
        lo[ax] = (lo[ax] - 1) % box[ax]
        hi[ax] = (hi[ax] + 1) % box[ax]
        a, b, c = cc[tuple(lo)], cc[tuple(peak)], cc[tuple(hi)]
        den = a - 2 * b + c
        sub[ax] = 0.5 * (a - c) / den if den < 0 else 0.0
    shift = np.where(peak > box // 2, peak - box, peak) + sub  # (z, y, x)
    return shift[::-1]


def align_to_reference(volume, reference, *, pixel_size: float, resolution: float = 20.0, allow_mirror: bool = True,
                       grid_order: int = 2, n_polish: int = 3) -> tuple[np.ndarray, dict]:
    """``volume`` rotated, translated (and mirrored if that fits better) onto ``reference``.

    For comparing an ab initio map with a known map (tests, benchmarks): both
    are centred on their centres of mass, the rotation is searched on a
    HEALPix × ψ grid with frequencies up to ``resolution`` Å and polished,
    then the translation is refined by cross-correlation.  Returns (aligned
    map, info: rotation, mirrored, score).
    """
    ref = shift_volume(reference, -centre_of_mass_shift(reference))
    best = None
    for mirrored in (False, True) if allow_mirror else (False,):
        v = mirror_volume(volume) if mirrored else np.asarray(volume, np.float32)
        v = shift_volume(v, -centre_of_mass_shift(v))
        box = v.shape[-1]
        k_max = max(3.0, min(box / 2 - 1, box * pixel_size / resolution))
        moving = FourierSampler(v, k_max)
        target = FourierSampler(ref, k_max)
        grid = _rotation_grid(grid_order)

        def score(qs, moving=moving, target=target):
            return target.correlation(moving.sample(np.asarray(qs).reshape(-1, 3, 3)))

        s = np.concatenate([score(grid[i:i + 1024]) for i in range(0, len(grid), 1024)])
        step = 360.0 / (6 * 2**grid_order)
        starts: list[np.ndarray] = []
        for i in np.argsort(-s):
            if all(_angle(grid[i], t) > step * 1.5 for t in starts):
                starts.append(grid[i])
            if len(starts) >= n_polish:
                break
        for st in starts:
            q, sc = _polish(lambda q: float(score(q)[0]), st, step)
            if best is None or sc > best[1]:
                best = (q, sc, mirrored, v)
    q, sc, mirrored, v = best
    rotated = rotate_volume(v, q, order=3)
    rotated = shift_volume(rotated, _best_translation(rotated, ref))
    # back to the reference's own position
    rotated = shift_volume(rotated, centre_of_mass_shift(reference))
    return rotated, {"rotation": q, "mirrored": mirrored, "score": sc}
