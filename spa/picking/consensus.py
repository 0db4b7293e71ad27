"""Consensus of particle pickers: picks of several pickers merged within a distance, AND / OR / at-least-k.

Each picker's picks of one micrograph are matched to the clusters found so
far, picker after picker: a one-to-one assignment (Hungarian, on the
distance to each cluster's mean) within ``radius`` pixels, so a cluster
holds at most one pick of each picker; a pick left unmatched starts a
cluster of its own.  A cluster's *votes* are how many pickers it holds; its
coordinate is the mean of its picks.  AND keeps the clusters all pickers
found, OR every cluster, at-least-k those with k votes or more (AND is
at-least-n, OR at-least-1).  The radius is a fraction of the particle
diameter (default 0.3: two particles' centres are at least a diameter
apart, while two pickers' centres of one particle differ by up to about a
fifth of it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

MODES = ("and", "or", "at-least")


def required_votes(mode: str, n_pickers: int, min_pickers: int | None = None) -> int:
    """Votes a cluster needs under ``mode`` with ``n_pickers`` pickers (ValueError on a bad combination)."""
    if n_pickers < 1:
        raise ValueError("a consensus needs at least one picker")
    if mode == "and":
        return n_pickers
    if mode == "or":
        return 1
    if mode == "at-least":
        if min_pickers is None or not 1 <= int(min_pickers) <= n_pickers:
            raise ValueError(f"--mode at-least needs --min-pickers K between 1 and the number of pickers "
                             f"({n_pickers}), got {min_pickers}")
        return int(min_pickers)
    raise ValueError(f"unknown consensus mode {mode!r} (and, or, at-least)")


def merge_picks(pick_sets: list[pd.DataFrame], radius: float) -> pd.DataFrame:
    """Clusters of one micrograph's picks by ``len(pick_sets)`` pickers (see the module docstring).

    Returns one row per cluster: rlnCoordinateX/Y (mean of its picks, pixels), rlnSpaPickerVotes (how
    many pickers found it), rlnSpaPickers (which, 1-based, comma-separated) and rlnAutopickFigureOfMerit
    (the fraction of the pickers that found it)."""
    n = len(pick_sets)
    sums = np.zeros((0, 2))
    members: list[list[int]] = []
    for k, picks in enumerate(pick_sets):
        xy = (np.zeros((0, 2)) if picks is None or len(picks) == 0
              else picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float))
        matched = np.zeros(len(xy), bool)
        if len(xy) and len(sums):
            centres = sums / np.array([len(m) for m in members])[:, None]
            dist = np.hypot(*(xy[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
            cost = np.where(dist <= radius, dist, 1e9)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if cost[r, c] <= radius:
                    sums[c] += xy[r]
                    members[c].append(k + 1)
                    matched[r] = True
        sums = np.concatenate([sums, xy[~matched]])
        members += [[k + 1] for _ in range(int((~matched).sum()))]
    votes = np.array([len(m) for m in members], int)
    centres = sums / np.maximum(votes, 1)[:, None] if len(sums) else sums
    return pd.DataFrame({
        "rlnCoordinateX": np.round(centres[:, 0], 1),
        "rlnCoordinateY": np.round(centres[:, 1], 1),
        "rlnAutopickFigureOfMerit": votes / max(n, 1),
        "rlnSpaPickerVotes": votes,
        "rlnSpaPickers": [",".join(map(str, m)) for m in members],
    })


def agreement_counts(merged: pd.DataFrame, n_pickers: int) -> dict:
    """Per picker: picks found; per k = 1..n: clusters with exactly k votes and with at least k."""
    votes = merged["rlnSpaPickerVotes"].to_numpy(int) if len(merged) else np.zeros(0, int)
    found = [0] * n_pickers
    for who in (merged["rlnSpaPickers"] if len(merged) else []):
        for k in str(who).split(","):
            found[int(k) - 1] += 1
    return {"per_picker": found,
            "exactly": [int((votes == k).sum()) for k in range(1, n_pickers + 1)],
            "at_least": [int((votes >= k).sum()) for k in range(1, n_pickers + 1)]}
