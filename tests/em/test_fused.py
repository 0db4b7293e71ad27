"""The fused CPU loops (Numba) compute what the NumPy path of the projector computes."""

from __future__ import annotations

import numpy as np
import pytest

from spa.backend import get_backend
from spa.em import fused
from spa.em import projector as P
from spa.geometry.euler import euler_to_matrix

pytestmark = pytest.mark.skipif(not fused._HAVE_NUMBA, reason="Numba not installed")


def _problem(box=24, n_rot=40, seed=0):
    rng = np.random.default_rng(seed)
    padded = 2 * box
    size = padded * padded * (padded // 2 + 1)
    flat = (rng.normal(size=size) + 1j * rng.normal(size=size)).astype(np.complex64)
    _, jx, jy = P.image_frequencies(box, None, np)
    angles = rng.uniform(-180, 180, (n_rot, 3))
    angles[:4] = [[0, 0, 0], [0, 90, 0], [90, 90, 90], [180, 180, 0]]  # slices along the grid's axes and wrap
    rots = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    return rng, flat, rots, jx, jy, padded


def test_projection_is_the_numpy_paths(monkeypatch):
    _, flat, rots, jx, jy, padded = _problem()
    monkeypatch.setenv("SPA_NUMBA", "0")
    want = P.gather_slices(flat, rots, jx, jy, 2.0, padded)
    monkeypatch.setenv("SPA_NUMBA", "1")
    assert fused.available()
    got = P.gather_slices(flat, rots, jx, jy, 2.0, padded)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("dtypes", [(np.complex128, np.float64), (np.complex64, np.float32)])
def test_insertion_is_the_numpy_paths(monkeypatch, dtypes):
    rng, flat, rots, jx, jy, padded = _problem(seed=1)
    be = get_backend("numpy")
    values = (rng.normal(size=(len(rots), jx.size)) + 1j * rng.normal(size=(len(rots), jx.size))).astype(np.complex64)
    weights = rng.uniform(0, 1, (len(rots), jx.size)).astype(np.float32)
    sums = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("SPA_NUMBA", flag)
        d, w = np.zeros(flat.size, dtypes[0]), np.zeros(flat.size, dtypes[1])
        P.scatter_slices(be, d, w, rots, jx, jy, values, weights, 2.0, padded)
        sums[flag] = d, w
    tol = 1e-5 if dtypes[1] == np.float32 else 1e-6
    np.testing.assert_allclose(sums["1"][0], sums["0"][0], rtol=0, atol=tol * np.abs(sums["0"][0]).max())
    np.testing.assert_allclose(sums["1"][1], sums["0"][1], rtol=0, atol=tol * sums["0"][1].max())


def test_projection_and_insertion_are_transposes(monkeypatch):
    """<P v, x> = <v, Pᵀ x>: the insertion adds each value with exactly the projection's weights."""
    monkeypatch.setenv("SPA_NUMBA", "1")
    rng, flat, rots, jx, jy, padded = _problem(seed=2)
    x = (rng.normal(size=(len(rots), jx.size)) + 1j * rng.normal(size=(len(rots), jx.size))).astype(np.complex64)
    d, w = np.zeros(flat.size, np.complex128), np.zeros(flat.size)
    P.scatter_slices(get_backend("numpy"), d, w, rots, jx, jy, x, np.ones(x.shape, np.float32), 2.0, padded)
    lhs = np.sum((P.gather_slices(flat, rots, jx, jy, 2.0, padded).astype(np.complex128) * x.conj()).real)
    rhs = np.sum((flat.astype(np.complex128) * d.conj()).real)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("SPA_NUMBA", "0")
    assert not fused.available()
