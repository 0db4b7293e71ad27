"""The numbers on top of the report, read from the stages' outputs under a results folder.

Every reader tolerates an absent stage (the workflow's graph depends on the
config): it returns None or leaves the row out.  Nothing here computes a
result anew; it only reads what the stages wrote (STAR tables, their JSON
summaries, provenance comments).
"""

from __future__ import annotations

import json
import platform
from collections import Counter
from pathlib import Path

# (label, file under the results folder, STAR block) of the particle and micrograph counts, in pipeline order
COUNTS = [
    ("micrographs imported", "import/micrographs.star", "micrographs"),
    ("micrographs motion-corrected", "motion/corrected_micrographs.star", "micrographs"),
    ("micrographs kept by the CTF consensus", "ctf/consensus/micrographs_selected.star", "micrographs"),
    ("particles picked and extracted", "extract/particles.star", "particles"),
    ("particles simulated", "simulate/particles.star", "particles"),
    ("particles in 2D classification", "class2d/run_data.star", "particles"),
    ("particles kept by the 2D class selection", "select/particles.star", "particles"),
    ("particles kept by the 3D class consensus", "class3d/consensus/particles.star", "particles"),
    ("particles in the final refinement", "refine3d/run_data.star", "particles"),
]
# packages whose versions the report lists (those installed)
PACKAGES = ["spa", "numpy", "scipy", "dask", "distributed", "zarr", "mrcfile", "starfile", "pandas", "matplotlib",
            "scikit-image", "snakemake", "cupy-cuda12x"]
# outputs whose provenance (command, time) the report lists
PROVENANCE_FILES = ["simulate/particles.star", "extract/particles.star", "class2d/run_data.star",
                    "select/particles.star", "initial_model/run_data.star", "class3d/consensus/particles.star",
                    "refine3d/run_data.star", "postprocess/postprocess.star", "fsc/halves/fsc.star"]


def count_rows(path, block: str) -> int:
    """Rows of the loop in ``data_<block>`` of a STAR file, counted without parsing the values."""
    n, inside, header = 0, False, False
    with open(path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = raw.strip()
            if line.startswith("data_"):
                if inside:
                    break
                inside, header = line == f"data_{block}", False
                continue
            if not inside or not line or line.startswith("#"):
                continue
            if line == "loop_":
                header = True
            elif line.startswith("_"):
                continue
            elif header:
                n += 1
    return n


def particle_counts(results) -> list[tuple[str, int, str]]:
    """(label, count, file) for each count whose file exists."""
    out = []
    for label, rel, block in COUNTS:
        path = Path(results) / rel
        if path.is_file():
            out.append((label, count_rows(path, block), rel))
    return out


def _json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def resolution_text(value: float | None, at_nyquist: bool | None) -> str:
    """'4.21 Å', or '≥ Nyquist (4.00 Å)' when the FSC never fell below the threshold (a bound, not a value)."""
    if value is None:
        return "–"
    return f"≥ Nyquist ({value:.2f} Å)" if at_nyquist else f"{value:.2f} Å"


def resolutions(results) -> list[tuple[str, str]]:
    """(what, resolution text) rows: the gold-standard FSC, the postprocessed one, the truth comparisons."""
    results = Path(results)
    rows = []
    summary = _json(results / "summary.json")
    if summary is None:
        summary = {}
        halves = results / "fsc" / "halves" / "fsc.star"
        if halves.is_file():
            summary["halves"] = _read_fsc(halves)
    if "halves" in summary:
        h = summary["halves"]
        rows.append(("gold-standard FSC 0.143 (half maps, unmasked)",
                     resolution_text(h["resolution_fsc0143_A"], h.get("fsc0143_at_nyquist"))))
    post = _json(results / "postprocess" / "postprocess.json")
    if post:
        rows.append(("FSC 0.143 masked, corrected (postprocess)",
                     resolution_text(post.get("resolution_A"), post.get("at_nyquist"))))
    for key, what in (("truth", "refined map vs the truth, FSC 0.5"),
                      ("true_poses", "map from the true poses vs the truth, FSC 0.5")):
        if key in summary:
            t = summary[key]
            rows.append((what, resolution_text(t["resolution_fsc05_A"], t.get("fsc05_at_nyquist"))))
    if "refined_vs_true_poses" in summary:  # the true-pose map made, aligned and masked as the refined map
        c = summary["refined_vs_true_poses"]
        verdict = "reaches it" if c["reaches_true_poses"] else "falls short"
        rows.append(("refined map vs the true-pose map made alike",
                     f"{verdict}: largest FSC shortfall {c['largest_shortfall']:.3f} at {c['largest_shortfall_at_A']} Å "
                     f"(mean {c['mean_shortfall']:.3f}; tolerance {c['tolerance']})"))
    if "nyquist_A" in summary:
        rows.append(("Nyquist (2 × pixel size)", f"{summary['nyquist_A']:.2f} Å"))
    return rows


def _read_fsc(path) -> dict:
    from spa.em.fsc import reaches_threshold_at_nyquist
    from spa.io.star import read_star

    blocks = read_star(path)
    curve = blocks["fsc"]["rlnFourierShellCorrelation"].to_numpy(float)
    return {"resolution_fsc0143_A": float(blocks["general"]["rlnFinalResolution"]),
            "fsc0143_at_nyquist": reaches_threshold_at_nyquist(curve, 0.143)}


def quality(results) -> list[tuple[str, str]]:
    """(what, value) rows: B-factor, local resolution, and the validation checks (numbers, verdicts)."""
    results = Path(results)
    rows = []
    post = _json(results / "postprocess" / "postprocess.json")
    if post and post.get("bfactor_used_A2") is not None:
        how = "automatic, Guinier fit" if post.get("bfactor_automatic") else "given by the user"
        if post.get("bfactor_automatic") and post.get("bfactor_fitted") is False:
            how = "not fitted: the map is not resolved beyond the Guinier fit's 10 Å"
        rows.append(("B-factor used for sharpening", f"{post['bfactor_used_A2']:.0f} Å² ({how})"))
    if post and post.get("mask_volume_fraction") is not None:
        rows.append(("solvent mask", f"{100 * post['mask_volume_fraction']:.1f} % of the box"))
    loc = _json(results / "locres" / "locres.json")
    if loc and loc.get("percentiles_A"):
        p = loc["percentiles_A"]
        rows.append(("local resolution, median (5–95 %)",
                     f"{p.get('50', 0):.2f} Å ({p.get('5', 0):.2f}–{p.get('95', 0):.2f} Å)"))
    val = _json(results / "validate" / "validation.json")
    if val:
        angular = val.get("angular") or {}
        if angular.get("efficiency_E_od") is not None:
            rows.append(("angular distribution (E_od; sampling compensation factor)",
                         f"{angular['efficiency_E_od']:.2f}; {angular.get('sampling_compensation_factor', 0):.2f} — "
                         f"{angular.get('verdict', '')}".rstrip(" —")))
        reslog = val.get("reslog") or {}
        if reslog.get("bfactor_A2") is not None:
            rows.append(("B-factor of the data (ResLog)", f"{reslog['bfactor_A2']:.0f} Å²"))
        titles = {"reprojection": "class averages vs reprojections", "noise_substitution": "noise substitution",
                  "noise_particles": "noise particles", "alignability": "pose alignability", "handedness": "hand"}
        for key, title in titles.items():
            if (val.get(key) or {}).get("verdict"):
                rows.append((title, val[key]["verdict"]))
    return rows


def rejections(results) -> list[tuple[str, str]]:
    """(stage, what was dropped and why) rows from the selection steps' summaries."""
    results = Path(results)
    rows = []
    ctf = _json(results / "ctf" / "consensus" / "ctf_consensus.json")
    if ctf:
        reasons = Counter(ctf.get("reasons") or [])
        why = "; ".join(f"{n} × {r}" for r, n in reasons.most_common()) or "none rejected"
        rows.append(("CTF consensus", f"{ctf.get('rejected', 0)} of {ctf.get('micrographs', 0)} micrographs: {why}"))
    sel = _json(results / "select" / "selection.json")
    if sel:
        dropped = sel.get("classes_dropped") or []
        text = (f"{len(dropped)} of {sel['classes']} classes ({sel['particles_in_dropped_classes']} particles)"
                + "".join(f"; class {d['class']} ({d['particles']}): {d['reason']}" for d in dropped)
                if dropped else f"no class dropped ({sel['classes']} kept)")
        rows.append(("2D class selection", text))
        if sel.get("noise_like_removed"):
            rows.append(("2D class selection", f"{sel['noise_like_removed']} particles of kept classes matching no "
                                               f"better than noise (p > {sel['max_noise_pvalue']:g})"))
        if sel.get("duplicates_removed"):
            rows.append(("2D class selection", f"{sel['duplicates_removed']} duplicates after re-centring"))
    elif (results / "select" / "class_averages.star").is_file():
        rows.append(("2D class selection", _dropped_classes(results / "select" / "class_averages.star")))
    cons = _json(results / "class3d" / "consensus" / "consensus_classes.json")
    if cons:
        n, kept = cons["n_particles"], cons["n_kept"]
        limit = cons.get("min_class_posterior")
        rows.append(("3D class consensus", f"{n - kept} of {n} particles: not in the same class in "
                                           f"{cons.get('min_agreement', 'all')} runs"
                                           + (f" or class posterior below {limit:g}" if limit else "")))
    return rows


def _dropped_classes(path) -> str:
    from spa.io.star import read_star

    table = read_star(path)["model_classes"]
    out = table[table["rlnSelected"] == 0]
    if out.empty:
        return f"no class dropped ({len(table)} kept)"
    count = out["spaParticleCount"].sum() if "spaParticleCount" in out else "?"
    return f"{len(out)} of {len(table)} classes ({count} particles): classes {out['rlnClassNumber'].tolist()}"


def versions() -> list[tuple[str, str]]:
    """(package, version) of the software that made the report (the stages record theirs in their outputs)."""
    from importlib import metadata

    rows = [("python", platform.python_version()), ("platform", platform.platform())]
    for name in PACKAGES:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    commit = _git_commit()
    if commit:
        rows.append(("spa source (git)", commit))
    return rows


def _git_commit() -> str | None:
    """The commit of the spa source tree this runs from (+ "modified" when it has changes), or None."""
    import subprocess

    src = Path(__file__).resolve().parents[2]
    if not (src / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")


def provenance(results) -> list[tuple[str, str, str]]:
    """(file, created, command) of the key outputs, from the provenance comment the stages wrote."""
    from spa.provenance import read_record

    rows = []
    for rel in PROVENANCE_FILES:
        path = Path(results) / rel
        if not path.is_file():
            continue
        try:
            record = read_record(path)
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict):
            rows.append((rel, str(record.get("created", "")), str(record.get("command", ""))))
    return rows


def seeds(config: dict | None, results) -> list[tuple[str, str]]:
    """(which seed, value): the processing and simulation seeds from the workflow config, else the seed the
    final refinement recorded."""
    rows = []
    if config:
        rows.append(("processing seed", str(config.get("seed"))))
        sim = config.get("simulate") or {}
        if sim.get("seed") is not None and not (config.get("input") or {}).get("particles"):
            rows.append(("simulation seed", str(sim["seed"])))
        return rows
    for rel in ("refine3d/run_data.star", "class2d/run_data.star"):
        path = Path(results) / rel
        if path.is_file():
            from spa.provenance import read_record

            record = read_record(path)
            if isinstance(record, dict) and record.get("seed") is not None:
                return [(f"seed ({rel})", str(record["seed"]))]
    return rows
