"""Picks from a score map: local maxima above a threshold, at least a distance apart, away from the edges.

Shared by every picker (LoG, template matching, the learned scorer).  The figure of merit
is the score in robust standard deviations of the map, (S − median) / (1.4826·MAD), computed over the map
inside the edge margin; positions are refined to sub-pixel by a parabola through each peak and its neighbours.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def robust_z(values: np.ndarray) -> tuple[float, float]:
    """(median, 1.4826·MAD) of ``values``: the mean and standard deviation of its Gaussian bulk."""
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med))) * 1.4826
    return med, max(mad, 1e-12)


def refine_peaks(score: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel peak positions: the vertex of a parabola through each peak and its two neighbours, per axis
    (a shift of at most half a pixel)."""
    r = np.clip(rows, 1, score.shape[0] - 2)
    c = np.clip(cols, 1, score.shape[1] - 2)

    def vertex(minus, centre, plus):
        denom = minus - 2 * centre + plus
        return np.where(np.abs(denom) > 1e-12, 0.5 * (minus - plus) / np.where(denom == 0, 1, denom), 0.0)

    dy = vertex(score[r - 1, c], score[r, c], score[r + 1, c])
    dx = vertex(score[r, c - 1], score[r, c], score[r, c + 1])
    return rows + np.clip(dy, -0.5, 0.5), cols + np.clip(dx, -0.5, 0.5)


def pick_peaks(score: np.ndarray, distance: float, edge: float, threshold: float):
    """(rows, cols, figure of merit) of the picks on ``score`` (rows, cols), best first.

    ``distance``: closest two picks (pixels of the map); ``edge``: pixels kept free at each edge;
    ``threshold``: smallest figure of merit (robust σ of the map inside the edge margin).
    """
    score = np.asarray(score, np.float32)
    e = int(np.ceil(edge))
    inner = score[e:score.shape[0] - e, e:score.shape[1] - e]
    if inner.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    med, sd = robust_z(inner)
    return select_peaks(score, (score - med) / sd, distance, edge, threshold)


def keep_apart(rows, cols, merit, distance: float) -> np.ndarray:
    """Indices of the points kept, best ``merit`` first, when each kept point drops every point closer than
    ``distance`` (greedy non-maximum suppression; ties keep the earlier point)."""
    order = np.argsort(-np.asarray(merit), kind="stable")
    if len(order) < 2:
        return order
    pts = np.column_stack([np.asarray(rows, float)[order], np.asarray(cols, float)[order]])
    near = cKDTree(pts).query_ball_point(pts, np.nextafter(distance, 0))
    dropped = np.zeros(len(order), bool)
    chosen = []
    for i in range(len(order)):
        if not dropped[i]:
            chosen.append(order[i])
            dropped[near[i]] = True
    return np.asarray(chosen, int)


def select_peaks(score: np.ndarray, merit: np.ndarray, distance: float, edge: float, threshold: float):
    """(rows, cols, merit) of the local maxima of ``score`` whose ``merit`` (a map of the same shape, e.g. the
    score in robust σ) is at least ``threshold``, ``edge`` pixels from the edges, best merit first, sub-pixel.

    Greedy: the best maximum is taken, every candidate closer than ``distance`` (pixels) is dropped, and so on
    (maxima on a plateau or closer than the distance: the best of each cluster).
    """
    size = max(3, int(2 * np.floor(distance / 2) + 1))
    peaks = (score == ndimage.maximum_filter(score, size=size, mode="nearest")) & (merit >= threshold)
    rows, cols = np.nonzero(peaks)
    keep = (rows >= edge) & (cols >= edge) & (rows < score.shape[0] - edge) & (cols < score.shape[1] - edge)
    rows, cols = rows[keep], cols[keep]
    values = merit[rows, cols]
    idx = keep_apart(rows, cols, values, distance)
    rows, cols, values = rows[idx], cols[idx], values[idx]
    fine_rows, fine_cols = refine_peaks(score, rows, cols)
    return fine_rows, fine_cols, values
