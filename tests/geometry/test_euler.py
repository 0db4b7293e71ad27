"""Euler angles: RELION's Euler_angles2matrix values, proper rotations, round trips."""

import numpy as np
import pytest

from spa.geometry.euler import euler_to_matrix, matrix_to_euler


def _rz_passive(a):
    c, s = np.cos(np.deg2rad(a)), np.sin(np.deg2rad(a))
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def _ry_passive(b):
    c, s = np.cos(np.deg2rad(b)), np.sin(np.deg2rad(b))
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


def test_hand_computed_rot90():
    # RELION's formula with rot = 90, tilt = psi = 0: x -> -y, y -> x in image coordinates
    expected = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(euler_to_matrix(90, 0, 0), expected, atol=1e-15)


def test_hand_computed_tilt90():
    # tilt = 90: the projection direction (third row) is +x of the volume
    expected = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(euler_to_matrix(0, 90, 0), expected, atol=1e-15)


def test_hand_computed_psi90():
    expected = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(euler_to_matrix(0, 0, 90), expected, atol=1e-15)


def test_matches_zyz_product():
    # RELION: A = Rz(psi) Ry(tilt) Rz(rot) with passive (coordinate-frame) rotations
    rng = np.random.default_rng(1)
    for rot, tilt, psi in rng.uniform([-180, 0, -180], [180, 180, 180], size=(20, 3)):
        expected = _rz_passive(psi) @ _ry_passive(tilt) @ _rz_passive(rot)
        np.testing.assert_allclose(euler_to_matrix(rot, tilt, psi), expected, atol=1e-13)


def test_proper_rotations():
    rng = np.random.default_rng(2)
    a = rng.uniform(-360, 360, size=(3, 500))
    m = euler_to_matrix(*a)
    assert m.shape == (500, 3, 3)
    np.testing.assert_allclose(m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-13)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-13)


def test_round_trip_generic_angles():
    rng = np.random.default_rng(3)
    rot = rng.uniform(-179, 179, 1000)
    tilt = rng.uniform(0.5, 179.5, 1000)
    psi = rng.uniform(-179, 179, 1000)
    r2, t2, p2 = matrix_to_euler(euler_to_matrix(rot, tilt, psi))
    np.testing.assert_allclose(r2, rot, atol=1e-9)
    np.testing.assert_allclose(t2, tilt, atol=1e-9)
    np.testing.assert_allclose(p2, psi, atol=1e-9)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_round_trip_gimbal_lock(tilt):
    rng = np.random.default_rng(4)
    rot, psi = rng.uniform(-180, 180, (2, 50))
    m = euler_to_matrix(rot, tilt, psi)
    r2, t2, p2 = matrix_to_euler(m)
    np.testing.assert_allclose(r2, 0.0, atol=1e-12)
    np.testing.assert_allclose(t2, tilt, atol=1e-9)
    np.testing.assert_allclose(euler_to_matrix(r2, t2, p2), m, atol=1e-12)


def test_round_trip_matrices_any_angles():
    rng = np.random.default_rng(5)
    m = euler_to_matrix(*rng.uniform(-720, 720, size=(3, 300)))
    np.testing.assert_allclose(euler_to_matrix(*matrix_to_euler(m)), m, atol=1e-12)
