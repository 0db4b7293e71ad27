"""Write results/summary.json: where the final map is and the resolutions its
FSC curves reach (gold-standard halves at 0.143, map vs. ground truth at 0.5).

Run by Snakemake's ``script:`` directive. The resolutions are the ones
``spa fsc`` computed and wrote in the ``data_general`` block of each fsc.star
(rlnFinalResolution at FSC 0.143, rlnSpaResolutionFsc05 at FSC 0.5); this
script only gathers them. By hand:
``python workflow/scripts/summary.py HALVES_FSC.star TRUTH_FSC.star MAP.mrc``.
"""

import json
import os
import sys

from spa.io.atomic import atomic_path
from spa.io.star import read_star


def read_fsc(path: str) -> dict:
    """Resolutions (Å) at FSC 0.143 and 0.5 and the Nyquist limit of one fsc.star."""
    from spa.em.fsc import reaches_threshold_at_nyquist

    blocks = read_star(path)
    general, table = blocks["general"], blocks["fsc"]
    curve = table["rlnFourierShellCorrelation"].to_numpy(float)
    return {
        "fsc_star": path,
        "resolution_fsc0143_A": round(float(general["rlnFinalResolution"]), 3),
        "resolution_fsc05_A": round(float(general["rlnSpaResolutionFsc05"]), 3),
        # True: the curve never drops below the threshold — the resolution is "≥ Nyquist", a bound
        "fsc0143_at_nyquist": reaches_threshold_at_nyquist(curve, 0.143),
        "fsc05_at_nyquist": reaches_threshold_at_nyquist(curve, 0.5),
        "nyquist_A": round(float(table["rlnAngstromResolution"].iloc[-1]), 3),
    }


# the refined map "reaches what the true poses allow" when its FSC against the truth falls short of the
# true-pose map's (made and compared alike) by no more than this in any shell
SHORTFALL_TOLERANCE = 0.05


def _curve(path: str):
    """(FSC per shell, box, pixel size Å) of one fsc.star."""
    table = read_star(path)["fsc"]
    curve = table["rlnFourierShellCorrelation"].to_numpy(float)
    return curve, 2 * (len(curve) - 1), float(table["rlnAngstromResolution"].iloc[-1]) / 2


def compare_with_true_poses(truth_star: str, ideal_star: str) -> dict:
    """The refined map against the map from the TRUE poses of the same particles and halves, reconstructed,
    aligned and masked as the refined map (rule true_poses; fsc.smk), both against the truth.

    Resolutions at FSC 0.5 as text ('≥ Nyquist (4.00 Å)' when a curve never drops: a bound, no number to
    compare); the shortfall is the true-pose curve minus the refined one per shell (positive: the refined
    map is worse there), its largest value and where, and the mean over the shells to Nyquist."""
    import numpy as np

    from spa.em.fsc import resolution_text
    from spa.fourier import shell_resolution

    refined, box, pixel = _curve(truth_star)
    ideal, _, _ = _curve(ideal_star)
    n = min(len(refined), len(ideal))
    gap = ideal[1:n] - refined[1:n]
    worst = int(np.argmax(gap)) + 1
    return {
        "refined_fsc05": resolution_text(refined, 0.5, box, pixel),
        "true_poses_fsc05": resolution_text(ideal, 0.5, box, pixel),
        "largest_shortfall": round(float(gap.max()), 4),
        "largest_shortfall_at_A": round(float(shell_resolution(box, pixel)[worst]), 2),
        "mean_shortfall": round(float(gap.mean()), 4),
        "tolerance": SHORTFALL_TOLERANCE,
        "reaches_true_poses": bool(gap.max() <= SHORTFALL_TOLERANCE),
    }


def summarise(halves_star: str, truth_star: str | None, final_map: str, ideal_star: str | None = None,
              postprocess_json: str | None = None, locres_json: str | None = None) -> dict:
    """``truth_star``: FSC of the final map against the truth (None: no truth known); ``ideal_star``: FSC
    of the reconstruction from the TRUE poses against the truth (the data's limit)."""
    halves = read_fsc(halves_star)
    out = {"final_map": final_map, "nyquist_A": halves.pop("nyquist_A"), "halves": halves}
    if truth_star:
        out["truth"] = {k: v for k, v in read_fsc(truth_star).items() if k != "nyquist_A"}
    if ideal_star:
        out["true_poses"] = {k: v for k, v in read_fsc(ideal_star).items() if k != "nyquist_A"}
        if truth_star:
            out["refined_vs_true_poses"] = compare_with_true_poses(truth_star, ideal_star)
    if postprocess_json:
        with open(postprocess_json) as fh:
            out["postprocess"] = json.load(fh)
    if locres_json:
        with open(locres_json) as fh:
            out["local_resolution"] = json.load(fh)
    return out


def write_summary(summary: dict, path: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")


def describe(summary: dict) -> str:
    text = (f"final map {summary['final_map']}: gold-standard FSC 0.143 at "
            f"{summary['halves']['resolution_fsc0143_A']} Å")
    if "truth" in summary:
        text += f"; FSC 0.5 against the truth at {summary['truth']['resolution_fsc05_A']} Å"
    text += f" (Nyquist {summary['nyquist_A']} Å)"
    if "postprocess" in summary:
        text += (f"; postprocess: {summary['postprocess']['resolution']}, B-factor "
                 f"{summary['postprocess']['bfactor_used_A2']} Å²")
    if "refined_vs_true_poses" in summary:
        c = summary["refined_vs_true_poses"]
        verdict = "reaches" if c["reaches_true_poses"] else "falls short of"
        text += (f"; vs truth (FSC 0.5) {c['refined_fsc05']}, from the true poses (made alike) {c['true_poses_fsc05']}: "
                 f"the refined map {verdict} what the true poses allow (largest shortfall {c['largest_shortfall']:.3f} "
                 f"at {c['largest_shortfall_at_A']} Å)")
    return text


if "snakemake" in globals():
    sm = snakemake  # noqa: F821 - injected by Snakemake's script directive
    ideal = str(sm.input.ideal) if "ideal" in sm.input.keys() else None
    truth = str(sm.input.truth) if "truth" in sm.input.keys() else None
    post = str(sm.input.postprocess) if "postprocess" in sm.input.keys() else None
    locres = str(sm.input.locres) if "locres" in sm.input.keys() else None
    result = summarise(str(sm.input.halves), truth, str(sm.input.map), ideal, post, locres)
    if "validation" in sm.input.keys():
        with open(str(sm.input.validation)) as fh:
            result["validation"] = json.load(fh)
    write_summary(result, str(sm.output[0]))
    with open(str(sm.log[0]), "w") as log:
        print(describe(result), file=log)
elif __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(f"usage: {os.path.basename(sys.argv[0])} HALVES_FSC.star TRUTH_FSC.star FINAL_MAP.mrc")
    print(json.dumps(summarise(*sys.argv[1:]), indent=2))
