"""RELION coordinate files: per-micrograph ``*_autopick.star`` and the ``autopick.star`` index; matching
picks to true coordinates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from spa.errors import SpaInputError
from spa.io.star import read_star, write_star


def coordinate_file_name(micrograph: str, suffix: str = "autopick") -> str:
    """RELION's name of a micrograph's coordinate file: <micrograph stem>_<suffix>.star."""
    return f"{Path(micrograph).stem}_{suffix}.star"


def write_coordinates(path, picks: pd.DataFrame, provenance: dict | None = None) -> None:
    """One micrograph's picks as RELION's coordinate STAR (data_ with rlnCoordinateX/Y, figure of merit)."""
    write_star(path, {"": picks.reset_index(drop=True)}, provenance=provenance)


def read_coordinates(path) -> pd.DataFrame:
    """rlnCoordinateX/Y (and whatever else) of one coordinate STAR; an error naming the file when the
    columns are missing."""
    blocks = read_star(path)
    for table in blocks.values():
        if isinstance(table, pd.DataFrame) and {"rlnCoordinateX", "rlnCoordinateY"} <= set(table.columns):
            return table.reset_index(drop=True)
    if all(isinstance(t, pd.DataFrame) and t.empty for t in blocks.values()):
        return pd.DataFrame({"rlnCoordinateX": [], "rlnCoordinateY": []})
    raise SpaInputError(path, "no rlnCoordinateX/rlnCoordinateY columns (a RELION coordinate STAR)")


def write_coordinate_index(path, micrographs: list[str], files: list[str], provenance: dict | None = None) -> None:
    """RELION 3.1's autopick.star: data_coordinate_files with rlnMicrographName → rlnMicrographCoordinates."""
    table = pd.DataFrame({"rlnMicrographName": micrographs, "rlnMicrographCoordinates": files})
    write_star(path, {"coordinate_files": table}, provenance=provenance)


def match_to_truth(picks: pd.DataFrame, truth: pd.DataFrame, max_distance: float) -> dict:
    """One-to-one matching of picks to true centres (pixels) within ``max_distance`` px (Hungarian on the
    candidate pairs): counts, precision, recall, and the matched pairs' RMS distance (px)."""
    p = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
    t = truth[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
    matched, dist = 0, np.array([])
    if len(p) and len(t):
        tree = cKDTree(t)
        pairs = tree.query_ball_point(p, max_distance)
        cost = np.full((len(p), len(t)), 1e9)
        for i, js in enumerate(pairs):
            for j in js:
                cost[i, j] = np.hypot(*(p[i] - t[j]))
        rows, cols = linear_sum_assignment(cost)
        ok = cost[rows, cols] <= max_distance
        matched, dist = int(ok.sum()), cost[rows, cols][ok]
    return {"picks": len(p), "true": len(t), "matched": matched,
            "precision": matched / len(p) if len(p) else 0.0, "recall": matched / len(t) if len(t) else 0.0,
            "rms_px": float(np.sqrt(np.mean(dist**2))) if len(dist) else float("nan")}


def read_pick_sets(index_path, micrograph_names: list[str]) -> dict[str, pd.DataFrame]:
    """One picker's picks, by micrograph: RELION's ``autopick.star`` index read and each coordinate STAR
    checked (finite rlnCoordinateX/Y).  Index rows are matched to ``micrograph_names`` (the micrographs
    STAR) by rlnMicrographName, else by file name; a row for a micrograph not in that list is an error
    naming the index.  Micrographs the index does not list get no picks (an empty table)."""
    from spa.extraction.plan import _checked_coordinates, coordinate_files

    by_base = {Path(n).name: n for n in micrograph_names}
    out = {n: pd.DataFrame({"rlnCoordinateX": [], "rlnCoordinateY": []}) for n in micrograph_names}
    for name, path in coordinate_files(index_path).items():
        key = name if name in out else by_base.get(Path(name).name)
        if key is None:
            raise SpaInputError(index_path, f"lists coordinates for micrograph {name}, which is not in the "
                                            f"micrographs STAR ({len(micrograph_names)} micrographs)")
        out[key] = _checked_coordinates(path)
    return out
