"""Estimate the CTF of micrographs (like RELION's CtfFind job), with one of two estimators.

  spa ctf --micrographs corrected_micrographs.star --method ctffind|zeros --output-dir D

--method ctffind (CTFFIND4-like, spa.ctf_estimation.fit2d): the
background-subtracted amplitude spectrum (tiles of --tile px) correlated with
a CTF² model; exhaustive defocus scan (and phase shift with --phase-shift),
a 2D grid over the astigmatism, then U, V, the angle refined.  --method zeros
(spa.ctf_estimation.zeros): the defocus of each azimuthal wedge from its 1D
profile, an ellipse through them, the mean defocus refined on the
equiphase-averaged profile, and the fit resolution from the significance of
each Thon ring's amplitude.  Reads rlnMicrographNameNoDW (the sum without dose
weighting) when the STAR has it.

Writes D/micrographs_ctf.star (the input rows + rlnDefocusU/V/Angle in
RELION's convention, rlnCtfAstigmatism, rlnCtfFigureOfMerit,
rlnCtfMaxResolution, rlnPhaseShift), D/micrographs_failed.star (micrographs
that could not be estimated, with the reason), per micrograph
D/ctf/<micrograph>.star, and figures (the fits of up to four representative
micrographs, an overview) with figures.json.  Resumable: a micrograph done
with the same options is skipped, a new one is estimated alone (--restart
redoes all).  Micrographs go to the Dask workers in batches (--batch-size).
"""

from __future__ import annotations

import json
import sys

from spa.commands._common import dask_client, load_config, option, progress_printer

# CtfSearch field (= option) -> (type, default, key in the config's ctf section)
FIELDS = {
    "defocus_min": (float, 3000.0, "defocus_min"), "defocus_max": (float, 50000.0, "defocus_max"),
    "defocus_step": (float, 200.0, "defocus_step"), "low_resolution": (float, 30.0, "low_resolution"),
    "high_resolution": (float, 5.0, "high_resolution"), "tile": (int, 512, "tile"),
    # the ctf section's max_astigmatism is the selection's threshold; the search bound has its own key
    "max_astigmatism": (float, 3000.0, "search_max_astigmatism"),
    "phase_shift_step": (float, 10.0, "phase_shift_step"),
}


def add_args(p):
    p.add_argument("--micrographs", required=True, help="micrographs STAR (motion correction's output or an import)")
    p.add_argument("--method", choices=["ctffind", "zeros"], default="ctffind", help="estimator (default ctffind)")
    g = p.add_argument_group("search")
    g.add_argument("--defocus-min", type=float, default=None, help="smallest defocus searched, Å (default 3000)")
    g.add_argument("--defocus-max", type=float, default=None, help="largest defocus searched, Å (default 50000)")
    g.add_argument("--defocus-step", type=float, default=None, help="Å of the initial scan (default 200)")
    g.add_argument("--max-astigmatism", type=float, default=None,
                   help="largest astigmatism U − V searched, Å (default 3000; ctffind)")
    g.add_argument("--low-resolution", type=float, default=None, help="fit from this resolution, Å (default 30)")
    g.add_argument("--high-resolution", type=float, default=None, help="fit to this resolution, Å (default 5)")
    g.add_argument("--tile", type=int, default=None, help="spectrum tile, px (default 512)")
    g.add_argument("--phase-shift", action="store_true", default=None,
                   help="also search an additional phase shift in [0, 180)° (phase plate; ctffind only)")
    g.add_argument("--phase-shift-step", type=float, default=None, help="degrees of the phase scan (default 10)")
    p.add_argument("--batch-size", type=int, default=None, help="micrographs per Dask task (default 4)")
    p.add_argument("--output-dir", required=True, help="job folder")


def main(args) -> int:
    from spa.ctf_estimation.fit2d import CtfSearch
    from spa.ctf_estimation.run import run_ctf
    from spa.errors import SpaInputError
    from spa.provenance import make_record

    cfg = load_config(args, "ctf")
    values = {}
    for name, (kind, default, key) in FIELDS.items():
        given = getattr(args, name, None)
        values[name] = kind(given if given is not None else cfg.get(key, default))
    values["phase_shift"] = bool(option(args, "phase_shift", cfg, False))
    search = CtfSearch(**values)
    if not 0 < search.defocus_min < search.defocus_max or not 0 < search.high_resolution < search.low_resolution:
        raise SpaInputError(args.micrographs, "need 0 < defocus-min < defocus-max and 0 < high- < low-resolution (Å)")
    if search.tile < 32 or search.defocus_step <= 0 or search.max_astigmatism < 0 or search.phase_shift_step <= 0:
        raise SpaInputError(args.micrographs, "need --tile ≥ 32 px, --defocus-step > 0, --max-astigmatism ≥ 0 and "
                                              "--phase-shift-step > 0")
    if search.phase_shift and args.method != "ctffind":
        raise SpaInputError(args.micrographs, "--phase-shift is searched by --method ctffind only")
    record = make_record(args.argv, {"method": args.method, **search.__dict__}, None)
    with dask_client(args, cfg) as client:
        summary = run_ctf(args.micrographs, args.output_dir, args.method, search, client=client,
                          batch_size=int(option(args, "batch_size", cfg, 4) or 4), provenance=record,
                          progress=progress_printer("ctf: micrographs"), restart=bool(args.restart))
    print(json.dumps({k: v for k, v in summary.items() if k != "star"}))
    print(f"ctf ({args.method}): {summary['estimated']} estimated, {summary['done_before']} done before, "
          f"{summary['failed']} failed -> {summary['star']}", file=sys.stderr)
    return 0
