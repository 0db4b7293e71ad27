"""Pose distances (with symmetry) and the global frame between estimated and true poses."""

import numpy as np
import pytest

from spa.geometry.distance import align_rotation_sets, angular_distance, angular_distance_sym, direction_distance
from spa.geometry.euler import euler_to_matrix
from spa.geometry.sampling import random_rotations
from spa.geometry.symmetry import axis_rotation, symmetry_matrices

F = np.diag([1.0, 1.0, -1.0])


def _perturb(r, deg, rng):
    """Each rotation turned by exactly ``deg`` about a random axis."""
    axes = rng.standard_normal((len(r), 3))
    return np.stack([m @ axis_rotation(a, deg) for m, a in zip(r, axes)])


def test_angular_distance_known_angles():
    assert angular_distance(np.eye(3), axis_rotation((0, 0, 1), 30)) == pytest.approx(30.0)
    assert angular_distance(np.eye(3), axis_rotation((1, 2, 3), 123.4)) == pytest.approx(123.4)
    assert angular_distance(np.eye(3), axis_rotation((1, -1, 0), 180)) == pytest.approx(180.0)
    # small angles stay accurate (arccos of the trace would give ~1e-5 deg noise)
    assert angular_distance(np.eye(3), axis_rotation((0, 1, 1), 1e-6)) == pytest.approx(1e-6, rel=1e-6)
    # a psi change of 10 deg at fixed direction
    assert angular_distance(euler_to_matrix(20, 50, 0), euler_to_matrix(20, 50, 10)) == pytest.approx(10.0)


def test_angular_distance_broadcasts_and_is_invariant():
    rng = np.random.default_rng(0)
    a, b, g = random_rotations(50, rng), random_rotations(50, rng), random_rotations(1, rng)[0]
    d = angular_distance(a, b)
    assert d.shape == (50,)
    np.testing.assert_allclose(angular_distance(g @ a, g @ b), d, atol=1e-9)
    np.testing.assert_allclose(angular_distance(a @ g, b @ g), d, atol=1e-9)
    np.testing.assert_allclose(angular_distance(b, a), d, atol=1e-9)
    assert angular_distance(a[:, None], b[None]).shape == (50, 50)


@pytest.mark.parametrize("group", ["C4", "D2", "O", "I3"])
def test_angular_distance_sym(group):
    rng = np.random.default_rng(1)
    a = random_rotations(200, rng)
    s = symmetry_matrices(group)[rng.integers(0, len(symmetry_matrices(group)), 200)]
    b = _perturb(a, 2.0, rng) @ s  # symmetry mate of a pose 2 deg away
    np.testing.assert_allclose(angular_distance_sym(a, b, group), 2.0, atol=1e-9)
    np.testing.assert_allclose(angular_distance_sym(b, a, group), 2.0, atol=1e-9)
    assert np.median(angular_distance(a, b)) > 20  # without symmetry they look far apart


def test_direction_distance():
    assert direction_distance(0, 0, 0, 90) == pytest.approx(90.0)
    assert direction_distance(123, 0, -40, 0) == pytest.approx(0.0, abs=1e-12)
    assert direction_distance(10, 30, 190, 150) == pytest.approx(180.0)
    assert direction_distance(0, 90, 90, 90) == pytest.approx(90.0)
    np.testing.assert_allclose(direction_distance([0, 0], [10, 20], 0, 0), [10, 20])


def test_frame_convention_with_points():
    # estimated map = true map rotated by G (points p -> G p); then A_true = A_est G
    rng = np.random.default_rng(2)
    pts = rng.uniform(-20, 20, size=(30, 3))
    g = random_rotations(1, rng)[0]
    a_true = random_rotations(100, rng)
    a_est = a_true @ g.T
    img_true = np.einsum("nij,pj->npi", a_true, pts)[..., :2]  # projected positions (x, y)
    img_est = np.einsum("nij,pj->npi", a_est, pts @ g.T)[..., :2]
    np.testing.assert_allclose(img_est, img_true, atol=1e-9)
    fit = align_rotation_sets(a_est, a_true)
    np.testing.assert_allclose(fit.rotation, g, atol=1e-12)
    assert not fit.mirrored and fit.residuals_deg.max() < 1e-6
    np.testing.assert_allclose(fit.apply(a_est), a_true, atol=1e-12)


def test_align_with_noise():
    rng = np.random.default_rng(3)
    g = random_rotations(1, rng)[0]
    a_true = random_rotations(500, rng)
    a_est = _perturb(a_true, 2.0, rng) @ g.T
    fit = align_rotation_sets(a_est, a_true)
    assert angular_distance(fit.rotation, g) < 0.3
    assert np.median(fit.residuals_deg) == pytest.approx(2.0, abs=0.3)


def test_align_detects_the_other_hand():
    # mirrored map V_est(r) = V_true(H r), det H = -1: images agree with A_est = F A_true H
    rng = np.random.default_rng(4)
    pts = rng.uniform(-20, 20, size=(30, 3))
    h = random_rotations(1, rng)[0] @ np.diag([1.0, -1.0, 1.0])
    a_true = random_rotations(300, rng)
    a_est = F @ a_true @ h
    assert np.allclose(np.linalg.det(a_est), 1.0)
    img_true = np.einsum("nij,pj->npi", a_true, pts)[..., :2]
    img_est = np.einsum("nij,pj->npi", a_est, pts @ np.linalg.inv(h).T)[..., :2]  # points of V_est: H^-1 p
    np.testing.assert_allclose(img_est, img_true, atol=1e-9)
    same_hand = align_rotation_sets(a_est, a_true)
    assert np.median(same_hand.residuals_deg) > 30
    fit = align_rotation_sets(a_est, a_true, allow_mirror=True)
    assert fit.mirrored and fit.residuals_deg.max() < 1e-6
    assert fit.other_hand_median_deg > 30
    np.testing.assert_allclose(fit.rotation, F @ h.T, atol=1e-9)
    np.testing.assert_allclose(fit.apply(a_est), a_true, atol=1e-9)


def test_align_rejects_mismatched_sets():
    with pytest.raises(ValueError):
        align_rotation_sets(np.eye(3)[None], np.zeros((0, 3, 3)))
