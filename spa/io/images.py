"""Particle images referenced by a STAR table: ``rlnImageName = <index>@<file>``.

``<index>`` is 1-based (RELION writes it zero-padded, ``000017@stack.mrcs``);
``<file>`` is a RELION ``.mrcs``/``.mrc`` stack (read through a memory map) or
a spa ``.zarr`` stack.  A name without ``@`` is a single-image ``.mrc`` file.

Paths resolve as RELION resolves them — relative to the current directory —
falling back to the folder of the STAR file itself (so a STAR file that names
stacks beside it reads from anywhere).  Resolved paths are stored absolute,
so the object keeps working on Dask workers that run in another directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from spa.errors import SpaInputError
from spa.io.mrc import MrcStack
from spa.io.zarrstack import ZarrStack


def resolve_image_path(name: str, star_path: str | os.PathLike | None) -> Path | None:
    """Where RELION would find ``name``: as given (absolute or from the cwd), else beside the STAR file.

    Returns an absolute path, or None when neither exists.
    """
    p = Path(name)
    if p.is_absolute():
        return p if p.exists() else None
    if p.exists():
        return p.absolute()
    if star_path is not None:
        q = Path(star_path).absolute().parent / p
        if q.exists():
            return q
    return None


def is_zarr_stack(path: Path) -> bool:
    return path.suffix == ".zarr" or (path.is_dir() and (path / "zarr.json").exists())


def open_image_file(path: Path) -> MrcStack | ZarrStack:
    """A reader for one image file (header read and validated, data opened lazily)."""
    return ZarrStack(path) if is_zarr_stack(path) else MrcStack(path)


def parse_image_names(names: pd.Series, star_path=None) -> tuple[np.ndarray, np.ndarray]:
    """Split ``<index>@<file>`` names -> (0-based image indices int64, file names as an object array)."""
    text = names.astype(str)
    parts = text.str.partition("@")
    has_at = (parts[1] == "@").to_numpy()
    files = np.where(has_at, parts[2].to_numpy(dtype=object), text.to_numpy(dtype=object))
    index_text = pd.Series(np.where(has_at, parts[0].to_numpy(dtype=object), "1"), index=names.index)
    index = pd.to_numeric(index_text.str.strip(), errors="coerce")
    bad = index.isna().to_numpy() | ~np.isfinite(index.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise SpaInputError(star_path, f"row {row + 1}: rlnImageName {text.iloc[row]!r} is not <index>@<file>")
    index = index.to_numpy(dtype=np.float64)
    if (index != np.round(index)).any() or (index < 1).any():
        row = int(np.flatnonzero((index != np.round(index)) | (index < 1))[0])
        raise SpaInputError(star_path, f"row {row + 1}: image index in {text.iloc[row]!r} must be an integer >= 1")
    return index.astype(np.int64) - 1, files


class ParticleImages:
    """Lazy, picklable access to the images of a particle table.

    Parameters
    ----------
    particles : DataFrame with rlnImageName (and, if present, rlnImagePixelSize
        in Å and rlnImageSize in px per row, as :func:`spa.io.star.read_particles` gives).
    star_path : the STAR file the table came from (for path resolution and messages).

    ``read(positions)`` returns float32 (n, B, B) images for 0-based *row
    positions* of the table, in the order asked, reading each file once.
    Validated on construction: every file exists, every index is in range,
    all boxes agree (with each other and with rlnImageSize).  ``read`` checks
    the pixels it returns for NaN/Inf.
    """

    def __init__(self, particles: pd.DataFrame, star_path: str | os.PathLike | None, *, check_finite: bool = True):
        self.star_path = None if star_path is None else Path(star_path)
        self.check_finite = check_finite
        if "rlnImageName" not in particles.columns:
            raise SpaInputError(self.star_path, "no rlnImageName column: the particles have no images")
        index, names = parse_image_names(particles["rlnImageName"], self.star_path)
        codes, uniq = pd.factorize(pd.Series(names, dtype=object), sort=False)
        self._image = index
        self._file_id = codes.astype(np.int32)
        self.files: list[Path] = []
        self._readers: list[MrcStack | ZarrStack] = []
        for name in uniq:
            path = resolve_image_path(str(name), self.star_path)
            if path is None:
                star_dir = Path(self.star_path).absolute().parent if self.star_path is not None else None
                where = f"the current folder {Path.cwd()}" + (f" or {star_dir}" if star_dir else "")
                raise SpaInputError(self.star_path, f"image file {name} not found (looked in {where})")
            reader = open_image_file(path)
            if isinstance(reader, MrcStack) and reader.nx != reader.ny:
                raise SpaInputError(path, f"images are {reader.ny} x {reader.nx} px; particles must be square")
            self.files.append(path)
            self._readers.append(reader)
        self._check_indices()
        boxes = np.array([r.box for r in self._readers], dtype=np.int64)
        if len(set(boxes.tolist())) > 1:
            i, j = 0, int(np.flatnonzero(boxes != boxes[0])[0])
            raise SpaInputError(
                self.star_path,
                f"box sizes differ between image files: {self.files[i]} has {boxes[i]} px, {self.files[j]} has {boxes[j]} px",
            )
        self._box = int(boxes[0])
        if "rlnImageSize" in particles.columns:
            sizes = particles["rlnImageSize"].to_numpy()
            bad = sizes != self._box
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise SpaInputError(
                    self.star_path,
                    f"rlnImageSize is {sizes[row]} px but image file {self.files[self._file_id[row]]} has {self._box} px boxes",
                )
        if "rlnImagePixelSize" in particles.columns:
            self._pixel_sizes = sorted(set(np.asarray(particles["rlnImagePixelSize"], dtype=np.float64).tolist()))
        else:
            self._pixel_sizes = sorted({r.pixel_size for r in self._readers if r.pixel_size is not None})

    def _check_indices(self) -> None:
        counts = np.array([len(r) for r in self._readers], dtype=np.int64)
        bad = self._image >= counts[self._file_id]
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            f = self._file_id[row]
            raise SpaInputError(
                self.star_path,
                f"row {row + 1}: image {self._image[row] + 1}@{self.files[f]} is out of range (the file has {counts[f]} images)",
            )

    def __len__(self) -> int:
        return int(self._image.size)

    @property
    def box(self) -> int:
        """Box size in pixels."""
        return self._box

    @property
    def pixel_size(self) -> float:
        """Pixel size in Å (rlnImagePixelSize; the image files' header if the table has none)."""
        if len(self._pixel_sizes) != 1:
            found = ", ".join(f"{p:g}" for p in self._pixel_sizes) or "none"
            raise SpaInputError(self.star_path, f"particles need one pixel size, found: {found} Å")
        return float(self._pixel_sizes[0])

    def image_location(self, position: int) -> tuple[Path, int]:
        """(file, 1-based index) of the image at row ``position``."""
        return self.files[self._file_id[position]], int(self._image[position]) + 1

    def read(self, positions) -> np.ndarray:
        """Images of the rows at 0-based ``positions`` (any order, repeats allowed) as float32 (n, B, B)."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < -len(self) or pos.max() >= len(self)):
            raise IndexError(f"row positions must be within 0..{len(self) - 1}")
        out = np.empty((pos.size, self._box, self._box), dtype=np.float32)
        fids = self._file_id[pos]
        for f in np.unique(fids):
            sel = np.flatnonzero(fids == f)
            out[sel] = self._readers[f].read(self._image[pos[sel]])
        if self.check_finite and out.size:
            finite = np.isfinite(out).all(axis=(1, 2))
            if not finite.all():
                k = int(np.flatnonzero(~finite)[0])
                path, idx = self.image_location(int(pos[k]))
                raise SpaInputError(path, f"image {idx} has NaN/Inf pixels ({int((~finite).sum())} bad images in this read)")
        return out

    def read_all(self) -> np.ndarray:
        """Every image, in row order (for small sets)."""
        return self.read(np.arange(len(self)))

    def close(self) -> None:
        for r in self._readers:
            r.close()


def relocate_image_names(table: pd.DataFrame, star_path) -> pd.DataFrame:
    """Rewrite rlnImageName so each path resolves from the current directory (RELION's project-relative names).

    A STAR written into another folder then still points at the images:
    paths under the current directory become relative to it, others
    absolute.  Names whose file cannot be found are left as they are (the
    reader reports them when images are read).
    """
    if "rlnImageName" not in table or len(table) == 0:
        return table
    text = table["rlnImageName"].astype(str)
    parts = text.str.partition("@")
    if not (parts[1] == "@").all():
        return table
    cwd = Path.cwd()
    mapping = {}
    for name in parts[2].unique():
        found = resolve_image_path(name, star_path)
        if found is None:
            mapping[name] = name
            continue
        found = Path(os.path.normpath(found))
        try:
            mapping[name] = str(found.relative_to(cwd))
        except ValueError:
            mapping[name] = str(found)
    if all(k == v for k, v in mapping.items()):
        return table
    out = table.copy()
    out["rlnImageName"] = parts[0] + "@" + parts[2].map(mapping)
    return out
