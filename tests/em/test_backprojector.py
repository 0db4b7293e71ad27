"""Backprojection: the adjoint of the projector, and exact reconstruction from many views.

These test the algorithm on NumPy arrays, whatever $SPA_BACKEND says (the GPU path has its own tests).
"""

import numpy as np

from spa.em.backprojector import BackProjector
from spa.em.fsc import fsc, resolution_at
from spa.em.projector import Projector
from spa.geometry.euler import euler_to_matrix
from tests.conftest import blob_volume


def _uniform_angles(n, rng):
    return np.column_stack(
        [rng.uniform(-180, 180, n), np.degrees(np.arccos(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)]
    )


def test_reconstruction_from_noiseless_projections_recovers_the_map():
    box = 32
    vol = blob_volume(box, seed=1)
    rng = np.random.default_rng(0)
    rots = euler_to_matrix(*_uniform_angles(1500, rng).T)
    slices = Projector(vol).project(rots)
    bp = BackProjector(box, xp=np)
    bp.insert(slices, np.ones(slices.shape, np.float32), rots)
    rec = bp.reconstruct()
    assert np.corrcoef(rec.ravel(), vol.ravel())[0, 1] > 0.999
    # right scale (gridding corrected): peak density within 5 %
    assert abs(rec.max() / vol.max() - 1) < 0.05
    assert resolution_at(fsc(rec, vol), 0.9, box, 1.0) < 2.6  # Nyquist is 2 Å at 1 Å/px


def test_ctf_weighted_insertion_divides_out_the_ctf():
    from spa.ctf import ctf_2d

    box = 32
    vol = blob_volume(box, seed=2)
    rng = np.random.default_rng(1)
    n = 1500
    rots = euler_to_matrix(*_uniform_angles(n, rng).T)
    defocus = rng.uniform(8000, 25000, n)
    ctf = ctf_2d(box, 2.0, defocus, defocus, 0.0, 300, 2.7, 0.1)
    slices = Projector(vol).project(rots) * ctf  # images = CTF · projection
    bp = BackProjector(box, xp=np)
    bp.insert(slices * ctf, ctf * ctf, rots)
    rec = bp.reconstruct()
    assert np.corrcoef(rec.ravel(), vol.ravel())[0, 1] > 0.995


def test_partial_backprojectors_add_up():
    box = 24
    vol = blob_volume(box, seed=3)
    rng = np.random.default_rng(2)
    rots = euler_to_matrix(*_uniform_angles(200, rng).T)
    slices = Projector(vol).project(rots)
    ones = np.ones(slices.shape, np.float32)
    whole = BackProjector(box, xp=np)
    whole.insert(slices, ones, rots)
    a, b = BackProjector(box, xp=np), BackProjector(box, xp=np)
    a.insert(slices[:90], ones[:90], rots[:90])
    b.insert(slices[90:], ones[90:], rots[90:])
    both = a + b
    np.testing.assert_allclose(both.data, whole.data, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(both.weight, whole.weight, rtol=1e-5, atol=1e-5)


def test_projector_and_backprojector_are_adjoint():
    """<P v, y> = <v, Pᵀ y> for the interpolation part (the defining property of the pair)."""
    box = 16
    rng = np.random.default_rng(4)
    rots = euler_to_matrix(*_uniform_angles(3, rng).T)
    proj = Projector(np.zeros((box,) * 3, np.float32))
    # a random half-grid Fourier volume u; its slices P u
    u = (rng.normal(size=proj.fourier.shape) + 1j * rng.normal(size=proj.fourier.shape)).astype(np.complex64)
    proj.fourier[...] = u
    proj._flat = proj.fourier.reshape(-1)
    y = (rng.normal(size=(3, proj.index.size)) + 1j * rng.normal(size=(3, proj.index.size))).astype(np.complex64)
    pu = proj.project_active(rots)
    bp = BackProjector(box, xp=np)
    bp.insert_active(y, np.zeros(y.shape, np.float32), rots)
    # conjugated (Friedel-reflected) samples make the map anti-linear there; compare the real inner products
    lhs = np.vdot(y, pu).real
    rhs = np.vdot(bp.data, u).real
    assert np.isclose(lhs, rhs, rtol=1e-3)
