"""In-plane interpolation setups: the per-angle cache gives what computing them afresh gives."""

from __future__ import annotations

import numpy as np

from spa.em.estep import ActivePixels
from spa.em.inplane import AngleTable, InplaneReferences, bilinear_setup, rotated_coordinates


def _direct(angles, act, pad=2.0, padded=64):
    idx, w, conj = bilinear_setup(rotated_coordinates(angles, act.jx, act.jy, pad), padded)
    return np.moveaxis(idx, -1, 0), np.moveaxis(w, -1, 0), conj


def test_angle_table_matches_direct_setup_for_new_repeated_and_unsorted_angles():
    act = ActivePixels.make(32, 12, np)
    table = AngleTable(2.0, 64, np)
    for angles in (np.array([10.0, 3.5, 250.0]), np.array([3.5, 3.5, 10.0, 97.25, 359.9]), np.array([0.0])):
        idx, w, conj = table.lookup(angles, act)
        want_idx, want_w, want_conj = _direct(angles, act)
        assert idx.shape == (4, angles.size, act.size)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(w, want_w)
        np.testing.assert_array_equal(conj, want_conj)
        pm_idx, pm_w, _ = table.lookup(angles, act, point_major=True)
        np.testing.assert_array_equal(pm_idx, np.moveaxis(want_idx, 0, -1))
        np.testing.assert_array_equal(pm_w, np.moveaxis(want_w, 0, -1))
    assert table.codes.size == 6  # each distinct angle computed once


def test_angle_table_starts_again_when_full(monkeypatch):
    act = ActivePixels.make(32, 12, np)
    monkeypatch.setattr(AngleTable, "MAX_ENTRIES", 8 * act.size * 5)
    table = AngleTable(2.0, 64, np)
    table.lookup(np.arange(4.0), act)
    idx, w, _ = table.lookup(np.array([100.0, 101.0, 0.0]), act)  # 4 + 3 > 5 angles: a fresh table
    assert table.codes.size == 3
    np.testing.assert_array_equal(idx, _direct(np.array([100.0, 101.0, 0.0]), act)[0])


def test_projection_through_the_cache_is_the_transpose_of_insertion():
    rng = np.random.default_rng(2)
    refs = InplaneReferences(rng.normal(size=(2, 32, 32)).astype(np.float32))
    act = ActivePixels.make(32, 12, np)
    angles = np.array([5.0, 47.0, 47.0, 300.0])
    x = (rng.normal(size=(4, act.size)) + 1j * rng.normal(size=(4, act.size))).astype(np.complex64)
    sums = refs.new_sums()
    refs.insert(sums, 1, angles, act, x, np.ones((4, act.size), np.float32))
    # <P v, x> = <v, Pᵀ x> with v the class-1 transform (real inner product on the stored half grid)
    lhs = np.sum((refs.project(1, angles, act) * x.conj()).real)
    rhs = np.sum((refs.fourier[1] * sums["data"][1].conj()).real)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4)
    np.testing.assert_array_equal(refs.project_all(angles, act)[1], refs.project(1, angles, act))
