"""Dose-fractionated movies and gain references: MRC stacks and TIFF (tifffile), read as float32 frames.

Conventions (CONVENTIONS.md): frames are arrays indexed [frame, y, x].  TIFF
frames are flipped along the slow axis on reading (row 0 of the array is the
last image row of the file), as RELION, MotionCor2 and IMOD do, so a TIFF movie
and the MRC stack of the same frames give the same arrays; a TIFF gain
reference is flipped the same way.  Compressed TIFF (LZW, deflate/zlib,
packbits, ...) is decoded by tifffile (LZW needs ``imagecodecs``).

EER (Falcon 4) files are refused with a clear message: tifffile can hand over
their pages but turning the electron events into frames needs a decoder and a
frame grouping that spa does not test; convert them to TIFF first (e.g.
``relion_convert_to_tiff``).

Gain references follow RELION's options (MotionCor2's meaning): ``rotation``
0–3 turns the gain by 0, 90, 180 or 270° counter-clockwise as displayed with
the origin at the bottom left (MRC viewers), then ``flip`` 1 flips it upside
down (along y) or 2 left to right (along x).  Gain-corrected frame = raw frame
× gain (the gain is the inverse of the detector's sensitivity).

Every reader raises :class:`spa.errors.SpaInputError` naming the file:
missing, not a movie, truncated, NaN/Inf values, a gain of the wrong shape.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from spa.errors import SpaInputError

MRC_SUFFIXES = (".mrc", ".mrcs", ".st")
TIFF_SUFFIXES = (".tif", ".tiff")
EER_SUFFIXES = (".eer", ".ecc")


class MovieInfo(NamedTuple):
    """What a movie's header says: frames, height (y) and width (x) in pixels, the file format."""

    n_frames: int
    ny: int
    nx: int
    format: str  # "mrc" or "tiff"


def movie_format(path: str | os.PathLike) -> str:
    """``mrc`` or ``tiff`` from the file name; EER and anything else is a :class:`SpaInputError`."""
    suffix = Path(path).suffix.lower()
    if suffix in MRC_SUFFIXES:
        return "mrc"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in EER_SUFFIXES:
        raise SpaInputError(path, "EER movies are not supported (no tested EER decoder and frame grouping in spa): "
                                  "convert them to TIFF first, e.g. with relion_convert_to_tiff")
    raise SpaInputError(path, f"unknown movie format {suffix or '(no suffix)'!r}: give MRC stacks (.mrc, .mrcs) "
                              "or TIFF (.tif, .tiff)")


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise SpaInputError(path, "file not found")
    if path.is_dir():
        raise SpaInputError(path, "is a directory, expected a movie file")


def _tiff_info(path: Path) -> MovieInfo:
    import tifffile  # noqa: PLC0415

    try:
        with tifffile.TiffFile(path) as tif:
            pages = tif.pages
            n = len(pages)
            if n == 0:
                raise SpaInputError(path, "TIFF file has no images")
            first = pages.first
            shape = first.shape
            if len(shape) != 2:
                raise SpaInputError(path, f"TIFF frames must be 2D grey images, found shape {shape}")
            # a truncated file usually still has a complete first IFD: check the last page's data lies inside
            last = pages[n - 1]
            size = path.stat().st_size
            offsets, counts = last.dataoffsets, last.databytecounts
            if offsets and max(o + c for o, c in zip(offsets, counts)) > size:
                raise SpaInputError(path, "truncated TIFF file: the last frame's data lies beyond the end of the file")
            if last.shape != shape:
                raise SpaInputError(path, f"TIFF frames differ in shape ({shape} and {last.shape})")
    except SpaInputError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise SpaInputError(path, f"not a readable TIFF file ({type(exc).__name__}: {exc})") from None
    return MovieInfo(n, int(shape[0]), int(shape[1]), "tiff")


def movie_info(path: str | os.PathLike) -> MovieInfo:
    """Frames and frame size from the header (no frames are read); validates the file as far as that allows."""
    from spa.io.mrc import read_mrc_header  # noqa: PLC0415

    path = Path(path)
    kind = movie_format(path)
    _check_exists(path)
    if kind == "tiff":
        return _tiff_info(path)
    header = read_mrc_header(path)
    if len(header.shape) == 2:
        return MovieInfo(1, *header.shape, "mrc")
    return MovieInfo(*header.shape, "mrc")


def read_movie(path: str | os.PathLike, expect_frames: int | None = None) -> np.ndarray:
    """All frames of a movie as float32, shape (frames, y, x).

    ``expect_frames``: the frame count the movie must have (a movie with
    fewer or more frames than its optics group is an error naming it).
    """
    from spa.io.mrc import read_mrc  # noqa: PLC0415

    path = Path(path)
    info = movie_info(path)
    if expect_frames is not None and info.n_frames != int(expect_frames):
        raise SpaInputError(path, f"movie has {info.n_frames} frames, expected {int(expect_frames)}")
    if info.format == "mrc":
        frames, _ = read_mrc(path)
        frames = frames.reshape(info.n_frames, info.ny, info.nx)
    else:
        import tifffile  # noqa: PLC0415

        try:
            raw = tifffile.imread(path, key=range(info.n_frames))
        except Exception as exc:
            raise SpaInputError(path, f"cannot decode the TIFF frames ({type(exc).__name__}: {exc})") from None
        frames = np.ascontiguousarray(np.asarray(raw, dtype=np.float32).reshape(info.n_frames, info.ny, info.nx)[:, ::-1, :])
    bad = ~np.isfinite(frames)
    if bad.any():
        frame = int(np.flatnonzero(bad.any(axis=(1, 2)))[0]) + 1
        raise SpaInputError(path, f"{int(bad.sum())} NaN/Inf pixel values (first in frame {frame})")
    return frames


def read_gain(path: str | os.PathLike) -> np.ndarray:
    """A gain reference (MRC or TIFF, one image) as float32 (y, x); TIFF flipped like movie frames."""
    from spa.io.mrc import read_mrc  # noqa: PLC0415

    path = Path(path)
    _check_exists(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile  # noqa: PLC0415

        try:
            gain = np.asarray(tifffile.imread(path, key=0), dtype=np.float32)[::-1, :]
        except Exception as exc:
            raise SpaInputError(path, f"not a readable TIFF gain reference ({type(exc).__name__}: {exc})") from None
    elif suffix in MRC_SUFFIXES:
        gain, _ = read_mrc(path)
    else:
        raise SpaInputError(path, f"unknown gain reference format {suffix!r}: give an MRC or TIFF file")
    if gain.ndim == 3 and gain.shape[0] == 1:
        gain = gain[0]
    if gain.ndim != 2:
        raise SpaInputError(path, f"a gain reference is one image, this file has shape {gain.shape}")
    if not np.isfinite(gain).all():
        raise SpaInputError(path, "gain reference has NaN/Inf values")
    if (gain < 0).any():
        raise SpaInputError(path, "gain reference has negative values")
    return np.ascontiguousarray(gain, dtype=np.float32)


def orient_gain(gain: np.ndarray, rotation: int = 0, flip: int = 0) -> np.ndarray:
    """Apply RELION's gain rotation (0–3: × 90° counter-clockwise, origin at the bottom left) then flip
    (0 none, 1 upside down, 2 left to right); see the module docstring."""
    if int(rotation) not in (0, 1, 2, 3):
        raise ValueError(f"gain rotation must be 0, 1, 2 or 3 (× 90°), got {rotation}")
    if int(flip) not in (0, 1, 2):
        raise ValueError(f"gain flip must be 0 (none), 1 (upside down) or 2 (left-right), got {flip}")
    # counter-clockwise with y pointing up is clockwise in the array's row-down picture
    out = np.rot90(gain, k=-int(rotation))
    if int(flip) == 1:
        out = out[::-1, :]
    elif int(flip) == 2:
        out = out[:, ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def check_gain_shape(gain_path, gain_shape: tuple[int, int], movie_path, movie_shape: tuple[int, int],
                     rotation: int = 0) -> None:
    """A :class:`SpaInputError` naming the gain when its (oriented) shape is not the movie's frame shape."""
    gain_shape, movie_shape = tuple(gain_shape), tuple(movie_shape)
    if gain_shape == movie_shape:
        return
    hint = ""
    if gain_shape == movie_shape[::-1]:
        hint = f"; it fits when turned by 90° (gain rotation {1 if rotation in (0, 2) else 0} or 3)"
    elif gain_shape == (2 * movie_shape[0], 2 * movie_shape[1]):
        hint = "; it is a super-resolution gain for counting-mode movies"
    elif 2 * gain_shape[0] == movie_shape[0] and 2 * gain_shape[1] == movie_shape[1]:
        hint = "; it is a counting-mode gain for super-resolution movies"
    raise SpaInputError(gain_path, f"gain reference is {gain_shape[0]} x {gain_shape[1]} px (y x, after rotation "
                                   f"{rotation}) but the movie {movie_path} has frames of {movie_shape[0]} x "
                                   f"{movie_shape[1]} px{hint}")
