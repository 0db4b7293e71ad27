"""Pass 2 of the E-step: the significant samples' oversampled children rescored on the full window, and
the weighted sums the M-step reads (notation as :mod:`spa.em.estep`)."""

from __future__ import annotations

from spa.backend import array_module, backend_of
from spa.em.estep import ChunkData, _logsumexp_rows, _translation_log_prior, phase_factors, unique_inverse
from spa.em.model import ReferenceModel, Sampling
from spa.em.rows import block_elements, insert_rows, project_rows, scatter_add, sum_rows_by_index


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
