"""The particle set at the small working box that ab initio runs on.

Ab initio only needs low resolution (35 → ~12 Å), so the particles are
Fourier-cropped once to a working box whose Nyquist lies comfortably beyond
the final resolution (pixel ≈ final resolution / 3, box ≥ 24 px, never larger
than the original box).  The pixel size changes by B_original / B_working
exactly (CONVENTIONS.md).  CTFs are computed on the working grid with the
working pixel size, straight from the table's RELION columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from spa.ctf import ctf_from_table
from spa.fourier import fourier_resize

CTF_NEEDS = ("rlnDefocusU", "rlnDefocusV", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


def choose_working_box(box: int, pixel_size: float, final_resolution: float, *, min_box: int = 24,
                       oversample: float = 3.0) -> int:
    """Even working box (px) with pixel ≈ ``final_resolution`` / ``oversample`` Å, within [min_box, box]."""
    target_pixel = final_resolution / oversample
    b = int(math.ceil(box * pixel_size / target_pixel))
    b += b % 2
    return int(min(box, max(min(min_box, box), b)))


#: particles held in memory at the working box for the SGD phase (a random subset when there are more)
MAX_HELD = 20_000


@dataclass
class WorkingSet:
    """The particles at the working box: a bounded set held in memory, the rest read when needed.

    ``images`` (M, b, b) float32 at ``pixel_size`` Å/px are the ``held``
    table rows (M ≤ :data:`MAX_HELD` unless asked otherwise; all rows when
    there are no more); SGD draws its mini-batches from them, so its memory
    does not grow with the data set.  ``table`` holds every particle (RELION
    columns, optics merged); ``group`` (N,) its 0-based optics group;
    ``source`` reads the rows not held (original box, cropped on reading), so
    a pass over every particle (:meth:`rows_data`) streams chunk by chunk.
    ``original_box`` / ``original_pixel_size`` of the input particles.
    ``len(ws)`` is the number held: positions 0 … M−1 index ``images``.
    """

    images: np.ndarray
    table: pd.DataFrame
    box: int
    pixel_size: float
    original_box: int
    original_pixel_size: float
    group: np.ndarray
    has_ctf: bool
    held: np.ndarray | None = None
    source: object = None

    def __post_init__(self):
        if self.held is None:
            self.held = np.arange(self.images.shape[0])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_particles(self) -> int:
        """Every particle of the set (held or not)."""
        return len(self.table)

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 1 if len(self.group) else 1

    @property
    def all_held(self) -> bool:
        return len(self) == self.n_particles

    def ctf(self, idx, xp=np):
        """CTFs (n, b, b//2+1) float32 of the held positions ``idx`` on the working grid."""
        return self.ctf_rows(self.held[np.asarray(idx)], xp)

    def ctf_rows(self, rows, xp=np):
        """CTFs (n, b, b//2+1) float32 of table ``rows`` on the working grid (ones without CTF columns)."""
        rows = np.asarray(rows)
        if not self.has_ctf:
            return xp.ones((rows.size, self.box, self.box // 2 + 1), xp.float32)
        sel = self.table.iloc[rows]
        if "rlnDefocusAngle" not in sel:
            sel = sel.assign(rlnDefocusAngle=0.0)
        return ctf_from_table(sel, self.box, self.pixel_size, xp=xp)

    def held_data(self, idx, xp=np):
        """(images, CTFs, optics groups) of the held positions ``idx``."""
        idx = np.asarray(idx)
        return xp.asarray(self.images[idx]), self.ctf(idx, xp), self.group[self.held[idx]]

    def subset(self, idx) -> "WorkingSet":
        """The held positions ``idx`` as a working set of their own (every row held)."""
        idx = np.asarray(idx)
        rows = self.held[idx]
        return WorkingSet(self.images[idx], self.table.iloc[rows].reset_index(drop=True), self.box,
                          self.pixel_size, self.original_box, self.original_pixel_size, self.group[rows],
                          self.has_ctf)

    def rows_data(self, rows, xp=np):
        """(images, CTFs, optics groups) of table ``rows``: from memory when every row is held, else read
        from the stack and cropped (a streaming pass over all particles)."""
        rows = np.asarray(rows)
        if self.all_held:
            images = self.images[rows]
        else:
            images = fourier_resize(np.asarray(self.source.read(rows), np.float32), self.box, 2)
        return xp.asarray(images), self.ctf_rows(rows, xp), self.group[rows]


def load_working_set(table: pd.DataFrame, source, working_box: int, *, chunk: int = 1024, progress=None,
                     max_held: int = MAX_HELD, seed: int = 0) -> WorkingSet:
    """Crop the particles of ``source`` (a :class:`spa.io.images.ParticleImages`-like reader) to the working
    box and hold up to ``max_held`` of them (a seeded random subset when there are more) in memory.

    Any recorded origins are ignored: ab initio searches shifts from the box centre.
    """
    box = int(source.box)
    pixel = float(source.pixel_size)
    n = len(table)
    if n <= max_held:
        held = np.arange(n)
    else:
        held = np.sort(np.random.default_rng([int(seed), 0x5E7]).choice(n, size=int(max_held), replace=False))
    out = np.empty((held.size, working_box, working_box), np.float32)
    for s in range(0, held.size, chunk):
        part = slice(s, min(held.size, s + chunk))
        out[part] = fourier_resize(np.asarray(source.read(held[part]), np.float32), working_box, 2)
        if progress:
            progress(part.stop, held.size)
    og = table["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in table else np.ones(n, int)
    group = np.unique(og, return_inverse=True)[1].reshape(-1).astype(np.int64)
    has_ctf = all(c in table for c in CTF_NEEDS)
    return WorkingSet(out, table.reset_index(drop=True), int(working_box), pixel * box / working_box, box, pixel,
                      group, has_ctf, held=held, source=None if held.size == n else source)
