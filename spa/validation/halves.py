"""Two half maps from given poses, with the images changed on the way (the checks that re-reconstruct).

Noise substitution and the noise-particle test reconstruct the two random
halves of a particle subset from poses they are given, from images they
alter first (phases randomised, or replaced by noise).  This is
:func:`spa.reconstruct.insert_chunk` (CTF-weighted insertion, symmetry,
unregularised data ÷ weight) chunk by chunk, in-process: the subsets of the
validation checks are small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.em.fsc import fsc, reaches_threshold_at_nyquist, resolution_at
from spa.fourier import soft_spherical_mask
from spa.parallel import make_chunks
from spa.reconstruct import insert_chunk


@dataclass
class HalfFSC:
    """The FSC (shells 0 … B//2) of two half maps, the resolution at 0.143 (Å) and whether it reached
    Nyquist (then the resolution is a bound)."""

    curve: np.ndarray
    resolution: float
    at_nyquist: bool


def reconstruct_halves(read, table, subset, *, pixel_size: float, symmetry: str = "C1", use_ctf: bool = True,
                       chunk_size: int = 256, backend: str | None = None):
    """Half maps (two (B, B, B) float32) of the rows with ``subset`` 1 and 2.

    ``read(idx)`` returns the images (n, B, B) of table rows ``idx`` (already altered as the check needs);
    the table gives their poses (rlnAngle*, rlnOrigin*Angst) and CTF.
    """
    from spa.backend import get_backend

    be = get_backend(backend)
    maps = []
    for h in (1, 2):
        rows = np.nonzero(np.asarray(subset) == h)[0]
        bp = None
        for idx in make_chunks(rows, chunk_size):
            images = read(idx)
            bp = insert_chunk(images, table.iloc[idx].reset_index(drop=True), images.shape[-1], pixel_size,
                              use_ctf=use_ctf, symmetry=symmetry, backend=be.name, bp=bp)
        maps.append(np.asarray(be.to_numpy(bp.reconstruct()), np.float32))
    return maps


def half_fsc(map1, map2, pixel_size: float) -> HalfFSC:
    """FSC inside a soft sphere (radius B/2 − 2 px, 3 px edge) and its resolution at 0.143."""
    box = map1.shape[-1]
    curve = fsc(map1, map2, soft_spherical_mask(box, box // 2 - 2, 3.0))
    return HalfFSC(curve, resolution_at(curve, 0.143, box, pixel_size), reaches_threshold_at_nyquist(curve, 0.143))
