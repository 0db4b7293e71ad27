"""``spa ctf`` over a micrograph table: batches on Dask, resumable per micrograph, assembled into RELION's
CtfFind outputs.

Per micrograph ``<output>/ctf/<micrograph path without suffix>.star``: one
row with the estimate (rlnDefocusU/V/Angle, rlnCtfAstigmatism,
rlnCtfFigureOfMerit, rlnCtfMaxResolution, rlnPhaseShift, and for the
``zeros`` estimator rlnSpaCtfEnvelopeBfactor) and rlnSpaCtfKey: the hash of
the micrograph file (path, size, modification time), its optics, the method,
the search options and spa's code.  A micrograph whose STAR has the same key
is done: a rerun skips it, and a micrograph added to the table since is
estimated without redoing the rest.  Each file is written atomically.

A micrograph that cannot be estimated (missing or unreadable file, NaN
values, a blank image, too few usable sectors) is listed in
``micrographs_failed.star`` with the reason; the others complete.

Micrographs go to the Dask workers in batches (``batch_size`` per task,
:func:`spa.parallel.map_reduce`); the estimate reads the sum without dose
weighting (rlnMicrographNameNoDW) when the table has it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from spa.ctf_estimation.fit2d import CtfFit, CtfSearch, SpectrumFit
from spa.errors import SpaInputError

METHODS = ("ctffind", "zeros")
OPTICS_KEYS = ("rlnMicrographPixelSize", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


def source_name(row: dict) -> str:
    """The micrograph the CTF is estimated on: the sum without dose weighting when there is one."""
    nodw = row.get("rlnMicrographNameNoDW")
    if isinstance(nodw, str) and nodw not in ("", "None"):
        return nodw
    return str(row["rlnMicrographName"])


def output_stem(name: str) -> Path:
    """A micrograph's per-micrograph files, relative to the output folder: ctf/<path without suffix>
    (absolute paths lose their root, '..' becomes '__')."""
    parts = [("__" if p == ".." else p) for p in Path(name).with_suffix("").parts if p not in ("/", "")]
    return Path("ctf", *parts)


def micrograph_key(path: Path | None, optics: dict, method: str, search: CtfSearch) -> str:
    from spa.em.run import code_digest  # noqa: PLC0415

    stat = path.stat() if path is not None and path.exists() else None
    blob = json.dumps({"micrograph": str(path), "size": stat.st_size if stat else None,
                       "mtime": stat.st_mtime_ns if stat else None, "optics": optics, "method": method,
                       "search": asdict(search), "code": code_digest()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan(micrographs: pd.DataFrame, star_path, output_dir: Path, method: str, search: CtfSearch) -> list[dict]:
    """One job per micrograph: its image path, optics, per-micrograph STAR and key."""
    from spa.io.images import resolve_image_path  # noqa: PLC0415

    jobs = []
    for row in micrographs.to_dict("records"):
        name = source_name(row)
        path = resolve_image_path(name, star_path)
        optics = {k: float(row[k]) for k in OPTICS_KEYS}
        jobs.append({"name": str(row["rlnMicrographName"]), "source": name,
                     "path": None if path is None else str(path), "optics": optics,
                     "star": str(output_dir / output_stem(str(row["rlnMicrographName"]))) + ".star",
                     "key": micrograph_key(path, optics, method, search)})
    return jobs


def read_image(job: dict) -> np.ndarray:
    """The micrograph as a finite, non-constant 2D float array, or SpaInputError naming the file."""
    from spa.io.mrc import read_mrc  # noqa: PLC0415

    if job["path"] is None:
        raise SpaInputError(job["source"], "micrograph not found (looked in the working directory and beside "
                                           "the STAR file)")
    image, _ = read_mrc(job["path"])
    image = np.asarray(image).squeeze()
    if image.ndim != 2:
        raise SpaInputError(job["path"], f"a micrograph must be one 2D image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise SpaInputError(job["path"], "the micrograph has NaN or infinite pixels")
    if float(image.std()) == 0.0:
        raise SpaInputError(job["path"], "the micrograph is constant (blank)")
    return image


def spectrum_fit(image: np.ndarray, optics: dict, search: CtfSearch) -> SpectrumFit:
    return SpectrumFit(image, optics["rlnMicrographPixelSize"], optics["rlnVoltage"],
                       optics["rlnSphericalAberration"], optics["rlnAmplitudeContrast"], search)


def estimate(fit: SpectrumFit, method: str) -> tuple[CtfFit, dict]:
    """One estimate by ``method`` on a prepared spectrum; extra columns of that method."""
    if method == "ctffind":
        return fit.fit(), {}
    from spa.ctf_estimation.zeros import estimate_zeros_fit  # noqa: PLC0415

    result, rings = estimate_zeros_fit(fit)
    bfactor = rings.envelope_bfactor(fit.search.low_resolution)
    return result, {"rlnSpaCtfEnvelopeBfactor": round(bfactor, 1) if np.isfinite(bfactor) else -1.0}


def values_of(result: CtfFit) -> dict:
    """RELION's CtfFind columns of an estimate (Å, degrees)."""
    return {"rlnDefocusU": round(result.defocus_u, 2), "rlnDefocusV": round(result.defocus_v, 2),
            "rlnDefocusAngle": round(result.defocus_angle, 3), "rlnCtfAstigmatism": round(result.astigmatism, 2),
            "rlnCtfFigureOfMerit": round(result.figure_of_merit, 5),
            "rlnCtfMaxResolution": round(result.max_resolution, 3), "rlnPhaseShift": round(result.phase_shift, 3)}


def process_micrograph(job: dict, method: str, search: CtfSearch, provenance) -> dict:
    """Estimate one micrograph and write its STAR; returns its values, or {'failed': reason}."""
    from spa.io.star import write_star  # noqa: PLC0415

    try:
        image = read_image(job)
        result, extra = estimate(spectrum_fit(image, job["optics"], search), method)
    except (SpaInputError, ValueError) as exc:
        return {"name": job["name"], "failed": str(exc)}
    values = {**values_of(result), **extra, "rlnSpaCtfKey": job["key"]}
    write_star(job["star"], {"ctf": pd.DataFrame([values])}, provenance)
    return {"name": job["name"], **values}


def process_batch(method, search, provenance, batch):
    """One Dask task: a batch of micrographs in turn (no partial sum; the rows are the result)."""
    return None, [process_micrograph(job, method, search, provenance) for job in batch]


def finished(job: dict) -> dict | None:
    """The stored values of a micrograph done with the same key, else None."""
    star = Path(job["star"])
    if not star.exists():
        return None
    from spa.io.star import read_star  # noqa: PLC0415

    try:
        row = read_star(star)["ctf"].iloc[0].to_dict()
    except (SpaInputError, KeyError, IndexError):
        return None
    return row if str(row.get("rlnSpaCtfKey")) == job["key"] else None


def run_ctf(micrographs_star, output_dir, method: str, search: CtfSearch, *, client=None, batch_size: int = 4,
            provenance=None, progress=None, restart: bool = False) -> dict:
    """Estimate every micrograph of ``micrographs_star`` not done yet; write the STAR files and figures.

    Returns a summary (micrographs estimated now, done before, failed; median defocus and fit resolution).
    """
    from spa.ctf_estimation.figures import write_figures  # noqa: PLC0415
    from spa.io.atomic import remove_stale_temporaries  # noqa: PLC0415
    from spa.io.star import read_micrographs, write_micrographs, write_star  # noqa: PLC0415
    from spa.parallel import make_chunks, map_reduce  # noqa: PLC0415

    if method not in METHODS:
        raise ValueError(f"unknown CTF method {method!r} (one of {', '.join(METHODS)})")
    micrographs, optics = read_micrographs(micrographs_star)
    for col in OPTICS_KEYS:
        if col not in micrographs.columns:
            raise SpaInputError(micrographs_star, f"the optics table lacks {col} (needed for the CTF)")
    out = Path(output_dir)
    jobs = plan(micrographs, micrographs_star, out, method, search)
    for folder in {Path(j["star"]).parent for j in jobs}:
        if folder.exists():
            remove_stale_temporaries(folder)
    done = {} if restart else {j["name"]: v for j in jobs if (v := finished(j)) is not None}
    todo = [j for j in jobs if j["name"] not in done]
    failed: dict[str, str] = {}
    if todo:
        tasks = [([todo[i] for i in chunk],) for chunk in make_chunks(len(todo), max(1, int(batch_size)))]
        _, results = map_reduce(process_batch, tasks, broadcast=(method, search, provenance), client=client,
                                progress=progress)
        for row in (r for batch in results for r in batch):
            if "failed" in row:
                failed[row["name"]] = row["failed"]
            else:
                done[row["name"]] = {k: v for k, v in row.items() if k != "name"}
    keep = [i for i, j in enumerate(jobs) if j["name"] in done]
    estimates = pd.DataFrame([done[jobs[i]["name"]] for i in keep]).drop(columns=["rlnSpaCtfKey"], errors="ignore")
    table = pd.concat([micrographs.iloc[keep].reset_index(drop=True), estimates.reset_index(drop=True)], axis=1)
    star = out / "micrographs_ctf.star"
    fails = pd.DataFrame({"rlnMicrographName": list(failed), "rlnSpaRejectReason": list(failed.values())})
    if table.empty:
        raise SpaInputError(micrographs_star, "no micrograph could be estimated: " +
                            "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:3]))
    write_star(out / "micrographs_failed.star", {"micrographs": fails}, provenance)
    write_figures(out, table, jobs, method, search)
    write_micrographs(star, table, optics, provenance)
    return {"micrographs": len(table), "estimated": len(todo) - len(failed), "done_before": len(jobs) - len(todo),
            "failed": len(failed), "method": method, "star": str(star),
            "median_defocus_A": float(np.median(0.5 * (table.rlnDefocusU + table.rlnDefocusV))),
            "median_fit_resolution_A": float(np.median(table.rlnCtfMaxResolution))}
