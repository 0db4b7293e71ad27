"""Particle stacks as Zarr v3 groups: spa's own image storage.

Layout of one stack (a directory ``NAME.zarr``)::

    NAME.zarr/            group; attributes: pixel_size (Å), provenance (dict)
        images            array (N, B, B), float32 (or float16), chunks (chunk, B, B),
                          Blosc-compressed; image i is STAR row ``<i+1>@NAME.zarr``

Chunks run along N only, so a chunk is a contiguous batch of whole images: the
unit a Dask task reads, processes and writes.  Every function takes the path
(a plain string pickles), so Dask workers open the stack themselves.

Concurrency: writers that run in parallel must write disjoint, chunk-aligned
ranges (``start`` a multiple of the chunk size); :func:`append` resizes the
array and is for a single writer.  A stack being built should live at a
temporary path (``with spa.io.atomic.atomic_path(final) as tmp:``) so it
appears at its final path only when complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from spa.errors import SpaInputError

ARRAY = "images"
DEFAULT_CHUNK = 256


class StackInfo(NamedTuple):
    """Shape and metadata of a stack: n images of box × box px at pixel_size Å."""

    n: int
    box: int
    pixel_size: float | None
    dtype: np.dtype
    chunk: int


def _codec(clevel: int = 5) -> BloscCodec:
    # lz4 + byte shuffle: fast enough to keep up with the E-step; noisy float
    # images compress little anyway, the gain is on padded/masked data.
    return BloscCodec(cname="lz4", clevel=clevel, shuffle="shuffle")


def create_stack(
    path: str | os.PathLike,
    box: int,
    n: int = 0,
    *,
    chunk: int = DEFAULT_CHUNK,
    pixel_size: float | None = None,
    dtype=np.float32,
    provenance: dict | None = None,
    overwrite: bool = False,
) -> zarr.Array:
    """Create an empty stack of ``n`` images of ``box`` × ``box`` px (filled with 0) and return its array.

    ``chunk`` images per chunk (along N only); ``dtype`` float32 or float16
    (halves I/O; readers always return float32); ``pixel_size`` in Å.
    Refuses to replace an existing path unless ``overwrite``.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"a particle stack is float32 or float16, not {dtype}")
    if int(chunk) < 1 or int(box) < 1 or int(n) < 0:
        raise ValueError(f"invalid stack geometry: box {box}, n {n}, chunk {chunk}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    group = zarr.open_group(str(path), mode="w" if overwrite else "w-")
    group.attrs.update({"pixel_size": None if pixel_size is None else float(pixel_size), "provenance": provenance or {}})
    return group.create_array(
        ARRAY,
        shape=(int(n), int(box), int(box)),
        chunks=(int(chunk), int(box), int(box)),
        dtype=dtype,
        compressors=_codec(),
        fill_value=0,
        dimension_names=("n", "y", "x"),
    )


def open_stack(path: str | os.PathLike, mode: str = "r") -> zarr.Array:
    """The ``images`` array of an existing stack (``mode`` "r" or "r+"); never creates anything.

    Raises :class:`SpaInputError` when ``path`` is not a spa Zarr stack.
    """
    if mode not in ("r", "r+"):
        raise ValueError("open_stack opens existing stacks only: mode 'r' or 'r+'")
    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode=mode)
    except FileNotFoundError:
        raise SpaInputError(path, "Zarr particle stack not found") from None
    except Exception as exc:  # malformed zarr.json, a v2 array, ...
        raise SpaInputError(path, f"not a readable Zarr group ({type(exc).__name__}: {exc})") from None
    try:
        arr = group[ARRAY]
    except KeyError:
        raise SpaInputError(path, f"Zarr group has no '{ARRAY}' array: not a spa particle stack") from None
    if not isinstance(arr, zarr.Array) or arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise SpaInputError(path, f"'{ARRAY}' must be an (N, B, B) array, found shape {getattr(arr, 'shape', '?')}")
    return arr


def stack_info(path: str | os.PathLike) -> StackInfo:
    """Number of images, box, pixel size (Å, None if unset), stored dtype and chunk length of a stack."""
    arr = open_stack(path)
    pixel = zarr.open_group(str(path), mode="r").attrs.get("pixel_size")
    return StackInfo(int(arr.shape[0]), int(arr.shape[1]), None if pixel is None else float(pixel), np.dtype(arr.dtype), int(arr.chunks[0]))


def _as_images(images, box: int) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != (box, box):
        raise ValueError(f"images must be (k, {box}, {box}), got shape {images.shape}")
    return images


def write_images(path: str | os.PathLike, start: int, images) -> None:
    """Write ``images`` (k, B, B) as images ``start .. start+k-1`` (0-based) of an existing stack."""
    arr = open_stack(path, mode="r+")
    images = _as_images(images, arr.shape[1])
    start = int(start)
    if start < 0 or start + len(images) > arr.shape[0]:
        raise ValueError(f"{path}: images {start}..{start + len(images) - 1} outside the stack of {arr.shape[0]}")
    arr[start : start + len(images)] = images.astype(arr.dtype, copy=False)


def append(path: str | os.PathLike, images) -> int:
    """Grow the stack along N by ``images`` (k, B, B); returns the 0-based index of the first new image."""
    arr = open_stack(path, mode="r+")
    images = _as_images(images, arr.shape[1])
    start = int(arr.shape[0])
    arr.resize((start + len(images), arr.shape[1], arr.shape[2]))
    arr[start:] = images.astype(arr.dtype, copy=False)
    return start


def _read(arr: zarr.Array, idx: np.ndarray) -> np.ndarray:
    """Images at 0-based ``idx`` (any order, repeats allowed) as float32; each chunk is read once."""
    if idx.size == 0:
        return np.empty((0, arr.shape[1], arr.shape[2]), dtype=np.float32)
    uniq, inverse = np.unique(idx, return_inverse=True)
    if uniq[-1] - uniq[0] + 1 == uniq.size:
        data = arr[int(uniq[0]) : int(uniq[-1]) + 1]  # a contiguous run: one slice
    else:
        data = arr.get_orthogonal_selection((uniq,))
    data = np.asarray(data).astype(np.float32, copy=False)
    return data if np.array_equal(uniq, idx) else data[inverse.reshape(-1)]


def read_images(path: str | os.PathLike, indices) -> np.ndarray:
    """Images at 0-based ``indices`` (any order, repeated or not) as float32 (k, B, B)."""
    return ZarrStack(path).read(indices)


class ZarrStack:
    """Read access to one stack for :class:`spa.io.images.ParticleImages`; opens lazily, picklable."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        info = stack_info(self.path)
        self.n, self.box, self.pixel_size = info.n, info.box, info.pixel_size
        self._arr = None

    def __len__(self) -> int:
        return self.n

    def read(self, indices) -> np.ndarray:
        """Images at 0-based ``indices`` as float32 (k, B, B); SpaInputError for an index out of range."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            bad = idx[(idx < 0) | (idx >= self.n)][0]
            raise SpaInputError(self.path, f"image index {bad + 1} out of range 1..{self.n}")
        if self._arr is None:
            self._arr = open_stack(self.path)
        try:
            return _read(self._arr, idx)
        except SpaInputError:
            raise
        except Exception as exc:  # a missing or corrupt chunk file
            raise SpaInputError(self.path, f"cannot read images ({type(exc).__name__}: {exc})") from None

    def close(self) -> None:
        self._arr = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arr"] = None
        return state
