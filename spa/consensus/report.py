"""Reading the runs to compare, and writing the consensus outputs (STAR, JSON, PNG).

Runs are RELION particle STAR files (3.0 or 3.1, read by
:func:`spa.io.star.read_particles`); particles are matched across runs by
rlnImageName, so every run must hold exactly the same particles (in any
order).  Every output is written atomically and carries the provenance record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from spa.errors import SpaInputError
from spa.io.atomic import atomic_path
from spa.io.star import read_particles, write_particles, write_star

# -------------------------------------------------------------------------- inputs


def load_runs(paths, require=("rlnImageName",)) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Read each run's particle STAR -> ``[(particles, optics), …]`` with the rows of runs 2… in run 1's order.

    Particles are matched by rlnImageName.  Raises :class:`SpaInputError`
    naming the file when a run lacks a ``require``d column, repeats an image
    name, or does not hold exactly the particles of run 1.
    """
    paths = [os.fspath(p) for p in paths]
    require = tuple(dict.fromkeys(("rlnImageName", *require)))
    runs = []
    for path in paths:
        parts, optics = read_particles(path, require=require)
        names = parts["rlnImageName"].astype(str)
        dup = names.duplicated()
        if dup.any():
            raise SpaInputError(
                path, f"rlnImageName {names[dup].iloc[0]!r} appears more than once; particles must be unique"
            )
        runs.append((parts.reset_index(drop=True), optics))

    ref_names = runs[0][0]["rlnImageName"].astype(str)
    out = [runs[0]]
    for path, (parts, optics) in zip(paths[1:], runs[1:]):
        names = parts["rlnImageName"].astype(str)
        position = pd.Series(np.arange(len(names)), index=names.to_numpy())
        missing = ~ref_names.isin(position.index)
        extra = ~names.isin(set(ref_names))
        if missing.any() or extra.any():
            what = []
            if missing.any():
                example = ref_names[missing].iloc[0]
                what.append(f"{int(missing.sum())} particle(s) of {paths[0]} are absent (e.g. {example!r})")
            if extra.any():
                what.append(f"{int(extra.sum())} particle(s) are not in {paths[0]} (e.g. {names[extra].iloc[0]!r})")
            raise SpaInputError(
                path, "not the same particle set as the first run (matched by rlnImageName): " + "; ".join(what)
            )
        order = position.loc[ref_names.to_numpy()].to_numpy()
        out.append((parts.iloc[order].reset_index(drop=True), optics))
    return out


def class_labels(path, particles: pd.DataFrame) -> np.ndarray:
    """rlnClassNumber as int64, checked to be whole numbers (the path names the file in errors)."""
    col = particles["rlnClassNumber"]
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise SpaInputError(path, "rlnClassNumber is not numeric")
    values = col.to_numpy(dtype=np.float64)
    if not np.all(values == np.round(values)):
        raise SpaInputError(path, "rlnClassNumber must hold whole class numbers")
    return values.astype(np.int64)


def class_posteriors(path, particles: pd.DataFrame) -> np.ndarray:
    """rlnSpaClassPosterior (each particle's posterior probability of its class, written by
    ``spa class3d``) as float64 in [0, 1]; the path names the file in errors."""
    if "rlnSpaClassPosterior" not in particles:
        raise SpaInputError(path, "no rlnSpaClassPosterior column (written by spa class3d); "
                                  "leave out --min-class-posterior for runs of other programs")
    values = particles["rlnSpaClassPosterior"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values > 1 + 1e-4):
        raise SpaInputError(path, "rlnSpaClassPosterior must be probabilities in [0, 1]")
    return values


def poses_of(particles: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Rotation matrices (N, 3, 3) from rlnAngleRot/Tilt/Psi and origins (N, 2) in px from rlnOriginX/YAngst."""
    from spa.geometry.euler import euler_to_matrix

    R = euler_to_matrix(particles["rlnAngleRot"], particles["rlnAngleTilt"], particles["rlnAnglePsi"])
    pixel = particles["rlnImagePixelSize"].to_numpy(dtype=np.float64)
    shifts = np.stack(
        [particles["rlnOriginXAngst"].to_numpy(dtype=np.float64), particles["rlnOriginYAngst"].to_numpy(dtype=np.float64)],
        axis=1,
    ) / pixel[:, None]
    return R, shifts


# -------------------------------------------------------------------------- outputs


def write_json(path, summary: dict) -> None:
    """``summary`` as indented JSON, atomically."""
    text = json.dumps(summary, indent=2, sort_keys=False, default=_jsonable) + "\n"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _run_label(i: int) -> str:
    return f"rlnSpaClassSizeRun{i + 1:03d}"


def write_class_consensus(out_dir, run_paths, runs, result, provenance: dict, min_posterior=None) -> dict:
    """Write particles.star, consensus_classes.star/.json/.png for a :class:`~spa.consensus.classes.ClassConsensus`.

    ``runs`` is :func:`load_runs`'s list (run 1's rows and optics give the
    output particles).  Returns the JSON summary.
    """
    out = Path(out_dir)
    parts, optics = runs[0]
    m = result.n_runs
    stable = result.stable
    kept = parts.loc[stable].copy()
    kept["rlnClassNumber"] = result.consensus[stable].astype(np.int64)
    kept["rlnSpaClassAgreement"] = result.agreement[stable] / float(m)
    kept["rlnSpaClassStability"] = result.class_stability_of(result.consensus[stable])
    write_particles(out / "particles.star", kept.reset_index(drop=True), optics, provenance=provenance)

    table = pd.DataFrame({"rlnClassNumber": result.classes.astype(np.int64)})
    for i in range(m):
        table[_run_label(i)] = result.sizes[:, i]
    table["rlnSpaIntersectionSize"] = result.intersection
    table["rlnSpaClassStability"] = result.stability
    table["rlnSpaChanceIntersection"] = result.chance
    table["rlnSpaKeptSize"] = result.kept
    matching = pd.DataFrame(
        [
            {"rlnSpaRunNumber": i + 1, "rlnClassNumber": int(own), "rlnSpaMatchedClassNumber": int(ref)}
            for i, mapping in enumerate(result.mappings)
            for own, ref in sorted(mapping.items())
        ]
    )
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    ari = pd.DataFrame(
        {
            "rlnSpaRunA": [i + 1 for i, _ in pairs],
            "rlnSpaRunB": [j + 1 for _, j in pairs],
            "rlnSpaAdjustedRandIndex": [float(result.ari[i, j]) for i, j in pairs],
        }
    )
    n = result.n_particles
    n_kept = int(stable.sum())
    mean_ari = float(np.mean([result.ari[i, j] for i, j in pairs]))
    general = {
        "rlnSpaNumberOfRuns": m,
        "rlnSpaNumberOfParticles": n,
        "rlnSpaNumberKept": n_kept,
        "rlnSpaFractionKept": n_kept / n,
        "rlnSpaMinAgreement": int(result.min_agreement),
        "rlnSpaMinClassPosterior": float(min_posterior) if min_posterior is not None else 0.0,
        "rlnSpaMeanAdjustedRandIndex": mean_ari,
    }
    write_star(
        out / "consensus_classes.star",
        {
            "consensus_general": general,
            "consensus_classes": table,
            "consensus_class_matching": matching,
            "consensus_ari": ari,
        },
        provenance=provenance,
    )

    summary = {
        "runs": [os.fspath(p) for p in run_paths],
        "n_particles": n,
        "n_kept": n_kept,
        "fraction_kept": n_kept / n,
        "min_agreement": int(result.min_agreement),
        "min_class_posterior": min_posterior,
        "mean_adjusted_rand_index": mean_ari,
        "adjusted_rand_index": result.ari.tolist(),
        "class_matching": [{str(k): v for k, v in sorted(mp.items())} for mp in result.mappings],
        "classes": [
            {
                "class": int(k),
                "size_per_run": result.sizes[c].tolist(),
                "intersection": int(result.intersection[c]),
                "stability": float(result.stability[c]),
                "chance_intersection": float(result.chance[c]),
                "kept": int(result.kept[c]),
            }
            for c, k in enumerate(result.classes)
        ],
        "provenance": provenance,
    }
    write_json(out / "consensus_classes.json", summary)
    plot_class_stability(out / "consensus_classes.png", result)
    _figures(out, "consensus_classes.png", f"Class consensus of {m} runs: {n_kept} of {n} particles kept",
             "Per class: the share of its particles that every run puts in the same class (bars, with the count "
             "above) against what independent random runs would share (red). Only particles that all runs agree "
             "on (with class posterior above the limit) go on.")
    return summary


def plot_class_stability(path, result) -> None:
    """Bar chart: stability (intersection / mean size) per class, with the level independent runs would reach."""
    plt = _pyplot()
    k = result.classes.size
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * k + 2.0), 3.6), dpi=100)
    x = np.arange(k)
    ax.bar(x, result.stability, color="tab:blue", label="stability (intersection / mean size)")
    mean_size = result.sizes.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        chance = np.where(mean_size > 0, result.chance / mean_size, 0.0)
    ax.scatter(x, chance, color="tab:red", marker="_", s=300, zorder=3, label="expected by chance")
    for xi, (s, n) in enumerate(zip(result.stability, result.intersection)):
        ax.text(xi, s + 0.02, str(int(n)), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [str(int(c)) for c in result.classes])
    ax.set_xlabel("class (run 1 numbering)")
    ax.set_ylabel("stability")
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    kept = int(result.stable.sum())
    ax.set_title(f"class consensus of {result.n_runs} runs: {kept} / {result.n_particles} kept", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=2, frameon=False)
    _save(fig, path)


def write_pose_consensus(out_dir, run_paths, runs, result, settings: dict, provenance: dict) -> dict:
    """Write particles.star, consensus_poses.star/.json/.png for a :class:`~spa.consensus.poses.PoseConsensus`.

    ``runs`` is :func:`load_runs`'s list for runs A and B; the kept particles
    keep run A's poses.  ``settings`` holds the thresholds used (for the report).
    Returns the JSON summary.
    """
    out = Path(out_dir)
    parts, optics = runs[0]
    kept = parts.loc[result.kept].copy()
    kept["rlnSpaAngularDifference"] = result.angular_difference[result.kept]
    kept["rlnSpaShiftDifference"] = result.shift_difference[result.kept]
    write_particles(out / "particles.star", kept.reset_index(drop=True), optics, provenance=provenance)

    ang = result.angular_difference
    n = ang.size
    n_kept = int(result.kept.sum())
    stats = {
        "median_angular_difference_deg": float(np.median(ang)),
        "p90_angular_difference_deg": float(np.percentile(ang, 90)),
        "median_shift_difference_px": float(np.median(result.shift_difference)),
        "p90_shift_difference_px": float(np.percentile(result.shift_difference, 90)),
    }
    general = {
        "rlnSpaNumberOfParticles": n,
        "rlnSpaNumberKept": n_kept,
        "rlnSpaFractionKept": n_kept / n,
        "rlnSpaMedianAngularDifference": stats["median_angular_difference_deg"],
        "rlnSpaAngularDifference90": stats["p90_angular_difference_deg"],
        "rlnSpaMedianShiftDifference": stats["median_shift_difference_px"],
        "rlnSpaGlobalRotationAngle": result.rotation_angle_deg,
        "rlnSpaMirrored": int(result.mirrored),
        "rlnSpaSymmetryGroup": settings.get("sym", "C1"),
    }
    table = pd.DataFrame(
        {
            "rlnImageName": parts["rlnImageName"].astype(str),
            "rlnSpaAngularDifference": ang,
            "rlnSpaShiftDifference": result.shift_difference,
            "rlnSpaConsensusKept": result.kept.astype(np.int64),
        }
    )
    rotation = pd.DataFrame(
        {"rlnSpaRow": [1, 2, 3], **{f"rlnSpaColumn{j + 1}": result.rotation[:, j] for j in range(3)}}
    )
    write_star(
        out / "consensus_poses.star",
        {"consensus_general": general, "consensus_global_rotation": rotation, "consensus_poses": table},
        provenance=provenance,
    )
    summary = {
        "runs": [os.fspath(p) for p in run_paths],
        "n_particles": n,
        "n_kept": n_kept,
        "fraction_kept": n_kept / n,
        **stats,
        "global_rotation_angle_deg": result.rotation_angle_deg,
        "global_rotation": result.rotation.tolist(),
        "mirrored": result.mirrored,
        "frame_inliers": result.frame_inliers,
        "settings": settings,
        "provenance": provenance,
    }
    write_json(out / "consensus_poses.json", summary)
    plot_pose_differences(out / "consensus_poses.png", result, settings)
    _figures(out, "consensus_poses.png", f"Pose consensus: {n_kept} of {n} particles kept",
             "Histograms of how far the two runs' poses of each particle differ (angle, left; shift, right) after "
             "the global rotation between the runs is removed; particles beyond the limits (red) are dropped.")
    return summary


def _figures(out: Path, file: str, title: str, caption: str) -> None:
    from spa.plots import write_figures_index

    write_figures_index(out, [{"file": file, "title": title, "caption": caption}])


def plot_pose_differences(path, result, settings: dict) -> None:
    """Histograms of the angular (degrees) and shift (px) differences with the acceptance limits."""
    plt = _pyplot()
    ang = result.angular_difference
    shift = result.shift_difference
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.4), dpi=100)
    max_angle = float(settings.get("max_angle", 2.5))
    med = float(np.median(ang)) if ang.size else 0.0
    # zoom on the acceptance limit (outliers spread over 0…180° and would flatten it), unless most disagree
    top = min(180.0, max(4.0 * max_angle, 3.0 * med))
    a1.hist(np.minimum(ang, top), bins=60, range=(0, top), color="tab:blue")
    a1.axvline(max_angle, color="tab:red", ls="--", lw=1, label=f"limit {max_angle:g}°")
    a1.axvline(med, color="k", lw=1, label=f"median {med:.2f}°")
    a1.set_xlabel(f"angular difference (°, modulo {settings.get('sym', 'C1')})")
    a1.set_ylabel("particles")
    a1.set_title(f"{int(np.sum(ang >= top))} beyond {top:.3g}° in the last bin", fontsize=8)
    a1.legend(fontsize=7)
    limit_px = settings.get("max_shift_px_shown")
    stop = 3.0 * float(limit_px) if limit_px else max(1.0, 3.0 * float(np.median(shift)) if shift.size else 1.0)
    a2.hist(np.minimum(shift, stop), bins=60, range=(0, stop), color="tab:green")
    if limit_px is not None:
        a2.axvline(float(limit_px), color="tab:red", ls="--", lw=1, label=f"limit {float(limit_px):.3g} px")
        a2.legend(fontsize=7)
    a2.set_title(f"{int(np.sum(shift >= stop))} beyond {stop:.3g} px in the last bin", fontsize=8)
    a2.set_xlabel("shift difference (px)")
    fig.suptitle(
        f"pose consensus: {int(result.kept.sum())} / {ang.size} kept; global rotation {result.rotation_angle_deg:.2f}°"
        + (" (other hand)" if result.mirrored else ""),
        fontsize=9,
    )
    _save(fig, path)
