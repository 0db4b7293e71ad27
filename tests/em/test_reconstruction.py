"""The shared regularised reconstruction (spa.em.reconstruction): one formula for 2D and 3D.

These test the algorithm on NumPy arrays, whatever $SPA_BACKEND says.
"""

import numpy as np
import pytest

from spa.em.backprojector import BackProjector
from spa.em.fsc import fsc, resolution_at
from spa.em.gridding import crop_centered, gridding_factor
from spa.em.inplane import InplaneReferences
from spa.em.projector import Projector
from spa.em.reconstruction import complete_hermitian, reconstruct
from spa.em.volume_refs import VolumeReferences
from spa.fourier import real_radius
from spa.geometry.euler import euler_to_matrix
from tests.conftest import blob_volume


def _map_formula_2d(data, weight, box, tau2, fudge):
    """The MAP class average written out plainly: complete the kx = 0 column by a loop, divide by
    weight + 1/(T·τ²·pad²) per pixel, inverse FFT of the padded grid, crop, gridding correction,
    and the corners beyond B/2 + 3 px set to their mean."""
    p = data.shape[-2]
    pad = p / box
    d, w = data.astype(np.complex128), weight.astype(np.float64)
    d0, w0 = d[:, 0].copy(), w[:, 0].copy()
    for y in range(p):
        d[y, 0] = d0[y] + np.conj(d0[(-y) % p])
        w[y, 0] = w0[y] + w0[(-y) % p]
    ky = np.array([y if y < p // 2 else y - p for y in range(p)])  # FFT order, exact integers
    kx = np.arange(p // 2 + 1)
    r = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2) / pad
    shell = np.minimum(np.rint(r).astype(int), box // 2)
    f = d / (w + 1.0 / (fudge * tau2[shell] * pad**2))
    f[r > box / 2 + 0.5 + 1e-4] = 0  # the E-step inserts pixels of rounded shell ≤ B/2
    img = np.fft.fftshift(np.fft.irfft2(f, s=(p, p)))
    img = crop_centered(img, box) / gridding_factor(box, p, 2, np)
    rr = real_radius(box, 2, np)
    edge = np.clip((rr - box / 2) / 3.0, 0, 1)
    out = np.where(rr <= box / 2, 0.0, np.where(rr >= box / 2 + 3, 1.0, 0.5 - 0.5 * np.cos(np.pi * edge)))
    mean = (img * out).sum() / out.sum()
    return img * (1 - out) + mean * out


def test_class_average_is_the_plain_map_formula():
    """2D goes through the same steps as 3D: a tiny case against the formula written out."""
    box, k = 12, 2
    refs = InplaneReferences(np.zeros((k, box, box), np.float32))
    rng = np.random.default_rng(3)
    shape = (k, refs.padded, refs.padded // 2 + 1)
    sums = {"data": rng.normal(size=shape) + 1j * rng.normal(size=shape), "weight": rng.uniform(0.1, 2.0, shape)}
    tau2 = rng.uniform(0.5, 3.0, (k, box // 2 + 1))
    new, dvp = refs.reconstruct(sums, tau2, 2.0)
    for c in range(k):
        want = _map_formula_2d(sums["data"][c], sums["weight"][c], box, tau2[c], 2.0)
        np.testing.assert_allclose(new.images[c], want, rtol=1e-4, atol=1e-5)
    # the sums are not modified (the E-step's accumulators may be reused)
    assert np.all(sums["weight"] >= 0.1)
    # RELION's SSNR estimate: mean of weight·pad²·T·τ² over the shell (kx = 0 column completed)
    w = sums["weight"][0].copy()
    d = sums["data"][0].copy()
    complete_hermitian(d, w, 2)
    ky = np.array([y if y < refs.padded // 2 else y - refs.padded for y in range(refs.padded)])
    kx = np.arange(refs.padded // 2 + 1)
    sh = np.rint(np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2) / refs.pad).astype(int)
    s = 3
    assert dvp[0, s] == pytest.approx(np.mean(w[sh == s]) * refs.pad**2 * 2.0 * tau2[0, s], rel=1e-6)


def test_2d_and_3d_references_and_the_backprojector_share_one_function():
    box = 10
    rng = np.random.default_rng(4)
    vrefs = VolumeReferences(np.zeros((1, box, box, box), np.float32))
    p = vrefs.padded
    shape = (1, p, p, p // 2 + 1)
    sums = {"data": rng.normal(size=shape) + 1j * rng.normal(size=shape), "weight": rng.uniform(0.1, 2.0, shape)}
    ssnr = rng.uniform(0.5, 5.0, (1, box // 2 + 1))
    got, _ = vrefs.reconstruct(sums, None, 1.0, ssnr=ssnr)
    want, _ = reconstruct(sums["data"], sums["weight"], box, 3, ssnr=ssnr, max_radius=box // 2 + 0.5)
    np.testing.assert_array_equal(got.images, want)
    bp = BackProjector(box, xp=np)
    bp.data[...] = sums["data"][0]
    bp.weight[...] = sums["weight"][0]
    want_bp, _ = reconstruct(bp.data, bp.weight, box, 3, ssnr=ssnr[0], max_radius=box // 2)
    np.testing.assert_array_equal(bp.reconstruct(ssnr=ssnr[0]), want_bp)


def test_class_average_of_rotated_copies_is_the_image():
    """Images that are in-plane rotations of one view, inserted at their angles: the average is the view."""
    from spa.class2d.synthetic import rotate_shift
    from spa.em.estep import ActivePixels
    from spa.fourier import rfft_centered

    box = 32
    view = blob_volume(box, seed=5).sum(axis=0)
    refs = InplaneReferences(np.zeros((1, box, box), np.float32))
    active = ActivePixels.make(box, box // 2 + 1)
    sums = refs.new_sums()
    psi = np.arange(0, 360, 2.0)
    images = np.stack([rotate_shift(view, a, (0.0, 0.0)) for a in psi])
    # image i shows the view turned by ψ_i; inserting it at ψ_i takes it back to the class frame
    f = rfft_centered(images.astype(np.float32)).reshape(len(psi), -1)[:, active.index]
    refs.insert(sums, 0, psi, active, f, np.ones(f.shape, np.float32))
    flat = np.full((1, box // 2 + 1), 1e6)  # τ² large: the plain average
    avg, _ = refs.reconstruct(sums, flat, 2.0)
    inside = real_radius(box, 2, np) < box / 2 - 2
    assert np.corrcoef(avg.images[0][inside], view[inside])[0, 1] > 0.995
    assert avg.images[0].max() / view.max() == pytest.approx(1.0, abs=0.03)


def test_corners_outside_the_box_sphere_are_flat():
    """Noise back-projected into the corners beyond B/2 + 3 px is replaced by one value (RELION)."""
    box = 24
    rng = np.random.default_rng(6)
    rots = euler_to_matrix(rng.uniform(-180, 180, 300), np.degrees(np.arccos(rng.uniform(-1, 1, 300))),
                           rng.uniform(-180, 180, 300))
    bp = BackProjector(box, xp=np)
    noise = (rng.normal(size=(300, box, box // 2 + 1)) + 1j * rng.normal(size=(300, box, box // 2 + 1)))
    bp.insert(noise.astype(np.complex64), np.ones(noise.shape, np.float32), rots)
    vol = bp.reconstruct()
    r = real_radius(box, 3, np)
    corners = vol[r > box / 2 + 3]
    assert corners.size > 0 and np.ptp(corners) < 1e-6 * np.abs(vol).max()
    assert vol[r < box / 2].std() > 0


def _uniform_and_top(n, top_fraction, rng):
    n_top = int(top_fraction * n)
    tilt = np.concatenate([np.degrees(np.arccos(rng.uniform(np.cos(np.radians(15)), 1, n_top))),
                           np.degrees(np.arccos(rng.uniform(-1, 1, n - n_top)))])
    return euler_to_matrix(rng.uniform(-180, 180, n), tilt, rng.uniform(-180, 180, n))


def test_strongly_preferred_orientation_reconstructs_without_bias():
    """90 % of the views within 15° of one direction (noise-free): the per-voxel normalisation by the
    inserted weight still gives the map (no density pre-weighting needed: RELION 5 skips it too)."""
    box = 40
    vol = blob_volume(box, seed=1)
    rng = np.random.default_rng(0)
    rots = _uniform_and_top(3000, 0.9, rng)
    slices = Projector(vol).project(rots)
    bp = BackProjector(box, xp=np)
    bp.insert(slices, np.ones(slices.shape, np.float32), rots)
    rec = bp.reconstruct()
    assert np.linalg.norm(rec - vol) / np.linalg.norm(vol) < 0.06
    assert abs(rec.max() / vol.max() - 1) < 0.03
    assert resolution_at(fsc(rec, vol), 0.9, box, 1.0) < 2.4  # Nyquist 2 Å at 1 Å/px
