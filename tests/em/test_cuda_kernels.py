"""The CUDA kernels (spa.em.cuda_kernels) compute what the NumPy path computes, deterministically.

Three layers: the CPU-side logic (path selection, the fixed-point bound) everywhere; the kernel
source itself built for the CPU with g++ (``tests/cuda_shim.py``), launched on NumPy arrays through
the same launchers; and, marked ``gpu``, the kernels on a CUDA device through the public functions
(skipped without one, and under the CuPy emulator, whose NumPy arithmetic has no kernels — unless the
emulator runs with the CPU build as a plugin, as the last test here does).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spa.backend import get_backend
from spa.em import cuda_kernels as ck
from spa.em import projector as P
from spa.em.gridding import padded_size
from spa.em.inplane import InplaneReferences, bilinear_setup, rotated_coordinates
from spa.geometry.euler import euler_to_matrix

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests import cuda_shim  # noqa: E402

needs_gxx = pytest.mark.skipif(cuda_shim.compiler() is None, reason="needs g++ for the CPU build of the kernels")
needs_kernels = pytest.mark.skipif(not ck.available(), reason="needs CUDA kernels (a GPU; not the CuPy emulator)")


def _grid(rng, padded, ndim=3, n=1):
    size = padded ** (ndim - 1) * (padded // 2 + 1)
    return (rng.normal(size=(n, size)) + 1j * rng.normal(size=(n, size))).astype(np.complex64)


def _rotations(rng, n):
    """Random rotations plus slices along the grid's axes, through the kx = 0 plane and its wrap."""
    angles = rng.uniform(-180, 180, (n, 3))
    angles[:6] = [[0, 0, 0], [0, 90, 0], [90, 90, 90], [180, 180, 0], [90, 90, 0], [0, 90, 90]]
    return euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])


def _psi(rng, n):
    """In-plane angles, with the axis-aligned ones (points on kx = 0 and on the Friedel edge)."""
    return np.concatenate([[0.0, 90.0, 180.0, 270.0, -90.0, 45.0], rng.uniform(-360, 360, n - 6)])


def _numpy_projection(flat, rots, jx, jy, pad, padded, monkeypatch):
    monkeypatch.setenv("SPA_NUMBA", "0")  # the whole-array NumPy path: the rule the kernels copy
    try:
        return P.gather_slices(flat, rots, jx, jy, pad, padded)
    finally:
        monkeypatch.delenv("SPA_NUMBA")


def _numpy_insertion(shape_dtypes, rots, jx, jy, values, weights, pad, padded, monkeypatch):
    monkeypatch.setenv("SPA_NUMBA", "0")
    d, w = np.zeros(shape_dtypes[0], shape_dtypes[1]), np.zeros(shape_dtypes[0], shape_dtypes[2])
    try:
        P.scatter_slices(get_backend("numpy"), d, w, rots, jx, jy, values, weights, pad, padded)
    finally:
        monkeypatch.delenv("SPA_NUMBA")
    return d, w


def _inplane_numpy(grids, psi, jx, jy, pad, padded):
    idx, w, conj = bilinear_setup(rotated_coordinates(np.rint(psi * 1e6) / 1e6, jx, jy, pad), padded)
    vals = grids[..., idx[..., 0]] * w[..., 0]
    for c in range(1, 4):
        vals += grids[..., idx[..., c]] * w[..., c]
    return np.where(conj, vals.conj(), vals), idx, w, conj


# -- CPU-side logic --------------------------------------------------------------------------------
def test_fixed_point_bits_keep_every_sum_inside_int64():
    for addends, rows in [(1, 1), (8, 1), (10**6, 10), (10**9, 10**5), (2**40, 2**30)]:
        bits = ck.fixed_point_bits(addends, rows)
        bound = min(addends, ck.ROW_HITS_BOUND * rows)
        assert bound * 2**bits <= 2**62 < 2 * bound * 2**bits or bits == 1
    assert ck.fixed_point_bits(10**9, 10**5) >= 30  # a large 3D chunk still resolves 2⁻³⁰ of the largest


@pytest.mark.parametrize("box, pad", [(24, 2.0), (25, 2.0), (25, 1.5), (16, 1.0)])
def test_a_row_hits_one_voxel_at_most_row_hits_bound_times(box, pad):
    """The premise of fixed_point_bits: count the corners one slice (one rotated image) puts on one voxel."""
    rng = np.random.default_rng(0)
    padded = padded_size(box, pad)
    _, jx, jy = P.image_frequencies(box, None, np)
    worst = 0
    for rot in _rotations(rng, 40):
        idx, _, _ = P.trilinear_corners(*P.slice_components(rot[None], jx, jy, padded / box), padded)
        worst = max(worst, np.bincount(idx.reshape(-1)).max())
    for psi in _psi(rng, 40):
        idx, _, _ = bilinear_setup(rotated_coordinates([psi], jx.astype(np.float32), jy.astype(np.float32),
                                                       padded / box), padded)
        worst = max(worst, np.bincount(idx.reshape(-1)).max())
    assert worst <= ck.ROW_HITS_BOUND // 8, worst  # a wide margin under the bound


def test_the_cuda_path_is_chosen_only_for_gpu_arrays_with_kernels(monkeypatch):
    a = np.zeros(4, np.complex64)
    assert P.cuda_for(a) is None
    monkeypatch.setenv("SPA_CUDA_KERNELS", "0")
    assert not ck.available()
    monkeypatch.setattr(ck, "_runtime_ok", lambda: True)
    assert not ck.available()
    monkeypatch.setenv("SPA_CUDA_KERNELS", "1")
    assert ck.available() and P.cuda_for(a) is None  # NumPy arrays keep the NumPy path
    assert ck.grids_supported(np.zeros(3, np.complex128), np.zeros(3))
    assert not ck.grids_supported(np.zeros(3, np.complex128), np.zeros(3, np.float32))
    assert not ck.grids_supported(np.zeros((3, 2), np.complex64)[:, 0], np.zeros(3, np.float32))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_source_compiles_for_hopper_without_local_memory(tmp_path):
    """The GPU build: no errors, no warnings, no stack frames or spills (register arrays stay registers)."""
    src = tmp_path / "k.cu"
    src.write_text(ck.SOURCE)
    run = subprocess.run(["nvcc", "-arch=sm_90", *ck.OPTIONS, "-Xptxas", "-v", "-c", str(src), "-o",
                          str(tmp_path / "k.o")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "warning" not in run.stderr.lower(), run.stderr
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores", run.stderr)
    assert frames and all(a == "0" and b == "0" for a, b in frames), run.stderr


# -- the kernel source, built for the CPU, through the launchers on NumPy arrays ----------------------
@needs_gxx
@pytest.mark.parametrize("box, pad", [(24, 2.0), (25, 2.0), (25, 1.5)])
def test_cpu_build_projection_is_the_numpy_paths(monkeypatch, box, pad):
    cuda_shim.install(monkeypatch)
    rng = np.random.default_rng(box)
    padded = padded_size(box, pad)
    pad = padded / box
    grids = _grid(rng, padded, 3, 2)
    _, jx, jy = P.image_frequencies(box, None, np)
    rots = _rotations(rng, 30)
    want = _numpy_projection(grids[1], rots, jx, jy, pad, padded, monkeypatch)
    got = ck.project3d(grids, np.ones(len(rots), int), rots, jx, jy, pad, padded)
    assert np.array_equal(got, want)  # the same float32 operations in the same order
    psi = _psi(rng, 30)
    want2, _, _, _ = _inplane_numpy(grids[:, :padded * (padded // 2 + 1)], psi, jx.astype(np.float32),
                                    jy.astype(np.float32), pad, padded)
    g2 = np.ascontiguousarray(grids[:, :padded * (padded // 2 + 1)])
    got2 = ck.project2d(g2, np.arange(len(psi)) % 2, psi, jx, jy, pad, padded)
    assert np.array_equal(got2, np.where(np.arange(len(psi))[:, None] % 2 == 0, want2[0], want2[1]))


@needs_gxx
@pytest.mark.parametrize("dtypes", [(np.complex128, np.float64), (np.complex64, np.float32)])
@pytest.mark.parametrize("box", [24, 25])
def test_cpu_build_insertion_is_the_numpy_paths_in_any_row_order(monkeypatch, dtypes, box):
    cuda_shim.install(monkeypatch)
    rng = np.random.default_rng(10 + box)
    padded = padded_size(box, 2.0)
    _, jx, jy = P.image_frequencies(box, None, np)
    rots = _rotations(rng, 30)
    values = (rng.normal(size=(30, jx.size)) + 1j * rng.normal(size=(30, jx.size))).astype(np.complex64)
    weights = rng.uniform(0, 1, (30, jx.size)).astype(np.float32)
    size = padded * padded * (padded // 2 + 1)
    want_d, want_w = _numpy_insertion((size,) + dtypes, rots, jx, jy, values, weights, 2.0, padded, monkeypatch)
    runs = []
    for order in (np.arange(30), rng.permutation(30)):
        d, w = np.zeros((2, size), dtypes[0]), np.zeros((2, size), dtypes[1])
        ck.insert3d(d, w, np.ones(30, int), rots[order], jx, jy, values[order], weights[order], 2.0, padded)
        assert not d[0].any() and not w[0].any()  # class 0 untouched
        runs.append((d[1], w[1]))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])  # order-free
    tol = 1e-5 if dtypes[1] == np.float32 else 1e-6
    np.testing.assert_allclose(runs[0][0], want_d, rtol=0, atol=tol * np.abs(want_d).max())
    np.testing.assert_allclose(runs[0][1], want_w, rtol=0, atol=tol * want_w.max())


@needs_gxx
def test_cpu_build_inplane_insertion_is_the_transpose_of_the_projection(monkeypatch):
    cuda_shim.install(monkeypatch)
    rng = np.random.default_rng(3)
    box, padded = 26, 52
    _, jx, jy = P.image_frequencies(box, None, np)
    psi = _psi(rng, 40)
    classes = rng.integers(0, 3, 40)
    grids = _grid(rng, padded, 2, 3)
    x = (rng.normal(size=(40, jx.size)) + 1j * rng.normal(size=(40, jx.size))).astype(np.complex64)
    t = rng.uniform(0, 2, (40, jx.size)).astype(np.float32)
    d, w = np.zeros(grids.shape, np.complex128), np.zeros(grids.shape)
    ck.insert2d(d, w, classes, psi, jx, jy, x, t, 2.0, padded)
    lhs = np.sum((ck.project2d(grids, classes, psi, jx, jy, 2.0, padded).astype(np.complex128) * x.conj()).real)
    rhs = np.sum((grids.astype(np.complex128) * d.conj()).real)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)
    # and the weights are the NumPy path's (the sparse product of InplaneReferences.insert)
    want = np.zeros(grids.shape)
    _, idx, wts, _ = _inplane_numpy(grids, psi, jx.astype(np.float32), jy.astype(np.float32), 2.0, padded)
    for k in range(3):
        sel = classes == k
        np.add.at(want[k], idx[sel].reshape(-1), (wts[sel] * t[sel][..., None]).reshape(-1))
    np.testing.assert_allclose(w, want, rtol=0, atol=1e-6 * want.max())


@needs_gxx
def test_cpu_build_fixed_point_keeps_small_sums(monkeypatch):
    """Addends over nine decades: every voxel's sum to float32 precision of itself or better than 1e-9
    of the largest (float64 reference)."""
    cuda_shim.install(monkeypatch)
    rng = np.random.default_rng(4)
    box, padded = 24, 48
    _, jx, jy = P.image_frequencies(box, None, np)
    rots = _rotations(rng, 20)
    scale = (10.0 ** rng.uniform(-6, 3, (20, jx.size))).astype(np.float32)
    values = (scale * (rng.normal(size=scale.shape) + 1j * rng.normal(size=scale.shape))).astype(np.complex64)
    weights = scale
    size = padded * padded * (padded // 2 + 1)
    d, w = np.zeros(size, np.complex128), np.zeros(size)
    ck.insert3d(d, w, 0, rots, jx, jy, values, weights, 2.0, padded)
    idx, cw, conj = P.trilinear_corners(*P.slice_components(rots, jx, jy, 2.0), padded)
    v = np.where(conj, values.conj(), values).astype(np.complex128)
    ref_w = np.bincount(idx.reshape(-1), (cw.astype(np.float64) * weights).reshape(-1), size)
    ref_d = np.bincount(idx.reshape(-1), (cw * v).real.reshape(-1), size) + \
        1j * np.bincount(idx.reshape(-1), (cw * v).imag.reshape(-1), size)
    assert np.all(np.abs(w - ref_w) <= 1e-6 * ref_w + 1e-9 * ref_w.max())
    assert np.all(np.abs(d - ref_d) <= 1e-6 * np.abs(ref_d) + 1e-9 * np.abs(ref_d).max() + 1e-6 * ref_w)


@needs_gxx
def test_cpu_build_pass1_epilogue_and_row_sums_are_the_numpy_paths(monkeypatch):
    cuda_shim.install(monkeypatch)
    rng = np.random.default_rng(8)
    n, n_shifts, width = 5, 7, 33
    logp = rng.normal(0, 30, (n, n_shifts, width)).astype(np.float32)
    row_term = rng.normal(0, 30, (n, width)).astype(np.float32)
    lp_trans = rng.normal(0, 3, (n, n_shifts)).astype(np.float32)
    want = logp.copy()
    want += row_term[:, None, :]
    want += lp_trans[:, :, None]
    col_max = ck.add_priors(logp, row_term, lp_trans)
    assert np.array_equal(logp, want) and np.array_equal(col_max, want.max(axis=1))
    flat = logp.reshape(n, -1)
    rows = np.array([3, 0, 3])
    shift = flat.max(axis=1)[rows]
    got = ck.row_exp_sums(flat, rows, shift)
    np.testing.assert_allclose(got, np.exp(flat[rows].astype(np.float64) - shift[:, None]).sum(axis=1), rtol=1e-6)


@needs_gxx
def test_cpu_build_top_k_is_exact_with_ties_and_infinities(monkeypatch):
    cuda_shim.install(monkeypatch)
    rng = np.random.default_rng(12)
    x = rng.normal(size=(6, 300)).astype(np.float32)
    x[1, ::3] = 1.5  # ties: the lowest columns win
    x[2] = -np.inf
    x[2, 7] = 0.0
    x[3, :40] = -0.0
    for k in (1, 5, 64, 65, 256):
        idx, val = ck.topk_rows(x, k)
        order = np.lexsort((np.arange(300)[None].repeat(6, 0), -x), axis=1)[:, :k]  # value desc, column asc
        assert np.array_equal(idx, order), k
        assert np.array_equal(val, np.take_along_axis(x, order, axis=1))


@needs_gxx
def test_cpu_build_sums_by_index_are_the_backends(monkeypatch):
    cuda_shim.install(monkeypatch)
    be = get_backend("numpy")
    rng = np.random.default_rng(9)
    values = rng.normal(size=(50, 7)).astype(np.float32)
    index, src = rng.integers(0, 9, 80), rng.integers(0, 50, 80)
    w = rng.uniform(0, 1, 80).astype(np.float32)
    index[index == 4] = 5  # a row nobody adds to stays zero
    for kw in ({}, {"rows": src, "weights": w}):
        idx = index if kw else index[:50]
        want = be.sum_rows_by_index(values, idx, 9, **kw)
        np.testing.assert_allclose(ck.sum_rows_by_index(values, idx, 9, **kw), want, rtol=1e-5, atol=1e-6)
    target, want = np.ones(12), np.ones(12)
    vals = rng.normal(size=80)
    ck.scatter_add(target, index, vals)
    be.scatter_add(want, index, vals)
    np.testing.assert_allclose(target, want, rtol=1e-12)


# -- on a CUDA device, through the public functions ---------------------------------------------------
@pytest.mark.gpu
@needs_kernels
@pytest.mark.parametrize("box", [64, 65, 128])
def test_gpu_projection_and_insertion_match_numpy(box):
    be = get_backend("cupy")
    xp = be.xp
    rng = np.random.default_rng(box)
    padded = padded_size(box, 2.0)
    flat = _grid(rng, padded)[0]
    _, jx, jy = P.image_frequencies(box, None, np)
    rots = _rotations(rng, 64 if box == 128 else 200)
    want = P.gather_slices(flat, rots, jx, jy, 2.0, padded)
    got = be.to_numpy(P.gather_slices(xp.asarray(flat), xp.asarray(rots), xp.asarray(jx), xp.asarray(jy), 2.0,
                                      padded))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    values = (rng.normal(size=(len(rots), jx.size)) + 1j * rng.normal(size=(len(rots), jx.size))).astype(np.complex64)
    weights = rng.uniform(0, 1, values.shape).astype(np.float32)
    d, w = np.zeros(flat.size, np.complex128), np.zeros(flat.size)
    P.scatter_slices(get_backend("numpy"), d, w, rots, jx, jy, values, weights, 2.0, padded)
    runs = []
    for order in (np.arange(len(rots)), rng.permutation(len(rots))):
        gd, gw = xp.zeros(flat.size, xp.complex128), xp.zeros(flat.size, xp.float64)
        P.scatter_slices(be, gd, gw, xp.asarray(rots[order]), xp.asarray(jx), xp.asarray(jy),
                         xp.asarray(values[order]), xp.asarray(weights[order]), 2.0, padded)
        runs.append((be.to_numpy(gd), be.to_numpy(gw)))
    # deterministic: the same bits from another run, even with the rows in another order
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    np.testing.assert_allclose(runs[0][0], d, rtol=0, atol=1e-5 * np.abs(d).max())
    np.testing.assert_allclose(runs[0][1], w, rtol=0, atol=1e-5 * w.max())
    # float32 grids (the back-projector's)
    gd, gw = xp.zeros(flat.size, xp.complex64), xp.zeros(flat.size, xp.float32)
    P.scatter_slices(be, gd, gw, xp.asarray(rots), xp.asarray(jx), xp.asarray(jy), xp.asarray(values),
                     xp.asarray(weights), 2.0, padded)
    np.testing.assert_allclose(be.to_numpy(gw), w, rtol=0, atol=2e-5 * w.max())


@pytest.mark.gpu
@needs_kernels
def test_gpu_top_k_is_exact():
    be = get_backend("cupy")
    rng = np.random.default_rng(13)
    x = rng.normal(size=(1100, 3000)).astype(np.float32)
    x[:, 5::7] = x[:, 5:6]  # ties
    for k in (65, 256):
        idx, val = ck.topk_rows(be.xp.asarray(x), k)
        order = np.lexsort((np.arange(3000)[None].repeat(1100, 0), -x), axis=1)[:, :k]
        assert np.array_equal(be.to_numpy(idx), order)
        assert np.array_equal(be.to_numpy(val), np.take_along_axis(x, order, axis=1))


@pytest.mark.gpu
@needs_kernels
def test_gpu_sums_by_index_match_numpy_and_repeat_exactly():
    be, cpu = get_backend("cupy"), get_backend("numpy")
    xp = be.xp
    rng = np.random.default_rng(11)
    values = rng.normal(size=(3000, 257)).astype(np.float32)
    index, src = rng.integers(0, 400, 20000), rng.integers(0, 3000, 20000)
    w = rng.uniform(0, 1, 20000).astype(np.float32)
    want = cpu.sum_rows_by_index(values, index, 400, rows=src, weights=w)
    runs = [be.to_numpy(ck.sum_rows_by_index(xp.asarray(values), xp.asarray(index), 400, xp.asarray(src),
                                             xp.asarray(w))) for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])
    np.testing.assert_allclose(runs[0], want, rtol=1e-4, atol=1e-4)
    target = xp.zeros(400)
    ck.scatter_add(target, xp.asarray(index), xp.asarray(w.astype(np.float64)))
    np.testing.assert_allclose(be.to_numpy(target), np.bincount(index, w.astype(np.float64), 400), rtol=1e-12)


@pytest.mark.gpu
@needs_kernels
@pytest.mark.parametrize("box", [40, 41])
def test_gpu_inplane_references_match_numpy(blobs, box):
    be = get_backend("cupy")
    xp = be.xp
    rng = np.random.default_rng(5)
    images = np.stack([blobs(box, seed=s).sum(axis=0) for s in range(3)]).astype(np.float32)
    cpu, gpu = InplaneReferences(images), InplaneReferences(xp.asarray(images))
    from spa.em.estep import ActivePixels

    act_c, act_g = ActivePixels.make(box, box // 2 + 1, np), ActivePixels.make(box, box // 2 + 1, xp)
    psi = _psi(rng, 60)
    want = cpu.project_all(psi, act_c)  # (the class transforms themselves differ by the FFTs' rounding)
    np.testing.assert_allclose(be.to_numpy(gpu.project_all(psi, act_g)), want, rtol=0,
                               atol=1e-5 * np.abs(want).max())
    classes = rng.integers(0, 3, 60)
    rows = be.to_numpy(gpu.project_rows(classes, psi, act_g))
    np.testing.assert_allclose(rows, want[classes, np.arange(60)], rtol=0, atol=1e-5 * np.abs(want).max())
    data = (rng.normal(size=(60, act_c.size)) + 1j * rng.normal(size=(60, act_c.size))).astype(np.complex64)
    weight = rng.uniform(0, 1, (60, act_c.size)).astype(np.float32)
    sums_c = cpu.new_sums()
    for k in range(3):
        sel = classes == k
        cpu.insert(sums_c, k, psi[sel], act_c, data[sel], weight[sel])
    runs = []
    for _ in range(2):
        sums_g = gpu.new_sums()
        assert gpu.insert_rows(sums_g, classes, psi, act_g, xp.asarray(data), xp.asarray(weight))
        runs.append({k: be.to_numpy(v) for k, v in sums_g.items()})
    for key in ("data", "weight"):
        assert np.array_equal(runs[0][key], runs[1][key])
        np.testing.assert_allclose(runs[0][key], sums_c[key], rtol=0, atol=1e-5 * np.abs(sums_c[key]).max())


@pytest.mark.gpu
@needs_kernels
def test_gpu_symmetric_insertion_matches_numpy(blobs):
    from spa.em.estep import ActivePixels
    from spa.em.volume_refs import VolumeReferences
    from spa.geometry.symmetry import symmetry_matrices

    be = get_backend("cupy")
    xp = be.xp
    rng = np.random.default_rng(6)
    vol = blobs(32, seed=1)[None]
    sym = symmetry_matrices("D2")
    cpu, gpu = VolumeReferences(vol, symmetry=sym), VolumeReferences(xp.asarray(vol), symmetry=sym)
    act_c, act_g = ActivePixels.make(32, 17, np), ActivePixels.make(32, 17, xp)
    angles = rng.uniform(-180, 180, (50, 3))
    data = (rng.normal(size=(50, act_c.size)) + 1j * rng.normal(size=(50, act_c.size))).astype(np.complex64)
    weight = rng.uniform(0, 1, (50, act_c.size)).astype(np.float32)
    sums_c, sums_g = cpu.new_sums(), gpu.new_sums()
    cpu.insert(sums_c, 0, angles, act_c, data, weight)
    assert gpu.insert_rows(sums_g, np.zeros(50, int), angles, act_g, xp.asarray(data), xp.asarray(weight))
    for key in ("data", "weight"):
        got = be.to_numpy(sums_g[key])
        np.testing.assert_allclose(got, sums_c[key], rtol=0, atol=1e-5 * np.abs(sums_c[key]).max())
    rows = be.to_numpy(gpu.project_rows(np.zeros(50, int), angles, act_g))
    want = cpu.project(0, angles, act_c)
    np.testing.assert_allclose(rows, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.gpu
@needs_kernels
def test_gpu_estep_with_kernels_matches_the_array_path_and_repeats_exactly(blobs, monkeypatch):
    """2D (K = 3) and 3D global E-steps: kernels vs CuPy's array path vs NumPy, and two runs identical."""
    from tests.em import test_gpu_backend as G
    from spa.em.inplane import InplaneSampling
    from spa.em.sampling3d import Sampling3D
    from spa.em.volume_refs import VolumeReferences

    rng = np.random.default_rng(7)
    views = np.stack([blobs(G.BOX, seed=s).sum(axis=0) for s in range(3)]).astype(np.float32)
    cls = rng.integers(0, 3, 40)
    images = views[cls] + rng.normal(0, views.std() * 2, (40, G.BOX, G.BOX)).astype(np.float32)
    sigma2 = np.full((1, G.BOX // 2 + 1), G.BOX * G.BOX * (views.std() * 2) ** 2 / 2.0)
    volume = blobs(G.BOX, seed=3)
    _, images3, sigma3 = G._projections(volume, 16, rng)
    problems = [(images, views, InplaneReferences, InplaneSampling(6.0, 3.0, 1.0), sigma2, 3, 40),
                (images3, volume[None], VolumeReferences, Sampling3D(2, 2.0, 1.0), sigma3, 1, 16)]
    for imgs, refs, cls_, samp, s2, k, n in problems:
        want = G._run(get_backend("numpy"), imgs, refs, cls_, samp, s2, 10, n_classes=k)
        a = G._run(get_backend("cupy"), imgs, refs, cls_, samp, s2, 10, n_classes=k)
        b = G._run(get_backend("cupy"), imgs, refs, cls_, samp, s2, 10, n_classes=k)
        monkeypatch.setenv("SPA_CUDA_KERNELS", "0")
        off = G._run(get_backend("cupy"), imgs, refs, cls_, samp, s2, 10, n_classes=k)
        monkeypatch.setenv("SPA_CUDA_KERNELS", "1")
        for key in a["sums"]:
            assert np.array_equal(a["sums"][key], b["sums"][key])  # same seed, same map
        G._compare(want, a, n)
        G._compare(off, a, n)


@needs_gxx
def test_gpu_tests_pass_under_the_emulator_with_the_cpu_build():
    """The GPU tests above and the NumPy-vs-CuPy E-step tests, with the kernels' CPU build standing in for
    CUDA under the CuPy emulator: the kernel path of the E-step, the launchers and the dispatch run here."""
    paths = [str(ROOT / "tests" / "fakegpu"), str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), SPA_BACKEND="cupy")
    env.pop("SPA_CUDA_KERNELS", None)
    tests = ["tests/em/test_cuda_kernels.py", "tests/em/test_gpu_backend.py",
             "tests/test_backend.py::test_cupy_matches_numpy_projection"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-p",
                          "tests.cuda_shim", *tests], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-500:]
