"""Local resolution of two half maps (like RELION's LocalRes and blocres), and the locally filtered map.

At points --step Å apart inside the mask, the FSC of the two half maps in a
Gaussian window of --window Å (a cube; σ = window/6) gives the local
resolution where it first drops below 0.143; the half maps are whitened first
(every Fourier shell at the same power) so that a strong low-resolution signal
does not leak into the window's higher shells.  The values are interpolated to
every voxel in the mask.  The window limits what can be measured: it should be
at least ~4× the coarsest resolution expected (a 32 Å window reads 4–8 Å
reliably) and small enough to resolve the map's variation.

Writes into --output-dir: relion_locres.mrc (Å; 0 outside the mask),
relion_locres_filtered.mrc (the average of the halves low-passed voxel by
voxel at its local resolution), locres_histogram.png, locres_slices.png,
figures.json and locres.json (percentiles).

Example:  spa locres --half1 run_half1_class001_unfil.mrc --half2 run_half2_class001_unfil.mrc
          --mask mask.mrc --output-dir locres
"""

from __future__ import annotations

import json
import sys


def add_args(p):
    p.add_argument("--half1", required=True, help="first unfiltered half map (.mrc)")
    p.add_argument("--half2", required=True, help="second unfiltered half map (.mrc)")
    p.add_argument("--mask", default=None, help="solvent mask (.mrc); default: made from the halves as `spa mask` does")
    p.add_argument("--output-dir", required=True, help="folder for relion_locres.mrc and the plots")
    p.add_argument("--window", type=float, default=None,
                   help="window size, Å (default: 16 px × pixel size, at least 20 Å)")
    p.add_argument("--step", type=float, default=None, help="distance between sample points, Å (default: window/4)")


def _plots(out, local, values, mask, label):
    import numpy as np

    from spa.plots import _pyplot, save_figure, write_figures_index

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(values, bins=30, color="tab:blue")
    ax.set_xlabel("local resolution (Å)")
    ax.set_ylabel("sample points")
    save_figure(fig, out / "locres_histogram.png")
    box = local.shape[-1]
    c = box // 2
    shown = np.where(mask > 0.5, local, np.nan)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), dpi=100)
    lo, hi = np.nanpercentile(values, [2, 98]) if len(values) else (0, 1)
    for ax, (name, img) in zip(axes, [("z", shown[c]), ("y", shown[:, c]), ("x", shown[:, :, c])]):
        im = ax.imshow(img, cmap="viridis_r", vmin=lo, vmax=hi, origin="lower")
        ax.set_title(f"central slice, {name} = centre")
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8, label="Å")
    save_figure(fig, out / "locres_slices.png", tight=False)
    write_figures_index(out, [
        {"file": "locres_histogram.png", "title": f"Local resolution: {label}",
         "caption": "Histogram of the local resolution at the sample points inside the mask (FSC 0.143 of the half "
                    "maps in a sliding Gaussian window)."},
        {"file": "locres_slices.png", "title": "Local resolution, central slices",
         "caption": "Local resolution (Å) on the three central slices, inside the mask; darker is finer."},
    ])


def main(args) -> int:
    from pathlib import Path

    import numpy as np

    from spa.commands.postprocess import _read_inputs
    from spa.io.atomic import atomic_path
    from spa.io.mrc import write_mrc
    from spa.postprocess.locres import local_filter, local_resolution
    from spa.postprocess.masks import mask_from_map, solvent_mask
    from spa.provenance import make_record

    from spa.commands._common import progress_printer

    args.angpix = None
    h1, h2, mask, pixel = _read_inputs(args)
    mask = solvent_mask(0.5 * (h1 + h2), pixel)[0] if mask is None else mask_from_map(mask)
    window = args.window if args.window else max(20.0, 16 * pixel)
    loc = local_resolution(h1, h2, mask, pixel, window=window, step=args.step,
                           progress=progress_printer("locres: sample points"))
    if not len(loc.values):
        from spa.errors import SpaInputError

        raise SpaInputError(args.mask or args.half1, "no sample point inside the mask (mask > 0.5)")
    filtered = local_filter(0.5 * (h1 + h2), loc.resolution, pixel)
    q = np.percentile(loc.values, [5, 25, 50, 75, 95])
    summary = {"window_A": window, "points": int(len(loc.values)),
               "percentiles_A": {p: round(float(v), 3) for p, v in zip(("5", "25", "50", "75", "95"), q)}}
    out = Path(args.output_dir)
    record = make_record(args.argv, None, None, **summary)
    write_mrc(out / "relion_locres.mrc", np.nan_to_num(loc.resolution, nan=0.0), pixel, provenance=record)
    write_mrc(out / "relion_locres_filtered.mrc", filtered, pixel, provenance=record)
    label = f"median {q[2]:.2f} Å (5–95 %: {q[0]:.2f}–{q[4]:.2f} Å)"
    _plots(out, loc.resolution, loc.values, mask, label)
    with atomic_path(out / "locres.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    print(f"locres: {label} -> {out}", file=sys.stderr)
    return 0
