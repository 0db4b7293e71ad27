"""Local searches (RELION's auto-refine from HEALPix order 4): grid bookkeeping and pose recovery."""

from __future__ import annotations

import numpy as np
import pytest

from spa.em.estep import ActivePixels, prepare_chunk
from spa.em.expectation import expectation
from spa.em.projector import Projector
from spa.em.sampling3d import LocalSampling, Sampling3D
from spa.em.volume_refs import VolumeReferences
from spa.fourier import freq_2d, irfft_centered
from spa.geometry.distance import angular_distance
from spa.geometry.euler import euler_to_matrix, matrix_to_euler
from spa.geometry.sampling import random_rotations

BOX = 40


def test_local_grid_numbers_orientations_as_the_global_grid():
    glob, loc = Sampling3D(4, 2, 1), LocalSampling(4, 2, 1)
    idx = np.array([0, 7, 511, 100_000, len(glob.coarse_rotations) - 1])
    keys = loc.coarse_index(*glob.coarse_rotations[idx].T)
    np.testing.assert_allclose(loc.coarse_rotations[keys], glob.coarse_rotations[idx], atol=1e-9)
    fine_g = (idx[:, None] * 8 + np.arange(8)).ravel()
    fine_l = (keys[:, None] * 8 + np.arange(8)).ravel()
    np.testing.assert_allclose(loc.fine_rotations[fine_l], glob.fine_rotations[fine_g], atol=1e-9)


def test_candidates_stay_within_three_sigma_of_the_prior():
    loc = LocalSampling(4, 2, 1)
    priors = np.array([[30.0, 60.0, 100.0], [0.0, 0.5, 10.0], [200.0, 179.0, 300.0]])
    rows, keys, log_prior = loc.candidates(priors)
    assert set(np.unique(rows)) == {0, 1, 2}
    a = euler_to_matrix(*loc.coarse_rotations[keys].T)
    b = euler_to_matrix(*priors[rows].T)
    dist = angular_distance(a, b)
    assert dist.max() < np.hypot(3 * loc.sigma_deg, 3 * loc.sigma_deg)  # direction and ψ each within 3σ
    assert np.all(log_prior <= 0)
    # the grid orientation nearest to each prior is searched
    for i in range(3):
        assert dist[rows == i].min() < loc.angular_step


def _images(volume, rotations, snr, rng, origin=(0.25, -0.25)):
    """Noisy projections whose origin (the shift that centres them, px) is ``origin``, a fine grid shift."""
    ky, kx = freq_2d(BOX)
    slices = Projector(volume).project(rotations) * np.exp(2j * np.pi * (kx * origin[0] + ky * origin[1]))
    clean = irfft_centered(slices, BOX).astype(np.float32)
    var = float(clean.var()) / snr
    images = clean + rng.normal(0, np.sqrt(var), clean.shape).astype(np.float32)
    return images, np.full((1, BOX // 2 + 1), BOX * BOX * var / 2.0)


def _perturb(rotations, deg, rng):
    axes = rng.normal(size=(len(rotations), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    out = []
    for r, a in zip(rotations, axes):
        k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
        t = np.deg2rad(deg)
        out.append((np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k) @ r)
    return np.array(out)


def _search(blobs, prior_error_deg, n=40, seed=0):
    rng = np.random.default_rng(seed)
    volume = blobs(BOX, seed=3)
    truth = random_rotations(n, rng)
    images, sigma2 = _images(volume, truth, 10.0, rng)
    priors = np.column_stack(matrix_to_euler(_perturb(truth, prior_error_deg, rng)))
    act = ActivePixels.make(BOX, BOX // 2 + 1)
    data = prepare_chunk(images, np.ones((n, BOX, BOX // 2 + 1), np.float32), np.zeros(n, int), np.zeros((n, 2)),
                         sigma2, act)
    refs = VolumeReferences(volume[None])
    samp = LocalSampling(4, 1.0, 1.0)
    post, _ = expectation(data, refs, samp, np.zeros(1), 2.0, coarse_shells=12, priors=priors)
    best = np.array([np.nonzero(post.img == i)[0][np.argmax(post.weight[post.img == i])] for i in range(n)])
    found = euler_to_matrix(*samp.fine_rotations[post.rot[best]].T)
    assert np.allclose(np.bincount(post.img, weights=post.weight, minlength=n), 1.0, atol=5e-3)  # float32 log posteriors
    return angular_distance(found, truth), angular_distance(found, euler_to_matrix(*priors.T)), samp


def test_local_search_finds_the_pose_near_a_prior(blobs):
    err, _, samp = _search(blobs, prior_error_deg=5.0)
    # every prior is 5° off; the fine step is 1.875° (a pose is ≤ ~1.6° from the nearest fine sample,
    # and the coarse pass, at shifts 0.35 px from the truth, sometimes picks a neighbouring cell)
    assert np.median(err) < 2.0 and np.percentile(err, 90) < 3.5, np.sort(err)


def test_local_search_does_not_leave_its_neighbourhood(blobs):
    """A prior 40° off cannot be corrected: the answer stays within the searched 3σ (11.25°)."""
    err, from_prior, samp = _search(blobs, prior_error_deg=40.0, n=12)
    # direction and ψ each within 3σ of the prior, plus a fine child's offset from its coarse sample
    assert from_prior.max() < np.hypot(3 * samp.sigma_deg, 3 * samp.sigma_deg) + samp.angular_step
    assert np.all(err > 20.0)


@pytest.mark.parametrize("order", [4, 5])
def test_local_sampling_sigma_is_twice_the_fine_step(order):
    s = LocalSampling(order, 2, 1)
    assert s.sigma_deg == pytest.approx(2 * 360 / (6 * 2 ** (order + 1)))
