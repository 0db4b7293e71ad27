"""Noise decoys and the whitened match score the noise p-values rest on."""

from __future__ import annotations

import numpy as np

from spa.em.decoys import DecoySource, decoy_rows, noise_images, noise_pvalue
from spa.em.engine import ArrayImages, EStepContext, run_estep
from spa.parallel import make_chunks
from spa.em.inplane import InplaneReferences, InplaneSampling
from spa.em.noise import shell_pixel_counts
from spa.fourier import rfft_centered, shell_sum, shells_2d, soft_circular_mask

BOX = 48


def _blob(box, sigma=4.0):
    c = np.arange(box) - box // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    return (np.exp(-(x**2 + (y - 3) ** 2) / (2 * sigma**2)) + 0.6 * np.exp(-((x - 6) ** 2 + y**2) / 8.0)).astype(
        np.float32)


def test_noise_images_have_the_model_spectrum_once_masked():
    shells = np.arange(BOX // 2 + 1)
    sigma2 = (50.0 + 400.0 * np.exp(-shells / 6.0))[None]  # coloured, per real component of the masked rfft
    radius = 0.4 * BOX
    imgs = noise_images(np.arange(400), np.zeros(400, int), sigma2, BOX, radius, seed=3)
    f = rfft_centered(imgs * soft_circular_mask(BOX, radius, 5.0))
    measured = shell_sum(np.abs(f) ** 2, shells_2d(BOX), BOX // 2 + 1).sum(0) / (2 * 400 * shell_pixel_counts(BOX))
    ratio = measured[2:] / sigma2[0, 2:]
    assert np.all(np.abs(ratio - 1) < 0.12), ratio  # the mask blurs the spectrum a little at low resolution
    assert abs(np.median(ratio) - 1) < 0.03


def test_a_decoy_is_the_same_whatever_chunk_makes_it():
    sigma2 = np.full((2, BOX // 2 + 1), 100.0)
    src = DecoySource(np.array([4, 9, 17, 30]), np.array([0, 1, 0, 1]), sigma2, BOX, None, seed=7)
    all_four = src.read(np.arange(4))
    np.testing.assert_array_equal(src.read(np.array([2, 3])), all_four[2:])
    assert not np.allclose(all_four[0], all_four[1])
    rows = decoy_rows(1000, 100, seed=1)
    assert len(np.unique(rows)) == 100 and np.array_equal(rows, decoy_rows(1000, 100, seed=1))
    assert np.array_equal(decoy_rows(50, 100, seed=1), np.arange(50))


def test_noise_pvalue_is_the_fraction_of_decoys_at_least_as_good():
    decoys = np.arange(1.0, 100.0)  # 99 decoys
    p = noise_pvalue([0.0, 50.0, 99.0, 150.0], decoys)
    np.testing.assert_allclose(p, [1.0, 51 / 100, 2 / 100, 1 / 100])


def _scores(images, ref, sigma2, sampling, radius=None):
    n = images.shape[0]
    ctx = EStepContext(refs=InplaneReferences(ref[None]), sampling=sampling, sigma2=sigma2,
                       log_class_prior=np.zeros(1), sigma_offset_px=2.0, coarse_shells=BOX // 2 + 1,
                       fine_shells=BOX // 2 + 1, pixel_size=1.0, mask_radius_px=radius, do_ctf=False)
    particles = {"has_ctf": np.array(False), "group": np.zeros(n, np.int64), "centres": np.zeros((n, 2))}
    _, res = run_estep(ctx, ArrayImages(images), particles, make_chunks(n, 500))
    return res["signal_z"]


def test_whitened_match_is_centred_for_noise_and_grows_with_the_signal():
    """One pose, white noise of known σ²: z is centred for noise alone (its variance ≈ 1, a little
    more because the half grid holds both conjugate halves of its kx = 0 column), and with a
    signal A its mean is the matched filter's √(Σ|A|²/σ²)."""
    rng = np.random.default_rng(0)
    ref = _blob(BOX)
    sigma = 1.0
    sigma2 = np.full((1, BOX // 2 + 1), sigma**2 * BOX * BOX / 2)  # white noise, unnormalised rfft
    one_pose = InplaneSampling(360.0, 0.0, 1.0, 0)
    noise = (rng.standard_normal((2000, BOX, BOX)) * sigma).astype(np.float32)
    z0 = _scores(noise, ref, sigma2, one_pose)
    assert abs(z0.mean()) < 0.1 and 0.9 < z0.std() < 1.35, (z0.mean(), z0.std())
    expected = np.sqrt((ref.astype(np.float64) ** 2).sum()) / sigma
    z1 = _scores(noise[:500] + ref, ref, sigma2, one_pose)
    assert abs(z1.mean() - expected) < 0.15 * expected, (z1.mean(), expected)
    assert z1.mean() > z0.mean() + 5


def test_decoys_match_like_images_of_pure_noise():
    """Searched over ψ and shifts inside a mask, the best z of images of noise and of decoys made
    from the noise model (σ² of the masked images) have the same distribution (5-95th percentiles
    within 0.15), well above a single pose's."""
    rng = np.random.default_rng(1)
    ref = _blob(BOX)
    sigma, radius = 2.0, 0.4 * BOX
    mask2 = float(np.mean(soft_circular_mask(BOX, radius, 5.0) ** 2))
    sigma2 = np.full((1, BOX // 2 + 1), sigma**2 * BOX * BOX * mask2 / 2)
    search = InplaneSampling(10.0, 3.0, 1.0, 1)
    noise = (rng.standard_normal((600, BOX, BOX)) * sigma).astype(np.float32)
    z_noise = _scores(noise, ref, sigma2, search, radius)
    decoys = noise_images(np.arange(600), np.zeros(600, int), sigma2, BOX, radius, seed=5)
    z_decoy = _scores(decoys, ref, sigma2, search, radius)
    q = [5, 25, 50, 75, 95]
    diff = np.percentile(z_noise, q) - np.percentile(z_decoy, q)
    assert np.all(np.abs(diff) < 0.15), diff
    assert np.median(z_noise) > 1.5
