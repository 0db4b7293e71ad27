"""Key convention test: analytic projections of the atoms = rotate-and-sum projections of the map.

Links maps ([z, y, x], centre B//2), RELION Euler angles (A = euler_to_matrix,
projection ∫ V(Aᵀ r) dz) and images ([y, x], centre B//2).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from spa.geometry.euler import euler_to_matrix
from spa.simulate.density import render_map
from spa.simulate.molecule import make_molecule
from spa.simulate.projection import project_atoms, project_molecule


def real_space_projection(vol: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Σ_z V(Aᵀ r) on the voxel grid, by cubic interpolation of the map."""
    b = vol.shape[0]
    c = np.arange(b) - b // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    src = np.stack([x, y, z], -1).reshape(-1, 3) @ a  # rows: (Aᵀ r)ᵀ
    vals = map_coordinates(vol, [src[:, 2] + b // 2, src[:, 1] + b // 2, src[:, 0] + b // 2], order=3)
    return vals.reshape(vol.shape).sum(axis=0)


def _ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.mark.parametrize("box,pixel", [(40, 2.5), (41, 2.0)])
def test_analytic_projection_matches_rotated_map(box, pixel):
    mol = make_molecule(0.6 * box * pixel, seed=11)
    vol = render_map(mol, box, pixel)
    rng = np.random.default_rng(box)
    rot, psi = rng.uniform(-180, 180, (2, 3))
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, 3)))
    rot, tilt, psi = np.append(rot, 40.0), np.append(tilt, 50.0), np.append(psi, 20.0)  # a 90°-ish turn
    mats = euler_to_matrix(rot, tilt, psi)
    analytic = project_molecule(mol, mats, box, pixel)
    for i in range(4):
        ref = real_space_projection(vol, mats[i])
        assert _ncc(analytic[i], ref) > 0.99
        assert abs(analytic[i].sum() - ref.sum()) < 0.01 * ref.sum()  # mass per pixel, same units
        # the test has teeth: the transposed rotation (the other convention) does not match
        # (unless the rotation is near 180°, where A ≈ Aᵀ)
        if np.trace(mats[i]) > 0:
            assert _ncc(analytic[i], real_space_projection(vol, mats[i].T)) < 0.9


def test_identity_pose_is_the_sum_along_z():
    box, pixel = 36, 3.0
    mol = make_molecule(0.6 * box * pixel, seed=2)
    vol = render_map(mol, box, pixel)
    img = project_molecule(mol, np.eye(3)[None], box, pixel)[0]
    assert np.allclose(img, vol.sum(axis=0), atol=1e-3 * vol.sum(axis=0).max())


def test_single_atom_lands_where_expected_and_shifts_move_it():
    box, pixel = 32, 1.5
    p = np.array([[6.0, -3.0, 4.5]])  # Å, (x, y, z)
    a = euler_to_matrix(30.0, 60.0, -45.0)
    img = project_atoms(p, [1.0], [1.5], a[None], box, pixel)[0]
    expected = (a @ p[0])[:2] / pixel + box // 2  # (col, row)
    rows, cols = np.indices(img.shape)
    centroid = np.array([(img * cols).sum(), (img * rows).sum()]) / img.sum()
    assert np.allclose(centroid, expected, atol=1e-3)
    moved = project_atoms(p, [1.0], [1.5], a[None], box, pixel, shifts=[[2.5, -1.25]])[0]
    centroid2 = np.array([(moved * cols).sum(), (moved * rows).sum()]) / moved.sum()
    assert np.allclose(centroid2 - centroid, [2.5, -1.25], atol=1e-3)
