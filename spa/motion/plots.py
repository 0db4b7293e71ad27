"""The drift figure of ``spa motion`` (``drift.png`` + ``figures.json``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def drift_figures(out: Path, table, jobs: list[dict], max_tracks: int = 24) -> None:
    """Trajectories of up to ``max_tracks`` movies (Å, frame 1 at the origin) and each movie's total and
    largest frame-to-frame motion; listed in ``figures.json``."""
    from spa.io.atomic import atomic_path  # noqa: PLC0415
    from spa.io.star import read_star  # noqa: PLC0415
    from spa.plots import _pyplot, write_figures_index  # noqa: PLC0415

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    done = {j["star"]: j for j in jobs}
    stars = [s for s in done if Path(s).exists()]
    for star in stars[:max_tracks]:
        blocks = read_star(star)
        shifts = blocks["global_shift"]
        pixel = float(blocks["general"]["rlnMicrographOriginalPixelSize"])
        # the specimen moves opposite to the shift that corrects it
        x = -shifts["rlnMicrographShiftX"].to_numpy() * pixel
        y = -shifts["rlnMicrographShiftY"].to_numpy() * pixel
        ax1.plot(x, y, "-", lw=1, alpha=0.8)
        ax1.plot(x[-1:], y[-1:], "o", ms=3, color=ax1.lines[-1].get_color())
    ax1.set_xlabel("x (Å)")
    ax1.set_ylabel("y (Å)")
    ax1.set_aspect("equal", adjustable="datalim")
    ax1.set_title(f"specimen drift ({min(len(stars), max_tracks)} of {len(table)} movies)")
    index = np.arange(1, len(table) + 1)
    ax2.plot(index, table["rlnAccumMotionTotal"], "o-", ms=3, label="total travel")
    ax2.plot(index, table["rlnAccumMotionEarly"], "s", ms=3, label="early (first 4 e⁻/Å²)")
    ax2.plot(index, table["rlnSpaMaxFrameShiftAngst"], "^", ms=3, label="largest frame-to-frame step")
    ax2.set_xlabel("micrograph")
    ax2.set_ylabel("motion (Å)")
    ax2.legend(fontsize=8)
    ax2.set_title("drift screening")
    fig.tight_layout()
    with atomic_path(out / "drift.png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    write_figures_index(out, [{
        "file": "drift.png", "title": "Motion correction: drift",
        "caption": "Left: the whole-frame trajectory of the specimen in each movie (Å; frame 1 at the origin, the "
                   "dot marks the last frame). Right: per micrograph, the total travel, the motion during the first "
                   "4 e⁻/Å² and the largest step between two frames (Å); outliers here are candidates for rejection.",
    }])
