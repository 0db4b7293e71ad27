"""Alignability per particle: how precisely and how reproducibly its pose is determined.

* **Precision**: the spread of the posterior over orientations around the
  best pose — the posterior-weighted RMS angle (degrees, modulo the point
  group) from a local re-search around the refined pose at the refinement's
  final HEALPix order (:func:`spa.validation.search.search_poses`).  Where the
  refined STAR carries RELION's posterior summaries (rlnMaxValueProbDistribution,
  rlnNrOfSignificantSamples) they are reported beside it for the whole set.
* **Accuracy**: the angle (modulo the point group,
  :func:`spa.geometry.distance.angular_distance_sym`) between the refined
  pose and the pose of a fresh search that does not start from it — a global
  search at a coarse order, then a local search at the final order around
  its result — on a random subset.  Particles whose fresh pose lands far
  from the refined one are not reproducibly alignable.

Both are measured on the same subset, against the refined map low-passed to
``resolution`` Å.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.geometry.distance import angular_distance_sym
from spa.geometry.euler import euler_to_matrix
from spa.validation.search import search_poses

POSE_COLUMNS = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]


@dataclass
class Alignability:
    """Per particle of the subset: ``precision`` (posterior spread, degrees) and ``accuracy`` (angle between
    the refined and the fresh pose, degrees); ``agree_within`` (degrees) the tolerance the fraction
    ``agreeing`` uses (twice the fine step of the final order); RELION's summaries of the whole set
    (``max_prob_median``, ``significant_median``; None without them)."""

    precision: np.ndarray
    accuracy: np.ndarray
    agree_within: float
    agreeing: float
    max_prob_median: float | None
    significant_median: float | None


def alignability(source, table, volume, *, resolution: float, symmetry: str = "C1", global_order: int = 2,
                 final_order: int = 4, offset_range: float = 3.0, backend: str | None = None,
                 progress=None) -> Alignability:
    """Precision and accuracy (module docstring) of ``table``'s particles (images ``source``)."""
    refined = table[POSE_COLUMNS].to_numpy(np.float64)
    common = dict(symmetry=symmetry, resolution=resolution, offset_range=offset_range, backend=backend)
    local = search_poses(source, table, volume, order=final_order, local_priors=refined, **common)
    if progress:
        progress(1, 3)
    zero = np.zeros((len(table), 2))
    fresh = search_poses(source, table, volume, order=global_order, centres=zero, **common)
    if progress:
        progress(2, 3)
    fresh = search_poses(source, table, volume, order=final_order, local_priors=fresh.angles, centres=fresh.offsets,
                         **common)
    if progress:
        progress(3, 3)
    accuracy = angular_distance_sym(euler_to_matrix(*fresh.angles.T), euler_to_matrix(*refined.T), symmetry)
    within = 2 * 360.0 / (6 * 2**final_order) / 2  # twice the fine step (oversampling 1)
    full_stats = [float(table[c].median()) if c in table else None
                  for c in ("rlnMaxValueProbDistribution", "rlnNrOfSignificantSamples")]
    return Alignability(local.spread, accuracy, within, float(np.mean(accuracy <= within)), *full_stats)


def plot_alignability(path, result: Alignability) -> None:
    """Histograms of precision (posterior spread) and accuracy (refined vs fresh pose)."""
    from spa.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    a.hist(result.precision, bins=30, color="tab:blue", edgecolor="white")
    a.set_xlabel("posterior spread around the refined pose (°)")
    a.set_ylabel("particles")
    a.set_title(f"precision: median {np.median(result.precision):.1f}°", fontsize=9)
    b.hist(np.clip(result.accuracy, 0, 60), bins=np.linspace(0, 60, 31), color="tab:orange", edgecolor="white")
    b.axvline(result.agree_within, color="k", ls="--", lw=1)
    b.set_xlabel("refined vs fresh global search (°, clipped at 60)")
    b.set_title(f"accuracy: {100 * result.agreeing:.0f} % within {result.agree_within:.1f}°", fontsize=9)
    save_figure(fig, path)
