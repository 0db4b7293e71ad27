"""Files a 3D classification writes, named as RELION's Class3D job writes them.

Per iteration: ``run_itNNN_class00K.mrc`` for each class, ``run_itNNN_model.star``,
``run_itNNN_data.star`` (with rlnClassNumber and poses); final copies without
the iteration: ``run_class00K.mrc``, ``run_model.star``, ``run_data.star``; and
``run_classes.png`` (central sections of every class) listed in ``figures.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spa.em.outputs import copy_final, model_blocks
from spa.io.mrc import write_mrc
from spa.io.star import write_particles, write_star


def class_name(iteration, k):
    it = "" if iteration is None else f"_it{iteration:03d}"
    return f"run{it}_class{k + 1:03d}.mrc"


def write_iteration(run, model, refs, sampling) -> None:
    d = run.output_dir
    it = model.iteration
    vols = np.asarray(refs.images, np.float32)
    names = [class_name(it, k) for k in range(vols.shape[0])]
    for name, vol in zip(names, vols):
        write_mrc(d / name, vol, run.pixel_size, provenance=run.provenance)
    pmax = float(run.table["rlnMaxValueProbDistribution"].mean()) if "rlnMaxValueProbDistribution" in run.table \
        else 0.0
    blocks = model_blocks(model, names, dimensionality=3, tau2_fudge=run.opts.tau2_fudge,
                          acc_rot=getattr(sampling, "fine_angular_step", 0.0),
                          acc_trans_angst=getattr(sampling, "fine_offset_step", 0.0) * run.pixel_size,
                          avg_pmax=pmax, group_ids=run.group_ids,
                          extra_general={"rlnSymmetryGroup": run.opts.symmetry})
    write_star(d / f"run_it{it:03d}_model.star", blocks, run.provenance)
    write_particles(d / f"run_it{it:03d}_data.star", run.table, run.optics, run.provenance)


def write_final(run, iteration: int) -> None:
    d = Path(run.output_dir)
    names = {class_name(iteration, k): class_name(None, k) for k in range(run.opts.n_classes)}
    for src, dst in names.items():
        copy_final(d / src, d / dst)
    copy_final(d / f"run_it{iteration:03d}_model.star", d / "run_model.star", names)
    copy_final(d / f"run_it{iteration:03d}_data.star", d / "run_data.star")
    plot_classes(run, [d / name for name in names.values()], iteration)


def plot_classes(run, paths, iteration: int) -> None:
    """run_classes.png: the three central sections of each final class with its share of the particles; figures.json."""
    from spa.io.mrc import read_mrc
    from spa.plots import plot_map_slices, write_figures_index

    d = Path(run.output_dir)
    classes = run.table["rlnClassNumber"].to_numpy(np.int64) if "rlnClassNumber" in run.table else np.ones(0, int)
    counts = np.bincount(classes, minlength=len(paths) + 1)[1:]
    total = max(int(counts.sum()), 1)
    volumes = [read_mrc(p)[0] for p in paths]
    labels = [f"class {k + 1}: {100 * counts[k] / total:.0f} %" for k in range(len(paths))]
    plot_map_slices(d / "run_classes.png", volumes, labels,
                    title=f"class3d: {len(paths)} classes, {total} particles, iteration {iteration}")
    write_figures_index(d, [{
        "file": "run_classes.png", "title": f"3D classes ({len(paths)}) of {total} particles",
        "caption": "Central sections (XY, XZ, YZ) of each 3D class after the last iteration, with its share of the "
                   "particles. Classes that differ show different conformations or compositions; a class of "
                   "noise or a broken molecule collects the particles that fit no good class."}])
