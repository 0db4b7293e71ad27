"""The Fourier-slice projector against a real-space rotate-and-sum projection."""

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from spa.em.projector import Projector
from spa.geometry.euler import euler_to_matrix
from tests.conftest import blob_volume


def real_space_projection(vol, rotation):
    """∫ V(Aᵀ r) dz by cubic interpolation: the definition in CONVENTIONS.md."""
    box = vol.shape[0]
    c = np.arange(box) - box // 2
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    r = np.stack([xx.ravel(), yy.ravel(), zz.ravel()])
    src = rotation.T @ r
    coords = np.stack([src[2], src[1], src[0]]) + box // 2
    return map_coordinates(vol, coords, order=3, mode="constant").reshape(box, box, box).sum(0)


@pytest.mark.parametrize("box", [32, 33])
def test_fourier_slice_equals_real_space_projection(box):
    vol = blob_volume(box, seed=box)
    rng = np.random.default_rng(3)
    angles = np.column_stack([rng.uniform(-180, 180, 4), rng.uniform(0, 180, 4), rng.uniform(-180, 180, 4)])
    rots = euler_to_matrix(*angles.T)
    images = Projector(vol).project_images(rots)
    for rot, img in zip(rots, images):
        ref = real_space_projection(vol, rot)
        assert np.corrcoef(ref.ravel(), img.ravel())[0, 1] > 0.999
        # same scale: a projection preserves the mass inside the box (± what leaves the box corners)
        assert abs(img.sum() / ref.sum() - 1) < 0.05


def test_projection_along_z_is_the_sum_over_z():
    vol = blob_volume(32, seed=5)
    img = Projector(vol).project_images(np.eye(3)[None])[0]
    assert np.corrcoef(img.ravel(), vol.sum(0).ravel())[0, 1] > 0.9999


def test_rot_90_turns_x_into_y():
    """rot = 90° about z: A maps volume x to image −y (A row 0 = (0, 1, 0)), checks the handedness."""
    box = 32
    vol = np.zeros((box,) * 3, np.float32)
    z, y, x = np.mgrid[:box, :box, :box] - box // 2
    vol += np.exp(-((x - 6) ** 2 + y**2 + z**2) / 4.0)  # a blob at +x
    img = Projector(vol).project_images(euler_to_matrix(90.0, 0.0, 0.0)[None])[0]
    row, col = np.unravel_index(np.argmax(img), img.shape)
    # image r = A p = (p·a0, p·a1): a0 = (0, 1, 0), a1 = (-1, 0, 0) → (0, -6)
    assert (col - box // 2, row - box // 2) == (0, -6)


def test_trilinear_corners_match_the_plain_rule_at_the_wrap():
    """Indices and weights equal the textbook rule (Friedel reflection, y and z wrapped mod P,
    x clamped to the half grid), including points at and beyond ±P/2 where the wrap applies."""
    from spa.em.projector import trilinear_corners

    padded = 20
    half = padded // 2 + 1
    rng = np.random.default_rng(3)
    q = rng.uniform(-padded / 2 - 1, padded / 2 + 1, size=(3, 500)).astype(np.float32)
    q[:, :6] = np.array([[-10.0, 10.0, -10.5, 10.9, 0.0, -0.0],
                         [-11.0, 10.99, 10.0, -10.0, -11.0, 3.5],
                         [10.999, -11.0, 0.5, -10.5, 10.0, -2.0]], np.float32)
    idx, w, conj = trilinear_corners(q[0], q[1], q[2], padded)
    sign = np.where(q[0] < 0, -1.0, 1.0)
    x, y, z = q * sign
    x0, y0, z0 = np.floor(x), np.floor(y), np.floor(z)
    fx, fy, fz = x - x0, y - y0, z - z0
    c = 0
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                xi = np.minimum(np.minimum(x0.astype(int), half - 1) + dx, half - 1)
                yi = (y0.astype(int) + dy) % padded
                zi = (z0.astype(int) + dz) % padded
                np.testing.assert_array_equal(idx[c], (zi * padded + yi) * half + xi)
                wx = fx if dx else 1 - fx
                wy = fy if dy else 1 - fy
                wz = fz if dz else 1 - fz
                np.testing.assert_allclose(w[c], wz * wy * wx, atol=1e-6)
                c += 1
    np.testing.assert_array_equal(conj, q[0] < 0)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-5)


def test_heap_pad_is_optional():
    from spa.backend import keep_heap_top

    assert keep_heap_top(0) is False
    assert isinstance(keep_heap_top(64 * 2**20), bool)
    keep_heap_top()  # back to the default for the rest of the session
