"""The fine pass in image batches of bounded memory: the same posteriors and sums as one batch."""

from __future__ import annotations

import numpy as np
from spa.em.estep import ActivePixels, prepare_chunk
from spa.em.expectation import FineScores, expectation, image_batches, row_bytes
from spa.em.inplane import InplaneReferences
from spa.em.sampling3d import LocalSampling
from spa.em.volume_refs import VolumeReferences
from spa.geometry.euler import matrix_to_euler
from spa.geometry.sampling import random_rotations
from tests.em.test_estep import _data, _problem
from tests.em.test_local_search import BOX as BOX3, _images, _perturb


def _both(run):
    """(one batch, forced small batches) results of ``run(budget)``."""
    return run(None), run(1)


def test_batches_cover_every_image_and_respect_the_budget():
    rng = np.random.default_rng(0)
    n = 40
    counts = rng.integers(1, 30, n)
    img = np.repeat(np.arange(n), counts)
    rows = rng.integers(0, 500, img.size)
    for budget in (10**9, 4000, 1):
        batches = image_batches(img, rows, 500, n, 8, budget)
        assert [b[0] for b in batches] == sorted(b[0] for b in batches)
        assert batches[0][0] == 0 and batches[-1][1] == n
        assert all(b1[1] == b2[0] for b1, b2 in zip(batches, batches[1:]))
        for a, b, c in batches:
            assert np.array_equal(img[c], np.repeat(np.arange(a, b), counts[a:b]))
            assert b - a == 1 or len(np.unique(rows[c])) * 8 <= budget
    assert len(image_batches(img, rows, 500, n, 8, 10**9)) == 1
    assert len(image_batches(img, rows, 500, n, 8, 1)) == n


def test_2d_batched_equals_one_batch():
    p = _problem(n=20, snr=5.0)
    data, act = _data(p)
    refs = InplaneReferences(p["views"])
    k = len(p["views"])

    def run(budget):
        sums = refs.new_sums()
        resid = np.zeros((1, act.size))
        post, scores = expectation(data, refs, p["samp"], np.log(np.full(k, 1 / k)), 2.0, coarse_shells=12,
                                   sums=sums, resid=resid, budget=budget)
        return post, scores, sums, resid

    (p1, s1, sums1, r1), (p2, s2, sums2, r2) = _both(run)
    assert isinstance(s2, FineScores) and not isinstance(s1, FineScores)
    assert np.array_equal(p1.img, p2.img) and np.array_equal(p1.rot, p2.rot)
    np.testing.assert_allclose(p2.weight, p1.weight, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(p2.log_evidence, p1.log_evidence, atol=0.05)  # float32 sums of ~10³-nat terms
    for key in sums1:
        np.testing.assert_allclose(sums2[key], sums1[key], rtol=1e-4, atol=1e-6 * np.abs(sums1[key]).max())
    np.testing.assert_allclose(r2, r1, rtol=1e-5)
    cand = np.arange(0, len(p1.weight), 7)
    np.testing.assert_allclose(s2.signal_z(cand), s1.signal_z(cand), rtol=1e-4, atol=1e-5)


def test_3d_local_search_batched_equals_one_batch(blobs):
    rng = np.random.default_rng(2)
    n = 12
    volume = blobs(BOX3, seed=3)
    truth = random_rotations(n, rng)
    images, sigma2 = _images(volume, truth, 10.0, rng)
    priors = np.column_stack(matrix_to_euler(_perturb(truth, 3.0, rng)))
    act = ActivePixels.make(BOX3, BOX3 // 2 + 1)
    data = prepare_chunk(images, np.ones((n, BOX3, BOX3 // 2 + 1), np.float32), np.zeros(n, int),
                         np.zeros((n, 2)), sigma2, act)
    refs = VolumeReferences(volume[None])
    samp = LocalSampling(4, 1.0, 1.0)

    def run(budget):
        sums = refs.new_sums()
        resid = np.zeros((1, act.size))
        post, _ = expectation(data, refs, samp, np.zeros(1), 2.0, coarse_shells=12, priors=priors, sums=sums,
                              resid=resid, budget=budget)
        return post, sums, resid

    (p1, sums1, r1), (p2, sums2, r2) = _both(run)
    assert row_bytes(data) == act.size * 24
    # log posteriors of ~10⁴ nats summed in float32 by GEMMs of other shapes: weights agree to a few 10⁻⁴
    np.testing.assert_allclose(p2.weight, p1.weight, atol=2e-3)
    for key in sums1:
        np.testing.assert_allclose(sums2[key], sums1[key], atol=2e-3 * np.abs(sums1[key]).max())
    np.testing.assert_allclose(r2, r1, rtol=1e-3)
