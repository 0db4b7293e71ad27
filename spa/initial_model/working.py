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


@dataclass
class WorkingSet:
    """Particles Fourier-cropped to the working box, in memory.

    ``images`` (N, b, b) float32 at ``pixel_size`` Å/px; ``table`` the particle
    rows (RELION columns, optics merged); ``group`` (N,) 0-based optics group;
    ``original_box`` / ``original_pixel_size`` of the input particles.
    """

    images: np.ndarray
    table: pd.DataFrame
    box: int
    pixel_size: float
    original_box: int
    original_pixel_size: float
    group: np.ndarray
    has_ctf: bool

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 1 if len(self.group) else 1

    def ctf(self, idx, xp=np):
        """CTFs (n, b, b//2+1) float32 of rows ``idx`` on the working grid (ones without CTF columns)."""
        idx = np.asarray(idx)
        if not self.has_ctf:
            return xp.ones((idx.size, self.box, self.box // 2 + 1), xp.float32)
        rows = self.table.iloc[idx]
        if "rlnDefocusAngle" not in rows:
            rows = rows.assign(rlnDefocusAngle=0.0)
        return ctf_from_table(rows, self.box, self.pixel_size, xp=xp)

    def subset(self, idx) -> "WorkingSet":
        idx = np.asarray(idx)
        return WorkingSet(self.images[idx], self.table.iloc[idx].reset_index(drop=True), self.box, self.pixel_size,
                          self.original_box, self.original_pixel_size, self.group[idx], self.has_ctf)


def load_working_set(table: pd.DataFrame, source, working_box: int, *, chunk: int = 1024, progress=None) -> WorkingSet:
    """Read every particle of ``source`` (a :class:`spa.io.images.ParticleImages`-like reader) and crop it.

    Any recorded origins are ignored: ab initio searches shifts from the box centre.
    """
    box = int(source.box)
    pixel = float(source.pixel_size)
    n = len(table)
    out = np.empty((n, working_box, working_box), np.float32)
    for s in range(0, n, chunk):
        idx = np.arange(s, min(n, s + chunk))
        out[idx] = fourier_resize(np.asarray(source.read(idx), np.float32), working_box, 2)
        if progress:
            progress(int(idx[-1]) + 1, n)
    og = table["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in table else np.ones(n, int)
    group = np.unique(og, return_inverse=True)[1].reshape(-1).astype(np.int64)
    has_ctf = all(c in table for c in CTF_NEEDS)
    return WorkingSet(out, table.reset_index(drop=True), int(working_box), pixel * box / working_box, box, pixel,
                      group, has_ctf)
