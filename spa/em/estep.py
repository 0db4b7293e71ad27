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

This module holds the coarse passes and the pieces both passes share; pass 2
is :class:`spa.em.finepass.FinePass`, and :func:`spa.em.expectation.expectation`
runs both for a chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.backend import array_module
from spa.em.model import ReferenceModel, Sampling
from spa.em.projector import cuda_for
from spa.em.rows import block_elements, project_rows
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
