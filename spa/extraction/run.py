"""Run a planned extraction (:mod:`spa.extraction.plan`) into a Zarr stack or per-micrograph MRCS stacks.

**Zarr** (the default): one stack ``particles.zarr`` of all N particles in plan
order (micrographs in STAR order), chunked along N (``chunk`` images per
chunk).  The plan fixes every particle's index before any pixel is read, so
the stack is created at its full size and filled chunk by chunk: a task takes
a run of consecutive chunks, extracts the micrographs whose particles fall in
them (one micrograph in memory at a time; a micrograph that straddles two
tasks is read by both, each extracting its own particles: a particle's image
does not depend on which others are extracted with it) and writes each chunk
whole as soon as it is full.  Writes are chunk-aligned and disjoint, so tasks
run in parallel on Dask workers without locks, and memory does not grow with
N (measured: benchmarks/bench_extract.py).

Resumable: the stack is built in ``<output>/.extract/particles.zarr``; after
each chunk a marker ``.extract/done/<chunk>`` records the chunk's key (the
digest of the options, seed, spa's code and, for every micrograph with
particles in that chunk, the micrograph file, its row and the exact output
rows).  A rerun skips the chunks whose key is unchanged, so a run that was
killed goes on where it stopped, and a micrograph added at the end of the STAR
costs only its own chunks.  When every chunk is written the keys go into the
stack's attributes, the stack is renamed to ``<output>/particles.zarr`` and
then ``particles.star`` is written: both appear only when complete.  A rerun
on a finished output with the same inputs changes nothing; with other inputs
it moves the finished stack back into ``.extract`` and reuses what still
matches.

**MRCS** (``--format mrcs``, RELION's layout): per micrograph
``particles/<micrograph path without suffix>.mrcs`` and ``.star`` (its
particles; the ``.star``'s provenance holds the micrograph's key and is
written last), skipped on a rerun when the key matches, then
``particles.star``.

Before the STAR, ``particles.png`` (a sample of the particles) and ``figures.json`` for the report.

In both, rlnImageName is relative to the folder of ``particles.star``
(``000001@particles.zarr``, ``000001@particles/micrographs/mic0001.mrcs``):
spa resolves image paths beside the STAR file (:mod:`spa.io.images`), so the
output folder can be moved.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from spa.errors import SpaInputError
from spa.extraction.extract import ExtractOptions, extract
from spa.extraction.plan import MicrographJob, output_optics, total_dropped

#: particles extracted together (a micrograph's rows 0-63, 64-127, …): batched reductions and FFTs round the
#: same way whichever of a micrograph's particles a task extracts
BLOCK = 64
STATE = ".extract"
STACK = "particles.zarr"
STAR = "particles.star"
FORMATS = ("zarr", "mrcs")


# -- one micrograph ----------------------------------------------------------------------------
def micrograph_images(job: MicrographJob, opts: ExtractOptions, seed: int, backend_name: str | None,
                      rows: slice = slice(None)) -> np.ndarray:
    """The (n, B', B') float32 host images of a job's kept particles ``rows`` (table order).  A particle's
    image does not depend on which others are extracted with it (its dust noise is seeded by its number)."""
    from spa.backend import get_backend
    from spa.io.mrc import read_mrc

    image, _ = read_mrc(job.path)  # SpaInputError naming the file: corrupt, truncated, NaN/Inf pixels
    image = image.squeeze()
    if image.ndim != 2:
        raise SpaInputError(job.path, f"a micrograph must be one 2D image, found shape {image.shape}")
    be = get_backend(backend_name)
    micrograph = be.xp.asarray(image)
    first, stop, _ = rows.indices(job.n)
    lo, hi = first // BLOCK * BLOCK, min(job.n, -(-stop // BLOCK) * BLOCK)
    x, y, parts = job.x, job.y, []
    for b in range(lo, hi, BLOCK):  # fixed blocks: the same float operations whichever rows are asked for
        sel = slice(b, min(b + BLOCK, job.n))
        ctf = None if job.ctf is None else {k: (np.asarray(v)[sel] if np.ndim(v) else v) for k, v in job.ctf.items()}
        images, keep = extract(micrograph, x[sel], y[sel], opts, (int(seed), job.index), ctf=ctf,
                               pixel_size=job.pixel_size, ids=np.arange(job.n)[sel])
        if not keep.all():
            raise SpaInputError(job.path, "the micrograph changed while it was being extracted")
        parts.append(be.to_numpy(images))
    return np.concatenate(parts)[first - lo:stop - lo]


# -- Zarr: a chunk plan ----------------------------------------------------------------------
def chunk_segments(jobs: list[MicrographJob], chunk: int) -> tuple[np.ndarray, list[list[tuple[int, int, int]]]]:
    """(first stack index of each job, per chunk the (job position, first, stop) rows of each job in it)."""
    counts = np.array([j.n for j in jobs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(jobs) else np.zeros(0, np.int64)
    total = int(counts.sum())
    segments: list[list[tuple[int, int, int]]] = [[] for _ in range((total + chunk - 1) // chunk)]
    for pos, (start, n) in enumerate(zip(starts.tolist(), counts.tolist())):
        for k in range(start // chunk, (start + n - 1) // chunk + 1) if n else ():
            lo, hi = max(start, k * chunk), min(start + n, (k + 1) * chunk)
            segments[k].append((pos, lo - start, hi - start))
    return starts, segments


def chunk_keys(jobs, segments, common: str) -> list[str]:
    """The key of each chunk: the common key and, per micrograph in it, its key and rows."""
    out = []
    for k, segs in enumerate(segments):
        blob = json.dumps([common, k, [(jobs[p].key, lo, hi) for p, lo, hi in segs]])
        out.append(hashlib.sha256(blob.encode()).hexdigest()[:20])
    return out


def _write_marker(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _samples_of(images: np.ndarray, first: int, sample) -> dict[int, np.ndarray]:
    """The images (stack indices ``first`` …) whose index is in ``sample``: the figure's particles."""
    idx = np.asarray(sample, np.int64)
    idx = idx[(idx >= first) & (idx < first + len(images))]
    return {int(i): images[i - first].copy() for i in idx}


def write_chunks(stack: str, done: str, opts: ExtractOptions, seed: int, backend_name, chunk: int, total: int,
                 sample, chunk_ids: list[int], keys: list[str], jobs: list[tuple[int, MicrographJob]]):
    """A task: fill chunks ``chunk_ids`` of ``stack`` from ``jobs`` ((first stack index, job), in order) and
    write each chunk's marker once it is on disk.  Returns (None, (particles written, {index: image} of the
    ``sample`` indices it extracted)) for map_reduce."""
    from spa.io import zarrstack

    wanted = {k: key for k, key in zip(chunk_ids, keys)}
    buffers: dict[int, list] = {}  # chunk -> [array, images filled]
    written, samples = 0, {}
    for start, job in jobs:
        mine = [k for k in range(start // chunk, (start + job.n - 1) // chunk + 1) if k in wanted]
        first = max(start, mine[0] * chunk) - start  # only the rows this task's chunks hold
        stop = min(start + job.n, (mine[-1] + 1) * chunk) - start
        images = micrograph_images(job, opts, seed, backend_name, slice(first, stop))
        start += first  # stack index of images[0]
        samples.update(_samples_of(images, start, sample))
        for k in mine:
            lo, hi = max(start, k * chunk), min(start + len(images), (k + 1) * chunk)
            size = min(chunk, total - k * chunk)
            buf = buffers.setdefault(k, [np.empty((size, *images.shape[1:]), np.float32), 0])
            buf[0][lo - k * chunk:hi - k * chunk] = images[lo - start:hi - start]
            buf[1] += hi - lo
            if buf[1] == size:
                zarrstack.write_images(stack, k * chunk, buf[0])
                _write_marker(Path(done) / str(k), wanted[k])
                written += size
                del buffers[k]
        del images
    if buffers:  # the plan and the micrographs disagree: never leave a chunk marked that is not whole
        raise RuntimeError(f"chunks {sorted(buffers)} of {stack} were not filled")
    return None, (written, samples)


def _task_runs(todo: list[int], per_task: int) -> list[list[int]]:
    """Consecutive chunk numbers grouped into runs of at most ``per_task``."""
    runs: list[list[int]] = []
    for k in todo:
        if runs and runs[-1][-1] == k - 1 and len(runs[-1]) < per_task:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _read_markers(done: Path, n_chunks: int) -> list[str | None]:
    out = []
    for k in range(n_chunks):
        try:
            out.append((done / str(k)).read_text())
        except OSError:
            out.append(None)
    return out


def _prepare_state(out: Path, box: int, total: int, chunk: int, dtype, pixel: float) -> tuple[Path, Path]:
    """The stack being built and its marker folder, reusing what an earlier run left where the geometry fits."""
    import zarr

    from spa.io import zarrstack

    state, final = out / STATE, out / STACK
    stack, done = state / STACK, state / "done"
    if not stack.exists() and final.exists():  # a finished stack: move it back and reuse its chunks
        (out / STAR).unlink(missing_ok=True)  # never a STAR pointing at a stack being rebuilt
        done.mkdir(parents=True, exist_ok=True)
        keys = zarr.open_group(str(final), mode="r").attrs.get("chunk_keys") or []
        for k, key in enumerate(keys):
            _write_marker(done / str(k), key)
        os.replace(final, stack)
    if stack.exists():
        try:
            info = zarrstack.stack_info(stack)
            fits = (info.box, info.chunk, info.dtype) == (box, chunk, np.dtype(dtype))
        except SpaInputError:
            fits = False
        if not fits:
            shutil.rmtree(state)
        elif info.n != total:
            zarrstack.open_stack(stack, mode="r+").resize((total, box, box))
    if not stack.exists():
        state.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(done, ignore_errors=True)
        zarrstack.create_stack(stack, box, total, chunk=chunk, pixel_size=pixel, dtype=dtype)
    done.mkdir(parents=True, exist_ok=True)
    return stack, done


def run_zarr(jobs, out: Path, opts: ExtractOptions, common: str, seed: int, *, chunk: int, dtype, pixel: float,
             client=None, backend_name=None, chunks_per_task: int = 8, provenance=None, progress=None,
             sample=()) -> dict:
    """Fill ``out/particles.zarr`` (module docstring); returns {"written": images extracted now, "layout": key,
    "samples": {index: image} of the ``sample`` indices extracted now}."""
    import zarr

    from spa.parallel import map_reduce

    starts, segments = chunk_segments(jobs, chunk)
    keys = chunk_keys(jobs, segments, common)
    total = int(sum(j.n for j in jobs))
    layout = hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:20]
    final = out / STACK
    if final.exists() and not (out / STATE).exists() and (out / STAR).exists():
        try:
            if zarr.open_group(str(final), mode="r").attrs.get("layout") == layout:
                return {"written": 0, "layout": layout, "samples": {}}  # finished with these inputs
        except Exception:  # noqa: BLE001 - an unreadable stack is rebuilt below
            pass
    stack, done = _prepare_state(out, opts.output_box, total, chunk, dtype, pixel)
    markers = _read_markers(done, len(keys))
    todo = [k for k, key in enumerate(keys) if markers[k] != key]
    per_task = max(1, int(chunks_per_task))
    if client is not None:  # enough tasks to keep every worker busy
        try:
            workers = max(1, len(client.scheduler_info()["workers"]))
        except Exception:  # noqa: BLE001 - an adaptive cluster without workers yet
            workers = 1
        per_task = max(1, min(per_task, len(todo) // (2 * workers)))
    tasks = []
    for run in _task_runs(todo, per_task):
        needed = sorted({p for k in run for p, _, _ in segments[k]})
        tasks.append((run, [keys[k] for k in run], [(int(starts[p]), jobs[p]) for p in needed]))
    written, samples = 0, {}
    if tasks:
        _, results = map_reduce(write_chunks, tasks, client=client, progress=progress,
                                broadcast=(str(stack), str(done), opts, int(seed), backend_name, int(chunk), total,
                                           list(sample)))
        written = int(sum(r[0] for r in results))
        for r in results:
            samples.update(r[1])
    group = zarr.open_group(str(stack), mode="r+")
    group.attrs.update({"chunk_keys": keys, "layout": layout, "provenance": provenance or {}})
    os.replace(stack, final)
    shutil.rmtree(out / STATE, ignore_errors=True)
    return {"written": written, "layout": layout, "samples": samples}


# -- MRCS: one stack per micrograph ---------------------------------------------------------------
def mrcs_stem(job: MicrographJob) -> Path:
    """``particles/<micrograph path without suffix>`` (relative to the output folder)."""
    from spa.motion.run import output_stem

    return Path("particles") / output_stem(job.name)


def write_mrcs_batch(out: str, opts: ExtractOptions, seed: int, backend_name, dtype, common: str, optics, provenance,
                     sample, batch: list[tuple[int, MicrographJob]]):
    """A task: each micrograph's ``.mrcs`` then its ``.star`` (the record of its key, written last).  Returns
    (None, (particles written, {index: image} of the ``sample`` indices))."""
    from spa.io.mrc import write_mrcs
    from spa.io.star import write_particles
    from spa.provenance import make_record

    written, samples = 0, {}
    for start, job in batch:
        stem = Path(out) / mrcs_stem(job)
        images = micrograph_images(job, opts, seed, backend_name)
        samples.update(_samples_of(images, start, sample))
        record = make_record((provenance or {}).get("command"), None, seed, key=f"{common}-{job.key}",
                             dropped_at_edges=job.dropped)
        write_mrcs(stem.with_suffix(".mrcs"), images, job.pixel_size * opts.box / opts.output_box,
                   provenance=record, dtype=dtype)
        table = job.table.copy()
        table.insert(0, "rlnImageName", [f"{k:06d}@{stem.name}.mrcs" for k in range(1, job.n + 1)])
        write_particles(stem.with_suffix(".star"), table, optics[optics.rlnOpticsGroup == job.group], record)
        written += job.n
    return None, (written, samples)


def run_mrcs(jobs, out: Path, opts: ExtractOptions, common: str, seed: int, *, dtype, optics, client=None,
             backend_name=None, batch_size: int = 4, provenance=None, progress=None, sample=()) -> dict:
    from spa.parallel import make_chunks, map_reduce
    from spa.provenance import read_record

    todo, start = [], 0
    for job in jobs:
        start += job.n
        stem = out / mrcs_stem(job)
        record = read_record(str(stem.with_suffix(".star"))) if stem.with_suffix(".star").exists() else None
        if not (isinstance(record, dict) and record.get("key") == f"{common}-{job.key}"
                and stem.with_suffix(".mrcs").exists()):
            todo.append((start - job.n, job))
    written, samples = 0, {}
    if todo:
        tasks = [([todo[i] for i in idx],) for idx in make_chunks(len(todo), max(1, int(batch_size)))]
        _, results = map_reduce(write_mrcs_batch, tasks, client=client, progress=progress,
                                broadcast=(str(out), opts, int(seed), backend_name, dtype, common, optics, provenance,
                                           list(sample)))
        written = int(sum(r[0] for r in results))
        for r in results:
            samples.update(r[1])
    return {"written": written, "samples": samples}


# -- the whole extraction ----------------------------------------------------------------------
#: particles shown in particles.png
GALLERY = 40


def _sample_images(sample, extracted: dict, particles: pd.DataFrame, optics: pd.DataFrame, out: Path) -> np.ndarray:
    """The figure's particles: as the tasks returned them, or (those a rerun skipped) read back one by one."""
    from spa.io.images import ParticleImages

    missing = [int(i) for i in sample if int(i) not in extracted]
    if missing:
        rows = particles.iloc[missing].merge(optics, on="rlnOpticsGroup", how="left")
        source = ParticleImages(rows, out / STAR)
        for k, i in enumerate(missing):
            extracted[i] = source.read([k])[0]
        source.close()
    return np.stack([extracted[int(i)] for i in sample])
def particle_table(jobs: list[MicrographJob], fmt: str) -> pd.DataFrame:
    """Every kept particle in stack order, rlnImageName first (relative to the output folder)."""
    tables, first = [], 1
    for job in jobs:
        table = job.table.copy()
        if fmt == "zarr":
            names = [f"{k:06d}@{STACK}" for k in range(first, first + job.n)]
        else:
            names = [f"{k:06d}@{mrcs_stem(job).as_posix()}.mrcs" for k in range(1, job.n + 1)]
        table.insert(0, "rlnImageName", names)
        tables.append(table)
        first += job.n
    return pd.concat(tables, ignore_index=True)


def run_extraction(jobs, mic_optics, output_dir, opts: ExtractOptions, *, fmt: str = "zarr", seed: int = 0,
                   chunk: int | None = None, float16: bool = False, client=None, backend_name=None,
                   provenance: dict | None = None, progress=None, restart: bool = False) -> dict:
    """Extract every job into ``output_dir`` (module docstring) and write ``particles.star``; returns a summary."""
    from spa.extraction.plan import common_key
    from spa.io.atomic import remove_stale_temporaries
    from spa.io.star import write_particles
    from spa.io.zarrstack import DEFAULT_CHUNK

    if fmt not in FORMATS:
        raise ValueError(f"unknown stack format {fmt!r}; choose one of {FORMATS}")
    dropped = total_dropped(jobs)
    jobs = [j for j in jobs if j.n]
    out = Path(output_dir)
    if restart:
        (out / STAR).unlink(missing_ok=True)
        for p in (out / STATE, out / STACK, out / "particles"):
            shutil.rmtree(p, ignore_errors=True)
    remove_stale_temporaries(out)
    if not jobs:
        return {"particles": 0, "dropped_at_edges": dropped, "micrographs": 0, "written": 0}
    dtype = np.float16 if float16 else np.float32
    optics = output_optics(mic_optics, jobs, opts)
    pixel = float(optics.rlnImagePixelSize.iloc[0])
    chunk = int(chunk or DEFAULT_CHUNK)
    common = common_key(opts, seed, format=fmt, float16=bool(float16), chunk=chunk if fmt == "zarr" else None)
    total = sum(j.n for j in jobs)
    sample = np.unique(np.linspace(0, total - 1, min(GALLERY, total)).round().astype(np.int64))
    if fmt == "zarr":
        done = run_zarr(jobs, out, opts, common, seed, chunk=chunk, dtype=dtype, pixel=pixel, client=client,
                        backend_name=backend_name, provenance=provenance, progress=progress, sample=sample)
    else:
        done = run_mrcs(jobs, out, opts, common, seed, dtype=dtype, optics=optics, client=client,
                        backend_name=backend_name, provenance=provenance, progress=progress, sample=sample)
    particles = particle_table(jobs, fmt)
    summary = {"particles": len(particles), "dropped_at_edges": dropped, "micrographs": len(jobs),
               "written": done["written"], "box": opts.output_box, "pixel_size": round(pixel, 4), "format": fmt}
    record = dict(provenance or {})
    record.update({k: v for k, v in summary.items() if k != "written"})
    if "layout" in done:
        record["layout"] = done["layout"]
    from spa.extraction.figures import particle_gallery

    particle_gallery(out, sample, _sample_images(sample, done["samples"], particles, optics, out), len(particles))
    write_particles(out / STAR, particles, optics, record)  # last: the STAR says the extraction is complete
    # the other format's images of an earlier run here: no STAR refers to them any more
    for stale in ((out / "particles",) if fmt == "zarr" else (out / STACK, out / STATE)):
        shutil.rmtree(stale, ignore_errors=True)
    return summary
