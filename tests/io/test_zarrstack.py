"""Zarr v3 particle stacks: create, append, write, read any index set, open without creating."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import zarr

from spa.errors import SpaInputError
from spa.io.zarrstack import ZarrStack, append, create_stack, open_stack, read_images, stack_info, write_images


@pytest.fixture
def images():
    return np.random.default_rng(0).normal(size=(23, 8, 8)).astype(np.float32)


def test_create_write_read_index_sets(tmp_path, images):
    path = tmp_path / "p.zarr"
    arr = create_stack(path, 8, 23, chunk=5, pixel_size=1.3, provenance={"seed": 1})
    assert arr.shape == (23, 8, 8) and arr.chunks == (5, 8, 8) and arr.dtype == np.float32
    write_images(path, 0, images[:10])  # chunk-aligned blocks, as parallel writers do
    write_images(path, 10, images[10:])
    info = stack_info(path)
    assert (info.n, info.box, info.pixel_size, info.chunk) == (23, 8, 1.3, 5)
    assert zarr.open_group(str(path), mode="r").attrs["provenance"] == {"seed": 1}
    for idx in ([0], [22, 3, 3, 17, 0], list(range(23)), [7, 8, 9], [], [21, 1, 11, 6]):
        np.testing.assert_array_equal(read_images(path, idx), images[idx])
    assert read_images(path, []).shape == (0, 8, 8)


def test_append_grows_along_n(tmp_path, images):
    path = tmp_path / "p.zarr"
    create_stack(path, 8, 0, chunk=4)
    assert append(path, images[:6]) == 0
    assert append(path, images[6:]) == 6
    assert open_stack(path).shape == (23, 8, 8)
    np.testing.assert_array_equal(read_images(path, np.arange(23)[::-1]), images[::-1])


def test_float16_storage_reads_float32(tmp_path, images):
    path = tmp_path / "h.zarr"
    create_stack(path, 8, 23, dtype=np.float16)
    write_images(path, 0, images)
    got = read_images(path, [4, 2])
    assert got.dtype == np.float32 and open_stack(path).dtype == np.float16
    np.testing.assert_array_equal(got, images[[4, 2]].astype(np.float16).astype(np.float32))


def test_missing_path_raises_and_creates_nothing(tmp_path):
    missing = tmp_path / "none.zarr"
    with pytest.raises(SpaInputError, match="none.zarr"):
        open_stack(missing)
    with pytest.raises(SpaInputError, match="none.zarr"):
        read_images(missing, [0])
    assert not missing.exists()


def test_refuses_to_overwrite_and_checks_bounds(tmp_path, images):
    path = tmp_path / "p.zarr"
    create_stack(path, 8, 3)
    with pytest.raises(FileExistsError):
        create_stack(path, 8, 3)
    with pytest.raises(ValueError):
        write_images(path, 2, images[:2])
    with pytest.raises(ValueError):
        write_images(path, 0, images[:1, :4, :4])
    with pytest.raises(SpaInputError, match="out of range"):
        read_images(path, [3])


def test_picklable_reader_for_dask_workers(tmp_path, images):
    path = tmp_path / "p.zarr"
    create_stack(path, 8, 23, chunk=7)
    write_images(path, 0, images)
    stack = ZarrStack(path)
    stack.read([1])
    clone = pickle.loads(pickle.dumps(stack))
    np.testing.assert_array_equal(clone.read([5, 20]), images[[5, 20]])
    # the plain path-based functions as Dask tasks (threads: same code path as a worker)
    import dask

    parts = [dask.delayed(read_images)(str(path), np.arange(s, min(s + 7, 23))) for s in range(0, 23, 7)]
    got = np.concatenate(dask.compute(*parts, scheduler="threads"))
    np.testing.assert_array_equal(got, images)
