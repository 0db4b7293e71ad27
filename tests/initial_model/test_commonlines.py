"""Common lines between class averages → orientations (voting + synchronisation) → a map."""

import numpy as np

from spa.em.fsc import fsc, resolution_at
from spa.em.projector import Projector
from spa.fourier import rfft_centered
from spa.geometry.distance import align_rotation_sets
from spa.geometry.euler import euler_to_matrix
from spa.geometry.sampling import random_euler
from spa.initial_model.align import align_to_reference
from spa.initial_model.commonlines import common_lines, commonlines_model, polar_lines
from tests.initial_model.conftest import molecule

BOX, PIXEL = 24, 5.0


def _averages(n, noise, seed=0):
    rng = np.random.default_rng(seed)
    vol = molecule(BOX, PIXEL)
    euler = np.column_stack(random_euler(n, rng))
    img = Projector(vol).project_images(euler_to_matrix(*euler.T).astype(np.float32))
    img += noise * img.std() * rng.standard_normal(img.shape).astype(np.float32)
    return vol, img, euler


def test_polar_lines_sample_the_centred_transform():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(2, BOX, BOX)).astype(np.float32)
    lines = polar_lines(img, n_theta=4, r_max=5)  # α = 0°, 90°, 180°, 270°
    f = rfft_centered(img)
    assert np.allclose(lines[:, 0, 2], f[:, 0, 3], atol=1e-3)  # α = 0: (kx, ky) = (r, 0); r = 3
    assert np.allclose(lines[:, 1, 2], f[:, 3, 0], atol=1e-3)  # α = 90°: (0, r) is row r, column 0
    assert np.allclose(lines[:, 2, 2], np.conj(f[:, 0, 3]), atol=1e-3)  # Friedel: the opposite half-line


def test_detected_common_lines_are_the_geometric_ones():
    _, img, euler = _averages(8, 0.0, seed=2)
    n_theta = 180
    idx, _ = common_lines(polar_lines(img, n_theta, r_max=9))
    a = euler_to_matrix(*euler.T)
    errors = []
    for i in range(8):
        for j in range(i + 1, 8):
            n = np.cross(a[i][2], a[j][2])  # the line shared by both central planes (volume frame)
            n /= np.linalg.norm(n)
            ci, cj = a[i] @ n, a[j] @ n  # in each image's frame (z = 0)
            ti, tj = np.degrees(np.arctan2(ci[1], ci[0])), np.degrees(np.arctan2(cj[1], cj[0]))
            di = np.degrees(2 * np.pi * idx[i, j] / n_theta)
            dj = np.degrees(2 * np.pi * idx[j, i] / n_theta)
            # the pair is (n) or (−n) in both images at once
            e1 = max(abs((di - ti + 180) % 360 - 180), abs((dj - tj + 180) % 360 - 180))
            e2 = max(abs((di - ti) % 360 - 180), abs((dj - tj) % 360 - 180))
            errors.append(min(e1, e2))
    assert np.median(errors) < 2.5 and np.max(errors) < 10


def test_common_lines_model_recovers_orientations_and_map():
    # 30 averages with noise at 10 % of the signal's standard deviation (box 24: short common lines)
    vol, img, euler = _averages(30, 0.1, seed=3)
    rec, info = commonlines_model(img, PIXEL, mask_radius_px=10, resolution=12.0, refine_rounds=3)
    assert rec is not None, info.get("failure")
    assert info["eigen_gap"] > 1.3  # three leading eigenvalues stand out
    fit = align_rotation_sets(euler_to_matrix(*info["rotations"].T), euler_to_matrix(*euler.T), allow_mirror=True)
    assert np.median(fit.residuals_deg) < 10.0
    aligned, _ = align_to_reference(rec, vol, pixel_size=PIXEL)
    assert resolution_at(fsc(aligned, vol), 0.5, BOX, PIXEL) < 15.0


def test_too_few_averages_fail_softly():
    _, img, _ = _averages(4, 0.0)
    rec, info = commonlines_model(img, PIXEL, mask_radius_px=10)
    assert rec is None and "at least" in info["failure"]


def test_pure_noise_gives_no_rank_three_structure_or_a_poor_map():
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(20, BOX, BOX)).astype(np.float32)
    rec, info = commonlines_model(noise, PIXEL, mask_radius_px=10, refine_rounds=1)
    # either refused, or a map whose reprojections fit noise badly (the chooser then rejects it)
    assert rec is None or info["refine_1_median_cc"] < 0.6


def test_cross_validated_scores_remove_the_self_fit_of_a_map_made_from_the_averages():
    from spa.initial_model.choose import Candidate, score_candidates

    _, img, _ = _averages(24, 0.5, seed=6)
    rec, info = commonlines_model(img, PIXEL, mask_radius_px=10, resolution=12.0, refine_rounds=2)
    assert rec is not None and len(info["folds"]) == 4
    held = np.concatenate([h for h, _ in info["folds"]])
    assert np.array_equal(np.sort(held), np.arange(24))  # every average held out exactly once
    kw = dict(resolution=15.0, mask_radius_px=10, offset_range_px=0.0)
    plain, cv = score_candidates([Candidate("cl", "cl", rec), Candidate("cl", "cl", rec, folds=info["folds"])],
                                 img, PIXEL, **kw)
    assert np.median(cv) < np.median(plain)  # a map fits the images it was made from better than new ones
