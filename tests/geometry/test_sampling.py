"""HEALPix orientation grids, random poses, local searches, oversampling, shift grids (RELION)."""

import numpy as np
import pytest
from scipy import stats

from spa.geometry.distance import angular_distance, direction_distance
from spa.geometry.euler import euler_to_matrix
from spa.geometry.sampling import (
    angular_step,
    direction_pixel,
    healpix_directions,
    local_neighbourhood,
    local_offsets,
    local_prior_weights,
    orientation_grid,
    oversampled_neighbours,
    oversampled_translations,
    psi_angles,
    psi_step,
    random_euler,
    random_rotations,
    translation_grid,
)
from spa.geometry.symmetry import directions_from_angles


def test_relion_steps():
    assert angular_step(2) == 15.0 and angular_step(3) == 7.5 and angular_step(4) == 3.75
    assert psi_step(3) == 7.5
    np.testing.assert_allclose(psi_angles(2), np.arange(24) * 15.0)


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
def test_healpix_counts_and_ranges(order):
    rot, tilt = healpix_directions(order)
    assert rot.size == tilt.size == 12 * 4**order
    assert tilt.min() > 0 and tilt.max() < 180
    assert rot.min() >= 0 and rot.max() < 360
    # NESTED: pixel i contains direction i
    np.testing.assert_array_equal(direction_pixel(rot, tilt, order), np.arange(rot.size))


@pytest.mark.parametrize("order", [2, 3, 4])
def test_nearest_neighbour_spacing_matches_step(order):
    rot, tilt = healpix_directions(order)
    d = directions_from_angles(rot, tilt)
    cos = d @ d.T
    np.fill_diagonal(cos, -2)
    nn = np.rad2deg(np.arccos(np.clip(cos.max(axis=1), -1, 1)))
    step = angular_step(order)
    assert 0.8 * step < nn.mean() < 1.1 * step
    assert nn.max() < 1.3 * step


def test_orientation_grid_sizes():
    rot, tilt, psi = orientation_grid(2)
    assert rot.size == tilt.size == psi.size == 192 * 24
    # direction-major: the first 24 entries share a direction and run over psi
    assert np.all(rot[:24] == rot[0]) and np.all(tilt[:24] == tilt[0])
    np.testing.assert_allclose(psi[:24], np.arange(24) * 15.0)
    r4, _, _ = orientation_grid(3, "D2")
    assert abs(r4.size / (768 * 48) - 1 / 4) < 0.01
    ri, _, _ = orientation_grid(4, "I")
    assert abs(ri.size / (3072 * 96) - 1 / 60) < 0.002


def test_random_rotations_are_haar_uniform():
    n = 20000
    r = random_rotations(n, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    # E[R] = 0 under Haar measure; each entry has variance 1/3
    assert np.abs(r.mean(axis=0)).max() < 5 * np.sqrt(1 / 3 / n)
    # rotation angle density (1 - cos t)/pi on [0, pi], CDF (t - sin t)/pi
    t = np.deg2rad(angular_distance(np.eye(3), r))
    assert stats.kstest(t, lambda x: (x - np.sin(x)) / np.pi).pvalue > 1e-3
    # reproducible from a seed
    np.testing.assert_array_equal(random_rotations(5, 42), random_rotations(5, 42))


def test_random_euler_distribution():
    rot, tilt, psi = random_euler(20000, 3)
    assert tilt.min() >= 0 and tilt.max() <= 180
    assert stats.kstest(np.cos(np.deg2rad(tilt)), "uniform", args=(-1, 2)).pvalue > 1e-3
    assert stats.kstest(rot, "uniform", args=(-180, 360)).pvalue > 1e-3
    assert stats.kstest(psi, "uniform", args=(-180, 360)).pvalue > 1e-3


@pytest.mark.parametrize("centre", [(0.0, 0.0, 0.0), (33.0, 71.0, -120.0), (200.0, 178.0, 175.0), (10.0, 1.0, 50.0)])
def test_local_neighbourhood_is_the_full_window(centre):
    order = 4
    rot0, tilt0, psi0 = centre
    rot, tilt, psi = local_neighbourhood(rot0, tilt0, psi0, order)
    step = angular_step(order)
    max_deg = 3 * 2 * step  # RELION: sigma = 2 x step, +/- 3 sigma
    ddir, dpsi = local_offsets(rot, tilt, psi, rot0, tilt0, psi0)
    assert ddir.max() <= max_deg + 1e-9 and np.abs(dpsi).max() <= max_deg + 1e-9
    # exactly the grid orientations inside the window
    grot, gtilt, gpsi = orientation_grid(order)
    gd, gp = local_offsets(grot, gtilt, gpsi, rot0, tilt0, psi0)
    inside = (gd <= max_deg) & (np.abs(gp) <= max_deg)
    got = set(zip(rot.round(6), tilt.round(6), psi.round(6)))
    assert len(got) == rot.size == inside.sum()
    assert got == set(zip(grot[inside].round(6), gtilt[inside].round(6), gpsi[inside].round(6)))
    # the nearest grid orientation to the prior is in, also at the poles where rot and psi couple
    a0 = euler_to_matrix(rot0, tilt0, psi0)
    best = angular_distance(euler_to_matrix(grot, gtilt, gpsi), a0).min()
    assert angular_distance(euler_to_matrix(rot, tilt, psi), a0).min() == pytest.approx(best)
    assert best < step


def test_local_offsets_and_prior():
    ddir, dpsi = local_offsets(33.0, 71.0, [-120.0, -110.0], 33.0, 71.0, -120.0)
    np.testing.assert_allclose(ddir, 0.0, atol=1e-12)
    np.testing.assert_allclose(dpsi, [0.0, 10.0], atol=1e-9)
    # at the pole only rot + psi matters: (rot 30, psi 20) equals (rot 0, psi 50) at tilt 0
    ddir, dpsi = local_offsets(30.0, 0.0, 20.0, 0.0, 0.0, 50.0)
    assert abs(ddir) < 1e-9 and abs(dpsi) < 1e-9
    w = local_prior_weights(33.0, 71.0, [-120.0, -110.0], 33.0, 71.0, -120.0, sigma_deg=10.0)
    np.testing.assert_allclose(w, [1.0, np.exp(-0.5)])


def test_local_neighbourhood_includes_grid_centre_and_respects_max():
    grot, gtilt = healpix_directions(3)
    i = 100
    rot, tilt, psi = local_neighbourhood(grot[i], gtilt[i], 45.0, 3, max_deg=10.0)
    hit = (rot == grot[i]) & (tilt == gtilt[i]) & (psi == 45.0)
    assert hit.sum() == 1
    assert direction_distance(rot, tilt, grot[i], gtilt[i]).max() <= 10.0
    at_centre = (rot == grot[i]) & (tilt == gtilt[i])
    assert set(psi[at_centre]) == {37.5, 45.0, 52.5}
    # tiny range: only the cell itself
    rot, tilt, psi = local_neighbourhood(grot[i], gtilt[i], 45.0, 3, max_deg=0.0)
    assert rot.size == 1 and psi[0] == 45.0


@pytest.mark.parametrize("o", [0, 1, 2])
def test_oversampled_neighbours(o):
    order = 3
    grot, gtilt = healpix_directions(order)
    i = 345
    rot, tilt, psi = oversampled_neighbours(grot[i], gtilt[i], 30.0, order, o)
    assert rot.size == 4**o * 2**o
    # the children tile the parent pixel and the psi bin
    np.testing.assert_array_equal(direction_pixel(rot, tilt, order), i)
    assert len(set(zip(rot.round(9), tilt.round(9)))) == 4**o
    half = psi_step(order) / 2
    assert np.all(np.abs(psi - 30.0) < half) and len(np.unique(psi)) == 2**o
    np.testing.assert_allclose(np.unique(psi).mean(), 30.0)
    if o == 0:
        np.testing.assert_allclose([rot[0], tilt[0], psi[0]], [grot[i], gtilt[i], 30.0])
    else:
        fine = healpix_directions(order + o)
        children = np.arange(i * 4**o, (i + 1) * 4**o)
        assert set(zip(rot.round(9), tilt.round(9))) == set(zip(fine[0][children].round(9), fine[1][children].round(9)))
        assert direction_distance(rot, tilt, grot[i], gtilt[i]).max() < angular_step(order)


def test_oversampled_neighbours_batched():
    rot, tilt, psi = oversampled_neighbours([10.0, 100.0], [20.0, 120.0], [0.0, 90.0], 2, 1)
    assert rot.shape == tilt.shape == psi.shape == (2, 8)
    r1, t1, p1 = oversampled_neighbours(100.0, 120.0, 90.0, 2, 1)
    np.testing.assert_array_equal(rot[1], r1)
    np.testing.assert_array_equal(psi[1], p1)


def test_translation_grid():
    g = translation_grid(5, 1)
    assert g.shape == (81, 2)  # integer points in a disc of radius 5
    assert np.any(np.all(g == 0, axis=1))
    assert np.hypot(g[:, 0], g[:, 1]).max() <= 5
    g = translation_grid(6, 2)
    assert g.shape == (29, 2)
    np.testing.assert_allclose(np.unique(g[:, 0]), [-6, -4, -2, 0, 2, 4, 6])
    assert translation_grid(0.5, 1).shape == (1, 2)
    with pytest.raises(ValueError):
        translation_grid(5, 0)


def test_oversampled_translations():
    coarse = translation_grid(4, 2)
    fine = oversampled_translations(coarse, 2.0, 1)
    assert fine.shape == (coarse.shape[0], 4, 2)
    np.testing.assert_allclose(fine.mean(axis=1), coarse)
    np.testing.assert_allclose(np.unique(fine[0, :, 0] - coarse[0, 0]), [-0.5, 0.5])
    np.testing.assert_allclose(oversampled_translations(coarse, 2.0, 0)[:, 0], coarse)
