"""Scoring pickers against known particle centres (simulated micrographs, test data with truth).

The measure the project reports for every picker: picks matched one-to-one to true centres within a match
radius (0.2 × the particle diameter unless said otherwise), summed over micrographs, then precision
(matched / picks), recall (matched / true) and F1 (their harmonic mean).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from spa.picking.coordinates import match_to_truth


def pick_scores(pairs: Iterable[tuple[pd.DataFrame, pd.DataFrame]], max_distance: float) -> dict:
    """Precision, recall and F1 of picks against truth over micrographs.

    ``pairs``: (picks, truth) per micrograph, both with rlnCoordinateX/Y in pixels; ``max_distance``: match
    radius in pixels.  Returns counts (picks, true, matched), precision, recall, f1 and the matched pairs'
    RMS distance (px) over all micrographs.
    """
    picks = true = matched = 0
    sq = 0.0
    for p, t in pairs:
        m = match_to_truth(p, t, max_distance)
        picks, true, matched = picks + m["picks"], true + m["true"], matched + m["matched"]
        if m["matched"]:
            sq += m["rms_px"] ** 2 * m["matched"]
    precision = matched / picks if picks else 0.0
    recall = matched / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"picks": picks, "true": true, "matched": matched, "precision": precision, "recall": recall, "f1": f1,
            "rms_px": (sq / matched) ** 0.5 if matched else float("nan")}
