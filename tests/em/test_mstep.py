"""M-step: reconstruction from known poses, σ² from residuals, resolution, sums and determinism."""

from __future__ import annotations

import numpy as np

from spa.em.finepass import FinePass
from spa.em.inplane import InplaneReferences
from spa.em.model import MlModel, WsumModel
from spa.em.mstep import maximize, next_window, resolution_shells
from spa.em.noise import sigma2_sums
from spa.fourier import radial_average, shells_2d
from tests.em.test_estep import BOX, PX, _data, _problem


def _known_pose_sums(p, n_shells=BOX // 2 + 1):
    """Accumulate every image at its true (class, ψ, shift) with weight 1."""
    data, act = _data(p, n_shells)
    n = len(p["images"])
    k = len(p["views"])
    refs = InplaneReferences(np.zeros((k, BOX, BOX), np.float32))
    fine = FinePass(data, refs, p["samp"], np.arange(n), p["cls"], p["r_idx"], p["s_idx"])
    sums = refs.new_sums()
    resid = np.zeros((1, act.size))
    fine.accumulate(np.ones(n, np.float32), refs, sums, resid)
    return refs, sums, resid, data, act


def test_mstep_with_known_poses_reproduces_reference():
    p = _problem(n=150, snr=20.0, seed=11)
    refs, sums, _, _, _ = _known_pose_sums(p)
    flat_tau = np.full((len(p["views"]), BOX // 2 + 1), 1e30)  # negligible prior: plain CTF-weighted average
    new, dvp = refs.reconstruct(sums, flat_tau, 2.0)
    for k, view in enumerate(p["views"]):
        corr = np.corrcoef(np.asarray(new.images[k]).ravel(), view.ravel())[0, 1]
        assert corr > 0.99, (k, corr)
    assert np.all(dvp[:, 1:10] > 1)


def test_sigma2_from_residuals_matches_true_noise():
    p = _problem(n=120, snr=0.5, seed=12)
    refs0 = InplaneReferences(p["views"])  # the true references: residual = noise
    data, act = _data(p)
    n = len(p["images"])
    fine = FinePass(data, refs0, p["samp"], np.arange(n), p["cls"], p["r_idx"], p["s_idx"])
    sums = refs0.new_sums()
    resid = np.zeros((1, act.size))
    fine.accumulate(np.ones(n, np.float32), refs0, sums, resid)
    wsum, count = sigma2_sums(resid, act.shell, act.n_shells, data.power, data.group, 1, BOX)
    est = wsum / (2 * count)
    true = p["sigma2"][0]
    # shells 3..B/2-2: enough pixels per shell; interpolation error of the references stays below noise
    ratio = est[0, 3:BOX // 2 - 1] / true[3:BOX // 2 - 1]
    assert np.all(np.abs(ratio - 1) < 0.2), ratio
    assert abs(np.median(ratio) - 1) < 0.06


def test_maximize_updates_priors_sigma_and_resolution():
    p = _problem(n=90, snr=5.0, seed=13)
    refs, sums, resid, data, act = _known_pose_sums(p, 14)
    wsig, count = sigma2_sums(resid, act.shell, act.n_shells, data.power, data.group, 1, BOX)
    k = len(p["views"])
    cw = np.bincount(p["cls"], minlength=k).astype(float)
    t = p["shifts"]
    wsum = WsumModel(sums, wsig, count, cw, float((t * t).sum()), len(p["images"]), 0.0)
    model = MlModel.initial(BOX, PX, k, p["sigma2"], 2.0, 14)
    start = InplaneReferences(p["views"])
    new_model, new_refs = maximize(model, wsum, start, tau2_fudge=2.0, mask_radius_px=17)
    np.testing.assert_allclose(new_model.pdf_class, cw / cw.sum(), rtol=1e-6)
    assert new_model.sigma_offset_px == np.sqrt((t * t).sum() / (2 * len(t)))
    # SSNR (data_vs_prior) ≈ T·Σ_i C_i²·τ²/σ² per shell: checks the padded-grid weight scaling
    c2 = radial_average(p["ctf"] ** 2, shells_2d(BOX), BOX // 2 + 1)
    tau2 = start.power_spectrum()
    for c in range(k):
        expect = 2.0 * c2[p["cls"] == c].sum(0) * tau2[c] / p["sigma2"][0]
        ratio = new_model.data_vs_prior[c, 4:14] / expect[4:14]
        assert np.all((ratio > 0.8) & (ratio < 1.5)), ratio
    np.testing.assert_array_equal(new_model.resolution_shell, resolution_shells(new_model.data_vs_prior, 14))
    assert np.all(new_model.resolution_shell >= 5) and np.all(new_model.resolution_shell <= 13)
    for c in range(k):
        corr = np.corrcoef(np.asarray(new_refs.images[c]).ravel(), p["views"][c].ravel())[0, 1]
        assert corr > 0.95
    assert next_window(new_model.resolution_shell, BOX // 2 + 1, 10) == min(BOX // 2 + 1,
                                                                           new_model.resolution_shell.max() + 11)


def test_resolution_shells_first_drop_below_one():
    dvp = np.array([[100, 50, 20, 5, 0.5, 3, 0.1], [100, 0.9, 5, 5, 5, 5, 5]], float)
    np.testing.assert_array_equal(resolution_shells(dvp, 7), [3, 0])
    np.testing.assert_array_equal(resolution_shells(dvp[:, :4], 4), [3, 0])


def test_model_roundtrip_through_arrays():
    m = MlModel.initial(BOX, PX, 4, np.ones((2, BOX // 2 + 1)), 1.5, 9)
    m.iteration = 7
    back = MlModel.from_arrays(m.to_arrays())
    assert back.iteration == 7 and back.current_shells == 9 and back.n_groups == 2
    np.testing.assert_array_equal(back.sigma2_noise, m.sigma2_noise)


def test_references_and_samplings_meet_the_engine_protocols():
    """The E-step's contract in code: every reference model and sampling the stages use satisfies it."""
    from spa.em.inplane import InplaneReferences, InplaneSampling
    from spa.em.model import LocalSearch, ReferenceModel, Sampling
    from spa.em.sampling3d import FixedPoses, LocalSampling, Sampling3D
    from spa.em.volume_refs import VolumeReferences
    from spa.initial_model.refs import AbInitioReferences

    vol = np.zeros((1, 16, 16, 16), np.float32)
    for refs in (InplaneReferences(np.zeros((2, 16, 16), np.float32)), VolumeReferences(vol),
                 AbInitioReferences(vol)):
        assert isinstance(refs, ReferenceModel), type(refs)
    for sampling in (InplaneSampling(), Sampling3D(1, 2.0, 1.0)):
        assert isinstance(sampling, Sampling) and not isinstance(sampling, LocalSearch)
    for sampling in (LocalSampling(3, 2.0, 1.0), FixedPoses()):
        assert isinstance(sampling, LocalSearch), type(sampling)
