"""Recentring of particles on their class average's centre of mass, and removal of duplicates.

Recentring: a class average's centre of mass sits at c (pixels, from the box
centre, x then y).  A particle of that class with in-plane angle ψ and origin
o (pixels, RELION sign: the particle centre is at box centre − o) shows that
point at image position A·c − o, with A the 2D part of
euler_to_matrix(0, 0, ψ) (the image at frequency k samples the class at Aᵀk,
so image point x shows class point Aᵀx).  The new origin that centres it is
o' = o − A·c.

Duplicates: after recentring, particles of the same micrograph whose centres
(rlnCoordinateX/Y − origin ÷ micrograph pixel size) lie closer than a
distance in Å are duplicates; the one with the highest
rlnMaxValueProbDistribution is kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree


def centre_of_mass(images: np.ndarray) -> np.ndarray:
    """(K, 2) centre of the positive mass of each image, (x, y) pixels from the box centre B//2."""
    images = np.asarray(images, np.float64)
    box = images.shape[-1]
    c = np.arange(box) - box // 2
    w = np.maximum(images, 0)
    tot = np.maximum(w.sum(axis=(1, 2)), 1e-30)
    return np.stack([(w.sum(axis=1) * c).sum(axis=1) / tot, (w.sum(axis=2) * c).sum(axis=1) / tot], axis=1)


def recentre(table: pd.DataFrame, class_images: np.ndarray, pixel_size: float) -> pd.DataFrame:
    """Copy of ``table`` with rlnOriginXAngst/YAngst moved so each particle's class centre of mass is centred."""
    out = table.copy()
    com = centre_of_mass(class_images)  # (K, 2) px
    k = out["rlnClassNumber"].to_numpy().astype(np.int64) - 1
    psi = np.deg2rad(out["rlnAnglePsi"].to_numpy(np.float64)) if "rlnAnglePsi" in out else np.zeros(len(out))
    c, s = np.cos(psi), np.sin(psi)
    cx, cy = com[k, 0], com[k, 1]
    # A = [[c, s], [-s, c]]
    ax = c * cx + s * cy
    ay = -s * cx + c * cy
    ox = out["rlnOriginXAngst"].to_numpy(np.float64) if "rlnOriginXAngst" in out else np.zeros(len(out))
    oy = out["rlnOriginYAngst"].to_numpy(np.float64) if "rlnOriginYAngst" in out else np.zeros(len(out))
    out["rlnOriginXAngst"] = ox - ax * pixel_size
    out["rlnOriginYAngst"] = oy - ay * pixel_size
    return out


def micrograph_pixel_size(table: pd.DataFrame, default: float) -> np.ndarray:
    for col in ("rlnMicrographOriginalPixelSize", "rlnMicrographPixelSize"):
        if col in table:
            return table[col].to_numpy(np.float64)
    return np.full(len(table), float(default))


def remove_duplicates(table: pd.DataFrame, min_distance: float, pixel_size: float):
    """(kept rows, number removed, note).  ``min_distance`` in Å; needs rlnMicrographName and coordinates."""
    need = ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY")
    if any(c not in table for c in need):
        return table, 0, "no micrograph coordinates (rlnMicrographName/rlnCoordinateX/Y): duplicates not removed"
    mpx = micrograph_pixel_size(table, pixel_size)
    ox = table["rlnOriginXAngst"].to_numpy(np.float64) if "rlnOriginXAngst" in table else np.zeros(len(table))
    oy = table["rlnOriginYAngst"].to_numpy(np.float64) if "rlnOriginYAngst" in table else np.zeros(len(table))
    # centres in Å on the micrograph
    x = (table["rlnCoordinateX"].to_numpy(np.float64) - ox / mpx) * mpx
    y = (table["rlnCoordinateY"].to_numpy(np.float64) - oy / mpx) * mpx
    score = table["rlnMaxValueProbDistribution"].to_numpy(np.float64) if "rlnMaxValueProbDistribution" in table \
        else np.zeros(len(table))
    keep = np.ones(len(table), bool)
    for _, idx in table.groupby("rlnMicrographName", sort=False).indices.items():
        if len(idx) < 2:
            continue
        pts = np.stack([x[idx], y[idx]], axis=1)
        pairs = cKDTree(pts).query_pairs(min_distance, output_type="ndarray")
        if len(pairs) == 0:
            continue
        rank = np.empty(len(idx), np.int64)
        rank[np.argsort(-score[idx], kind="stable")] = np.arange(len(idx))
        # greedy in score order: a particle survives unless a better survivor is within range
        nbrs = [[] for _ in range(len(idx))]
        for a, b in pairs:
            nbrs[a].append(b)
            nbrs[b].append(a)
        alive = np.ones(len(idx), bool)
        for j in np.argsort(rank):
            if alive[j]:
                for m in nbrs[j]:
                    if rank[m] > rank[j]:
                        alive[m] = False
        keep[idx] = alive
    return table[keep].reset_index(drop=True), int((~keep).sum()), ""
