"""The synthetic molecule: asymmetric (handedness detectable), symmetric assemblies exact, conformations local."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from spa.geometry.symmetry import symmetry_matrices
from spa.simulate.density import render_map
from spa.simulate.molecule import axis_angle, helix, make_molecule

BOX, PIXEL = 48, 2.0


def _ncc(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _rotate(vol, rot):
    """V(Rᵀ r): the map turned by R about the box centre (cubic interpolation)."""
    b = vol.shape[0]
    c = np.arange(b) - b // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.stack([x, y, z], -1).reshape(-1, 3) @ rot  # rows are (Rᵀ r)ᵀ
    return map_coordinates(vol, [r[:, 2] + b // 2, r[:, 1] + b // 2, r[:, 0] + b // 2], order=3).reshape(vol.shape)


@pytest.fixture(scope="module")
def c1_map():
    return render_map(make_molecule(0.6 * BOX * PIXEL, seed=5), BOX, PIXEL)


def test_size_centre_and_secondary_structure():
    d = 0.6 * BOX * PIXEL
    mol = make_molecule(d, seed=5)
    assert mol.radius <= d / 2 + 1e-6
    assert mol.radius > 0.4 * d  # fills its sphere, not a small clump
    com = np.average(mol.coords, axis=0, weights=mol.weights)
    assert np.linalg.norm(com) < 2.0
    assert len(np.unique(mol.domains)) == 3
    # nearest-neighbour distances of a protein: no two atoms on top of each other,
    # most within a residue step (helix Cα–Cα 3.8 Å, side chains closer)
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(mol.coords).query(mol.coords, k=2)
    assert np.median(dist[:, 1]) < 4.5


def test_molecule_is_not_its_mirror_nor_a_180_degree_turn(c1_map):
    mirrored = c1_map[:, :, ::-1]  # x → −x: the other hand
    assert _ncc(c1_map, mirrored) < 0.8
    for axis in ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1)):
        turned = _rotate(c1_map, axis_angle(axis, 180.0))
        assert _ncc(c1_map, turned) < 0.8, axis
    assert _ncc(c1_map, _rotate(c1_map, np.eye(3))) > 0.999  # the comparison itself is sound


def _dihedral(p0, p1, p2, p3):
    """IUPAC dihedral angle (degrees) of four points."""
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    return np.degrees(np.arctan2(np.cross(n1, n2) @ (b2 / np.linalg.norm(b2)), n1 @ n2))


def test_helices_are_right_handed():
    ca, _ = helix(12)
    # Cα(i..i+3) dihedral of a right-handed α-helix is about +50°; the mirror image gives −50°
    dih = [_dihedral(*ca[i : i + 4]) for i in range(8)]
    assert np.allclose(dih, dih[0]) and 40 < dih[0] < 60
    mirror = ca * [-1, 1, 1]
    assert _dihedral(*mirror[:4]) < -40
    assert np.allclose(np.linalg.norm(np.diff(ca, axis=0), axis=1), 3.8, atol=0.1)  # Cα–Cα distance


@pytest.mark.parametrize("group", ["D2", "O"])
def test_assembly_is_invariant_under_its_group(group):
    mol = make_molecule(0.6 * BOX * PIXEL, seed=2, symmetry=group)
    mats = symmetry_matrices(group)
    n_sub = len(mats)
    assert len(mol) % n_sub == 0
    # atoms: every group rotation maps the atom set onto itself
    from scipy.spatial import cKDTree

    tree = cKDTree(mol.coords)
    for r in mats:
        d, _ = tree.query(mol.coords @ r.T)
        assert d.max() < 1e-6
    vol = render_map(mol, BOX, PIXEL)
    for r in mats[1:4]:
        assert _ncc(vol, _rotate(vol, r)) > 0.995
    # a rotation outside the group does not leave it invariant
    assert _ncc(vol, _rotate(vol, axis_angle((0.3, 0.5, 0.8), 50.0))) < 0.9
    # and the subunit itself is asymmetric: one copy is not invariant under the group
    sub = mol.coords[: len(mol) // n_sub]
    d, _ = cKDTree(sub).query(sub @ mats[1].T)
    assert np.median(d) > 3.0


def test_conformation_moves_one_domain_only():
    d = 0.6 * BOX * PIXEL
    a = make_molecule(d, seed=9)
    b = make_molecule(d, seed=9, conformation=2)
    moved = np.linalg.norm(a.coords - b.coords, axis=1) > 1e-9
    last = a.domains == a.domains.max()
    assert np.array_equal(moved, last & moved) and moved.sum() > 0.8 * last.sum()
    # a 25° hinge: displacements of several Å, maps clearly different but related
    assert np.linalg.norm(a.coords - b.coords, axis=1)[last].max() > 5.0
    va, vb = render_map(a, BOX, PIXEL), render_map(b, BOX, PIXEL)
    assert 0.3 < _ncc(va, vb) < 0.95


def test_deterministic_from_seed():
    a = make_molecule(60.0, seed=3)
    b = make_molecule(60.0, seed=3)
    c = make_molecule(60.0, seed=4)
    assert np.array_equal(a.coords, b.coords) and np.array_equal(a.weights, b.weights)
    assert len(a) != len(c) or not np.allclose(a.coords, c.coords)


def test_map_mass_and_centre():
    mol = make_molecule(0.6 * BOX * PIXEL, seed=1)
    vol = render_map(mol, BOX, PIXEL)
    assert vol.dtype == np.float32 and vol.shape == (BOX,) * 3
    assert abs(vol.sum() - mol.weights.sum()) < 1e-3 * mol.weights.sum()
    z, y, x = np.indices(vol.shape) - BOX // 2
    centre_px = np.array([(vol * x).sum(), (vol * y).sum(), (vol * z).sum()]) / vol.sum()
    expected = np.average(mol.coords, axis=0, weights=mol.weights) / PIXEL
    assert np.allclose(centre_px, expected, atol=0.05)  # (x, y, z) Å ↔ [z, y, x] voxels, origin B//2
