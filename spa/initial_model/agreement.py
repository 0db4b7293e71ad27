"""Choosing between initial-model candidates by their agreement with each other (reproducibility).

Independent SGD runs from different random starts end either in the global
optimum or in one of many different local minima; the right map is the one
that several runs reproduce.  For every pair of candidates the second is
rotated, translated and, if that fits better, mirrored onto the first
(:func:`spa.initial_model.align.align_to_reference`, frequencies to
``resolution`` Å), and their correlation is recorded; a candidate's
agreement is the median of its correlations with the others, and the most
agreeing candidate is kept (Sorzano et al. 2021's consensus, applied to
initial volumes).

Why not the reprojection match alone (:mod:`spa.initial_model.choose`): a
wrong, smoother map can match blurred class averages, or noisy particles at
20 Å, as well as or better than the right one.  Measured on 813 particles
picked from the demo's movies (box 48 at 2 Å, working box 24): of six SGD
candidates, four were within 11 Å of the truth (FSC 0.5) and two at 21-22 Å;
the reprojection medians ranked a wrong one first (0.794 against 0.715-0.727
for the right ones), while the four right maps agreed with each other at
0.978-0.994 and the wrong ones with anything at 0.857-0.945.

The hand is not compared (the mirror is allowed): projections cannot tell it.
"""

from __future__ import annotations

import numpy as np

MIN_CANDIDATES = 3  # with two, agreement is symmetric and cannot choose


def agreement_matrix(volumes, pixel_size: float, *, resolution: float = 15.0, log=None) -> np.ndarray:
    """(C, C) correlations of aligned candidate maps (C maps (b, b, b) at ``pixel_size`` Å); diagonal 1."""
    from spa.initial_model.align import align_to_reference

    vols = [np.asarray(v, np.float32) for v in volumes]
    n = len(vols)
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            _, info = align_to_reference(vols[j], vols[i], pixel_size=pixel_size, resolution=resolution)
            out[i, j] = out[j, i] = float(info["score"])
        if log:
            log(f"initial-model: agreement of candidate {i + 1} with the others: "
                + " ".join(f"{out[i, j]:.3f}" for j in range(n) if j != i))
    return out


def agreement_scores(matrix: np.ndarray) -> np.ndarray:
    """Per candidate: the median of its correlations with the other candidates."""
    m = np.asarray(matrix, float)
    n = len(m)
    if n < 2:
        return np.ones(n)
    return np.array([np.median(np.delete(m[i], i)) for i in range(n)])


def choose_by_agreement(matrix: np.ndarray) -> int:
    """Index of the most reproduced candidate (ties: the first)."""
    return int(np.argmax(agreement_scores(matrix)))
