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
correction's columns), total drift above ``max_drift`` Å.
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


def ctf_consensus(a: pd.DataFrame, b: pd.DataFrame, optics: pd.DataFrame, rules: CtfRules) -> pd.DataFrame:
    """Rows of A with the consensus columns (rlnSpaDefocusDifference, rlnSpaCtfConsensusResolution,
    rlnSpaRejectReason — empty when kept), matched to B by rlnMicrographName."""
    merged = a.merge(b[["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfMaxResolution"]],
                     on="rlnMicrographName", suffixes=("", "_B"), how="inner")
    groups = optics.set_index("rlnOpticsGroup")
    reasons, consensus, difference = [], [], []
    for row in merged.itertuples(index=False):
        g = groups.loc[int(getattr(row, "rlnOpticsGroup", 1))]
        res = consensus_resolution((row.rlnDefocusU, row.rlnDefocusV, row.rlnDefocusAngle),
                                   (row.rlnDefocusU_B, row.rlnDefocusV_B, row.rlnDefocusAngle_B),
                                   float(g.rlnMicrographPixelSize), float(g.rlnVoltage),
                                   float(g.rlnSphericalAberration), float(g.rlnAmplitudeContrast))
        mean_a = 0.5 * (row.rlnDefocusU + row.rlnDefocusV)
        mean_b = 0.5 * (row.rlnDefocusU_B + row.rlnDefocusV_B)
        why = []
        r = rules
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
        reasons.append("; ".join(why))
        consensus.append(res)
        difference.append(mean_a - mean_b)
    out = merged.drop(columns=[c for c in merged.columns if c.endswith("_B")])
    out["rlnSpaDefocusDifference"] = difference
    out["rlnSpaCtfConsensusResolution"] = consensus
    out["rlnSpaRejectReason"] = reasons
    return out
