"""MRC reading/writing: round trips, modes, header-only reads, stacks read by positional reads."""

from __future__ import annotations

import pickle
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from spa.io.mrc import MrcStack, new_mrcs, read_mrc, read_mrc_header, write_mrc, write_mrcs
from spa.provenance import make_record, read_record


@pytest.mark.parametrize("shape", [(12, 10), (6, 8, 10)])
def test_round_trip_keeps_values_and_pixel_size(tmp_path, shape):
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    path = tmp_path / "map.mrc"
    write_mrc(path, data, 1.37)
    back, pixel = read_mrc(path)
    assert back.dtype == np.float32 and back.shape == shape
    np.testing.assert_array_equal(back, data)
    assert pixel == pytest.approx(1.37, rel=1e-6)
    with mrcfile.open(path) as m:
        assert m.header.mode == 2
        assert tuple(float(v) for v in m.header.origin.item()) == (0.0, 0.0, 0.0)
        assert m.is_volume() == (len(shape) == 3)
    # nothing but the file itself in the folder: the temporary name is gone
    assert [p.name for p in tmp_path.iterdir()] == ["map.mrc"]


def test_provenance_in_labels(tmp_path):
    rec = make_record(command=["spa", "reconstruct", "--particles", "p.star"], config={"a": 1}, seed=7)
    path = tmp_path / "map.mrc"
    write_mrc(path, np.zeros((4, 4, 4), np.float32), 2.0, provenance=rec)
    text = read_record(str(path))
    assert "seed 7" in text and "spa reconstruct --particles p.star" in text


def test_float16_is_mode_12_and_reads_as_float32(tmp_path):
    data = np.random.default_rng(1).normal(size=(3, 8, 8)).astype(np.float32)
    path = tmp_path / "half.mrcs"
    write_mrcs(path, data, 1.0, dtype=np.float16)
    assert read_mrc_header(path).mode == 12
    back, _ = read_mrc(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, data.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("dtype,mode", [(np.int8, 0), (np.int16, 1), (np.uint16, 6)])
def test_integer_modes_read_as_float32(tmp_path, dtype, mode):
    data = (np.arange(2 * 5 * 6) % 100).reshape(2, 5, 6).astype(dtype)
    path = tmp_path / "int.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = 3.5
    back, pixel = read_mrc(path)
    assert read_mrc_header(path).mode == mode
    assert back.dtype == np.float32 and pixel == 3.5
    np.testing.assert_array_equal(back, data.astype(np.float32))


def test_header_and_stack_layout(tmp_path):
    imgs = np.random.default_rng(2).normal(size=(7, 6, 6)).astype(np.float32)
    path = tmp_path / "s.mrcs"
    write_mrcs(path, imgs, 1.25)
    h = read_mrc_header(path)
    assert h.shape == (7, 6, 6) and h.pixel_size == 1.25 and h.mode == 2 and h.is_stack
    with mrcfile.open(path) as m:
        assert m.header.ispg == 0 and m.header.mz == 1 and m.is_image_stack()


def test_stack_reads_any_index_set(tmp_path):
    imgs = np.random.default_rng(3).normal(size=(9, 5, 5)).astype(np.float32)
    path = tmp_path / "s.mrcs"
    write_mrcs(path, imgs, 1.0)
    stack = MrcStack(path)
    assert len(stack) == 9 and stack.box == 5
    for idx in ([0], [8, 2, 2, 5], [], list(range(9))):
        np.testing.assert_array_equal(stack.read(idx), imgs[idx])
    clone = pickle.loads(pickle.dumps(stack))
    np.testing.assert_array_equal(clone.read([4, 1]), imgs[[4, 1]])


@pytest.mark.parametrize("dtype", [">f4", "<i2", "<f2"])
def test_stack_reads_byte_order_extended_header_and_modes(tmp_path, dtype):
    """Positional reads honour the file's byte order, its extended header and its mode."""
    data = (np.arange(6 * 4 * 4) % 50).reshape(6, 4, 4).astype(dtype)
    path = tmp_path / "other.mrcs"
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.set_image_stack()
        m.voxel_size = 1.0
        m.set_extended_header(np.zeros(10, dtype=[("a", ">i4")]))
    stack = MrcStack(path)
    idx = [5, 1, 2, 3, 1]  # out of order, a run (1-3) and a repeat
    np.testing.assert_array_equal(stack.read(idx), data[idx].astype(np.float32))


def test_stack_reads_leave_no_mapped_pages(tmp_path):
    """Reading every image of a stack does not keep its pages in the process (no memory map)."""
    path = tmp_path / "big.mrcs"
    write_mrcs(path, np.zeros((64, 64, 64), np.float32), 1.0)
    stack = MrcStack(path)
    stack.read(np.arange(64))
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(path) not in maps.read_text()


def test_single_image_mrc_is_a_stack_of_one(tmp_path):
    img = np.random.default_rng(4).normal(size=(6, 6)).astype(np.float32)
    write_mrc(tmp_path / "one.mrc", img, 1.0)
    np.testing.assert_array_equal(MrcStack(tmp_path / "one.mrc").read([0])[0], img)


def test_new_mrcs_writes_in_batches_and_leaves_nothing_on_error(tmp_path):
    imgs = np.random.default_rng(5).normal(size=(10, 4, 4)).astype(np.float32)
    path = tmp_path / "big.mrcs"
    with new_mrcs(path, 10, 4, 2.5) as data:
        data[:6] = imgs[:6]
        data[6:] = imgs[6:]
    back, pixel = read_mrc(path)
    np.testing.assert_array_equal(back, imgs)
    assert pixel == 2.5 and read_mrc_header(path).is_stack
    with pytest.raises(RuntimeError):
        with new_mrcs(tmp_path / "fail.mrcs", 10, 4, 2.5) as data:
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.mrcs"]
