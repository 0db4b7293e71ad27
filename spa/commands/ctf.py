"""Estimate the CTF of micrographs (like RELION's CtfFind job), with one of two estimators.

  spa ctf --micrographs corrected_micrographs.star --method ctffind|zeros --output-dir D

--method ctffind: the background-subtracted amplitude spectrum (tiles of
--tile px) correlated with a CTF² model; exhaustive defocus scan, then U, V and
the astigmatism angle refined (spa.ctf_estimation.fit2d). --method zeros: the
defocus of each azimuthal wedge from its 1D profile, an ellipse through them
(spa.ctf_estimation.zeros). Uses rlnMicrographNameNoDW (the sum without dose
weighting) when the STAR has it. Writes D/micrographs_ctf.star (the input rows
+ rlnDefocusU/V/Angle (RELION's convention), rlnCtfAstigmatism,
rlnCtfFigureOfMerit, rlnCtfMaxResolution, rlnPhaseShift), per micrograph
D/ctf/<micrograph>.star (a rerun with the same options skips it) and
D/ctf_fit.png for the first micrographs (half data, half model) with
figures.json. Search limits: --defocus-min/--defocus-max/--defocus-step (Å),
--low-resolution/--high-resolution (Å).
"""

from __future__ import annotations

import json
import sys


def add_args(p):
    p.add_argument("--micrographs", required=True, help="micrographs STAR (motion correction's output or an import)")
    p.add_argument("--method", choices=["ctffind", "zeros"], default="ctffind", help="estimator (default ctffind)")
    p.add_argument("--defocus-min", type=float, default=3000.0, help="Å (default 3000)")
    p.add_argument("--defocus-max", type=float, default=50000.0, help="Å (default 50000)")
    p.add_argument("--defocus-step", type=float, default=200.0, help="Å of the initial scan (default 200)")
    p.add_argument("--low-resolution", type=float, default=30.0, help="fit from this resolution, Å (default 30)")
    p.add_argument("--high-resolution", type=float, default=5.0, help="fit to this resolution, Å (default 5)")
    p.add_argument("--tile", type=int, default=512, help="spectrum tile, px (default 512)")
    p.add_argument("--output-dir", required=True, help="job folder")


def _figure(out, shown):
    import numpy as np

    from spa.ctf_estimation.spectrum import full_plane
    from spa.plots import _pyplot, save_figure, write_figures_index

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 4.3), dpi=90, squeeze=False)
    for ax, (name, data, model, fit) in zip(axes[0], shown):
        d, m = full_plane(data), full_plane(model)
        d = (d - d.mean()) / (d.std() + 1e-30)
        m = (m - m.mean()) / (m.std() + 1e-30)
        half = d.shape[1] // 2
        img = np.concatenate([d[:, :half], m[:, half:]], axis=1)
        ax.imshow(np.clip(img, -2.5, 2.5), cmap="gray")
        ax.set_title(f"{name}: {fit.defocus_u:.0f}/{fit.defocus_v:.0f} Å, {fit.defocus_angle:.0f}°\n"
                     f"fit to {fit.max_resolution:.1f} Å", fontsize=8)
        ax.axis("off")
    save_figure(fig, out / "ctf_fit.png")
    write_figures_index(out, [{"file": "ctf_fit.png", "title": "CTF fits",
                               "caption": "Left half of each spectrum: the micrograph's background-subtracted "
                                          "amplitude spectrum; right half: the fitted CTF² model. The Thon rings "
                                          "should continue across the middle."}])


def main(args) -> int:
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from spa.commands._common import progress_printer
    from spa.ctf_estimation.fit2d import CtfFit, CtfSearch, SpectrumFit
    from spa.ctf_estimation.zeros import ellipse, robust_wedges, sector_defoci
    from spa.errors import SpaInputError
    from spa.io.images import resolve_image_path
    from spa.io.mrc import read_mrc
    from spa.io.star import read_micrographs, read_star, write_micrographs, write_star
    from spa.provenance import make_record, read_record

    search = CtfSearch(args.defocus_min, args.defocus_max, args.defocus_step, args.low_resolution,
                       args.high_resolution, args.tile)
    if not 0 < search.defocus_min < search.defocus_max or not search.high_resolution < search.low_resolution:
        raise SpaInputError(args.micrographs, "need 0 < defocus-min < defocus-max and high- < low-resolution (Å)")
    mics, optics = read_micrographs(args.micrographs)
    for col in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        if col not in mics.columns:
            raise SpaInputError(args.micrographs, f"the optics table lacks {col} (needed for the CTF)")
    out = Path(args.output_dir)
    options = {"method": args.method, **search.__dict__}
    from spa.em.run import code_digest

    options["code"] = code_digest()  # a micrograph done by other code is done again
    progress = progress_printer("ctf: micrographs")
    rows, shown = [], []
    for i, row in enumerate(mics.itertuples(index=False)):
        name = str(getattr(row, "rlnMicrographNameNoDW", None) or row.rlnMicrographName)
        per = out / "ctf" / f"{Path(str(row.rlnMicrographName)).stem}.star"
        previous = read_record(str(per)) if per.exists() else None
        if isinstance(previous, dict) and previous.get("options") == options and previous.get("micrograph") == name:
            rows.append(read_star(per)["ctf"].iloc[0].to_dict())
        else:
            path = resolve_image_path(name, args.micrographs)
            if path is None:
                raise SpaInputError(args.micrographs, f"micrograph {name} not found")
            image, _ = read_mrc(path)
            image = image.squeeze()
            if image.ndim != 2 or not np.isfinite(image).all() or float(image.std()) == 0:
                raise SpaInputError(path, "a micrograph must be one finite, non-constant 2D image")
            fit = SpectrumFit(image, float(row.rlnMicrographPixelSize), float(row.rlnVoltage),
                              float(row.rlnSphericalAberration), float(row.rlnAmplitudeContrast), search)
            if args.method == "ctffind":
                result = fit.fit()
            else:
                angles, defoci, quality = sector_defoci(fit)
                if len(angles) < 3:
                    raise SpaInputError(path, "too few usable sectors in its spectrum for --method zeros")
                u, v, angle = ellipse(*robust_wedges(angles, defoci, quality))
                result = CtfFit(u, v, angle, float(np.mean(quality)), fit.fit_resolution(u, v, angle))
            values = {"rlnDefocusU": round(result.defocus_u, 2), "rlnDefocusV": round(result.defocus_v, 2),
                      "rlnDefocusAngle": round(result.defocus_angle, 3),
                      "rlnCtfAstigmatism": round(result.astigmatism, 2),
                      "rlnCtfFigureOfMerit": round(result.figure_of_merit, 5),
                      "rlnCtfMaxResolution": round(result.max_resolution, 3), "rlnPhaseShift": 0.0}
            write_star(per, {"ctf": pd.DataFrame([values])},
                       provenance=make_record(args.argv, None, None, options=options, micrograph=name))
            rows.append(values)
            if len(shown) < 3:
                shown.append((Path(name).stem, fit.data, fit.model(result.defocus_u, result.defocus_v,
                                                                   result.defocus_angle), result))
        progress(i + 1, len(mics))
    table = pd.concat([mics.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    record = make_record(args.argv, None, None, options=options, micrographs=len(table))
    write_micrographs(out / "micrographs_ctf.star", table, optics, provenance=record)
    if shown:
        _figure(out, shown)
    summary = {"micrographs": len(table), "method": args.method,
               "median_defocus_A": float(np.median(0.5 * (table.rlnDefocusU + table.rlnDefocusV))),
               "median_fit_resolution_A": float(np.median(table.rlnCtfMaxResolution))}
    print(json.dumps(summary))
    print(f"ctf ({args.method}): {len(table)} micrographs -> {out / 'micrographs_ctf.star'}", file=sys.stderr)
    return 0
