"""``spa motion`` over a movie table: batches on Dask, resumable, assembled into corrected_micrographs.star.

Per movie ``<output>/<movie path without suffix>``:

* ``.mrc`` — the dose-weighted sum (rlnMicrographName), ``_noDW.mrc`` — the
  unweighted sum (rlnMicrographNameNoDW, what CTF estimation reads), both
  float32 (or float16) with the binned pixel size;
* ``.star`` — the trajectories (rlnMicrographMetadata; RELION's layout,
  :func:`spa.motion.correct.trajectory_blocks`), written last, with the
  hash of the movie (path, size, modification time), its optics and the
  options (rlnSpaMotionKey).

A movie whose ``.star`` exists with the same key is done: a rerun skips
it, and a movie added to the table since is processed without redoing the
rest.  Each file is written atomically, so a killed run leaves no half
file.  A movie that cannot be corrected (truncated, NaN values, a gain of
the wrong shape, too few frames) is listed in ``movies_rejected.star`` with
the reason, and the others complete.  Movies go to the Dask workers in
batches (a few per task, :func:`spa.parallel.map_reduce`).

``corrected_micrographs.star``: data_optics (the movie optics groups with
rlnMicrographPixelSize = original pixel size × binning) and data_micrographs
(rlnMicrographName, rlnMicrographNameNoDW, rlnMicrographMetadata,
rlnOpticsGroup, rlnAccumMotionTotal/Early/Late, rlnSpaMaxFrameShiftAngst —
the drift numbers in Å the selection stage screens on).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from spa.errors import SpaInputError
from spa.motion.correct import MotionOptions, correct_movie, trajectory_blocks

OPTICS_SPA_COLUMNS = ("rlnMicrographDoseRate", "rlnMicrographPreExposure", "rlnMicrographGainName", "rlnImageSizeZ")


def output_stem(movie_name: str) -> Path:
    """Where a movie's outputs go, relative to the output folder: its path without suffix (absolute paths
    lose their root, '..' becomes '__')."""
    parts = [("__" if p == ".." else p) for p in Path(movie_name).with_suffix("").parts if p not in ("/", "")]
    parts = [p for p in parts if not p.endswith(":\\")]
    return Path(*parts)


def movie_key(path: Path, row: dict, options: MotionOptions) -> str:
    """What a finished movie's outputs must match: the movie file, its optics and the options."""
    st = path.stat()
    blob = json.dumps({"movie": str(path), "size": st.st_size, "mtime": st.st_mtime_ns, "row": row,
                       "options": options.as_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _finished_key(star: Path) -> str | None:
    if not star.exists():
        return None
    try:
        from spa.io.star import read_star  # noqa: PLC0415

        return str(read_star(star)["general"].get("rlnSpaMotionKey"))
    except (SpaInputError, KeyError):
        return None


def _resolve(name: str, star_path) -> Path:
    from spa.io.images import resolve_image_path  # noqa: PLC0415

    found = resolve_image_path(name, star_path)
    if found is None:
        raise SpaInputError(name, "file not found (looked in the working directory and beside the STAR file)")
    return found


def process_movie(job: dict, options: MotionOptions, backend_name: str | None, provenance) -> dict:
    """Correct one movie and write its outputs; returns its table row or {'rejected': reason}."""
    from spa.backend import get_backend  # noqa: PLC0415
    from spa.io.movies import check_gain_shape, read_gain, read_movie  # noqa: PLC0415
    from spa.io.mrc import write_mrc  # noqa: PLC0415
    from spa.io.star import write_star  # noqa: PLC0415

    try:
        frames = read_movie(job["path"], job.get("frames"))
        gain = None
        if job.get("gain"):
            gain = read_gain(job["gain"])
            check_gain_shape(job["gain"], gain.shape, job["path"], frames.shape[1:])
        result = correct_movie(frames, gain, job["pixel_size"], job["dose"], options,
                               pre_exposure=job["pre_exposure"], backend=get_backend(backend_name), path=job["path"])
    except SpaInputError as exc:
        return {"rlnMicrographMovieName": job["name"], "rejected": str(exc)}
    dtype = np.float16 if options.float16 else np.float32
    write_mrc(job["dw"], result.dose_weighted, result.pixel_size, provenance, dtype=dtype)
    write_mrc(job["nodw"], result.unweighted, result.pixel_size, provenance, dtype=dtype)
    general = {"rlnMicrographMovieName": job["name"], "rlnMicrographGainName": job.get("gain") or "None",
               "rlnMicrographBinning": float(options.binning), "rlnMicrographOriginalPixelSize": job["pixel_size"],
               "rlnMicrographDoseRate": job["dose"], "rlnMicrographPreExposure": job["pre_exposure"],
               "rlnVoltage": job["voltage"], "rlnSpaMotionKey": job["key"]}
    write_star(job["star"], trajectory_blocks(result, general), provenance)
    return {"rlnMicrographMovieName": job["name"]}


def process_batch(options, backend_name, provenance, batch):
    """One Dask task: a batch of movies in turn (no partial sum; the rows are the result)."""
    return None, [process_movie(job, options, backend_name, provenance) for job in batch]


def plan(movies: pd.DataFrame, star_path, output_dir: Path, options: MotionOptions,
         dose_override: float | None = None) -> list[dict]:
    """One job per movie of the table (paths resolved, key computed, outputs named)."""
    jobs = []
    for row in movies.to_dict("records"):
        name = str(row["rlnMicrographMovieName"])
        dose = dose_override if dose_override is not None else float(row.get("rlnMicrographDoseRate") or 0.0)
        if options.dose_weighting and dose <= 0:
            raise SpaInputError(star_path, f"no dose per frame for {name}: give --dose-per-frame (e⁻/Å²) or "
                                           "rlnMicrographDoseRate in the optics table")
        stem = output_dir / output_stem(name)
        gain = row.get("rlnMicrographGainName")
        gain = None if gain in (None, "", "None") or (isinstance(gain, float) and np.isnan(gain)) else str(gain)
        try:
            path = _resolve(name, star_path)
            gain = str(_resolve(gain, star_path)) if gain else None
        except SpaInputError:
            path = Path(name)  # reported as rejected when processed
        frames = row.get("rlnImageSizeZ")
        optics = {"pixel": float(row["rlnMicrographOriginalPixelSize"]), "dose": dose, "gain": gain,
                  "pre": float(row.get("rlnMicrographPreExposure") or 0.0), "frames": frames}
        jobs.append({
            "name": name, "path": str(path), "gain": gain, "pixel_size": optics["pixel"], "dose": dose,
            "pre_exposure": optics["pre"], "voltage": float(row["rlnVoltage"]),
            "frames": None if frames is None or pd.isna(frames) else int(frames), "group": int(row["rlnOpticsGroup"]),
            "dw": str(stem) + ".mrc", "nodw": str(stem) + "_noDW.mrc", "star": str(stem) + ".star",
            "key": movie_key(path, optics, options) if path.exists() else "missing",
        })
    return jobs


def run_motion(movies_star, output_dir, options: MotionOptions, *, client=None, backend_name=None,
               batch_size: int = 4, dose_per_frame: float | None = None, provenance=None, progress=None,
               restart: bool = False) -> dict:
    """Correct every movie of ``movies_star`` not done yet; write the STAR files and the drift plot.

    Returns a summary: movies done before, processed now, rejected, and the STAR path.
    """
    from spa.io.atomic import remove_stale_temporaries  # noqa: PLC0415
    from spa.io.star import read_optics_table, write_micrographs, write_star  # noqa: PLC0415
    from spa.parallel import make_chunks, map_reduce  # noqa: PLC0415

    out = Path(output_dir)
    movies, optics = read_optics_table(movies_star, "movies", "rlnMicrographOriginalPixelSize",
                                       require=("rlnMicrographMovieName",))
    jobs = plan(movies, movies_star, out, options, dose_per_frame)
    for folder in {Path(j["star"]).parent for j in jobs}:
        remove_stale_temporaries(folder)
    todo = [j for j in jobs if restart or _finished_key(Path(j["star"])) != j["key"]]
    rows: list[dict] = []
    if todo:
        tasks = [([todo[i] for i in chunk],) for chunk in make_chunks(len(todo), max(1, int(batch_size)))]
        _, results = map_reduce(process_batch, tasks, broadcast=(options, backend_name, provenance), client=client,
                                progress=progress)
        rows = [r for batch in results for r in batch]
    rejected = {r["rlnMicrographMovieName"]: r["rejected"] for r in rows if "rejected" in r}
    table = assemble(jobs, rejected, out)
    out_optics = optics.drop(columns=[c for c in OPTICS_SPA_COLUMNS if c in optics.columns]).copy()
    out_optics["rlnMicrographPixelSize"] = out_optics["rlnMicrographOriginalPixelSize"] * float(options.binning)
    star = out / "corrected_micrographs.star"
    if len(table):
        from spa.motion.plots import drift_figures  # noqa: PLC0415

        drift_figures(out, table, jobs)
    write_micrographs(star, table, out_optics, provenance)
    rej = pd.DataFrame({"rlnMicrographMovieName": list(rejected), "rlnSpaRejectReason": list(rejected.values())})
    write_star(out / "movies_rejected.star", {"movies": rej}, provenance)
    return {"done_before": len(jobs) - len(todo), "processed": len(todo) - len(rejected), "rejected": len(rejected),
            "star": star, "micrographs": len(table)}


def assemble(jobs: list[dict], rejected: dict, out: Path) -> pd.DataFrame:
    """The data_micrographs rows of every finished movie (read back from its trajectory STAR)."""
    from spa.io.star import read_star  # noqa: PLC0415

    rows = []
    for job in jobs:
        if job["name"] in rejected or _finished_key(Path(job["star"])) != job["key"]:
            continue
        general = read_star(job["star"])["general"]
        rows.append({
            "rlnMicrographName": _relative(job["dw"]), "rlnMicrographNameNoDW": _relative(job["nodw"]),
            "rlnMicrographMetadata": _relative(job["star"]), "rlnOpticsGroup": job["group"],
            **{k: float(general[k]) for k in ("rlnAccumMotionTotal", "rlnAccumMotionEarly", "rlnAccumMotionLate",
                                              "rlnSpaMaxFrameShiftAngst")},
        })
    columns = ["rlnMicrographName", "rlnMicrographNameNoDW", "rlnMicrographMetadata", "rlnOpticsGroup",
               "rlnAccumMotionTotal", "rlnAccumMotionEarly", "rlnAccumMotionLate", "rlnSpaMaxFrameShiftAngst"]
    return pd.DataFrame(rows, columns=columns)


def _relative(path: str) -> str:
    """A path as RELION writes it: relative to the working directory when it lies below it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path(os.getcwd()).resolve())) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)
