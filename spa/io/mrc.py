"""MRC 2014 maps, micrographs and particle stacks (``.mrc``, ``.mrcs``) via ``mrcfile``.

Conventions (CONVENTIONS.md): arrays are indexed [z, y, x] / [n, y, x]; the
pixel (voxel) size in Å is the header's voxel size (cella / mx); spa writes
float32 (mode 2) or float16 (mode 12) with origin 0 and its provenance in the
header labels.  Reading accepts modes 0 (int8), 1 (int16), 2 (float32),
6 (uint16) and 12 (float16) and always returns float32.

Every reader validates and raises :class:`spa.errors.SpaInputError` naming
the file: missing, not an MRC file, truncated (data block shorter than the
header says), unsupported mode, voxel size 0, NaN/Inf values.  Every writer
goes through :func:`spa.io.atomic.atomic_path`, so a file appears at its final
path only when complete.

A ``.mrcs`` particle stack is a 3D MRC file with space group 0 (``ispg = 0``,
``mz = 1``): a stack of 2D images, as RELION writes it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator, NamedTuple

import mrcfile
import numpy as np

from spa.errors import SpaInputError
from spa.io.atomic import atomic_path
from spa.provenance import mrc_labels

#: MRC mode -> numpy dtype of the data block (mode 0 is signed as in MRC 2014).
SUPPORTED_MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}
HEADER_BYTES = 1024


class MrcHeader(NamedTuple):
    """What the header of an MRC file says, without its data.

    ``shape`` is (ny, nx) for a single image (nz = 1), else (nz, ny, nx);
    ``pixel_size`` in Å (voxel size along x); ``is_stack`` is True for an
    image stack (space group 0) as opposed to a volume; ``data_offset`` the
    byte where the data block starts; ``dtype`` its element type with the
    file's byte order.
    """

    shape: tuple[int, ...]
    pixel_size: float
    mode: int
    is_stack: bool
    data_offset: int = HEADER_BYTES
    dtype: np.dtype = np.dtype(np.float32)


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise SpaInputError(path, "file not found")
    if path.is_dir():
        raise SpaInputError(path, "is a directory, expected an MRC file")


def _first_warning(caught) -> str:
    return str(caught[0].message) if caught else "unreadable MRC file"


def read_mrc_header(path: str | os.PathLike) -> MrcHeader:
    """Read and validate an MRC header (no data is read).

    Checks: the file exists and has an MRC header, its mode is supported, the
    file is long enough for the data block the header declares (truncated
    downloads and interrupted writes are the common failures), and the voxel
    size is > 0.
    """
    path = Path(path)
    _check_exists(path)
    try:
        # permissive: tolerate harmless header quirks (e.g. a missing "MAP "
        # word in files from older programs); real problems are checked below.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mrcfile.open(path, mode="r", header_only=True, permissive=True) as m:
                h = m.header
                nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
                mode = int(h.mode)
                ext = int(h.nsymbt)
                ispg = int(h.ispg)
                byteorder = h.mode.dtype.byteorder
                vs = m.voxel_size
                pixel = float(vs.x)
    except (ValueError, OSError, EOFError) as exc:
        raise SpaInputError(path, f"not a readable MRC file ({exc})") from None
    if min(nx, ny, nz) <= 0:
        raise SpaInputError(path, f"not a readable MRC file (dimensions {nx} x {ny} x {nz})")
    if mode not in SUPPORTED_MODES:
        raise SpaInputError(
            path, f"unsupported MRC mode {mode} (supported: 0, 1, 2, 6, 12 = int8, int16, float32, uint16, float16)"
        )
    need = HEADER_BYTES + ext + nx * ny * nz * np.dtype(SUPPORTED_MODES[mode]).itemsize
    have = path.stat().st_size
    if have < need:
        raise SpaInputError(
            path, f"truncated MRC file: header says {nz} x {ny} x {nx} mode {mode} ({need} bytes) but the file has {have} bytes"
        )
    if not np.isfinite(pixel) or pixel <= 0:
        raise SpaInputError(path, f"pixel size in the MRC header is {pixel:g} Å (must be > 0); set the voxel size")
    shape = (ny, nx) if nz == 1 else (nz, ny, nx)
    dtype = np.dtype(SUPPORTED_MODES[mode]).newbyteorder(byteorder if byteorder in "<>" else "=")
    return MrcHeader(shape=shape, pixel_size=pixel, mode=mode, is_stack=(ispg == 0 and nz > 1),
                     data_offset=HEADER_BYTES + ext, dtype=dtype)


def _check_finite(path, data: np.ndarray, what: str = "") -> None:
    if data.dtype.kind != "f":
        return
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise SpaInputError(path, f"{bad} NaN/Inf pixel values{what}")


def read_mrc(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a whole MRC file as float32.

    Returns ``(data, pixel_size)``: data of shape (ny, nx) for a single image
    or (nz, ny, nx) for a volume or a stack; pixel size in Å.
    """
    path = Path(path)
    header = read_mrc_header(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mrcfile.open(path, mode="r", permissive=True) as m:
                if m.data is None:
                    raise SpaInputError(path, f"cannot read the MRC data block ({_first_warning(caught)})")
                data = np.array(m.data, dtype=np.float32, copy=True)
    except (ValueError, OSError, EOFError) as exc:
        raise SpaInputError(path, f"not a readable MRC file ({exc})") from None
    _check_finite(path, data)
    return data, header.pixel_size


def read_micrograph(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """One micrograph (rows, cols) and its header pixel size (Å); a stack, an empty (constant) image or
    NaN/inf values are refused naming the file."""
    image, pixel = read_mrc(path)
    image = image.squeeze()
    if image.ndim != 2:
        raise SpaInputError(path, f"a micrograph must be one 2D image, not shape {image.shape}")
    if not np.isfinite(image).all() or float(image.std()) == 0.0:
        raise SpaInputError(path, "micrograph is empty or holds NaN/inf values")
    return image, pixel


def _to_host(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data
    from spa.backend import backend_of  # noqa: PLC0415 - only for device arrays

    return backend_of(data).to_numpy(data)


def _mode_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"spa writes MRC files as float32 or float16, not {dtype}")
    return dtype


def _set_header(m, pixel_size: float, provenance: dict | None, stack: bool) -> None:
    if not np.isfinite(pixel_size) or pixel_size <= 0:
        raise ValueError(f"pixel size must be > 0 Å, got {pixel_size}")
    if stack:
        m.set_image_stack()
    m.voxel_size = float(pixel_size)
    m.header.origin = (0.0, 0.0, 0.0)
    m.header.nxstart = m.header.nystart = m.header.nzstart = 0
    labels = mrc_labels(provenance)
    if labels:
        # our record replaces mrcfile's "Created by" label: 10 slots only
        m.header.nlabl = 0
        m.header.label[:] = b""
    for label in labels[:10]:
        m.add_label(label)
    m.update_header_stats()


def _write(path, data, pixel_size, provenance, dtype, stack: bool) -> None:
    dtype = _mode_dtype(dtype)
    data = np.ascontiguousarray(_to_host(data), dtype=dtype)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(data)
            _set_header(m, pixel_size, provenance, stack)


def write_mrc(
    path: str | os.PathLike, data, pixel_size: float, provenance: dict | None = None, dtype=np.float32
) -> None:
    """Write a 2D image or 3D volume as MRC 2014 (mode 2, or 12 for ``dtype=np.float16``).

    Voxel size ``pixel_size`` Å, origin 0, provenance in the labels
    (:func:`spa.provenance.mrc_labels`).  Atomic: written beside ``path``
    under a temporary name, then renamed.
    """
    _write(path, data, pixel_size, provenance, dtype, stack=False)


def write_mrcs(
    path: str | os.PathLike, images, pixel_size: float, provenance: dict | None = None, dtype=np.float32
) -> None:
    """Write a particle stack (N, B, B) as an MRC image stack (``ispg = 0``), as RELION's ``.mrcs``."""
    images = _to_host(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"an image stack must be (N, ny, nx), got shape {images.shape}")
    _write(path, images, pixel_size, provenance, dtype, stack=True)


@contextlib.contextmanager
def new_mrcs(
    path: str | os.PathLike,
    n: int,
    box: int,
    pixel_size: float,
    provenance: dict | None = None,
    dtype=np.float32,
) -> Iterator[np.ndarray]:
    """Create an (n, box, box) ``.mrcs`` stack and yield a writable memory map of its images.

    For stacks too large to hold in memory: fill the yielded array in
    batches.  The file appears at ``path`` only when the ``with`` block ends
    without an exception.
    """
    dtype = _mode_dtype(dtype)
    mode = 12 if dtype == np.float16 else 2
    with atomic_path(path) as tmp:
        with mrcfile.new_mmap(tmp, shape=(int(n), int(box), int(box)), mrc_mode=mode, overwrite=True) as m:
            yield m.data
            m.flush()
            _set_header(m, pixel_size, provenance, stack=True)


class MrcStack:
    """Read access to the images of an ``.mrcs`` stack (or a single ``.mrc`` image).

    ``read(indices)`` takes 0-based image indices in any order, repeated or
    not, and reads only those images, each run of consecutive images with one
    positional read (``os.pread``: safe from several threads, and no memory
    map, whose pages would stay in the process's resident memory and grow it
    with every image read — a pass over 300 000 particles would look like
    300 000 particles held).  Picklable: the file is opened lazily and the
    descriptor dropped on pickling, so a Dask worker re-opens the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        header = read_mrc_header(self.path)
        shape = header.shape if len(header.shape) == 3 else (1, *header.shape)
        self.n, self.ny, self.nx = (int(s) for s in shape)
        self.pixel_size = header.pixel_size
        self.mode = header.mode
        self._offset = header.data_offset
        self._dtype = header.dtype
        self._fd = None

    @property
    def box(self) -> int:
        """Image size in pixels (nx; stacks of non-square images are rejected by readers upstream)."""
        return self.nx

    def __len__(self) -> int:
        return self.n

    def _file(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise SpaInputError(self.path, f"cannot open the MRC file ({exc.strerror})") from None
        return self._fd

    def _read_run(self, first: int, count: int) -> np.ndarray:
        """``count`` consecutive images from image ``first`` (0-based), in the file's own type."""
        size = self.ny * self.nx * self._dtype.itemsize
        buf = os.pread(self._file(), count * size, self._offset + first * size)
        if len(buf) != count * size:
            raise SpaInputError(self.path, f"truncated MRC file: images {first + 1}-{first + count} could not be read")
        return np.frombuffer(buf, dtype=self._dtype).reshape(count, self.ny, self.nx)

    def read(self, indices) -> np.ndarray:
        """Images at 0-based ``indices`` as float32 (len(indices), ny, nx); no NaN check here."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            bad = idx[(idx < 0) | (idx >= self.n)][0]
            raise SpaInputError(self.path, f"image index {bad + 1} out of range 1..{self.n}")
        # distinct images in ascending file order (sequential I/O), then put back in the asked order
        uniq, inverse = np.unique(idx, return_inverse=True)
        images = np.empty((uniq.size, self.ny, self.nx), dtype=np.float32)
        starts = np.flatnonzero(np.diff(uniq, prepend=-2) != 1)
        for a, b in zip(starts, np.append(starts[1:], uniq.size)):
            images[a:b] = self._read_run(int(uniq[a]), int(b - a))
        return images if uniq.size == idx.size and (np.diff(idx) > 0).all() else images[inverse.reshape(-1)]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fd"] = None
        return state

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()
