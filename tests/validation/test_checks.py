"""The validation checks against a simulated refinement whose poses are the truth (tests/validation/conftest.py)."""

import numpy as np

from tests.validation.conftest import PIXEL


def _source(refined, n=None):
    from spa.io.images import ParticleImages

    rows = refined.table if n is None else refined.table.iloc[:n].reset_index(drop=True)
    return rows, ParticleImages(rows, refined.star)


def test_reprojections_match_projection_classes_not_another_molecule(refined):
    """Class averages made from noisy projections of the truth correlate highly with the map's best
    reprojection, at the right orientation; a class made from another molecule does not."""
    from spa.em.projector import Projector
    from spa.geometry.distance import angular_distance
    from spa.geometry.euler import euler_to_matrix
    from spa.geometry.sampling import random_euler
    from spa.simulate.density import render_map
    from spa.simulate.molecule import make_molecule
    from spa.validation.reprojection import match_classes

    rng = np.random.default_rng(2)
    euler = np.column_stack(random_euler(6, rng))
    box = refined.truth.shape[-1]
    other = render_map(make_molecule(0.6 * box * PIXEL, seed=9), box, PIXEL).astype(np.float32)
    poses = euler_to_matrix(*euler.T).astype(np.float32)
    classes = np.concatenate([Projector(refined.truth).project_images(poses),
                              Projector(other).project_images(poses[:2])])
    classes = classes + rng.normal(0, 0.1 * classes.std(), classes.shape).astype(np.float32)
    classes[1] = np.roll(classes[1], (2, -1), axis=(0, 1))  # a class off-centre by (x −1, y +2) px
    result = match_classes(refined.volume, classes, PIXEL, resolution=12.0, highpass=30.0)
    good, bad = result.correlation[:6], result.correlation[6:]
    assert good.min() > 0.85 and bad.max() < 0.75 and bad.max() < good.min() - 0.2
    # the orientations found are the true ones (to about the polished step) and the shift is found
    found = euler_to_matrix(*result.angles[:6].T)
    assert np.median(angular_distance(found, euler_to_matrix(*euler.T))) < 8.0
    assert np.allclose(result.shifts[1], [-1, 2], atol=1)


def test_noise_substitution_is_zero_beyond_the_substitution_shell(refined):
    from spa.validation.noise_substitution import noise_substitution, randomise_image_phases

    rows, source = _source(refined)
    r = noise_substitution(source, rows, rows["rlnRandomSubset"].to_numpy(), from_shell=6)
    assert np.all(np.abs(r.substituted[8:]) < 0.12) and r.mean_abs_beyond < 0.05  # ≈ 0 beyond the shell
    assert np.allclose(r.substituted[1:5], r.real[1:5], atol=0.02)  # untouched below it
    assert r.real[8] > 0.4  # while the real data still correlate there (measured 0.57)
    # the randomisation keeps every amplitude
    img = source.read(np.arange(4))
    rnd = randomise_image_phases(img, 6, np.random.default_rng(0))
    assert np.allclose(np.abs(np.fft.rfft2(rnd)), np.abs(np.fft.rfft2(img)), rtol=1e-3, atol=1e-3)


def test_noise_particles_do_not_reach_the_real_resolution(refined):
    from spa.validation.noise_particles import noise_particle_test

    rows, source = _source(refined, 120)
    r = noise_particle_test(source, rows, rows["rlnRandomSubset"].to_numpy(), refined.volume, resolution=30.0,
                            offset_range=2.0)
    assert r.reference_limit < r.reference_resolution
    assert r.real.resolution < 0.85 * r.reference_limit  # the particles go beyond what the reference holds
    assert r.noise.resolution >= 0.98 * r.reference_limit and r.passed  # noise does not
    assert r.noise_vs_reference > 0.3  # but it reproduces the reference at low resolution (the phantom)


def test_alignability_of_true_poses_and_of_random_ones(refined):
    """Refined poses that are the truth agree with a fresh global search; random 'refined' poses do not."""
    from spa.geometry.sampling import random_euler
    from spa.validation.alignability import alignability

    rows, source = _source(refined, 120)
    kw = dict(resolution=9.0, final_order=3, offset_range=2.0)
    good = alignability(source, rows, refined.volume, **kw)
    assert good.agreeing > 0.5 and np.median(good.accuracy) < 8.0  # measured 0.67, 4.6°
    assert np.median(good.precision) < 8.0
    wrong = rows.copy()
    wrong["rlnAngleRot"], wrong["rlnAngleTilt"], wrong["rlnAnglePsi"] = random_euler(len(rows), 1)
    bad = alignability(source, wrong, refined.volume, **kw)
    assert bad.agreeing < 0.05 and np.median(bad.accuracy) > 60.0


def test_handedness_with_and_without_a_reference(refined):
    from spa.initial_model.align import mirror_volume
    from spa.validation.handedness import judge_hand

    assert not judge_hand(refined.volume, pixel_size=PIXEL).judged
    right = judge_hand(refined.volume, refined.truth, pixel_size=PIXEL)
    mirrored = judge_hand(mirror_volume(refined.volume), refined.truth, pixel_size=PIXEL)
    assert right.judged and right.correct and right.correlation > right.mirror_correlation + 0.1
    assert mirrored.judged and not mirrored.correct


def test_noise_substitution_refined_again_by_refine3d_stays_at_zero(refined):
    """The full Chen test: refine3d (gold standard, local searches from the given poses, reference low-passed to
    the substitution shell) refines the substituted images again; its half maps do not correlate beyond."""
    from spa.validation.noise_substitution import noise_substitution

    rows, source = _source(refined, 160)
    r = noise_substitution(source, rows, rows["rlnRandomSubset"].to_numpy(), from_shell=6, mode="refine",
                           volume=refined.volume, order=3, iterations=2)
    assert r.mode == "refine"
    assert np.all(np.abs(r.substituted[8:]) < 0.15) and r.mean_abs_beyond < 0.06  # measured ≤ 0.06, mean 0.024
    assert r.substituted[3] > 0.9  # the refinement did reconstruct the molecule below the shell
