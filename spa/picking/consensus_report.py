"""Outputs of ``spa consensus pick``: coordinate files, the agreement table (STAR + JSON) and its figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from spa.io.atomic import atomic_path
from spa.io.star import write_star
from spa.picking.coordinates import coordinate_file_name, write_coordinate_index, write_coordinates


def agreement_table(picker_labels: list[str], counts: dict, rescued: int, kept: int) -> pd.DataFrame:
    """The agreement table (rows: each picker's picks, clusters with exactly / at least k votes, rescued,
    kept): columns spaMeasure, spaNumberOfPicks."""
    n = len(picker_labels)
    rows = [(f"picker {i + 1} ({label})", counts["per_picker"][i]) for i, label in enumerate(picker_labels)]
    rows += [(f"found by exactly {k}", counts["exactly"][k - 1]) for k in range(1, n + 1)]
    rows += [(f"found by at least {k}", counts["at_least"][k - 1]) for k in range(1, n + 1)]
    rows += [("found by all (AND)", counts["at_least"][n - 1]), ("rescued by the learned scorer", rescued),
             ("kept", kept)]
    return pd.DataFrame({"spaMeasure": [r[0] for r in rows], "spaNumberOfPicks": [int(r[1]) for r in rows]})


def write_outputs(out: Path, merged: dict[str, pd.DataFrame], kept: dict[str, pd.DataFrame], table: pd.DataFrame,
                  summary: dict, record: dict) -> None:
    """DIR/coordinates/<micrograph>_autopick.star (kept picks), DIR/autopick.star, DIR/consensus_pick.star
    (the agreement table and, per micrograph, the clusters of every vote count), DIR/consensus_pick.json."""
    names, files = [], []
    for name, picks in kept.items():
        path = out / "coordinates" / coordinate_file_name(name)
        write_coordinates(path, picks, provenance=record)
        names.append(name)
        files.append(str(path))
    write_coordinate_index(out / "autopick.star", names, files, provenance=record)
    per_mic = pd.DataFrame({"rlnMicrographName": list(merged),
                            "spaNumberOfClusters": [len(m) for m in merged.values()],
                            "spaNumberOfPicks": [len(kept[n]) for n in merged]})
    write_star(out / "consensus_pick.star", {"agreement": table, "micrographs": per_mic}, provenance=record)
    with atomic_path(out / "consensus_pick.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))


def write_figures(out: Path, table: pd.DataFrame, shown: list, n_pickers: int, need: int) -> list[dict]:
    """consensus_table.png (the agreement table as bars) and consensus_picks.png (the first micrographs
    with every cluster coloured by its votes; rescued ones dashed); returns the figures.json entries."""
    from scipy import ndimage

    from spa.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(table) + 1.0), dpi=90)
    y = np.arange(len(table))[::-1]
    ax.barh(y, table.spaNumberOfPicks, color="tab:blue")
    ax.set_yticks(y, table.spaMeasure, fontsize=8)
    for yy, v in zip(y, table.spaNumberOfPicks):
        ax.text(v, yy, f" {v}", va="center", fontsize=8)
    ax.set_xlabel("picks (all micrographs)")
    save_figure(fig, out / "consensus_table.png")
    entries = [{"file": "consensus_table.png", "title": "Picker agreement",
                "caption": "How many picks each picker made, how many merged positions exactly / at least k "
                           "pickers found, how many the learned scorer rescued, and how many were kept."}]
    if shown:
        cmap = plt.get_cmap("viridis", n_pickers)
        fig, axes = plt.subplots(1, len(shown), figsize=(4.4 * len(shown), 4.6), dpi=90, squeeze=False)
        for ax, (name, image, merged, keep, diameter_px) in zip(axes[0], shown):
            ax.imshow(ndimage.gaussian_filter(image, max(1.0, diameter_px / 30)), cmap="gray")
            for row, ok in zip(merged.itertuples(index=False), keep):
                rescued = bool(getattr(row, "rlnSpaRescued", 0))
                ax.add_patch(plt.Circle((row.rlnCoordinateX, row.rlnCoordinateY), diameter_px / 2, fill=False,
                                        color=cmap(int(row.rlnSpaPickerVotes) - 1), lw=1.4 if ok else 0.6,
                                        ls="--" if rescued else ("-" if ok else ":")))
            ax.set_title(f"{name}: {int(np.sum(keep))} kept of {len(merged)}", fontsize=9)
            ax.axis("off")
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0.5, n_pickers + 0.5))
        fig.colorbar(sm, ax=list(axes[0]), ticks=range(1, n_pickers + 1), label="pickers that found it", shrink=0.8)
        save_figure(fig, out / "consensus_picks.png", tight=False)
        entries.append({"file": "consensus_picks.png", "title": "Consensus picks",
                        "caption": f"The first micrographs (low-passed) with every merged position, coloured by "
                                   f"how many of the {n_pickers} pickers found it: kept (≥ {need}) solid, "
                                   f"rescued by the learned scorer dashed, dropped dotted."})
    return entries
