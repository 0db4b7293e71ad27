"""Backend selection and the backend-specific operations."""

import numpy as np
import pytest

from spa import backend


def test_auto_never_fails_without_a_gpu(monkeypatch):
    monkeypatch.delenv("SPA_BACKEND", raising=False)
    be = backend.get_backend("auto")
    assert be.name in ("numpy", "cupy")
    if not backend.cupy_available():
        assert be.name == "numpy" and be.xp is np


def test_env_variable_and_bad_names(monkeypatch):
    monkeypatch.setenv("SPA_BACKEND", "numpy")
    assert backend.get_backend().name == "numpy"
    with pytest.raises(ValueError):
        backend.get_backend("tensorflow")
    if not backend.cupy_available():
        with pytest.raises(RuntimeError):
            backend.get_backend("cupy")


def test_scatter_add_accumulates_repeated_indices():
    be = backend.get_backend("numpy")
    t = np.zeros(5, np.float32)
    be.scatter_add(t, np.array([0, 2, 2, 4]), np.array([1.0, 2.0, 3.0, 4.0], np.float32))
    assert t.tolist() == [1, 0, 5, 0, 4]
    c = np.zeros((2, 2), np.complex64)
    be.scatter_add(c, np.array([3, 3]), np.array([1 + 1j, 2 - 3j], np.complex64))
    assert c[1, 1] == 3 - 2j


def test_fft_roundtrip_float32():
    be = backend.get_backend("numpy")
    a = np.random.default_rng(0).normal(size=(4, 16, 16)).astype(np.float32)
    back = be.irfftn(be.rfftn(a, axes=(-2, -1)), s=(16, 16), axes=(-2, -1))
    assert np.allclose(back, a, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cupy_available(), reason="needs a CUDA GPU with CuPy")
def test_cupy_matches_numpy_projection():
    from spa.em.projector import Projector
    from spa.geometry.euler import euler_to_matrix
    from tests.conftest import blob_volume

    cp = backend.get_backend("cupy").xp
    vol = blob_volume(32)
    rots = euler_to_matrix([10, 50], [20, 80], [30, -40])
    cpu = Projector(vol).project_images(rots)
    gpu = cp.asnumpy(Projector(cp.asarray(vol)).project_images(cp.asarray(rots)))
    assert np.allclose(cpu, gpu, atol=1e-3 * np.abs(cpu).max())



def test_sum_rows_by_index_matches_a_loop():
    be = backend.get_backend("numpy")
    rng = np.random.default_rng(1)
    values = rng.standard_normal((200, 7)).astype(np.float32)
    index = rng.integers(0, 13, 200)
    index[index == 5] = 6  # a row nobody adds to stays zero
    expected = np.zeros((13, 7), np.float32)
    for i, j in enumerate(index):
        expected[j] += values[i]
    np.testing.assert_allclose(be.sum_rows_by_index(values, index, 13), expected, rtol=1e-5, atol=1e-5)
    assert be.sum_rows_by_index(values[:0], index[:0], 4).shape == (4, 7)
    # gathered source rows with weights: row j = Σ w·values[src] over the entries that target j
    src = rng.integers(0, 200, 500)
    target = rng.integers(0, 13, 500)
    w = rng.uniform(0, 1, 500).astype(np.float32)
    expected = np.zeros((13, 7), np.float64)
    for s, t, wi in zip(src, target, w):
        expected[t] += wi * values[s]
    got = be.sum_rows_by_index(values, target, 13, rows=src, weights=w)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_move_and_on_backend_copies_once():
    from spa.em.volume_refs import VolumeReferences

    refs = VolumeReferences(np.zeros((1, 8, 8, 8), np.float32))
    assert refs.on(np) is refs
    assert backend.move(refs.images, np) is refs.images


def test_cupy_path_under_the_emulator_without_a_gpu():
    """The CuPy path stays NumPy's own code: the GPU tests and a refinement run against
    tests/fakegpu (NumPy under CuPy's rules: no implicit host conversion, no host/device mixing)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # the emulator first, then whatever the machine adds (a lent GPU machine keeps its packages in PYTHONPATH)
    path = [str(root / "tests" / "fakegpu"), str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), SPA_BACKEND="cupy", SPA_FAKEGPU="1")
    tests = ["tests/em/test_gpu_backend.py", "tests/test_backend.py::test_cupy_matches_numpy_projection",
             "tests/refine3d/test_refine3d.py::test_writes_relion_named_outputs",
             "tests/class2d/test_select.py::test_class2d_and_select_commands_by_hand"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-500:]


def test_add_interpolated_matches_a_loop():
    """The adjoint of an interpolation, for a complex and a real grid at once, corners on either axis."""
    be = backend.get_backend("numpy")
    rng = np.random.default_rng(5)
    size, n_points, n_corners = 50, 30, 4
    idx = rng.integers(0, size, (n_points, n_corners))
    w = rng.uniform(0, 1, (n_points, n_corners)).astype(np.float32)
    val = (rng.normal(size=n_points) + 1j * rng.normal(size=n_points)).astype(np.complex64)
    wt = rng.uniform(0, 2, n_points).astype(np.float32)
    want_d, want_w = np.zeros(size, np.complex128), np.zeros(size)
    for p in range(n_points):
        for c in range(n_corners):
            want_d[idx[p, c]] += w[p, c] * val[p]
            want_w[idx[p, c]] += w[p, c] * wt[p]
    for axis, (i, ww) in ((-1, (idx, w)), (0, (idx.T.copy(), w.T.copy()))):
        d, t = np.zeros(size, np.complex128), np.zeros(size)
        be.add_interpolated([d, t], [val, wt], i, ww, corner_axis=axis)
        np.testing.assert_allclose(d, want_d, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(t, want_w, rtol=1e-6, atol=1e-6)
