"""CTF consensus between two estimators and micrograph selection (as Scipion's CTF consensus).

Agreement (Marabini et al. 2015): the two estimates' phases χ_A and χ_B
(RELION's CTF phase, :func:`spa.ctf.ctf_phase`) stay within 90° of each other
up to some spatial frequency over every azimuth; beyond it the two CTFs
disagree on the sign of at least part of the ring and the data there cannot
be trusted.  The *consensus resolution* is the finest resolution at which
max_θ |χ_A − χ_B| < π/2 still holds (Å).

A micrograph is rejected, with the reason, when any rule fails:
fit resolution worse than ``max_fit_resolution`` Å (either estimator),
astigmatism above ``max_astigmatism`` Å, mean defocus outside
[``defocus_min``, ``defocus_max``] Å, consensus resolution worse than
``max_consensus_resolution`` Å, and, where the STAR has them (motion
correction's columns), total drift above ``max_drift`` Å (rlnAccumMotionTotal) and
the largest frame-to-frame shift above ``max_frame_shift`` Å
(rlnSpaMaxFrameShiftAngst; off by default); a micrograph that
estimator B could not estimate is rejected too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from spa.ctf import ctf_phase


@dataclass(frozen=True)
class CtfRules:
    """Thresholds (Å); None switches a rule off."""

    max_fit_resolution: float | None = 8.0
    max_astigmatism: float | None = 2000.0
    defocus_min: float | None = 3000.0
    defocus_max: float | None = 50000.0
    max_consensus_resolution: float | None = 6.0
    max_drift: float | None = 50.0
    max_frame_shift: float | None = None


def consensus_resolution(a: tuple, b: tuple, pixel_size: float, voltage: float, cs: float, q: float,
                         box: int = 512) -> float:
    """Finest resolution (Å) up to which two CTFs (defocus U, V Å, angle °) stay within 90° in phase at
    every azimuth; Nyquist when they never part."""
    chi_a, _ = ctf_phase(box, pixel_size, *a, voltage, cs, q)
    chi_b, _ = ctf_phase(box, pixel_size, *b, voltage, cs, q)
    diff = np.abs(chi_a[0] - chi_b[0])
    ky = np.fft.fftfreq(box)[:, None]
    kx = np.fft.rfftfreq(box)[None, :]
    ring = np.rint(np.sqrt(kx**2 + ky**2) * box).astype(int)
    n = box // 2 + 1
    worst = np.zeros(n)
    np.maximum.at(worst, np.minimum(ring, n).ravel()[ring.ravel() < n], diff.ravel()[ring.ravel() < n])
    apart = np.nonzero(worst[1:] >= np.pi / 2)[0]
    shell = (apart[0] + 1) if apart.size else n - 1
    return float(box * pixel_size / max(shell, 1))


def _reasons(row, res: float, rules: CtfRules) -> list[str]:
    """Why a micrograph with both estimates is rejected (empty: kept)."""
    r, why = rules, []
    mean_a = 0.5 * (row.rlnDefocusU + row.rlnDefocusV)
    fit = max(row.rlnCtfMaxResolution, row.rlnCtfMaxResolution_B)
    if r.max_fit_resolution is not None and fit > r.max_fit_resolution:
        why.append(f"CTF fit only to {fit:.1f} Å (> {r.max_fit_resolution:g})")
    astig = row.rlnDefocusU - row.rlnDefocusV
    if r.max_astigmatism is not None and astig > r.max_astigmatism:
        why.append(f"astigmatism {astig:.0f} Å (> {r.max_astigmatism:g})")
    if r.defocus_min is not None and mean_a < r.defocus_min:
        why.append(f"defocus {mean_a:.0f} Å (< {r.defocus_min:g})")
    if r.defocus_max is not None and mean_a > r.defocus_max:
        why.append(f"defocus {mean_a:.0f} Å (> {r.defocus_max:g})")
    if r.max_consensus_resolution is not None and res > r.max_consensus_resolution:
        why.append(f"estimators agree only to {res:.1f} Å (> {r.max_consensus_resolution:g})")
    drift = getattr(row, "rlnAccumMotionTotal", None)
    if r.max_drift is not None and drift is not None and np.isfinite(drift) and drift > r.max_drift:
        why.append(f"drift {drift:.1f} Å (> {r.max_drift:g})")
    jump = getattr(row, "rlnSpaMaxFrameShiftAngst", None)
    if r.max_frame_shift is not None and jump is not None and np.isfinite(jump) and jump > r.max_frame_shift:
        why.append(f"frame-to-frame shift {jump:.1f} Å (> {r.max_frame_shift:g})")
    return why


def ctf_consensus(a: pd.DataFrame, b: pd.DataFrame, optics: pd.DataFrame, rules: CtfRules) -> pd.DataFrame:
    """Rows of A with the consensus columns (rlnSpaCtfMaxResolutionB = B's fit resolution,
    rlnSpaDefocusDifference = mean defocus A − B in Å,
    rlnSpaCtfConsensusResolution in Å, rlnSpaRejectReason — empty when kept), matched to B by
    rlnMicrographName.  A micrograph that only A estimated is rejected ("no estimate by B"); one that only
    B estimated is not in the result (A's estimates are the ones kept)."""
    cols = ["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfMaxResolution"]
    merged = a.merge(b[cols], on="rlnMicrographName", suffixes=("", "_B"), how="left")
    groups = optics.set_index("rlnOpticsGroup")
    reasons, consensus, difference = [], [], []
    for row in merged.itertuples(index=False):
        if not np.isfinite(row.rlnDefocusU_B):
            reasons.append("no estimate by B (failed, or B ran on other micrographs)")
            consensus.append(np.nan)
            difference.append(np.nan)
            continue
        g = groups.loc[int(getattr(row, "rlnOpticsGroup", 1))]
        res = consensus_resolution((row.rlnDefocusU, row.rlnDefocusV, row.rlnDefocusAngle),
                                   (row.rlnDefocusU_B, row.rlnDefocusV_B, row.rlnDefocusAngle_B),
                                   float(g.rlnMicrographPixelSize), float(g.rlnVoltage),
                                   float(g.rlnSphericalAberration), float(g.rlnAmplitudeContrast))
        reasons.append("; ".join(_reasons(row, res, rules)))
        consensus.append(res)
        difference.append(0.5 * (row.rlnDefocusU + row.rlnDefocusV) - 0.5 * (row.rlnDefocusU_B + row.rlnDefocusV_B))
    fit_b = merged["rlnCtfMaxResolution_B"].to_numpy()
    out = merged.drop(columns=[c for c in merged.columns if c.endswith("_B")])
    out["rlnSpaCtfMaxResolutionB"] = fit_b
    out["rlnSpaDefocusDifference"] = difference
    out["rlnSpaCtfConsensusResolution"] = consensus
    out["rlnSpaRejectReason"] = reasons
    return out


def write_selection_figures(out, table: pd.DataFrame, rules: CtfRules | None = None, most_rows: int = 24) -> list[dict]:
    """``ctf_consensus.png`` (agreement against defocus, kept/rejected) and ``ctf_selection_table.png``
    (a table: the rejected micrographs with their reasons first, then kept ones, at most ``most_rows``
    rows, and the count per rule); returns their figures.json entries."""
    from pathlib import Path  # noqa: PLC0415

    from spa.plots import _pyplot, save_figure  # noqa: PLC0415

    out = Path(out)
    plt = _pyplot()
    kept = table.rlnSpaRejectReason == ""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    res = table.rlnSpaCtfConsensusResolution.fillna(0.0)
    mean = 0.5 * (table.rlnDefocusU + table.rlnDefocusV) / 1e4
    ax.scatter(mean[kept], res[kept], c="tab:green", s=14, label="kept")
    ax.scatter(mean[~kept], res[~kept], c="tab:red", s=14, label="rejected")
    limit = rules.max_consensus_resolution if rules is not None else None
    if limit is not None:
        ax.axhline(limit, color="grey", ls="--", lw=1, label=f"rule: agree to {limit:g} Å")
    values = [v for v in [*res[res > 0], limit] if v is not None]
    ax.set_ylim(1.15 * max(values), 0.85 * min(values))  # finer resolution up
    ax.set_xlabel("mean defocus (µm)")
    ax.set_ylabel("the two estimates agree to (Å)")
    ax.legend(fontsize=8)
    ax.set_title(f"CTF consensus: {int(kept.sum())} kept, {int((~kept).sum())} rejected", fontsize=9)
    save_figure(fig, out / "ctf_consensus.png")

    order = list(np.flatnonzero(~kept.to_numpy())) + list(np.flatnonzero(kept.to_numpy()))
    shown = table.iloc[order[:most_rows]]
    cells = [[Path(str(r.rlnMicrographName)).name, f"{0.5 * (r.rlnDefocusU + r.rlnDefocusV):.0f}",
              "–" if not np.isfinite(r.rlnSpaDefocusDifference) else f"{r.rlnSpaDefocusDifference:+.0f}",
              "–" if not np.isfinite(r.rlnSpaCtfConsensusResolution) else f"{r.rlnSpaCtfConsensusResolution:.1f}",
              f"{r.rlnCtfMaxResolution:.1f} / {r.rlnSpaCtfMaxResolutionB:.1f}", f"{r.rlnDefocusU - r.rlnDefocusV:.0f}",
              r.rlnSpaRejectReason or "kept"] for r in shown.itertuples(index=False)]
    rules = {}
    for reason in table.rlnSpaRejectReason[~kept]:
        for part in reason.split("; "):
            key = part.split(" ")[0] if not part.startswith("CTF fit") else "CTF fit"
            key = {"estimators": "disagreement", "no": "no estimate"}.get(key, key)
            rules[key] = rules.get(key, 0) + 1
    fig, ax = plt.subplots(figsize=(11, 0.5 + 0.22 * (len(cells) + 1)), dpi=100)
    ax.axis("off")
    header = ["micrograph", "defocus (Å)", "A − B (Å)", "agree to (Å)", "fit res. A / B (Å)", "astig. (Å)", "decision"]
    tab = ax.table(cellText=cells or [["–"] * len(header)], colLabels=header, loc="upper center", cellLoc="left",
                   colWidths=[0.13, 0.09, 0.08, 0.09, 0.11, 0.08, 0.42])
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    for i, r in enumerate(shown.itertuples(index=False), start=1):
        tab[i, len(header) - 1].set_text_props(color="tab:green" if not r.rlnSpaRejectReason else "tab:red")
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(rules.items())) or "none"
    more = f" (first {len(cells)} of {len(table)} shown)" if len(table) > len(cells) else ""
    ax.set_title(f"Micrograph selection: {int(kept.sum())} of {len(table)} kept{more}; rejections by rule: {counts}",
                 fontsize=8)
    save_figure(fig, out / "ctf_selection_table.png")
    return [{"file": "ctf_selection_table.png", "title": "Micrograph selection by the CTF consensus",
             "caption": "Per micrograph: mean defocus (estimator A), the difference to estimator B, the resolution "
                        "to which the two CTFs stay within 90° in phase, the fit resolution, the astigmatism, and "
                        "the decision with the reasons; rejected micrographs first."},
            {"file": "ctf_consensus.png", "title": "CTF consensus and micrograph selection",
             "caption": "Per micrograph: the resolution to which the two estimators' CTFs stay within 90° in phase "
                        "(Marabini et al. 2015), against defocus; red: rejected (reasons in "
                        "micrographs_rejected.star and the selection table)."}]
