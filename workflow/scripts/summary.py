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


def picked_particles_truth(picking_json: str, truth_particles: str, refined_particles: str) -> dict:
    """How the picked particles compare with the simulation's true particles: the pickers' precision and
    recall (spa truth) and the fraction of all true particles that reached the final refinement."""
    from spa.io.star import read_particles

    with open(picking_json) as fh:
        picking = json.load(fh)
    true_names = set(read_particles(truth_particles)[0].rlnImageName.astype(str))
    refined = read_particles(refined_particles)[0].rlnImageName.astype(str)
    true_refined = int(sum(name in true_names for name in refined))
    total = picking.get("true_in_simulation") or picking["true_on_these_micrographs"]
    return {
        "true_particles_in_simulation": total,
        "picked": picking["picked"], "picks_matching_a_true_particle": picking["matched"],
        "picking_precision": round(picking["precision"], 4), "picking_recall": round(picking["recall"], 4),
        "refined_particles": int(len(refined)), "refined_true_particles": true_refined,
        "refined_precision": round(true_refined / len(refined), 4) if len(refined) else 0.0,
        "true_particles_reaching_refinement": round(true_refined / total, 4) if total else 0.0,
    }


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
    if "picked_particles" in summary:
        p = summary["picked_particles"]
        text += (f"; picking: precision {p['picking_precision']:.2f}, recall {p['picking_recall']:.2f}; "
                 f"{100 * p['true_particles_reaching_refinement']:.0f} % of the true particles reached the "
                 f"refinement ({p['refined_true_particles']} of {p['refined_particles']} refined particles are true)")
    if "refined_vs_true_poses" in summary:
        c = summary["refined_vs_true_poses"]
        verdict = "reaches" if c["reaches_true_poses"] else "falls short of"
        text += (f"; vs truth (FSC 0.5) {c['refined_fsc05']}, "
                 f"from the true poses (made alike) {c['true_poses_fsc05']}: "
                 f"the refined map {verdict} what the true poses allow (largest shortfall {c['largest_shortfall']:.3f} "
                 f"at {c['largest_shortfall_at_A']} Å)")
    return text


def plot_fsc_overview(summary: dict, folder: str, postprocess_star: str | None = None) -> None:
    """fsc_curves.png + figures.json in ``folder``: the gold-standard FSC (and what it predicts against the
    truth, sqrt(2 FSC / (1 + FSC))), the refined and true-pose maps against the truth, and the postprocessed
    (masked, corrected) FSC, on one axis in 1/Å."""
    import numpy as np

    from spa.plots import _pyplot, angstrom_axis, save_figure, write_figures_index

    def curve(path, column="rlnFourierShellCorrelation", block="fsc"):
        table = read_star(path)[block]
        return table["rlnResolution"].to_numpy(float), table[column].to_numpy(float)

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    s, halves = curve(summary["halves"]["fsc_star"])
    ax.plot(s, halves, color="tab:blue", label="half maps (gold standard, unmasked)")
    clipped = np.clip(halves, 0, 1)
    ax.plot(s, np.sqrt(2 * clipped / (1 + clipped)), color="tab:blue", ls=":",
            label="…as predicted against the truth, √(2F/(1+F))")
    if postprocess_star and os.path.exists(postprocess_star):
        ps, corrected = curve(postprocess_star, "rlnFourierShellCorrelationCorrected")
        ax.plot(ps, corrected, color="tab:purple", label="half maps, masked and corrected (postprocess; read at 0.143)")
    if "truth" in summary:
        ax.plot(*curve(summary["truth"]["fsc_star"]), color="tab:red", label="refined map vs the truth")
    if "true_poses" in summary:
        ax.plot(*curve(summary["true_poses"]["fsc_star"]), color="tab:green",
                label="map from the true poses vs the truth")
    for t in (0.143, 0.5):
        ax.axhline(t, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("resolution (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=7, loc="lower left")
    angstrom_axis(ax, 1.0)
    os.makedirs(folder, exist_ok=True)
    save_figure(fig, os.path.join(folder, "fsc_curves.png"))
    caption = ("Every FSC of the run on one axis. The gold-standard curve of the half maps is read at 0.143; "
               "the dotted line converts it to what it predicts for the full map against the truth, read at 0.5")
    if "truth" in summary:
        caption += ("; the red curve is that comparison measured, so the gap between dotted and red shows how far "
                    "the gold-standard estimate is from the truth")
    if "true_poses" in summary:
        caption += "; green is the best these particles allow (their true poses)"
    write_figures_index(folder, [{"file": "fsc_curves.png", "title": "All FSC curves of the run",
                                  "caption": caption + "."}])


if "snakemake" in globals():
    sm = snakemake  # noqa: F821 - injected by Snakemake's script directive
    ideal = str(sm.input.ideal) if "ideal" in sm.input.keys() else None
    truth = str(sm.input.truth) if "truth" in sm.input.keys() else None
    post = str(sm.input.postprocess) if "postprocess" in sm.input.keys() else None
    locres = str(sm.input.locres) if "locres" in sm.input.keys() else None
    result = summarise(str(sm.input.halves), truth, str(sm.input.map), ideal, post, locres)
    if "picking_truth" in sm.input.keys():
        result["picked_particles"] = picked_particles_truth(str(sm.input.picking_truth),
                                                            str(sm.input.picked_truth_particles),
                                                            str(sm.input.refined_particles))
    if "validation" in sm.input.keys():
        with open(str(sm.input.validation)) as fh:
            result["validation"] = json.load(fh)
    if "figure" in sm.output.keys():
        star = os.path.join(os.path.dirname(post), "postprocess.star") if post else None
        plot_fsc_overview(result, os.path.dirname(str(sm.output.figure)), star)
    write_summary(result, str(sm.output[0]))
    with open(str(sm.log[0]), "w") as log:
        print(describe(result), file=log)
elif __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(f"usage: {os.path.basename(sys.argv[0])} HALVES_FSC.star TRUTH_FSC.star FINAL_MAP.mrc")
    print(json.dumps(summarise(*sys.argv[1:]), indent=2))
