"""Ab initio from 2D class averages by common lines, voting and synchronisation.

A second initial-model method on different mathematics from the SGD one
(no 3D map is ever fitted to particles):

1. Polar Fourier transform of each (masked, low-passed) class average: the
   half-lines L_i(α, r), r = 1 … r_max Fourier pixels, α on a regular grid
   over 360°, computed by a direct DFT (one matrix product for all images).
   Each radius is whitened by its RMS over all lines.
2. Common lines (central-section theorem): the central planes of images i
   and j meet in one 3D half-line, seen at angle α_ij in i and α_ji in j.
   It is the pair of half-lines with the largest normalised correlation,
   α_ij over 360° and α_ji over 180° (the other half holds the conjugates).
3. Voting (Singer, Coifman, Sigworth, Chester & Shkolnisky 2010): for each
   third image k the three common lines of (i, j, k) form a spherical
   triangle fixing the dihedral angle θ_ij between planes i and j up to its
   sign; the mode of the votes over k is kept.  The relative rotation is then
   Q_ij = Rot(c_ij, θ_ij)·Rz(α_ij − α_ji) (image j's frame to image i's).
4. Synchronisation (Shkolnisky & Singer 2012): the upper-left 2×2 blocks of
   Q_ij = R_iᵀR_j do not depend on the sign of θ_ij; stacked into a 2M × 2M
   matrix they equal HᵀH with H (3 × 2M) the first two columns of every R_i,
   so the top three eigenvectors give all R_i up to one global O(3) element
   (a rotation and the hand, which projections cannot fix).
5. Reconstruction of the class averages at poses A_i = R_iᵀ with the
   Fourier back-projector, then a few rounds of projection matching of the
   class averages against that map (:mod:`spa.initial_model.choose`) and
   reconstruction again.  For an honest comparison with maps made from
   particles, k-fold maps (each without a quarter of the averages) are made
   too: the chooser scores each average against the map that never saw it.

Class averages are assumed centred and CTF-corrected (as class2d writes
them).  Fails softly: with too few averages, or when the eigenvalues show
no rank-3 structure, :func:`commonlines_model` returns None and a reason.
"""

from __future__ import annotations

import numpy as np

from spa.em.backprojector import BackProjector
from spa.fourier import rfft_centered, soft_circular_mask

MIN_AVERAGES = 6


def polar_lines(images, n_theta: int, r_max: int, r_min: int = 1) -> np.ndarray:
    """Half-lines (M, n_theta, n_r) complex of centred images (M, B, B), α = 2π·a/n_theta, r = r_min … r_max.

    Frequency (kx, ky) = r·(cos α, sin α)/B cycles per pixel, with x the
    column and y the row offset from the box centre B//2 (the layout of
    :func:`spa.fourier.rfft_centered`).
    """
    img = np.asarray(images, np.float64)
    m, box = img.shape[0], img.shape[-1]
    c = np.arange(box) - box // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    alpha = 2 * np.pi * np.arange(n_theta) / n_theta
    r = np.arange(r_min, r_max + 1, dtype=np.float64)
    kx = (r[None, :] * np.cos(alpha)[:, None]).reshape(-1) / box
    ky = (r[None, :] * np.sin(alpha)[:, None]).reshape(-1) / box
    basis = np.exp(-2j * np.pi * (kx[:, None] * x.reshape(1, -1) + ky[:, None] * y.reshape(1, -1)))  # (T·R, B²)
    out = img.reshape(m, -1) @ basis.T
    return out.reshape(m, n_theta, r.size)


def common_lines(lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Common-line angle indices and their correlations.

    ``lines`` (M, T, R) whitened half-lines.  Returns (index (M, M) int: the
    line of image i that image j shares, −1 on the diagonal; score (M, M)).
    Each unordered pair is decided once, so index[i, j] and index[j, i] are the
    same 3D half-line.
    """
    m, t, _ = lines.shape
    norm = lines / np.maximum(np.linalg.norm(lines, axis=-1, keepdims=True), 1e-30)
    half = t // 2
    idx = -np.ones((m, m), np.int64)
    score = np.zeros((m, m))
    other = norm[:, :half, :].reshape(m * half, -1)
    for i in range(m - 1):
        c = (norm[i] @ other[(i + 1) * half:].conj().T).real  # (T, (M−i−1)·half), one GEMM per image
        c = c.reshape(t, m - i - 1, half).transpose(1, 0, 2).reshape(m - i - 1, -1)
        best = np.argmax(c, axis=1)
        a, b = np.divmod(best, half)
        js = np.arange(i + 1, m)
        idx[i, js] = a
        idx[js, i] = b
        score[i, js] = score[js, i] = c[np.arange(m - i - 1), best]
    return idx, score


def _frame(a, b):
    """Right-handed orthonormal frames (…, 3, 3) with columns a, (b ⟂ a), a × b."""
    e1 = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b - (b * e1).sum(-1, keepdims=True) * e1
    e2 = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=-1)


def vote_dihedral_angles(alpha: np.ndarray, n_bins: int = 90, min_votes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Dihedral angle θ_ij ∈ [0, π] between the central planes of every pair, by voting over third images.

    ``alpha`` (M, M) common-line angles in radians.  Returns (θ (M, M), number
    of agreeing votes (M, M)).
    """
    m = alpha.shape[0]
    i, j, k = np.meshgrid(np.arange(m), np.arange(m), np.arange(m), indexing="ij")
    ok = (i != j) & (j != k) & (i != k)
    i, j, k = i[ok], j[ok], k[ok]

    def unit(a):
        return np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], axis=-1)

    # image i's frame: n_ij = u, n_ik = v; n_jk = p + h·e3 with p·u = cos(angle in j), p·v = cos(angle in k)
    u, v = unit(alpha[i, j]), unit(alpha[i, k])
    cj = np.cos(alpha[j, k] - alpha[j, i])
    ck = np.cos(alpha[k, j] - alpha[k, i])
    det = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    good = np.abs(det) > 0.1
    det = np.where(good, det, 1.0)
    px = (cj * v[:, 1] - ck * u[:, 1]) / det
    py = (u[:, 0] * ck - v[:, 0] * cj) / det
    h2 = 1.0 - px * px - py * py
    good &= h2 > -0.05
    n_jk = np.stack([px, py, np.sqrt(np.maximum(h2, 0))], axis=-1)
    n_jk /= np.maximum(np.linalg.norm(n_jk, axis=-1, keepdims=True), 1e-12)
    # Q maps image j's frame to image i's: c_ji → n_ij, c_jk → n_jk
    U = _frame(unit(alpha[j, i]), unit(alpha[j, k]))
    V = _frame(u, n_jk)
    cos_theta = np.einsum("nab,nb->na", V, U[:, 2, :])[:, 2]  # (V Uᵀ)[2, 2]
    theta = np.arccos(np.clip(cos_theta, -1, 1))
    edges = np.linspace(0, np.pi, n_bins + 1)
    pair = i * m + j
    hist = np.zeros((m * m, n_bins))
    b = np.clip(np.digitize(theta, edges) - 1, 0, n_bins - 1)
    np.add.at(hist, (pair[good], b[good]), 1.0)
    # smooth the vote histogram (Gaussian, 2 bins) before taking its mode
    kern = np.exp(-0.5 * (np.arange(-4, 5) / 2.0) ** 2)
    from scipy.ndimage import convolve1d

    smooth = convolve1d(hist, kern, axis=1, mode="nearest")
    mode = np.argmax(smooth, axis=1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    theta_hat = np.zeros(m * m)
    votes = np.zeros(m * m)
    near = good & (np.abs(b - mode[pair]) <= 2)
    np.add.at(theta_hat, pair[near], theta[near])
    np.add.at(votes, pair[near], 1.0)
    theta_hat = np.where(votes > 0, theta_hat / np.maximum(votes, 1), centres[mode])
    theta_hat = theta_hat.reshape(m, m)
    votes = votes.reshape(m, m)
    theta_hat = 0.5 * (theta_hat + theta_hat.T)  # θ_ij = θ_ji
    votes = np.minimum(votes, votes.T)
    votes[votes < min_votes] = 0
    return theta_hat, votes


def synchronise(alpha: np.ndarray, theta: np.ndarray, weights: np.ndarray | None = None):
    """Rotations R_i (M, 3, 3) (image frame → map frame) from common lines and dihedral angles.

    Returns (R, eigenvalues of the synchronisation matrix, descending).
    """
    from scipy.spatial.transform import Rotation

    m = alpha.shape[0]
    s = np.zeros((2 * m, 2 * m))
    for a in range(m):
        s[2 * a:2 * a + 2, 2 * a:2 * a + 2] = np.eye(2)
    i, j = np.nonzero(~np.eye(m, dtype=bool))
    axis = np.stack([np.cos(alpha[i, j]), np.sin(alpha[i, j]), np.zeros(len(i))], axis=-1)
    rz = Rotation.from_euler("z", (alpha[i, j] - alpha[j, i])[:, None]).as_matrix()
    tilt = Rotation.from_rotvec(axis * theta[i, j][:, None]).as_matrix()
    q = tilt @ rz  # (n, 3, 3): Q_ij = R_iᵀ R_j
    w = np.ones(len(i)) if weights is None else weights[i, j]
    for n in range(len(i)):
        s[2 * i[n]:2 * i[n] + 2, 2 * j[n]:2 * j[n] + 2] = w[n] * q[n, :2, :2]
    s = 0.5 * (s + s.T)
    vals, vecs = np.linalg.eigh(s)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    h = (vecs[:, :3] * np.sqrt(np.maximum(vals[:3], 1e-12))).T  # (3, 2M)
    rots = np.empty((m, 3, 3))
    for a in range(m):
        block = h[:, 2 * a:2 * a + 2]
        uu, _, vt = np.linalg.svd(block, full_matrices=False)
        r12 = uu @ vt  # nearest pair of orthonormal columns
        rots[a] = np.column_stack([r12[:, 0], r12[:, 1], np.cross(r12[:, 0], r12[:, 1])])
    return rots, vals


def prepare_averages(averages, mask_radius_px: float, edge_px: float = 3.0) -> np.ndarray:
    """Class averages masked (soft circle), background mean removed, unit norm."""
    a = np.asarray(averages, np.float32)
    box = a.shape[-1]
    mask = soft_circular_mask(box, mask_radius_px, edge_px)
    outside = mask < 1e-3
    a = a - np.array([im[outside].mean() if outside.any() else 0.0 for im in a])[:, None, None]
    a = a * mask
    return a / np.maximum(np.linalg.norm(a.reshape(len(a), -1), axis=1), 1e-12)[:, None, None]


def reconstruct_from_averages(averages, rotations_euler, regularisation: float = 0.05):
    """Map (B, B, B) from class averages (M, B, B) at poses (M, 3) Euler degrees (no CTF, no shifts)."""
    from spa.geometry.euler import euler_to_matrix

    box = averages.shape[-1]
    bp = BackProjector(box, xp=np)
    f = rfft_centered(np.asarray(averages, np.float32))
    bp.insert(f, np.ones(f.shape, np.float32), euler_to_matrix(*np.asarray(rotations_euler).T))
    return bp.reconstruct(min_weight_fraction=regularisation)


def commonlines_model(averages, pixel_size: float, *, mask_radius_px: float, resolution: float = 20.0,
                      n_theta: int = 144, refine_rounds: int = 3, n_folds: int = 4, log=None):
    """Initial map from class averages (M, b, b) at ``pixel_size`` Å → (map (b, b, b) or None, info dict).

    ``resolution``: highest frequency used for common lines and matching (Å).
    ``info`` holds the poses (``rotations``, (M, 3) Euler degrees), the
    synchronisation eigenvalues, and ``folds``: [(held-out averages, map
    without them)] for ``n_folds``-fold cross-validated scoring.
    """
    from spa.geometry.euler import matrix_to_euler
    from spa.initial_model.choose import match_images
    from spa.initial_model.sgd import constrain_map

    log = log or (lambda msg: None)
    info: dict = {"method": "common lines"}
    m = len(averages)
    if m < MIN_AVERAGES:
        info["failure"] = f"{m} class averages; common lines need at least {MIN_AVERAGES}"
        return None, info
    box = averages.shape[-1]
    imgs = prepare_averages(averages, mask_radius_px)
    r_max = int(max(3, min(box // 2 - 1, box * pixel_size / resolution)))
    lines = polar_lines(imgs, n_theta, r_max, r_min=1)
    rms = np.sqrt((np.abs(lines) ** 2).mean(axis=(0, 1)))
    lines = lines / np.maximum(rms, 1e-30)[None, None, :]
    idx, score = common_lines(lines)
    alpha = 2 * np.pi * np.where(idx >= 0, idx, 0) / n_theta
    theta, votes = vote_dihedral_angles(alpha)
    rots, vals = synchronise(alpha, theta, np.where(votes > 0, 1.0, 0.0))
    info["eigenvalues"] = [float(v) for v in vals[:5]]
    # rank-3 structure: three leading eigenvalues well above the rest
    gap = vals[2] / max(abs(vals[3]), 1e-12)
    info["eigen_gap"] = float(gap)
    if not np.isfinite(gap) or gap < 1.05:
        info["failure"] = f"no rank-3 structure in the synchronisation matrix (λ3/λ4 = {gap:.2f})"
        return None, info
    euler = np.column_stack(matrix_to_euler(np.transpose(rots, (0, 2, 1))))  # A_i = R_iᵀ
    vol = constrain_map(reconstruct_from_averages(imgs, euler), mask_radius_px)
    for rnd in range(refine_rounds):
        match = match_images(vol, imgs, pixel_size, resolution=resolution, mask_radius_px=mask_radius_px,
                             offset_range_px=0.0)
        euler = match.rotations
        vol = constrain_map(reconstruct_from_averages(imgs, euler), mask_radius_px)
        info[f"refine_{rnd + 1}_median_cc"] = float(np.median(match.scores))
        log(f"initial-model: common lines, matching round {rnd + 1}: median correlation {np.median(match.scores):.3f}")
    info["rotations"] = euler
    # cross-validation maps: the map is a reconstruction *from* these averages, so scoring it against
    # them would flatter it; each fold's averages are scored against a map made without them
    k = min(n_folds, m)
    info["folds"] = [(np.arange(f, m, k), constrain_map(reconstruct_from_averages(
        np.delete(imgs, np.arange(f, m, k), axis=0), np.delete(euler, np.arange(f, m, k), axis=0)), mask_radius_px))
        for f in range(k)]
    return vol.astype(np.float32), info
