"""Ground truth for particles picked and extracted from simulated micrographs or movies.

The micrograph and movie simulators (:mod:`spa.simulate.micrographs`,
:mod:`spa.simulate.movies`) write, per micrograph, the true particle centres
(rlnCoordinateX = column, rlnCoordinateY = row, micrograph pixels) with the
true rlnAngleRot/Tilt/Psi and rlnClassNumber, and the true map at the
micrograph's pixel size.  A picker finds a centre only approximately, so a
picked particle's true pose is the pose of the true particle it was picked
from, and its true origin is the offset between the two centres: a particle
whose centre sits at box centre − origin/pixel (CONVENTIONS.md) and was boxed
at the picked coordinate p has its centre at t, so

    rlnOriginXAngst = (p_x − t_x) · micrograph pixel size   (and alike for Y).

The origin is in Å, so it does not depend on Fourier binning at extraction.
The true map is resampled to the particles' pixel size and box so that it can be
compared with the maps made from them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from spa.fourier import fourier_resize

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def match_picks(picked: np.ndarray, true: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching (Hungarian, pairs within ``max_distance`` px): (picked indices, true indices)."""
    if not len(picked) or not len(true):
        return np.array([], int), np.array([], int)
    pairs = cKDTree(true).query_ball_point(picked, max_distance)
    cost = np.full((len(picked), len(true)), 1e9)
    for i, js in enumerate(pairs):
        for j in js:
            cost[i, j] = np.hypot(*(picked[i] - true[j]))
    rows, cols = linear_sum_assignment(cost)
    ok = cost[rows, cols] <= max_distance
    return rows[ok], cols[ok]


def true_poses_of_picks(particles: pd.DataFrame, truth: dict[str, pd.DataFrame], micrograph_pixel: float,
                        max_distance: float) -> tuple[pd.DataFrame, dict]:
    """The picked particles that match a true particle, with its pose and the origin of the offset.

    ``particles``: the extracted particles (rlnMicrographName, rlnCoordinateX/Y in micrograph pixels);
    ``truth``: micrograph stem → true coordinates with poses; ``max_distance`` in micrograph pixels.
    Returns (matched particles with true rlnAngleRot/Tilt/Psi, rlnOriginXAngst/YAngst and
    rlnClassNumber, counts per micrograph and in total).
    """
    rows, per_micrograph = [], {}
    for name, picks in particles.groupby("rlnMicrographName", sort=False):
        stem = Path(str(name)).stem
        true = truth.get(stem)
        if true is None:
            raise KeyError(stem)
        p = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
        t = true[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
        i, j = match_picks(p, t, max_distance)
        matched = picks.iloc[i].copy()
        for col in POSE_COLUMNS:
            matched[col] = true[col].to_numpy(float)[j]
        matched["rlnOriginXAngst"] = (p[i, 0] - t[j, 0]) * micrograph_pixel
        matched["rlnOriginYAngst"] = (p[i, 1] - t[j, 1]) * micrograph_pixel
        if "rlnClassNumber" in true.columns:
            matched["rlnClassNumber"] = true["rlnClassNumber"].to_numpy(int)[j]
        rows.append(matched)
        per_micrograph[stem] = {"picked": len(p), "true": len(t), "matched": len(i)}
    table = pd.concat(rows) if rows else particles.iloc[:0].copy()
    # keep the particles' file order, so the table lines up with the particle stack
    table = table.loc[particles.index.intersection(table.index)].reset_index(drop=True)
    picked = sum(v["picked"] for v in per_micrograph.values())
    true_total = sum(v["true"] for v in per_micrograph.values())
    matched = sum(v["matched"] for v in per_micrograph.values())
    summary = {"picked": picked, "true_on_these_micrographs": true_total, "matched": matched,
               "precision": matched / picked if picked else 0.0,
               "recall": matched / true_total if true_total else 0.0,
               "max_distance_px": max_distance, "micrographs": per_micrograph}
    return table, summary


def resample_map(volume: np.ndarray, pixel_size: float, new_pixel_size: float, new_box: int) -> np.ndarray:
    """The map at ``new_pixel_size`` Å/px in a ``new_box`` box (Fourier resampling, then centred crop or pad).

    The resampled box is the nearest even size to box × pixel / new pixel, so the new pixel size holds to
    within half a pixel over the box; the crop/pad keeps the centre voxel (B//2) at the centre.
    """
    box = volume.shape[0]
    scaled = int(round(box * pixel_size / new_pixel_size / 2)) * 2
    out = fourier_resize(np.asarray(volume, np.float32), max(scaled, 2), ndim=3)
    if scaled > new_box:
        lo = scaled // 2 - new_box // 2
        return np.ascontiguousarray(out[lo:lo + new_box, lo:lo + new_box, lo:lo + new_box])
    padded = np.zeros((new_box,) * 3, np.float32)
    lo = new_box // 2 - scaled // 2
    padded[lo:lo + scaled, lo:lo + scaled, lo:lo + scaled] = out
    return padded
