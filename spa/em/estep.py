"""E-step: posterior over (class, rotation, shift) for a chunk of images, as batched matrix products.

Notation (Scheres 2012; RELION): image i's transform X_i at the F active
Fourier pixels (those with shell < the current limit, ordered by radius so a
smaller window is a prefix), its CTF C_i, the noise power σ²_i per pixel
(per real component, from its optics group's spectrum), the reference
"projection" A_kr of class k at rotation r, and a shift s applied to the image
as the phase factor P_s (the image moved by +s; RELION: moving the image by
+rlnOrigin centres it).  With Y_is = X_i·P_s·C_i/σ²_i

    log p(X_i | k, r, s) = Re Σ_f Y_is·conj(A_kr) − ½ Σ_f (C_i²/σ²_i)·|A_kr|² + const

The first term is one real GEMM, [Re Y, Im Y] (N·S × 2F) by [Re A, Im A]ᵀ
(2F × K·R); the second another, (N × F) by (F × K·R).  Class priors and the
Gaussian prior on the absolute offset (σ = the model's rlnSigmaOffsetsAngst)
are added, and each image's posterior is normalised by a log-sum-exp.

Coarse-to-fine (RELION's adaptive oversampling): pass 1 scores the coarse
grid on a smaller Fourier window; per image the best samples holding
``significant_fraction`` of the mass (at most ``max_significant``) are kept;
pass 2 rescores their oversampled children (finer ψ and shifts, see the
sampling object) on the full window.  Pass 2 works on a flat candidate list
(image, class·rotation row, shift) gathered into (P, F) blocks; its norm term
is still a GEMM, and the weighted sums for the M-step are one-hot GEMMs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.backend import array_module, backend_of
from spa.em.model import ReferenceModel, Sampling
from spa.em.projector import cuda_for
from spa.em.rows import BLOCK_ELEMENTS, block_elements, insert_rows, project_rows  # noqa: F401 (re-exported)
from spa.em.rows import scatter_add, sum_rows_by_index
from spa.em.significance import significant, significant_per_class, per_class_cap
from spa.fourier import freq_2d, rfft_centered, shell_sum, shells_2d, soft_circular_mask


@dataclass
class ActivePixels:
    """Fourier pixels of a B×B image's rfft grid that take part, sorted by radius.

    ``index`` flat indices into (B, B//2+1); ``jx``, ``jy`` frequencies in
    Fourier pixels (float32); ``shell`` = rint(|j|) (int32).  Every pixel with
    shell < ``n_shells`` is included, so any smaller shell window is a prefix.
    """

    box: int
    n_shells: int
    index: object
    jx: object
    jy: object
    shell: object

    @classmethod
    def make(cls, box: int, n_shells: int, xp=np) -> "ActivePixels":
        n_shells = int(min(max(n_shells, 1), box // 2 + 1))
        ky, kx = freq_2d(box, xp)
        jx = (kx * box).reshape(-1)
        jy = (ky * box).reshape(-1)
        r = xp.sqrt(jx * jx + jy * jy)
        sh = shells_2d(box, xp).reshape(-1)
        sel = xp.nonzero(sh < n_shells)[0]
        order = xp.argsort(r[sel], kind="stable")
        idx = sel[order]
        return cls(box, n_shells, idx, jx[idx].astype(xp.float32), jy[idx].astype(xp.float32), sh[idx].astype(xp.int32))

    @property
    def size(self) -> int:
        return int(self.index.shape[0])

    def count(self, n_shells: int) -> int:
        """Number of pixels with shell < n_shells (a prefix length)."""
        xp = array_module(self.shell)
        return int(xp.searchsorted(self.shell, n_shells, side="left"))

    def window(self, n_shells: int) -> "ActivePixels":
        n = self.count(n_shells)
        return ActivePixels(self.box, min(n_shells, self.n_shells), self.index[:n], self.jx[:n], self.jy[:n],
                            self.shell[:n])


def phase_factors(shifts, active: ActivePixels):
    """exp(−2πi j·t/B) (S, F) complex64: multiplying moves an image by +t (pixels)."""
    xp = array_module(active.jx)
    t = xp.asarray(shifts, dtype=xp.float32).reshape(-1, 2)
    arg = (t[:, :1] * active.jx[None, :] + t[:, 1:2] * active.jy[None, :]) * np.float32(-2 * np.pi / active.box)
    return (xp.cos(arg) + 1j * xp.sin(arg)).astype(xp.complex64)


@dataclass
class ChunkData:
    """One chunk of images prepared for the E-step (all arrays on the backend).

    X (N, F) complex64: transforms at the active pixels, already moved by the
    current offsets ``centres`` (N, 2) px; ctf (N, F); inv_sigma2 (N, F);
    group (N,) optics-group index; power (N, B//2+1) float64: Σ|X̂|² per shell
    over the whole grid (for σ² beyond the window).
    """

    X: object
    ctf: object
    inv_sigma2: object
    group: object
    centres: object
    power: object
    active: ActivePixels


def prepare_chunk(images, ctf, group, centres, sigma2, active: ActivePixels, mask_radius_px=None,
                  mask_edge_px: float = 5.0) -> ChunkData:
    """Mask, transform and gather a chunk of images.

    images (N, B, B) float32; ctf (N, B, B//2+1) float32 (ones for no CTF);
    group (N,) int; centres (N, 2) current offsets in pixels (rlnOrigin/pixel);
    sigma2 (G, B//2+1) noise power per optics group and shell.  Images are
    multiplied by a soft circular mask (zeros outside), as the references are.
    """
    xp = array_module(images)
    box = images.shape[-1]
    nsh = box // 2 + 1
    img = xp.asarray(images, dtype=xp.float32)
    if mask_radius_px is not None:
        img = img * soft_circular_mask(box, mask_radius_px, mask_edge_px, xp)
    f = rfft_centered(img, 2).astype(xp.complex64)
    power = shell_sum((f.real**2 + f.imag**2).astype(xp.float64), shells_2d(box, xp), nsh)
    n = f.shape[0]
    flat = f.reshape(n, -1)[:, active.index]
    centres = xp.asarray(centres, dtype=xp.float32).reshape(n, 2)
    # per-image phase factor for its own centre: exp(-2πi j·c/B)
    arg = (centres[:, :1] * active.jx[None] + centres[:, 1:] * active.jy[None]) * np.float32(-2 * np.pi / box)
    X = (flat * (xp.cos(arg) + 1j * xp.sin(arg))).astype(xp.complex64)
    c = xp.asarray(ctf, dtype=xp.float32).reshape(n, -1)[:, active.index]
    group = xp.asarray(group, dtype=xp.int64)
    s2 = xp.asarray(sigma2, dtype=xp.float64)
    inv = (1.0 / xp.maximum(s2, 1e-30)).astype(xp.float32)
    inv_s2 = inv[group][:, active.shell]
    return ChunkData(X, c, inv_s2, group, centres, power, active)


@dataclass
class Posterior:
    """Pass-2 candidates of a chunk and their posterior weights.

    Flat arrays over P candidates: ``img`` (image row), ``cls`` (class),
    ``rot`` (fine rotation index), ``shift`` (fine shift index), ``weight``
    (posterior, sums to 1 per image).  Per image: ``n_significant`` (coarse
    samples kept), ``log_evidence`` (log Σ p over pass-2 candidates plus the
    −Σ|X|²/2σ² term: rlnLogLikeliContribution).
    """

    img: object
    cls: object
    rot: object
    shift: object
    weight: object
    n_significant: object
    log_evidence: object


def _translation_log_prior(centres, shifts, sigma_offset_px: float):
    """Gaussian log prior of absolute offsets centre + shift: (N, S)."""
    xp = array_module(centres)
    if sigma_offset_px is None or sigma_offset_px <= 0:
        return xp.zeros((centres.shape[0], shifts.shape[0]), xp.float32)
    t = centres[:, None, :] + xp.asarray(shifts, dtype=xp.float32)[None]
    s2 = float(sigma_offset_px) ** 2
    return (-(t * t).sum(-1) / (2 * s2) - np.log(2 * np.pi * s2)).astype(xp.float32)


def _logsumexp_rows(a):
    xp = array_module(a)
    m = a.max(axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    return (m + xp.log(xp.exp(a - m).sum(axis=-1, keepdims=True)))[..., 0]


def coarse_pass(data: ChunkData, refs: ReferenceModel, sampling: Sampling, log_class_prior, sigma_offset_px,
                coarse_shells: int, significant_fraction: float = 0.999, max_significant: int = 64,
                per_class: bool = False):
    """Pass 1 on the coarse grid: per image the significant (shift, class, rotation) samples.

    Returns (sample (N, M) int64 flat index s·K·R + k·R + r, valid (N, M) bool,
    n_significant (N,)), M = min(max_significant, S·K·R), best first.
    ``per_class``: the selection runs within each class (M = K·min(cap, S·R), class
    by class, cap = :func:`per_class_cap`), so the fine pass, not the coarse
    window, decides the class (see :func:`significant_per_class`).

    Complex arrays are viewed as interleaved float32 (re, im, re, im, …), so
    Re Σ_f Y·P·conj(A) is a real GEMM on those views with no copies.  (Letting
    BLAS add the GEMM into prefilled log priors, β = 1, was measured slower
    than two in-place adds after it.)
    """
    xp = array_module(data.X)
    act = data.active.window(coarse_shells)
    fc = act.size
    rots = sampling.coarse_rotations
    shifts = xp.asarray(sampling.coarse_translations, dtype=xp.float32)
    K, R, S = refs.n_classes, len(rots), shifts.shape[0]
    A = xp.ascontiguousarray(refs.project_all(rots, act).reshape(K * R, fc).astype(xp.complex64))
    A_real = A.view(xp.float32)  # (KR, 2Fc) interleaved
    A_pow = (A.real**2 + A.imag**2).astype(xp.float32)  # (KR, Fc)
    ph = phase_factors(shifts, act)  # (S, Fc)
    Y = data.X[:, :fc] * (data.ctf[:, :fc] * data.inv_sigma2[:, :fc])
    c2s = data.ctf[:, :fc] ** 2 * data.inv_sigma2[:, :fc]
    lp_class = xp.repeat(xp.asarray(log_class_prior, dtype=xp.float32), R)  # (KR,)
    lp_trans = _translation_log_prior(data.centres, shifts, sigma_offset_px)  # (N, S)
    n = Y.shape[0]
    per_class = per_class and K > 1
    m = int(min(per_class_cap(max_significant, K), S * R)) * K if per_class else int(min(max_significant, S * K * R))
    sample = xp.zeros((n, m), xp.int64)
    valid = xp.zeros((n, m), bool)
    n_sig = xp.zeros(n, xp.int64)
    nb = max(1, block_elements(xp) // max(1, S * max(K * R, 2 * fc)))
    ck = cuda_for(data.X)  # CUDA kernels for the pass's epilogue where the chunk is on a GPU
    # reused buffers: no page faults per block
    out = xp.empty((min(n, nb) * S, K * R), xp.float32)
    ys = xp.empty((min(n, nb), S, fc), xp.complex64)
    for b0 in range(0, n, nb):
        b = slice(b0, min(n, b0 + nb))
        nbi = b.stop - b.start
        yb = ys[:nbi]
        xp.multiply(Y[b, None, :], ph[None], out=yb)  # the images at every shift
        logp = out[: nbi * S].reshape(nbi, S, K * R)
        xp.matmul(yb.reshape(nbi * S, fc).view(xp.float32), A_real.T, out=logp.reshape(nbi * S, K * R))  # the GEMM
        row_term = lp_class[None, :] - 0.5 * (c2s[b] @ A_pow.T)  # norm term (GEMM) + class prior
        col_max = None
        if ck is not None:  # one pass over the GEMM's output, with the maxima the selection starts from
            col_max = ck.add_priors(logp, row_term, lp_trans[b])
        else:
            logp += row_term[:, None, :]
            logp += lp_trans[b][:, :, None]
        if per_class:
            sample[b], valid[b], n_sig[b] = significant_per_class(logp, K, m // K, significant_fraction)
        else:
            sample[b], valid[b], n_sig[b] = significant(logp.reshape(nbi, -1), m, significant_fraction,
                                                         groups=(S, K * R), col_max=col_max)
    return sample, valid, n_sig


def balance_classes(weight, img, cls, n_images: int, n_classes: int, n_rounds: int = 50):
    """Posterior weights re-weighted so that the chunk's images split evenly over the classes.

    The class marginals q (N, K) of the candidates are rescaled by Sinkhorn's
    alternating normalisation until every image's row sums to 1 and every
    class's column to N/K (the balanced assignment nearest to the posterior),
    and each candidate's weight is scaled by q/marginal of its (image, class).
    From one reference the classes start alike and the one that grows first
    has the better-determined map, so it wins particles of every state; with
    the sizes held equal in the first iterations the classes separate along
    what really differs (two conformations, one reference, SNR 3: 90 %
    correct instead of one class absorbing all).
    """
    xp = array_module(weight)
    if n_classes < 2 or n_images == 0:
        return weight
    key = img * n_classes + cls
    marg = xp.bincount(key, weights=weight.astype(xp.float64), minlength=n_images * n_classes)
    marg = marg.reshape(n_images, n_classes) + 1e-12
    q = marg.copy()
    for _ in range(n_rounds):
        q *= (n_images / n_classes) / q.sum(axis=0, keepdims=True)
        q /= q.sum(axis=1, keepdims=True)
    w = weight.astype(xp.float64) * (q / marg).reshape(-1)[key]
    total = xp.bincount(img, weights=w, minlength=n_images)
    return (w / total[img]).astype(xp.float32)


def fine_candidates(sample, valid, refs, sampling):
    """Expand significant coarse samples into their oversampled children (flat candidate arrays)."""
    K, R = refs.n_classes, len(sampling.coarse_rotations)
    return _children(sample // (K * R), (sample // R) % K, sample % R, valid, sampling)


def _children(s, k, r, valid, sampling):
    """Children of significant coarse samples (n, m) of shift ``s``, class ``k``, rotation ``r`` →
    (image, class, fine rotation, fine shift) flat arrays, image-major, and the dense shape (n, m·c_r·c_t)."""
    xp = array_module(s)
    cr, ct = sampling.rotation_children, sampling.translation_children
    n, m = s.shape
    a = xp.arange(cr)
    t = xp.arange(ct)
    rf = (r[:, :, None, None] * cr + a[None, None, :, None]) + 0 * t[None, None, None, :]
    sf = (s[:, :, None, None] * ct + t[None, None, None, :]) + 0 * a[None, None, :, None]
    kf = xp.broadcast_to(k[:, :, None, None], rf.shape)
    vf = xp.broadcast_to(valid[:, :, None, None], rf.shape)
    img = xp.broadcast_to(xp.arange(n)[:, None, None, None], rf.shape)
    sel = xp.nonzero(vf.reshape(-1))[0]
    return img.reshape(-1)[sel], kf.reshape(-1)[sel], rf.reshape(-1)[sel], sf.reshape(-1)[sel], (n, m * cr * ct)


def local_coarse_pass(data: ChunkData, refs: ReferenceModel, sampling, log_class_prior, sigma_offset_px,
                      coarse_shells: int, priors, significant_fraction: float = 0.999, max_significant: int = 64,
                      per_class: bool = False):
    """Pass 1 of a local search: each image scores only the orientations near its prior.

    ``sampling`` is a :class:`spa.em.sampling3d.LocalSampling`; ``priors``
    (N, 3) the images' current Euler angles (degrees).  The (image, class,
    orientation) pairs of the chunk share the projections of the orientations
    they use; for a block of pairs the cross term over all coarse shifts is one
    GEMM (Q_b × 2F_c)·(2F_c × S), as in :class:`FinePass`; the Gaussian prior on
    the orientation joins the log posterior.  Returns (shift, class, coarse
    orientation index, valid, n_significant), the first four (N, M), best first
    (``per_class``: as :func:`coarse_pass`, selected within each class).
    """
    xp = array_module(data.X)
    act = data.active.window(coarse_shells)
    fc = act.size
    n = data.X.shape[0]
    K = refs.n_classes
    rows, keys, lprior = sampling.candidates(priors)  # host arrays, image-major
    img_h = np.repeat(rows, K)
    cls_h = np.tile(np.arange(K), rows.size)
    key_h = np.repeat(keys, K)
    n_coarse = len(sampling.coarse_rotations)
    ukey, inv = np.unique(cls_h * n_coarse + key_h, return_inverse=True)
    A = project_rows(refs, ukey // n_coarse, sampling.coarse_rotations[ukey % n_coarse], act, xp)
    a_pow = (A.real**2 + A.imag**2).astype(xp.float32)
    shifts = xp.asarray(sampling.coarse_translations, dtype=xp.float32)
    S = shifts.shape[0]
    ph_conj = xp.conjugate(phase_factors(shifts, act)).view(xp.float32)  # (S, 2Fc) interleaved, as in FinePass
    Y = data.X[:, :fc] * (data.ctf[:, :fc] * data.inv_sigma2[:, :fc])
    c2s = data.ctf[:, :fc] ** 2 * data.inv_sigma2[:, :fc]
    lp_trans = _translation_log_prior(data.centres, shifts, sigma_offset_px)  # (N, S)
    img, row = xp.asarray(img_h), xp.asarray(inv.reshape(-1))
    lp_pair = xp.asarray(np.repeat(lprior, K)) + xp.asarray(log_class_prior, dtype=xp.float32)[xp.asarray(cls_h)]
    p = img_h.size
    scores = xp.empty((p, S), xp.float32)
    block = max(1, block_elements(xp) // (4 * max(1, fc)))
    for q0 in range(0, p, block):
        q = slice(q0, min(p, q0 + block))
        z = A[row[q]]
        xp.conjugate(z, out=z)
        z *= Y[img[q]]
        cross = z.view(xp.float32) @ ph_conj.T  # (Q_b, S) GEMM: Re(z·P) on interleaved views
        norm = (c2s[img[q]] * a_pow[row[q]]).sum(axis=1)
        scores[q] = cross + (lp_pair[q] - 0.5 * norm)[:, None] + lp_trans[img[q]]
    # per image a dense row (its pairs × shifts, −∞ padded) for the significance selection
    counts = np.bincount(img_h, minlength=n)
    starts = np.cumsum(counts) - counts
    width = int(max(counts.max(initial=0), 1))
    col = xp.asarray(np.arange(p) - starts[img_h])
    dense = xp.full((n, width, S), -xp.inf, dtype=xp.float32)
    dense[img, col] = scores
    if per_class and K > 1:
        # an image's pairs are (candidate, class), class fastest: as (n, S, K·W) each class is a block
        w = width // K
        by_class = xp.ascontiguousarray(dense.reshape(n, w, K, S).transpose(0, 3, 2, 1)).reshape(n, S, K * w)
        flat, valid, n_sig = significant_per_class(by_class, K, int(min(per_class_cap(max_significant, K), w * S)),
                                                    significant_fraction)
        s_idx, k_idx, c_idx = flat // (K * w), (flat // w) % K, flat % w
        top = (c_idx * K + k_idx) * S + s_idx
    else:
        m = int(min(max_significant, width * S))
        top, valid, n_sig = significant(dense.reshape(n, width * S), m, significant_fraction)
    j, s = top // S, top % S
    pair = xp.where(valid, xp.asarray(starts)[:, None] + j, 0)
    cls_x, key_x = xp.asarray(cls_h), xp.asarray(key_h)
    return s, cls_x[pair], key_x[pair], valid, n_sig


def unique_inverse(keys, n_keys: int):
    """``xp.unique(keys, return_inverse=True)`` for integer keys in [0, n_keys): the same sorted
    values and inverse, from a presence table and its running count (no sort) when the table is
    small enough; the fine pass calls this on every candidate several times per chunk."""
    xp = array_module(keys)
    if n_keys > 1 << 24:
        values, inverse = xp.unique(keys, return_inverse=True)
        return values, inverse.reshape(-1)
    present = xp.zeros(int(n_keys), bool)
    present[keys] = True
    rank = xp.cumsum(present) - 1
    return xp.nonzero(present)[0].astype(keys.dtype), rank[keys]


class FinePass:
    """Pass 2: rescoring the candidates on the full window, and their weighted sums.

    Candidates are grouped into (image, row) *pairs*, a row being a (class,
    fine rotation) the chunk uses (U rows, projections computed once).  For a
    block of pairs and the union of the shifts its candidates use,

        cross[q, s] = Re Σ_f Z_q(f)·P_s(f),   Z_q = Y_i·conj(A_row)

    is one real GEMM (Q_b × 2F)·(2F × S_b), and the weighted sums use
    Φ_q = Σ_s Γ_qs·P_s, another GEMM (Q_b × S_b)·(S_b × F): the data sum of
    the pair is Y_i·Φ_q and its residual power
    Σ_s Γ_qs|X_i·P_s − C_i·A|² = w_q(|X_i|² + C_i²|A|²) − 2·C_i·Re(X_i·conj(A)·Φ_q).
    """

    #: (class, rotation) rows whose summed posterior weight over the chunk is below this are not
    #: inserted (RELION likewise skips insignificant samples when storing weighted sums)
    prune_weight = 1e-4

    def __init__(self, data: ChunkData, refs: ReferenceModel, sampling: Sampling, img, cls, rot, shift):
        xp = array_module(data.X)
        self.xp, self.data = xp, data
        self.img, self.cls, self.rot, self.shift = img, cls, rot, shift
        n_rot = len(sampling.fine_rotations)
        self.pairs, row = unique_inverse(cls * n_rot + rot, refs.n_classes * n_rot)
        self.shift_u, self.spos = unique_inverse(shift, len(sampling.fine_translations))
        host_pairs = backend_of(self.pairs).to_numpy(self.pairs)
        self.pair_class = host_pairs // n_rot
        self.pair_rot = host_pairs % n_rot
        f = data.active.size
        u = len(host_pairs)
        self.A = project_rows(refs, self.pair_class, sampling.fine_rotations[self.pair_rot], data.active, xp)
        self.rotations = sampling.fine_rotations
        self.fine_shifts = xp.asarray(sampling.fine_translations, dtype=xp.float32)[self.shift_u]
        self.ph = phase_factors(self.fine_shifts, data.active)  # (S_u, F)
        self.Y = data.X * (data.ctf * data.inv_sigma2)
        self.c2s = data.ctf**2 * data.inv_sigma2
        # (image, row) pairs, image-major; candidates sorted by pair for blocking
        qkey, cand_q = unique_inverse(img * max(u, 1) + row, int(data.X.shape[0]) * max(u, 1))
        self.cand_q = cand_q.reshape(-1)
        self.q_img = qkey // max(u, 1)
        self.q_row = qkey % max(u, 1)
        self.order = xp.argsort(self.cand_q, kind="stable")
        self.q_sorted = self.cand_q[self.order]
        self.n_pairs = int(qkey.shape[0])
        self.block = max(1, block_elements(xp) // (4 * max(1, f)))

    def _blocks(self):
        """(pair slice, candidate indices, local pair index, block shifts, local shift index) per block."""
        xp = self.xp
        bounds = list(range(0, self.n_pairs, self.block)) + [self.n_pairs]
        edges = backend_of(self.q_sorted).to_numpy(xp.searchsorted(self.q_sorted, xp.asarray(bounds)))
        for j in range(len(bounds) - 1):
            q0, q1 = bounds[j], bounds[j + 1]
            cidx = self.order[int(edges[j]):int(edges[j + 1])]
            su, sloc = unique_inverse(self.spos[cidx], int(self.shift_u.shape[0]))
            yield slice(q0, q1), cidx, self.cand_q[cidx] - q0, su, sloc.reshape(-1)

    def score(self, log_class_prior, sigma_offset_px, dense_shape, log_prior=None):
        """Normalised posterior per candidate → (weights (P,), log-sum-exp per image (N,)).

        ``log_prior`` (P,): an extra log prior per candidate (local searches' orientation prior).
        """
        xp = self.xp
        p = int(self.img.shape[0])
        cross = xp.zeros(p, xp.float32)
        for qs, cidx, qloc, su, sloc in self._blocks():
            z = self.A[self.q_row[qs]]
            xp.conjugate(z, out=z)
            z *= self.Y[self.q_img[qs]]
            # Re(z·P) = Re z·Re P − Im z·Im P: z's interleaved (re, im) view against conj(P)'s, no copies of z
            d = z.view(xp.float32) @ xp.conjugate(self.ph[su]).view(xp.float32).T  # (Q_b, S_b) GEMM
            cross[cidx] = d[qloc, sloc]
        a_pow = (self.A.real**2 + self.A.imag**2).astype(xp.float32)
        row = self.q_row[self.cand_q]
        norm = (self.c2s @ a_pow.T)[self.img, row]  # (N, U) GEMM, then gather
        lp_trans = _translation_log_prior(self.data.centres, self.fine_shifts, sigma_offset_px)[self.img, self.spos]
        lp_class = xp.asarray(log_class_prior, dtype=xp.float32)[self.cls]
        self._cross, self._norm = cross, norm  # for signal_z, at the few candidates that need it
        logp = cross - 0.5 * norm + lp_class + lp_trans
        if log_prior is not None:
            logp = logp + log_prior
        n, mc = dense_shape
        # candidates come image-major, so rank within image = position − first position of the image
        counts = xp.bincount(self.img, minlength=n)
        starts = xp.cumsum(counts) - counts
        col = xp.arange(p) - starts[self.img]
        dense = xp.full((n, mc), -xp.inf, dtype=xp.float32)
        dense[self.img, col] = logp
        lse = _logsumexp_rows(dense)
        weight = xp.exp(logp - lse[self.img]).astype(xp.float32)
        return weight, lse

    def signal_z(self, candidates):
        """Whitened matched-filter score of candidates (indices from the last :meth:`score`):
        cross/√norm, ~unit variance for an image of pure noise (see :mod:`spa.em.decoys`)."""
        xp = self.xp
        return self._cross[candidates] / xp.sqrt(xp.maximum(self._norm[candidates], 1e-30))

    def accumulate(self, weight, refs, sums, wsum_sigma2):
        """Add Σ Γ·Y·P (data) and Σ Γ·C²/σ² (weights) per used (class, rotation) row into ``sums``
        through ``refs.insert``, and Σ Γ·|X·P − C·A|² per (optics group, active pixel) into
        ``wsum_sigma2`` (G, F) float64.

        The residual power needs no pass over the candidates of its own: with the
        row sums D_rg = Σ Y_i·Φ_q and W_rg = Σ w_q·C_i²/σ²_g per row r and optics
        group g (w_q = Σ_s Γ_qs), and |X_i·P_s| = |X_i|²,

            Σ Γ|X·P − C·A|² = Σ_i w_i|X_i|² + σ²_g·Σ_r (|A_r|²·W_rg − 2·Re(conj(A_r)·D_rg))

        (w_i the image's total weight), so the M-step's work per candidate pair is
        the Φ GEMM and one product Y_i·Φ_q.
        """
        xp = self.xp
        be = backend_of(self.Y)
        u = self.A.shape[0]
        f = self.data.active.size
        n = int(self.data.X.shape[0])
        n_groups = wsum_sigma2.shape[0]
        group = self.data.group
        q_key = self.q_row * n_groups + group[self.q_img]  # (row, group) of each pair
        w_pair = xp.zeros(self.n_pairs, xp.float64)
        scatter_add(be, w_pair, self.cand_q, weight.astype(xp.float64))
        # Σ Y·Φ per (row, group), interleaved (re, im); float32 like the values inserted from it (each
        # row sums a few pairs: float64 here only doubled the memory traffic of the largest arrays)
        data_rows = xp.zeros((u * n_groups, 2 * f), xp.float32)
        ph = self.ph.view(xp.float32)  # (S_u, 2F) interleaved: Γ real, so Γ·P is one real GEMM
        for qs, cidx, qloc, su, sloc in self._blocks():
            qb, sb = qs.stop - qs.start, int(su.shape[0])
            m = xp.zeros((qb, sb), xp.float32)
            m[qloc, sloc] = weight[cidx]
            phi = (m @ ph[su]).view(xp.complex64)  # Φ_q = Σ_s Γ_qs P_s, (Q_b, F)
            phi *= self.Y[self.q_img[qs]]
            # only the block's own rows: a full-size sum per block made the M-step quadratic in the
            # number of rows (3D: rows ≈ pairs)
            keys_b, inv = unique_inverse(q_key[qs], u * n_groups)
            if int(keys_b.shape[0]) == qb:  # every pair its own row (3D, mostly): no sums to form
                data_rows[q_key[qs]] += phi.view(xp.float32)
            else:
                data_rows[keys_b] += sum_rows_by_index(be, phi.view(xp.float32), inv, int(keys_b.shape[0]))
        # Σ w_q·C²/σ² per (row, group): a sparse (rows × images) by (images × F) product
        weight_rows = sum_rows_by_index(be, self.c2s, q_key, u * n_groups, rows=self.q_img,
                                        weights=w_pair.astype(xp.float32))
        data_rows = data_rows.reshape(u, n_groups, 2 * f)
        weight_rows = weight_rows.reshape(u, n_groups, f)
        w_img = xp.zeros(n, xp.float64)
        scatter_add(be, w_img, self.q_img, w_pair)
        x_pow = (self.data.X.real**2 + self.data.X.imag**2).astype(xp.float64) * w_img[:, None]
        a_pow = self.A.real**2 + self.A.imag**2
        a_flat = self.A.view(xp.float32)  # (U, 2F) interleaved
        for g in backend_of(group).to_numpy(xp.unique(group)):
            in_g = group == int(g)
            sigma2_g = 1.0 / self.data.inv_sigma2[int(xp.argmax(in_g))].astype(xp.float64)
            d, w = data_rows[:, g], weight_rows[:, g]
            # float32 products accumulated over the rows in float64 (no float64 copies of the arrays)
            power = (a_pow * w).sum(axis=0, dtype=xp.float64)
            cross = (a_flat * d).sum(axis=0, dtype=xp.float64).reshape(f, 2).sum(axis=1)  # Re(conj(A)·D)
            wsum_sigma2[int(g)] += x_pow[in_g].sum(axis=0) + sigma2_g * (power - 2 * cross)
        if n_groups == 1:
            data_c, weight_c = data_rows[:, 0].view(xp.complex64), weight_rows[:, 0]
        else:
            data_c, weight_c = data_rows.sum(axis=1).view(xp.complex64), weight_rows.sum(axis=1)
        # rows that carry (almost) no posterior mass add nothing worth the insertion cost
        row_mass = xp.zeros(u, xp.float64)
        scatter_add(be, row_mass, self.q_row, w_pair)
        live = backend_of(row_mass).to_numpy(row_mass > self.prune_weight)
        insert_rows(refs, sums, self.pair_class, self.rotations[self.pair_rot], self.data.active, data_c, weight_c,
                    live)


def expectation(data: ChunkData, refs: ReferenceModel, sampling: Sampling, log_class_prior, sigma_offset_px,
                coarse_shells: int, significant_fraction: float = 0.999, max_significant: int = 64, priors=None,
                balance: bool = False, per_class: bool = False):
    """Both passes for one chunk → (:class:`Posterior`, :class:`FinePass`).

    A sampling with ``local = True`` searches around ``priors`` (N, 3) Euler
    angles (:func:`local_coarse_pass`); any other searches its whole grid.
    ``balance``: split the chunk's images evenly over the classes
    (:func:`balance_classes`; 3D classification's first iterations).
    ``per_class``: coarse samples are kept per class (:func:`significant_per_class`).
    """
    xp = array_module(data.X)
    local = getattr(sampling, "local", False)
    if local:
        if priors is None:
            raise ValueError("a local search needs the particles' prior orientations")
        s, k, r, valid, n_sig = local_coarse_pass(data, refs, sampling, log_class_prior, sigma_offset_px,
                                                  coarse_shells, priors, significant_fraction, max_significant,
                                                  per_class)
        img, cls, rot, shift, dense_shape = _children(s, k, r, valid, sampling)
    else:
        sample, valid, n_sig = coarse_pass(data, refs, sampling, log_class_prior, sigma_offset_px, coarse_shells,
                                           significant_fraction, max_significant, per_class)
        img, cls, rot, shift, dense_shape = fine_candidates(sample, valid, refs, sampling)
    fine = FinePass(data, refs, sampling, img, cls, rot, shift)
    log_prior = None
    if local:  # the orientation prior of each (image, fine rotation) pair
        be = backend_of(data.X)
        q_img = be.to_numpy(fine.q_img)
        q_rot = fine.pair_rot[be.to_numpy(fine.q_row)]
        lp_q = sampling.log_prior(sampling.fine_rotations[q_rot], np.asarray(priors, np.float64)[q_img])
        log_prior = xp.asarray(lp_q)[fine.cand_q]
    weight, lse = fine.score(log_class_prior, sigma_offset_px, dense_shape, log_prior)
    if balance:
        weight = balance_classes(weight, img, cls, int(data.X.shape[0]), len(log_class_prior))
    xnorm = 0.5 * ((data.X.real**2 + data.X.imag**2) * data.inv_sigma2).sum(axis=1)
    post = Posterior(img, cls, rot, shift, weight, n_sig, lse.astype(xp.float64) - xnorm.astype(xp.float64))
    return post, fine
