"""E-step: GEMM formulation vs direct sums, pose recovery, posterior normalisation, 2D projector adjointness."""

from __future__ import annotations

import numpy as np
import pytest

from spa.class2d.synthetic import make_views, rotate_shift
from spa.ctf import ctf_2d
from spa.em.estep import ActivePixels, balance_classes, coarse_pass, fine_candidates, phase_factors, prepare_chunk
from spa.em.expectation import expectation
from spa.em.finepass import FinePass
from spa.em.inplane import InplaneReferences, InplaneSampling
from spa.fourier import irfft_centered, rfft_centered

BOX, PX = 40, 3.0


def _problem(n=24, snr=50.0, seed=0, n_views=3, on_grid=True):
    """Images = CTF ⊛ (rotated, shifted views) + white noise, poses on the fine sampling grid."""
    rng = np.random.default_rng(seed)
    views = make_views(n_views, BOX, PX, 95, seed + 1)
    samp = InplaneSampling(psi_step=10.0, offset_range=2.0, offset_step=1.0)
    cls = rng.integers(0, n_views, n)
    r_idx = rng.integers(0, len(samp.fine_rotations), n)
    s_idx = rng.integers(0, len(samp.fine_translations), n)
    psi = samp.fine_rotations[r_idx] if on_grid else rng.uniform(0, 360, n)
    shifts = samp.fine_translations[s_idx]
    clean = np.stack([rotate_shift(views[c], p, s) for c, p, s in zip(cls, psi, shifts)])
    du = rng.uniform(10000, 20000, n)
    ctf = ctf_2d(BOX, PX, du, du - 200, rng.uniform(0, 180, n), 300, 2.7, 0.1)
    signal = irfft_centered(rfft_centered(clean) * ctf, BOX)
    noise_var = float(signal.var()) / snr
    images = (signal + rng.normal(0, np.sqrt(noise_var), signal.shape)).astype(np.float32)
    sigma2 = np.full((1, BOX // 2 + 1), BOX * BOX * noise_var / 2.0)  # white noise: E|N̂|² = B²·var
    return dict(views=views, samp=samp, cls=cls, r_idx=r_idx, s_idx=s_idx, psi=psi, shifts=shifts, images=images,
                ctf=ctf.astype(np.float32), sigma2=sigma2)


def _data(p, n_shells=BOX // 2 + 1):
    act = ActivePixels.make(BOX, n_shells)
    n = len(p["images"])
    return prepare_chunk(p["images"], p["ctf"], np.zeros(n, int), np.zeros((n, 2)), p["sigma2"], act), act


def _best(post, n):
    best = np.zeros(n, int)
    for i in range(n):
        sel = np.nonzero(post.img == i)[0]
        best[i] = sel[np.argmax(post.weight[sel])]
    return best


def test_recovers_known_psi_and_shift_exactly():
    p = _problem()
    data, _ = _data(p)
    refs = InplaneReferences(p["views"])
    k = len(p["views"])
    post, _ = expectation(data, refs, p["samp"], np.log(np.full(k, 1 / k)), 2.0, coarse_shells=12)
    best = _best(post, len(p["images"]))
    assert np.array_equal(post.cls[best], p["cls"])
    assert np.array_equal(post.rot[best], p["r_idx"])
    assert np.array_equal(post.shift[best], p["s_idx"])


def test_posterior_weights_sum_to_one():
    p = _problem(snr=0.05, seed=3)  # broad posteriors, many significant samples
    data, _ = _data(p)
    refs = InplaneReferences(p["views"])
    post, _ = expectation(data, refs, p["samp"], np.log([0.5, 0.3, 0.2]), 2.0, coarse_shells=10,
                          max_significant=40)
    sums = np.bincount(post.img, weights=post.weight, minlength=len(p["images"]))
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    assert post.n_significant.max() > 1
    assert np.all(post.weight >= 0)


def test_gemm_scores_equal_direct_residuals():
    """Fine-pass log posteriors equal −‖X·P − C·A‖²/(2σ²) + priors computed pixel by pixel."""
    p = _problem(n=5, snr=1.0, seed=4)
    data, act = _data(p, 14)
    refs = InplaneReferences(p["views"])
    samp = p["samp"]
    k = len(p["views"])
    log_prior = np.log([0.2, 0.5, 0.3])
    sig_off = 1.5
    sample, valid, _ = coarse_pass(data, refs, samp, log_prior, sig_off, 8, significant_fraction=0.9,
                                   max_significant=12)
    img, cls, rot, shift, shape = fine_candidates(sample, valid, refs, samp)
    fine = FinePass(data, refs, samp, img, cls, rot, shift)
    weight, _ = fine.score(log_prior, sig_off, shape)
    # direct: loop over candidates
    direct = np.zeros(len(img))
    for j in range(len(img)):
        a = refs.project(int(cls[j]), samp.fine_rotations[[rot[j]]], act)[0]
        t = samp.fine_translations[shift[j]]
        xs = data.X[img[j]] * phase_factors(t[None], act)[0]
        r = xs - data.ctf[img[j]] * a
        direct[j] = (-0.5 * (np.abs(r) ** 2 * data.inv_sigma2[img[j]]).sum() + log_prior[cls[j]]
                     - (t @ t) / (2 * sig_off**2))
    for i in range(5):
        sel = img == i
        e = np.exp(direct[sel] - direct[sel].max())
        np.testing.assert_allclose(weight[sel], e / e.sum(), atol=2e-4)
    # and the coarse pass ranks samples as the direct residual does
    act_c = act.window(8)
    shifts = samp.coarse_translations
    for i in range(5):
        scores = []
        for s in range(len(shifts)):
            xs = data.X[i, :act_c.size] * phase_factors(shifts[s][None], act_c)[0]
            for c in range(k):
                a = refs.project(c, samp.coarse_rotations, act_c)
                r = xs[None] - data.ctf[i, :act_c.size] * a
                lp = -0.5 * (np.abs(r) ** 2 * data.inv_sigma2[i, :act_c.size]).sum(-1)
                scores.append(lp + log_prior[c] - (shifts[s] @ shifts[s]) / (2 * sig_off**2))
        assert int(sample[i, 0]) == int(np.argmax(np.concatenate(scores)))


def test_fine_pass_sums_equal_direct_sums():
    """The M-step sums of the fine pass (per-row Σ Γ·Y·P and Σ Γ·C²/σ², per-group Σ Γ|X·P − C·A|²)
    equal the same sums taken candidate by candidate."""
    p = _problem(n=6, snr=1.0, seed=5)
    act = ActivePixels.make(BOX, 14)
    # two optics groups with different noise spectra: the residual power is kept per group
    group = np.arange(6) % 2
    sigma2 = np.concatenate([p["sigma2"], p["sigma2"] * np.linspace(0.5, 2.0, BOX // 2 + 1)])
    data = prepare_chunk(p["images"], p["ctf"], group, np.zeros((6, 2)), sigma2, act)
    refs = InplaneReferences(p["views"])
    samp = p["samp"]
    log_prior = np.log([0.2, 0.5, 0.3])
    sample, valid, _ = coarse_pass(data, refs, samp, log_prior, 1.5, 8, significant_fraction=0.99,
                                   max_significant=12)
    img, cls, rot, shift, shape = fine_candidates(sample, valid, refs, samp)
    fine = FinePass(data, refs, samp, img, cls, rot, shift)
    fine.prune_weight = 0.0
    weight, _ = fine.score(log_prior, 1.5, shape)

    class Capture:
        inserted = {}

        def insert(self, sums, k, rotations, active, values, weights):
            for psi, v, w in zip(rotations, values, weights):
                self.inserted[(k, float(psi))] = (v, w)

    cap = Capture()
    wsig = np.zeros((2, act.size))
    fine.accumulate(weight, cap, None, wsig)
    data_direct, weight_direct = {}, {}
    resid = np.zeros((2, act.size))
    for j in range(len(img)):
        key = (int(cls[j]), float(samp.fine_rotations[rot[j]]))
        ph = phase_factors(samp.fine_translations[shift[j]][None], act)[0]
        y = data.X[img[j]] * data.ctf[img[j]] * data.inv_sigma2[img[j]] * ph
        data_direct[key] = data_direct.get(key, 0) + weight[j] * y
        weight_direct[key] = weight_direct.get(key, 0) + weight[j] * data.ctf[img[j]] ** 2 * data.inv_sigma2[img[j]]
        a = refs.project(int(cls[j]), samp.fine_rotations[[rot[j]]], act)[0]
        resid[group[img[j]]] += weight[j] * np.abs(data.X[img[j]] * ph - data.ctf[img[j]] * a) ** 2
    assert set(cap.inserted) == set(data_direct)
    for key, (v, w) in cap.inserted.items():
        np.testing.assert_allclose(v, data_direct[key], rtol=1e-3, atol=1e-3 * np.abs(data_direct[key]).max())
        np.testing.assert_allclose(w, weight_direct[key], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(wsig, resid, rtol=2e-3, atol=1e-3 * resid.max())


def test_inplane_insert_is_adjoint_of_project():
    rng = np.random.default_rng(5)
    refs = InplaneReferences(rng.normal(size=(2, BOX, BOX)).astype(np.float32))
    refs.fourier = (rng.normal(size=refs.fourier.shape) + 1j * rng.normal(size=refs.fourier.shape)).astype(np.complex64)
    act = ActivePixels.make(BOX, BOX // 2)
    psi = rng.uniform(0, 360, 7)
    y = (rng.normal(size=(7, act.size)) + 1j * rng.normal(size=(7, act.size))).astype(np.complex64)
    lhs = np.real(np.conj(y) * refs.project(1, psi, act)).sum()
    sums = refs.new_sums()
    refs.insert(sums, 1, psi, act, y, np.ones((7, act.size)))
    rhs = np.real(np.conj(sums["data"][1]) * refs.fourier[1]).sum()
    assert lhs == pytest.approx(rhs, rel=1e-4)


@pytest.mark.parametrize("psi", [0.0, 37.0, 200.0])
def test_inplane_projection_matches_real_space_rotation(psi):
    """The Fourier 'projection' at ψ equals the view resampled as image(x) = view(Aᵀx)."""
    views = make_views(1, BOX, PX, 95, 9)
    refs = InplaneReferences(views)
    act = ActivePixels.make(BOX, BOX // 4)
    proj = refs.project(0, np.array([psi]), act)[0]
    direct = rfft_centered(rotate_shift(views[0], psi, (0.0, 0.0))).reshape(-1)[act.index]
    corr = np.real(np.vdot(direct, proj)) / (np.linalg.norm(direct) * np.linalg.norm(proj))
    assert corr > 0.99


def test_significant_selection_matches_a_full_sort():
    """Peaked rows (few samples near the maximum) and broad rows (many) against sorting whole rows."""
    from spa.em.significance import significant as _significant

    rng = np.random.default_rng(5)
    s, g, m = 9, 40, 16
    peaked = rng.normal(-200, 20, (6, s * g)).astype(np.float32)
    peaked[np.arange(6), rng.integers(0, s * g, 6)] = 0.0
    broad = rng.normal(0, 1.5, (6, s * g)).astype(np.float32)
    # many samples within 25 nats, yet a few hold nearly all the mass (the bounds decide), or about
    # 0.999 of it (the bounds disagree: the row is summed)
    dominated = rng.uniform(-24, -12, (6, s * g)).astype(np.float32)
    dominated[np.arange(6), rng.integers(0, s * g, 6)] = 0.0
    edge = rng.uniform(-24, -9.5, (6, s * g)).astype(np.float32)
    edge[:, :3] = 0.0
    flat = np.concatenate([peaked, broad, dominated, edge])
    idx, valid, count = _significant(flat, m, 0.999, groups=(s, g))
    for row in range(flat.shape[0]):
        order = np.argsort(-flat[row].astype(np.float64))
        w = np.exp(flat[row].astype(np.float64) - flat[row].max())
        w /= w.sum()
        needed = min(int(np.searchsorted(np.cumsum(w[order]), 0.999) + 1), m)
        assert count[row] == needed, row
        np.testing.assert_array_equal(np.sort(idx[row, :needed]), np.sort(order[:needed]))
        assert valid[row].sum() == needed


def test_balanced_class_weights_split_the_images_evenly():
    """Sinkhorn balancing: per image the weights still sum to 1, per class the images' shares are
    N/K, and an assignment that is balanced already is left as it is."""
    rng = np.random.default_rng(0)
    n, k, per = 40, 2, 6
    img = np.repeat(np.arange(n), per)
    cls = np.tile(np.repeat(np.arange(k), per // k), n)
    w = rng.random(n * per).astype(np.float32)
    w[cls == 0] *= 5  # class 0 favoured by every image
    w /= np.bincount(img, weights=w)[img]
    out = balance_classes(w, img, cls, n, k)
    np.testing.assert_allclose(np.bincount(img, weights=out), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.bincount(cls, weights=out), n / k, rtol=1e-3)
    # within an (image, class) the candidates keep their relative weights
    sel = (img == 3) & (cls == 1)
    np.testing.assert_allclose(out[sel] / out[sel].sum(), w[sel] / w[sel].sum(), rtol=1e-5)
    even = np.full(n * per, 1.0 / per, np.float32)
    np.testing.assert_allclose(balance_classes(even, img, cls, n, k), even, rtol=1e-5)


def test_per_class_significance_keeps_every_class_for_the_fine_pass():
    """With the selection per class, each image's kept coarse samples cover every class (each class's
    own best samples, ≤ the per-class cap each), and the best sample overall is still among them."""
    p = _problem(n=12, snr=5.0, seed=6)
    data, _ = _data(p)
    refs = InplaneReferences(p["views"])
    samp = p["samp"]
    k = len(p["views"])
    log_prior = np.log(np.full(k, 1 / k))
    joint, jvalid, _ = coarse_pass(data, refs, samp, log_prior, 2.0, 8, max_significant=6)
    sample, valid, n_sig = coarse_pass(data, refs, samp, log_prior, 2.0, 8, max_significant=6, per_class=True)
    assert sample.shape == (12, 8 * k)  # at least 8 per class
    R = len(samp.coarse_rotations)
    for i in range(12):
        classes = (sample[i][valid[i]] // R) % k
        assert set(classes.tolist()) == set(range(k))
        assert int(joint[i, 0]) in set(sample[i][valid[i]].tolist())
        assert n_sig[i] == valid[i].sum()
    # the joint selection (peaked posteriors at this SNR) keeps fewer classes per image
    joint_classes = [len(set(((joint[i][jvalid[i]] // R) % k).tolist())) for i in range(12)]
    assert np.mean(joint_classes) < k


def test_unique_inverse_equals_numpy_unique():
    from spa.em.estep import unique_inverse

    rng = np.random.default_rng(8)
    keys = rng.integers(0, 5000, 20000) * 3  # sparse use of the key range
    want_values, want_inverse = np.unique(keys, return_inverse=True)
    for n_keys in (15000, (1 << 24) + 1):  # presence table, and the sorting fallback
        values, inverse = unique_inverse(keys, n_keys)
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(inverse, want_inverse.reshape(-1))
        np.testing.assert_array_equal(values[inverse], keys)


def test_candidates_ordered_by_row_then_value_through_float_bits():
    """One int64 sort of (row, float32 bits) orders as (row, −value): negatives, zeros of both signs
    and −∞ included."""
    from spa.em.significance import _by_row_then_descending

    rng = np.random.default_rng(8)
    row = np.sort(rng.integers(0, 30, 3000))
    v = (rng.normal(size=3000) * 10).astype(np.float32)
    v[::7], v[::11], v[5] = -0.0, 0.0, -np.inf
    order = _by_row_then_descending(row, v)
    assert np.all(np.diff(row[order]) >= 0)
    for r in range(30):
        np.testing.assert_array_equal(v[order][row[order] == r], np.sort(v[row == r])[::-1])


@pytest.mark.parametrize("smooth", [False, True])
def test_top_m_search_is_exact_for_peaked_and_smooth_rows(smooth):
    """The top-m search sorts the few values above its threshold (peaked rows) or partitions the
    gathered columns (smooth rows, where most pass): both give the m best of every row, best first."""
    from spa.em.significance import _top_m

    rng = np.random.default_rng(9)
    n, s, g, m = 20, 15, 60, 12
    if smooth:  # a smooth function of the shift plus a little noise: most shifts of a good column pass
        rows = (rng.normal(size=(n, 1, g)) * 3 - 0.05 * np.arange(s)[None, :, None] ** 2
                + rng.normal(size=(n, s, g)) * 0.1).reshape(n, s * g)
    else:
        rows = rng.normal(size=(n, s * g)) * 20
    rows = rows.astype(np.float32)
    idx, val = _top_m(rows, m, (s, g))
    for r in range(n):
        want = np.sort(rows[r])[::-1][:m]
        np.testing.assert_array_equal(val[r], want)
        np.testing.assert_array_equal(rows[r][idx[r]], want)
