"""Diagnostic figures of ``spa ctf``: per representative micrograph the half spectrum / half model image and
the 1D fit, and an overview of every micrograph; listed in ``figures.json``.

Representatives (at most four, so hundreds of micrographs give four figures,
not hundreds): the best and the worst fit resolution, the median one, and
the most astigmatic.  Their spectra are recomputed from the micrographs (the
per-micrograph STAR files keep only the numbers), so a resumed run draws the
same figures.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from spa.ctf_estimation.fit2d import CtfSearch
from spa.ctf_estimation.spectrum import full_plane


def representatives(table: pd.DataFrame, most: int = 4) -> list[tuple[int, str]]:
    """(row position, why) of the micrographs to draw."""
    if table.empty:
        return []
    res = table.rlnCtfMaxResolution.to_numpy()
    order = np.argsort(res, kind="stable")
    picks = [(int(order[0]), "best fit resolution"), (int(order[len(order) // 2]), "median fit resolution"),
             (int(order[-1]), "worst fit resolution"),
             (int(np.argmax(table.rlnCtfAstigmatism.to_numpy())), "largest astigmatism")]
    seen, out = set(), []
    for pos, why in picks:
        if pos not in seen:
            seen.add(pos)
            out.append((pos, why))
    return out[:most]


def _normalised(a):
    return (a - a.mean()) / (a.std() + 1e-30)


def draw_fit(path, name: str, fit, row: dict, why: str) -> None:
    """Left: the background-subtracted spectrum (left half) beside the fitted CTF² (right half), centred;
    right: the equiphase-averaged spectrum and the scaled model against frequency, the fit resolution
    marked."""
    from spa.plots import _pyplot, angstrom_axis, save_figure  # noqa: PLC0415

    u, v, angle, phase = (float(row[k]) for k in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift"))
    from scipy.ndimage import gaussian_filter1d, gaussian_filter  # noqa: PLC0415

    plt = _pyplot()
    fig, (ax, ax1) = plt.subplots(1, 2, figsize=(10, 4.3), dpi=90, gridspec_kw={"width_ratios": [1, 1.5]})
    # the centred planes, cropped to the fit band's fine end; the data lightly smoothed (one Fourier pixel)
    data = _normalised(gaussian_filter(full_plane(fit.data), 1.0))
    model = _normalised(full_plane(fit.model(u, v, angle, phase)))
    c = fit.box // 2
    r = int(min(c, np.ceil(fit.box * fit.pixel_size / fit.search.high_resolution)))
    data, model = data[c - r:c + r, c - r:c + r], model[c - r:c + r, c - r:c + r]
    ax.imshow(np.clip(np.concatenate([data[:, :r], model[:, r:]], axis=1), -2.0, 2.0), cmap="gray")
    ax.set_title(f"spectrum | model (to {fit.search.high_resolution:g} Å)", fontsize=8)
    ax.axis("off")
    s, y, m, _ = fit.equiphase_profile(u, v, angle, phase)
    band = s <= 0.5 / fit.pixel_size
    s, y, m = s[band], y[band] - y[band].mean(), m[band] - 0.5
    # the data divided by its running RMS (over ~3 Thon rings), so the oscillation keeps one scale
    rms = np.sqrt(gaussian_filter1d(y * y, sigma=max(2.0, len(y) / 40), mode="nearest"))
    y = y / (rms * np.sqrt(2) + 1e-30)
    ax1.plot(s, y, lw=0.8, color="k", label="spectrum (equiphase average, local RMS scaled)")
    ax1.plot(s, 2 * m, lw=0.8, color="tab:red", alpha=0.7, label="fitted CTF² − ½")
    res = float(row["rlnCtfMaxResolution"])
    ax1.axvline(1.0 / res, color="tab:blue", ls="--", lw=1, label=f"fit resolution {res:.1f} Å")
    ax1.set_xlabel("spatial frequency (1/Å)")
    ax1.set_ylim(-2.5, 2.5)
    ax1.set_yticks([])
    ax1.legend(fontsize=7, loc="lower left")
    angstrom_axis(ax1, fit.box * fit.pixel_size)
    fig.suptitle(f"{name} ({why}): U {u:.0f} Å, V {v:.0f} Å, angle {angle:.0f}°, "
                 f"figure of merit {float(row['rlnCtfFigureOfMerit']):.2f}", fontsize=9)
    save_figure(fig, path)


def draw_overview(path, table: pd.DataFrame, method: str) -> None:
    """Defocus U and V and the fit resolution of every micrograph, in table order."""
    from spa.plots import _pyplot, save_figure  # noqa: PLC0415

    plt = _pyplot()
    fig, (ax, ax1) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=90)
    x = np.arange(1, len(table) + 1)
    ax.plot(x, table.rlnDefocusU / 1e4, "v", ms=4, label="U")
    ax.plot(x, table.rlnDefocusV / 1e4, "^", ms=4, label="V")
    ax.set_xlabel("micrograph")
    ax.set_ylabel("defocus (µm)")
    ax.legend(fontsize=8)
    ax1.plot(x, table.rlnCtfMaxResolution, "o", ms=4)
    ax1.set_xlabel("micrograph")
    ax1.set_ylabel("fit resolution (Å)")
    fig.suptitle(f"CTF estimates ({method}) of {len(table)} micrographs", fontsize=9)
    save_figure(fig, path)


def write_figures(out: Path, table: pd.DataFrame, jobs: list[dict], method: str, search: CtfSearch) -> None:
    """The overview, the representatives' fits and ``figures.json`` (written last)."""
    from spa.ctf_estimation.run import read_image, spectrum_fit  # noqa: PLC0415
    from spa.plots import write_figures_index  # noqa: PLC0415

    out = Path(out)
    by_name = {j["name"]: j for j in jobs}
    entries = []
    if len(table) > 1:
        draw_overview(out / "ctf_overview.png", table, method)
        entries.append({"file": "ctf_overview.png", "title": f"CTF estimates ({method})",
                        "caption": "Defocus U and V (left) and the resolution to which the CTF fit holds (right) "
                                   "per micrograph; outliers are what the consensus stage looks at."})
    for pos, why in representatives(table):
        row = table.iloc[pos].to_dict()
        job = by_name[str(row["rlnMicrographName"])]
        fit = spectrum_fit(read_image(job), job["optics"], search)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(Path(job["name"]).with_suffix("")))
        file = f"ctf_fit_{stem}.png"
        draw_fit(out / file, Path(job["name"]).name, fit, row, why)
        entries.append({"file": file, "title": f"CTF fit of {Path(job['name']).name} ({why}, {method})",
                        "caption": "Left: the micrograph's background-subtracted amplitude spectrum (left half) "
                                   "beside the fitted CTF² (right half); the Thon rings should continue across "
                                   "the middle. Right: the spectrum averaged along the fitted CTF's equiphase "
                                   "ellipses (black) and the fitted CTF² (red), up to the fit resolution (blue)."})
    write_figures_index(out, entries)
