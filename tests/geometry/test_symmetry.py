"""Point groups in RELION's settings, map symmetrisation and asymmetric units."""

import numpy as np
import pytest

from spa.errors import SpaInputError
from spa.geometry.sampling import healpix_directions
from spa.geometry.symmetry import (
    SymmetryError,
    asymmetric_unit_filter,
    axis_rotation,
    directions_from_angles,
    group_order,
    parse_group,
    rotate_volume,
    symmetrise_volume,
    symmetry_matrices,
    to_asymmetric_unit,
)

PHI = (1 + np.sqrt(5)) / 2
ORDERS = {"C1": 1, "C2": 2, "C4": 4, "C11": 11, "D1": 2, "D2": 4, "D7": 14, "T": 12, "O": 24,
          "I": 60, "I1": 60, "I2": 60, "I3": 60, "I4": 60}
ALL = list(ORDERS)


def has_rotation(mats, axis, angle_deg):
    r = axis_rotation(axis, angle_deg)
    return bool(np.any(np.abs(mats - r).max(axis=(1, 2)) < 1e-9))


def same_set(a, b):
    return len(a) == len(b) and all(np.abs(b - m).max(axis=(1, 2)).min() < 1e-9 for m in a)


@pytest.mark.parametrize("group", ALL)
def test_order_identity_first_and_proper(group):
    m = symmetry_matrices(group)
    assert m.shape == (ORDERS[group], 3, 3)
    assert group_order(group) == ORDERS[group]
    np.testing.assert_array_equal(m[0], np.eye(3))
    np.testing.assert_allclose(m @ np.swapaxes(m, 1, 2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)


@pytest.mark.parametrize("group", ALL)
def test_group_closure_inverses_and_distinct(group):
    m = symmetry_matrices(group)
    prods = np.einsum("aij,bjk->abik", m, m).reshape(-1, 3, 3)
    # every product is an element; every element has its inverse in the set
    d = np.abs(prods[:, None] - m[None]).max(axis=(2, 3))
    assert d.min(axis=1).max() < 1e-9
    dinv = np.abs(np.swapaxes(m, 1, 2)[:, None] - m[None]).max(axis=(2, 3))
    assert dinv.min(axis=1).max() < 1e-9
    # no duplicates
    dd = np.abs(m[:, None] - m[None]).max(axis=(2, 3)) + 10 * np.eye(len(m))
    assert dd.min() > 1e-3


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_cn_dn_axes(n):
    c, d = symmetry_matrices(f"C{n}"), symmetry_matrices(f"D{n}")
    assert has_rotation(c, (0, 0, 1), 360 / n)
    assert has_rotation(d, (0, 0, 1), 360 / n)
    assert has_rotation(d, (1, 0, 0), 180)
    assert not has_rotation(c, (1, 0, 0), 180)


def test_d2_twofolds_on_xyz():
    m = symmetry_matrices("D2")
    for axis in np.eye(3):
        assert has_rotation(m, axis, 180)


def test_t_setting():
    m = symmetry_matrices("T")
    assert has_rotation(m, (0, 0, 1), 120)  # RELION: 3-fold on Z (not Heymann's 2-fold on Z)
    assert has_rotation(m, (0, np.sqrt(2 / 3), np.sqrt(1 / 3)), 180)
    assert not has_rotation(m, (0, 0, 1), 180)


def test_o_setting():
    m = symmetry_matrices("O")
    for axis in np.eye(3):
        assert has_rotation(m, axis, 90)
    assert has_rotation(m, (1, 1, 1), 120)
    assert has_rotation(m, (1, 1, 0), 180)


def test_icosahedral_settings():
    i1, i2, i3, i4 = (symmetry_matrices(f"I{k}") for k in range(1, 5))
    for m in (i1, i2):
        for axis in np.eye(3):
            assert has_rotation(m, axis, 180)
    # I2 (Crowther 222): front 5-folds in the XZ plane; I1: in the YZ plane
    assert has_rotation(i2, (1, 0, PHI), 72) and has_rotation(i2, (-1, 0, PHI), 72)
    assert not has_rotation(i2, (0, 1, PHI), 72)
    assert has_rotation(i1, (0, 1, PHI), 72) and has_rotation(i1, (0, -1, PHI), 72)
    assert not has_rotation(i1, (1, 0, PHI), 72)
    # I3 and I4: 5-fold on Z and 2-fold on Y; the XZ-plane 2-fold near Z at -x (I3) or +x (I4)
    for m in (i3, i4):
        assert has_rotation(m, (0, 0, 1), 72)
        assert has_rotation(m, (0, 1, 0), 180)
    assert has_rotation(i3, (-1, 0, PHI), 180) and not has_rotation(i3, (1, 0, PHI), 180)
    assert has_rotation(i4, (1, 0, PHI), 180) and not has_rotation(i4, (-1, 0, PHI), 180)
    # the settings are the same group turned about Z
    rz90, rz180 = axis_rotation((0, 0, 1), 90), axis_rotation((0, 0, 1), 180)
    assert same_set(rz90 @ i2 @ rz90.T, i1)
    assert same_set(rz180 @ i3 @ rz180.T, i4)
    assert not same_set(i3, i4) and not same_set(i1, i2)
    assert same_set(symmetry_matrices("I"), i2)


def test_parse_group():
    assert parse_group("c4") == "C4"
    assert parse_group(" d7 ") == "D7"
    assert parse_group("i") == "I2"
    assert parse_group("i3") == "I3"
    assert parse_group("o") == "O"


@pytest.mark.parametrize("bad", ["X", "C0", "I5", "Cn", "", "D", "C-2", "TD", 4])
def test_unknown_groups_raise_input_error(bad):
    with pytest.raises(SymmetryError) as err:
        symmetry_matrices(bad)
    assert isinstance(err.value, SpaInputError) and isinstance(err.value, ValueError)


def test_matrices_are_copies():
    m = symmetry_matrices("C4")
    m[:] = 0
    np.testing.assert_array_equal(symmetry_matrices("C4")[0], np.eye(3))


# -- maps ----------------------------------------------------------------------------


def _blobs(box, centres, sigma):
    c = box // 2
    z, y, x = np.meshgrid(*(np.arange(box) - c,) * 3, indexing="ij")
    v = np.zeros((box,) * 3)
    for px, py, pz in centres:
        v += np.exp(-((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) / (2 * sigma**2))
    return v


def _sphere(box, radius):
    c = box // 2
    z, y, x = np.meshgrid(*(np.arange(box) - c,) * 3, indexing="ij")
    return x**2 + y**2 + z**2 <= radius**2


def test_rotate_volume_convention():
    # V'(r) = V(R^T r): a blob at p moves to R p. Rz(90) takes +x to +y.
    box = 24
    v = _blobs(box, [(6, 0, 0)], 1.5)
    out = rotate_volume(v, axis_rotation((0, 0, 1), 90))
    c = box // 2
    assert np.unravel_index(np.argmax(out), out.shape) == (c, c + 6, c)
    # and Ry(90) takes +z to +x
    v = _blobs(box, [(0, 0, 5)], 1.5)
    out = rotate_volume(v, axis_rotation((0, 1, 0), 90))
    assert np.unravel_index(np.argmax(out), out.shape) == (c, c, c + 5)


@pytest.mark.parametrize("box", [28, 29])
@pytest.mark.parametrize("group", ["C4", "D3", "O", "I1"])
def test_symmetrised_map_is_invariant(group, box):
    rng = np.random.default_rng(7)
    v = _blobs(box, rng.uniform(-7, 7, size=(5, 3)), 2.5).astype(np.float32)
    s = symmetrise_volume(v, group, order=3)
    assert s.dtype == np.float32 and s.shape == v.shape
    mask = _sphere(box, box // 2 - 3)
    scale = np.abs(s[mask]).max()
    for r in symmetry_matrices(group)[1:]:
        rs = rotate_volume(s, r, order=3)
        assert np.abs(rs[mask] - s[mask]).max() < 0.005 * scale
    again = symmetrise_volume(s, group, order=3)
    assert np.abs(again[mask] - s[mask]).max() < 0.005 * scale
    # the average keeps the total density (blobs well inside the box)
    assert abs(s.sum() - v.sum()) < 0.02 * v.sum()


def test_symmetrise_keeps_an_exactly_symmetric_map():
    # blobs on the orbit of one point under T: already symmetric, must come back unchanged
    p = np.array([5.0, 2.0, 3.0])
    pts = [m @ p for m in symmetry_matrices("T")]
    v = _blobs(30, pts, 2.0)
    mask = _sphere(30, 12)
    s3 = symmetrise_volume(v, "T", order=3)
    assert np.abs(s3[mask] - v[mask]).max() < 0.02 * v.max()
    s1 = symmetrise_volume(v, "T", order=1)  # trilinear blurs a little
    assert np.abs(s1[mask] - v[mask]).max() < 0.08 * v.max()
    # and an asymmetric map is changed
    w = _blobs(30, [p], 2.0)
    assert np.abs(symmetrise_volume(w, "T") - w).max() > 0.5 * w.max()


# -- asymmetric units -----------------------------------------------------------------


@pytest.mark.parametrize("group", ["C1", "C2", "C5", "D2", "D6", "T", "O", "I1", "I2", "I3", "I4"])
def test_exactly_one_mate_in_asymmetric_unit(group):
    rng = np.random.default_rng(11)
    d = rng.standard_normal((2000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    m = symmetry_matrices(group)
    mates = np.einsum("gij,nj->ngi", m, d)  # (n, G, 3)
    rot = np.rad2deg(np.arctan2(mates[..., 1], mates[..., 0]))
    tilt = np.rad2deg(np.arccos(np.clip(mates[..., 2], -1, 1)))
    inside = asymmetric_unit_filter(rot, tilt, group)
    np.testing.assert_array_equal(inside.sum(axis=1), 1)
    # to_asymmetric_unit returns that mate
    r2, t2 = to_asymmetric_unit(rot[:, 0], tilt[:, 0], group)
    assert asymmetric_unit_filter(r2, t2, group).all()
    expected = mates[np.arange(len(d)), inside.argmax(axis=1)]
    np.testing.assert_allclose(directions_from_angles(r2, t2), expected, atol=1e-9)


@pytest.mark.parametrize("group", ["C3", "D2", "D7", "T", "O", "I2", "I3"])
def test_asymmetric_unit_grid_size_and_coverage(group):
    rot, tilt = healpix_directions(4)  # 3072 directions, step 3.75 deg
    keep = asymmetric_unit_filter(rot, tilt, group)
    n_g = group_order(group)
    assert abs(keep.sum() - rot.size / n_g) <= max(3, 0.1 * rot.size / n_g)
    d = directions_from_angles(rot[keep], tilt[keep])
    expanded = np.einsum("gij,nj->gni", symmetry_matrices(group), d).reshape(-1, 3)
    frot, ftilt = healpix_directions(5)
    fine = directions_from_angles(frot, ftilt)
    nearest = np.rad2deg(np.arccos(np.clip((fine @ expanded.T).max(axis=1), -1, 1)))
    # as dense as the full grid on average, and no hole wider than one step (C1: max 1.9 deg)
    assert nearest.max() < 3.75
    assert nearest.mean() < 1.15 * 1.32


def test_cn_asymmetric_unit_is_a_rot_wedge():
    rot, tilt = healpix_directions(4)
    keep = asymmetric_unit_filter(rot, tilt, "C4")
    r = np.mod(rot[keep], 360)
    assert r.max() <= 90.02 and r.min() >= 0.0
    keep_d = asymmetric_unit_filter(rot, tilt, "D4")
    assert tilt[keep_d].max() < 91.0  # D<n>: (nearly) the upper hemisphere


@pytest.mark.gpu
def test_symmetrise_cupy_matches_numpy():
    from spa.backend import cupy_available, get_backend

    if not cupy_available():
        pytest.skip("no CUDA device")
    be = get_backend("cupy")
    v = _blobs(24, [(3.0, 1.0, 2.0)], 2.0).astype(np.float32)
    out = symmetrise_volume(be.asarray(v), "D3")
    assert type(out).__module__.startswith("cupy") and out.dtype == np.float32
    np.testing.assert_allclose(be.to_numpy(out), symmetrise_volume(v, "D3"), atol=1e-6)


def test_slabs_give_the_same_result(monkeypatch):
    import spa.geometry.symmetry as sym

    v = _blobs(20, [(3.0, -2.0, 4.0)], 2.0)
    whole = symmetrise_volume(v, "D2")
    monkeypatch.setattr(sym, "_SLAB_VOXELS", 3 * 20 * 20)  # 3 z-planes per call, 7 slabs
    np.testing.assert_array_equal(symmetrise_volume(v, "D2"), whole)
