"""The ``spa initial-model`` stage: candidates, choice, final alignment, symmetry, outputs.

1. Particles are Fourier-cropped to the working box (:mod:`spa.initial_model.working`).
2. Candidates: ``n_candidates`` SGD runs with different seeds
   (:mod:`spa.initial_model.sgd`), in parallel on a Dask client when one is
   given, plus common lines from class averages when given
   (:mod:`spa.initial_model.commonlines`).
3. Choice: projection matching of every candidate against the class
   averages (or, without them, a random subset of particles with their CTFs)
   and the best median correlation (:mod:`spa.initial_model.choose`).
4. The chosen maps are refined by a full pass over all particles (one EM
   iteration at the final resolution), which also gives every particle's pose.
5. With ``symmetry`` other than C1, the map's symmetry axes are found and put
   in the group's standard setting, the map is symmetrised and the poses are
   expressed in the new frame (:mod:`spa.initial_model.align`).
6. Maps go back to the original box and pixel size by Fourier padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from spa.fourier import fourier_resize
from spa.geometry.euler import euler_to_matrix, matrix_to_euler
from spa.initial_model.agreement import MIN_CANDIDATES, agreement_matrix, agreement_scores, choose_by_agreement
from spa.initial_model.choose import (Candidate, choose_candidate, plot_scores, score_candidates,
                                      scores_table)
from spa.initial_model.sgd import SGDOptions, SGDRun, constrain_map
from spa.initial_model.working import MAX_HELD, WorkingSet, choose_working_box, load_working_set

CHOOSER_PARTICLES = 300  # particles matched per candidate when no class averages are given


@dataclass
class InitialModelOptions:
    sgd: SGDOptions
    n_candidates: int = 1
    symmetry: str = "C1"
    chooser_resolution: float = 20.0  # Å
    write_mirror: bool = True


@dataclass
class InitialModelResult:
    maps: np.ndarray  # (K, B, B, B) at the original box and pixel size
    pixel_size: float
    chosen: int
    candidates: list
    scores: list
    table: object  # particles with poses (DataFrame)
    notes: list = field(default_factory=list)
    symmetry_score: float | None = None
    agreement: np.ndarray | None = None  # per candidate: median aligned correlation with the others


def _sgd_candidate(ws: WorkingSet, opts: SGDOptions):
    """Dask task / local call: the SGD phase of one candidate → (maps (K, b, b, b), class fractions)."""
    run = SGDRun(ws, opts)
    run.initialise()
    for t in range(opts.total_iterations):
        run.step(t)
    return run.be.to_numpy(run.refs.images), np.asarray(run.class_weight)


def _candidate_seeds(seed: int, n: int) -> list[int]:
    return [int(seed) + 1000 * c for c in range(n)]


def run_candidates(ws: WorkingSet, opts: InitialModelOptions, *, client=None, log=print) -> list[tuple]:
    """SGD phase of every candidate → [(seed, maps, class fractions)], in seed order."""
    seeds = _candidate_seeds(opts.sgd.seed, opts.n_candidates)
    if client is not None and len(seeds) > 1:
        ws_f = client.scatter(ws, broadcast=True, hash=False)
        futs = [client.submit(_sgd_candidate, ws_f, replace(opts.sgd, seed=s), pure=False) for s in seeds]
        out = client.gather(futs)
        return [(s, m, w) for s, (m, w) in zip(seeds, out)]
    res = []
    for i, s in enumerate(seeds):
        run = SGDRun(ws, replace(opts.sgd, seed=s), log=log)
        run.initialise()
        total = opts.sgd.total_iterations
        for t in range(total):
            rec = run.step(t)
            if t == 0 or (t + 1) % 10 == 0 or t + 1 == total:
                log(f"initial-model: candidate {i + 1}/{len(seeds)} (seed {s}): SGD iteration {t + 1}/"
                    f"{total}, {rec['resolution']:.1f} Å, batch {rec['batch']}, η {rec['eta']:.2f}, "
                    f"HEALPix order {rec['order']}")
        res.append((s, run.be.to_numpy(run.refs.images), np.asarray(run.class_weight)))
    return res


def chooser_images(ws: WorkingSet, class_averages, seed: int):
    """(images, CTFs or None, what) the candidates are matched against."""
    if class_averages is not None:
        return class_averages, None, "class average"
    rng = np.random.default_rng(seed + 77)
    idx = np.sort(rng.choice(len(ws), size=min(len(ws), CHOOSER_PARTICLES), replace=False))
    return ws.images[idx], ws.ctf(idx), "particle"


def crop_averages(averages, pixel_size: float, ws: WorkingSet):
    """Class averages (M, B', B') at ``pixel_size`` Å resampled to the working box and pixel size."""
    a = np.asarray(averages, np.float32)
    new_box = int(round(a.shape[-1] * pixel_size / ws.pixel_size))
    new_box += new_box % 2
    a = fourier_resize(a, new_box, 2)
    b = ws.box
    if new_box > b:  # crop the real-space box
        lo = new_box // 2 - b // 2
        a = a[:, lo:lo + b, lo:lo + b]
    elif new_box < b:
        out = np.zeros((len(a), b, b), np.float32)
        lo = b // 2 - new_box // 2
        out[:, lo:lo + new_box, lo:lo + new_box] = a
        a = out
    return np.ascontiguousarray(a)


def _score_sets(candidates, images, ctfs, ws, opts, mask_radius_px, log):
    """Per candidate: best correlation per image over its class maps."""
    flat, owner = [], []
    for i, c in enumerate(candidates):
        for k in range(len(c.volume)):
            flat.append(Candidate(f"{c.name}.{k + 1}", c.method, c.volume[k], c.seed, folds=c.folds))
            owner.append(i)
    raw = score_candidates(flat, images, ws.pixel_size, ctfs=ctfs, resolution=opts.chooser_resolution,
                           mask_radius_px=mask_radius_px,
                           offset_range_px=0.0 if ctfs is None else max(1.0, 0.08 * ws.box), log=None)
    out = []
    for i, c in enumerate(candidates):
        s = np.max(np.stack([raw[j] for j in range(len(flat)) if owner[j] == i]), axis=0)
        out.append(s)
        log(f"initial-model: candidate {c.name} ({c.method}): median reprojection correlation {np.median(s):.3f}")
    return out


def prepare_inputs(particles_path, sgd: SGDOptions, *, working_box: int | None = None, max_held: int = MAX_HELD,
                   class_averages=None, seed: int = 0, log=print, progress=None):
    """The stage's inputs: the particles at the working box and, when given, the class averages on its grid.

    Reads the particle STAR (CTF optional: without rlnDefocusU/V/Angle the run has no CTF correction; some
    of them but not all is an error), chooses the
    working box (pixel ≈ final resolution / 3 unless ``working_box`` px is given; ``sgd.final_resolution``
    is raised to what that box allows), holds up to ``max_held`` particles for SGD
    (:func:`spa.initial_model.working.load_working_set`) and crops the class averages (an MRC stack;
    empty classes dropped).  Returns (working set, optics table, averages (M, b, b) or None).
    """
    from spa.errors import SpaInputError
    from spa.io.images import ParticleImages
    from spa.io.mrc import read_mrc
    from spa.io.star import has_ctf, read_particles

    particles, optics = read_particles(particles_path, require=("rlnImageName",))
    if len(particles) < max(10, sgd.n_classes):
        raise SpaInputError(particles_path, f"{len(particles)} particles are too few for an initial model")
    if max_held < max(10, sgd.n_classes):
        raise SpaInputError(None, f"max_sgd_particles {max_held} is too small")
    if not has_ctf(particles, particles_path):
        log("initial-model: no CTF columns (rlnDefocusU/V/Angle): running without CTF correction")
    source = ParticleImages(particles, particles_path)
    box, pixel = source.box, source.pixel_size
    wb = working_box or choose_working_box(box, pixel, sgd.final_resolution)
    if not 16 <= wb <= box:
        raise SpaInputError(None, f"working box {wb} must be within 16 … {box} px (the particle box)")
    wb += wb % 2 if wb < box else 0
    if sgd.final_resolution < 2.2 * pixel * box / wb:
        log(f"initial-model: final resolution limited to {2.2 * pixel * box / wb:.1f} Å by the working box {wb}")
    log(f"initial-model: {len(particles)} particles of {box} px at {pixel:g} Å → working box {wb} px at "
        f"{pixel * box / wb:.2f} Å")
    ws = load_working_set(particles, source, wb, progress=progress, max_held=max_held, seed=seed)
    if not ws.all_held:
        log(f"initial-model: SGD draws its mini-batches from a random subset of {len(ws)} of the "
            f"{ws.n_particles} particles (held in memory); the final pass aligns every particle")
    averages = None
    if class_averages:
        data, apix = read_mrc(class_averages)
        data = np.asarray(data, np.float32)
        if data.ndim == 2:
            data = data[None]
        if data.shape[-1] != data.shape[-2]:
            raise SpaInputError(class_averages, f"class averages must be square, got {data.shape[-2]} x "
                                                f"{data.shape[-1]}")
        if data.shape[-1] == box:
            apix = pixel  # averages of these particles (class2d): their pixel size, whatever the header says
        keep = np.abs(data).reshape(len(data), -1).max(axis=1) > 0  # empty classes carry no information
        averages = crop_averages(data[keep], float(apix), ws)
        log(f"initial-model: {int(keep.sum())} class averages from {class_averages}")
    return ws, optics, averages


def rotate_poses(euler: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Poses for the map rotated by Q (W(r) = V(Qᵀr)): A_W = A_V·Qᵀ, as (N, 3) Euler degrees."""
    a = euler_to_matrix(*np.asarray(euler).T) @ np.asarray(q).T
    return np.column_stack(matrix_to_euler(a))


def run_initial_model(ws: WorkingSet, opts: InitialModelOptions, *, class_averages=None, client=None,
                      log=print, progress=None) -> InitialModelResult:
    """The whole stage on a working set (see the module docstring)."""
    notes: list[str] = []
    sgd_runs = run_candidates(ws, opts, client=client, log=log)
    candidates = [Candidate(f"sgd{i + 1:02d}", "sgd", maps, seed) for i, (seed, maps, _) in enumerate(sgd_runs)]
    probe = SGDRun(ws, opts.sgd)  # geometry (mask radius) shared by every candidate
    mask_r = probe.mask_radius_px
    if class_averages is not None:
        from spa.initial_model.commonlines import commonlines_model

        vol, info = commonlines_model(class_averages, ws.pixel_size, mask_radius_px=mask_r,
                                      resolution=max(opts.chooser_resolution, 2.5 * ws.pixel_size), log=log)
        if vol is None:
            notes.append(f"common lines gave no candidate: {info.get('failure')}")
            log(f"initial-model: {notes[-1]}")
        else:
            k = opts.sgd.n_classes
            candidates.append(Candidate("commonlines", "commonlines", np.repeat(vol[None], k, axis=0),
                                        folds=info.get("folds")))
    else:
        notes.append("no --class-averages: common lines (method 2) skipped; candidates matched against "
                     f"{CHOOSER_PARTICLES} random particles")
        log(f"initial-model: {notes[-1]}")
    images, ctfs, what = chooser_images(ws, class_averages, opts.sgd.seed)
    scores = _score_sets(candidates, images, ctfs, ws, opts, mask_r, log)
    chosen = choose_candidate(scores, [c.method for c in candidates])
    top = int(np.argmax([np.median(s) for s in scores]))
    agreement = None
    if len(candidates) >= MIN_CANDIDATES and opts.sgd.n_classes == 1:
        matrix = agreement_matrix([c.volume[0] for c in candidates], ws.pixel_size,
                                  resolution=max(opts.sgd.final_resolution, 2.5 * ws.pixel_size), log=log)
        agreement = agreement_scores(matrix)
        by_agreement = choose_by_agreement(matrix)
        if by_agreement != chosen:
            notes.append(f"{candidates[by_agreement].name} chosen as the candidate the others reproduce best "
                         f"(median aligned correlation {agreement[by_agreement]:.3f}); the best reprojection "
                         f"match, {candidates[chosen].name}, agrees with the others at {agreement[chosen]:.3f}")
            log(f"initial-model: {notes[-1]}")
        chosen = by_agreement
    elif chosen != top:
        notes.append(f"{candidates[top].name} scored a higher median than {candidates[chosen].name} but not image by "
                     "image (sign test, p ≥ 0.05): the SGD map, fitted to the particles at a finer resolution, is kept")
        log(f"initial-model: {notes[-1]}")
    log(f"initial-model: chose candidate {candidates[chosen].name} ({candidates[chosen].method})")
    # full pass over every particle with the chosen maps
    seed = candidates[chosen].seed if candidates[chosen].seed is not None else opts.sgd.seed
    run = SGDRun(ws, replace(opts.sgd, seed=seed), log=log)
    run.start_from(candidates[chosen].volume)
    if opts.sgd.centre:
        run.centre_maps()  # the final pass's poses and the written maps share the centred frame
    if candidates[chosen].method != "sgd":
        run.opts = replace(run.opts, final_passes=max(2, run.opts.final_passes))
    final = run.final_pass(progress=progress)
    maps = run.be.to_numpy(run.refs.images).astype(np.float32)
    euler = np.column_stack(matrix_to_euler(euler_to_matrix(*final["rot"].T)))  # angles in RELION ranges
    offsets = final["offset"]
    sym_score = None
    if opts.symmetry.upper() != "C1":
        from spa.initial_model.align import symmetrise_aligned

        out = []
        q0 = None
        for k, m in enumerate(maps):
            sym, q, score = symmetrise_aligned(m, opts.symmetry, pixel_size=ws.pixel_size,
                                               resolution=max(opts.sgd.final_resolution, 2.5 * ws.pixel_size))
            out.append(constrain_map(sym, mask_r))
            if k == 0:
                q0, sym_score = q, score
            log(f"initial-model: class {k + 1}: {opts.symmetry} axes aligned (symmetry correlation {score:.3f})")
        maps = np.stack(out)
        euler = rotate_poses(euler, q0)  # poses follow the first class's frame
        notes.append(f"symmetry {opts.symmetry} imposed after C1 ab initio (axis alignment correlation "
                     f"{sym_score:.3f}); poses given in the first class's aligned frame")
    full = np.stack([fourier_resize(m, ws.original_box, 3) for m in maps]).astype(np.float32)
    table = ws.table.copy()
    table["rlnAngleRot"], table["rlnAngleTilt"], table["rlnAnglePsi"] = euler[:, 0], euler[:, 1], euler[:, 2]
    table["rlnOriginXAngst"] = offsets[:, 0] * ws.pixel_size
    table["rlnOriginYAngst"] = offsets[:, 1] * ws.pixel_size
    table["rlnClassNumber"] = final["class"].astype(np.int64) + 1
    table["rlnMaxValueProbDistribution"] = final["max_prob"]
    table["rlnNrOfSignificantSamples"] = final["n_significant"].astype(np.int64)
    table["rlnLogLikeliContribution"] = final["loglike"]
    notes.append("hand undetermined: projections cannot distinguish the map from its mirror image "
                 "(initial_model_mirror.mrc is the other hand)")
    return InitialModelResult(full, ws.original_pixel_size, chosen, candidates, scores, table, notes, sym_score,
                              agreement)


def write_outputs(out_dir, result: InitialModelResult, ws: WorkingSet, optics, provenance, *, what: str,
                  write_mirror: bool = True) -> list[Path]:
    """initial_model.mrc (+ per class), the mirror, run_data.star, candidates/, candidates.star, the figures
    (candidate_scores.png, candidate_slices.png, figures.json)."""
    import json

    from spa.initial_model.align import mirror_volume
    from spa.io.atomic import atomic_path
    from spa.io.mrc import write_mrc
    from spa.io.star import write_particles, write_star

    out = Path(out_dir)
    (out / "candidates").mkdir(parents=True, exist_ok=True)
    written = []
    px = result.pixel_size
    classes = result.table["rlnClassNumber"].to_numpy()
    sizes = np.bincount(classes - 1, minlength=len(result.maps))
    main = int(np.argmax(sizes))
    write_mrc(out / "initial_model.mrc", result.maps[main], px, provenance)
    written.append(out / "initial_model.mrc")
    if write_mirror:
        write_mrc(out / "initial_model_mirror.mrc", mirror_volume(result.maps[main]), px, provenance)
        written.append(out / "initial_model_mirror.mrc")
    if len(result.maps) > 1:
        for k, m in enumerate(result.maps):
            p = out / f"initial_model_class{k + 1:03d}.mrc"
            write_mrc(p, m, px, provenance)
            written.append(p)
    write_particles(out / "run_data.star", result.table, optics, provenance)
    written.append(out / "run_data.star")
    files = []
    for i, c in enumerate(result.candidates):
        for k in range(len(c.volume)):
            suffix = "" if len(c.volume) == 1 else f"_class{k + 1:03d}"
            p = out / "candidates" / f"candidate_{i + 1:02d}{suffix}.mrc"
            write_mrc(p, fourier_resize(np.asarray(c.volume[k], np.float32), ws.original_box, 3), px, provenance)
            written.append(p)
            if k == 0:
                files.append(str(p.relative_to(out)))
    table = scores_table(result.candidates, result.scores, result.chosen, files, agreement=result.agreement)
    write_star(out / "candidates.star", {"candidates": table}, provenance)
    written.append(out / "candidates.star")
    plot_scores(out / "candidate_scores.png", result.candidates, result.scores, result.chosen, what)
    written.append(out / "candidate_scores.png")
    written += plot_candidates(out, result, what)
    report = {
        "chosen": result.candidates[result.chosen].name,
        "candidates": table.to_dict(orient="records"),
        "scores": {c.name: [float(x) for x in s] for c, s in zip(result.candidates, result.scores)},
        "matched_against": what,
        "notes": result.notes,
        "symmetry_score": result.symmetry_score,
        "agreement": None if result.agreement is None else [float(a) for a in result.agreement],
        "working_box": ws.box,
        "working_pixel_size": ws.pixel_size,
        "provenance": provenance,
    }
    with atomic_path(out / "initial_model.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1, default=str))
    written.append(out / "initial_model.json")
    return written


def plot_candidates(out: Path, result: InitialModelResult, what: str) -> list[Path]:
    """candidate_slices.png (central sections of every candidate, the chosen one marked) and figures.json."""
    from spa.plots import plot_map_slices, write_figures_index

    chosen = result.candidates[result.chosen]
    labels = [f"{c.name}" + (" (chosen)" if i == result.chosen else "") for i, c in enumerate(result.candidates)]
    plot_map_slices(out / "candidate_slices.png", [np.asarray(c.volume[0], np.float32) for c in result.candidates],
                    labels, title=f"initial model candidates ({len(result.candidates)})")
    write_figures_index(out, [
        {"file": "candidate_slices.png", "title": f"Initial model candidates: {chosen.name} chosen",
         "caption": "Central sections (XY, XZ, YZ) of each ab-initio candidate at the working box. A good "
                    "candidate shows a compact, continuous molecule; the hand is undetermined "
                    "(initial_model_mirror.mrc is the other hand)."},
        {"file": "candidate_scores.png", "title": "How well each candidate explains the data",
         "caption": f"Histogram, per candidate, of the best correlation of its reprojections with each of the "
                    f"{what}; the candidate with the highest median (thick line) is kept."},
    ])
    return [out / "candidate_slices.png", out / "figures.json"]
