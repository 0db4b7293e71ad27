"""The map the true poses give, made exactly as refine3d makes its final map: the like-with-like yardstick.

"The refined map reaches what the true poses allow" is only a fair claim when
the two maps differ in the poses alone.  So the true-pose map here is built
from the *same* particles as the refinement (the rows of its run_data.star,
with its rlnRandomSubset halves), their poses (Euler angles and origins)
replaced by the true ones, and reconstructed as :meth:`Refine3D.final
<spa.refine3d.refine.Refine3D.final>` does:

* each half unregularised (data ÷ weight with the small floor), inside the soft
  spherical mask of the particle radius (RELION's ``*_unfil`` half maps);
* the gold-standard FSC of the halves within that sphere (5-pixel soft edge);
* the full map from both halves' sums by the MAP update whose regulariser is
  the whole-set SSNR, T·F/(1 − F) with F = √(2·FSC/(1 + FSC))
  (``ssnr_from_fsc(..., whole=True)``), to Nyquist, inside the same spherical mask.

What remains different is only what the refinement itself contributes: its
poses, and their spread over the posterior (the E-step's sums weight each
image by 1/σ² per shell as well, a constant for white noise, to which the
SSNR regulariser and the floor are insensitive).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from spa.errors import SpaInputError

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst")


@dataclass
class TruePoseMaps:
    """The maps as refine3d writes them: ``half1``/``half2`` (unregularised, float32 (B,B,B)), ``full``
    (regularised), the halves' FSC per shell (0 … B//2), pixel size (Å) and particles per half."""

    half1: np.ndarray
    half2: np.ndarray
    full: np.ndarray
    fsc: np.ndarray
    pixel_size: float
    n_particles: tuple[int, int]


def _image_keys(table: pd.DataFrame, star_path) -> list[tuple[int, str]]:
    """(image index, normalised absolute file) of each row: the same image named two ways matches."""
    from spa.io.images import parse_image_names

    index, files = parse_image_names(table["rlnImageName"], star_path)
    return [(int(i), os.path.normpath(os.path.abspath(f))) for i, f in zip(index, files)]


def with_true_poses(refined: pd.DataFrame, refined_star, truth: pd.DataFrame, truth_star, *,
                    skip_missing: bool = False) -> pd.DataFrame:
    """``refined``'s rows (same order, same rlnRandomSubset if any, CTF and optics) with the poses of the same
    images in ``truth`` (angles in degrees, origins in Å, RELION's conventions).

    Both tables as :func:`spa.io.star.read_particles` returns them (image names resolve from the current
    directory).  A refined particle missing from the truth, or a truth without pose columns, is a
    :class:`SpaInputError` naming the file; with ``skip_missing`` such particles are left out instead (picked
    particles: a false pick has no true pose)."""
    missing = [c for c in POSE_COLUMNS if c not in truth]
    if missing:
        raise SpaInputError(truth_star, f"no true poses: missing column(s) {', '.join(missing)}")
    position = {key: row for row, key in enumerate(_image_keys(truth, truth_star))}
    keys = _image_keys(refined, refined_star)
    absent = [k for k in keys if k not in position]
    if absent and skip_missing:
        present = np.array([k in position for k in keys])
        refined = refined[present].reset_index(drop=True)
        keys = [k for k in keys if k in position]
    elif absent:
        index, file = absent[0]
        raise SpaInputError(truth_star, f"{len(absent)} particle(s) of {refined_star} are not in it "
                                        f"(first: image {index + 1} of {file})")
    rows = [position[k] for k in keys]
    out = refined.copy()
    for column in POSE_COLUMNS:
        out[column] = truth[column].to_numpy()[rows]
    return out


def reconstruct_like_refine3d(table: pd.DataFrame, star_path, *, particle_diameter: float | None = None,
                              tau2_fudge: float = 1.0, symmetry: str = "C1", use_ctf: bool = True,
                              chunk_size: int = 512, client=None, backend: str | None = None,
                              progress=None) -> TruePoseMaps:
    """Half maps, their FSC and the full map of ``table``'s particles at their poses, by refine3d's final
    reconstruction (module docstring).  ``particle_diameter`` (Å) and ``tau2_fudge`` as refine3d's options
    (default: 90 % of the box, T = 1)."""
    from spa.backend import get_backend
    from spa.em.fsc import fsc, ssnr_from_fsc
    from spa.em.reconstruction import reconstruct
    from spa.em.run import mask_radius_px
    from spa.fourier import soft_spherical_mask
    from spa.reconstruct import backproject_table

    if "rlnRandomSubset" not in table:
        raise SpaInputError(star_path, "needs the refinement's halves (column rlnRandomSubset)")
    be = get_backend(backend)
    sums, halves, counts, pixel_size = None, [], [], None
    for subset in (1, 2):
        rows = table[table["rlnRandomSubset"] == subset].reset_index(drop=True)
        if len(rows) == 0:
            raise SpaInputError(star_path, f"no particles in half {subset} (rlnRandomSubset)")
        bp, pixel_size = backproject_table(rows, star_path, symmetry=symmetry, use_ctf=use_ctf,
                                           chunk_size=chunk_size, client=client, backend=backend,
                                           progress=progress)
        box = bp.box
        radius = mask_radius_px(particle_diameter, box, pixel_size)
        half, _ = reconstruct(bp.data, bp.weight, box, 3, max_radius=box // 2 + 0.5, mask_radius_px=radius)
        halves.append(np.asarray(be.to_numpy(half), np.float32))
        counts.append(len(rows))
        sums = bp if sums is None else sums + bp
    half_fsc = fsc(halves[0], halves[1], soft_spherical_mask(box, radius, 5.0))
    ssnr = ssnr_from_fsc(half_fsc, tau2_fudge, whole=True)
    full, _ = reconstruct(sums.data, sums.weight, box, 3, ssnr=be.xp.asarray(ssnr), max_radius=box // 2 + 0.5,
                          mask_radius_px=radius)
    return TruePoseMaps(halves[0], halves[1], np.asarray(be.to_numpy(full), np.float32), np.asarray(half_fsc),
                        float(pixel_size), (counts[0], counts[1]))
