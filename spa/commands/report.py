"""The run report: one self-contained HTML page a person reads in a browser.

Reads everything under --results: a summary on top (particles at each stage,
resolution — "≥ Nyquist" when the FSC never drops below the threshold —,
B-factor, local resolution, what the selection steps rejected and why, seeds
and the workflow config given with --config, software versions, the
provenance of the key outputs), the final map's three central sections and a
shaded iso-surface (--map, default refine3d/run_class001.mrc), then every
stage's figures as its figures.json lists them, in pipeline order.  Stages
that are absent are left out.  Writes DIR/index.html (images embedded; no
network, no scripts), map_slices.png and map_surface.png in --output-dir
(default RESULTS/report).

Example:  spa report --results results --config results/report/config.yaml
"""

from __future__ import annotations

import sys


def add_args(p):
    p.add_argument("--results", required=True, help="the workflow's results folder")
    p.add_argument("--output-dir", default=None, help="folder for index.html (default: RESULTS/report)")
    p.add_argument("--map", default=None,
                   help="the map to show (default: refine3d/run_class001.mrc, else the postprocessed or initial map)")
    p.add_argument("--title", default=None, help="the page's title (default: 'spa report: ' + the results folder)")


def main(args) -> int:
    from pathlib import Path

    from spa.report.build import build_report

    out = Path(args.output_dir) if args.output_dir else Path(args.results) / "report"
    index = build_report(args.results, out, map_path=args.map, config_path=args.config, title=args.title,
                         log=lambda message: print(message, file=sys.stderr, flush=True))
    print(f"report: {index}")
    return 0
