"""Files a refinement writes, named as RELION's Refine3D job writes them.

Per iteration: ``run_itNNN_half1_class001.mrc``, ``run_itNNN_half2_class001.mrc``,
``run_itNNN_half1_model.star``, ``run_itNNN_half2_model.star``, ``run_itNNN_data.star``.
Final: ``run_class001.mrc`` (both halves, to Nyquist), ``run_half1_class001_unfil.mrc``,
``run_half2_class001_unfil.mrc``, ``run_model.star`` (with rlnGoldStandardFsc),
``run_data.star``, ``run_fsc.png`` (listed in ``figures.json``).
"""

from __future__ import annotations

import numpy as np

from spa.em.outputs import model_blocks
from spa.em.fsc import resolution_at, resolution_text
from spa.io.mrc import write_mrc
from spa.io.star import write_particles, write_star
from spa.plots import plot_fsc, write_figures_index


def _general(run, res_a):
    s = run.schedule
    return {"rlnCurrentResolution": float(res_a), "rlnHealpixOrder": int(s.healpix_order),
            "rlnOffsetRange": float(s.offset_range), "rlnOffsetStep": float(s.offset_step),
            "rlnSymmetryGroup": run.opts.symmetry, "rlnFinalResolution": float(res_a)}


def write_iteration(run, models, refs, sampling) -> None:
    d = run.output_dir
    it = models[0].iteration
    res_a = resolution_at(run.fsc, 0.143, run.box, run.pixel_size)
    for h in (0, 1):
        name = f"run_it{it:03d}_half{h + 1}_class001.mrc"
        vol = np.asarray(refs[h].images[0], np.float32) if hasattr(refs[h].images, "shape") else refs[h].images[0]
        write_mrc(d / name, vol, run.pixel_size, provenance=run.provenance)
        blocks = model_blocks(models[h], [name], dimensionality=3, tau2_fudge=run.opts.tau2_fudge,
                              acc_rot=sampling.fine_angular_step,
                              acc_trans_angst=sampling.fine_offset_step * run.pixel_size,
                              avg_pmax=float(run.table["rlnMaxValueProbDistribution"].mean()),
                              group_ids=run.group_ids, fsc=run.fsc, extra_general=_general(run, res_a))
        write_star(d / f"run_it{it:03d}_half{h + 1}_model.star", blocks, run.provenance)
    write_particles(d / f"run_it{it:03d}_data.star", run.table, run.optics, run.provenance)


def write_final(run, models, halves, full, sampling) -> None:
    d = run.output_dir
    res_a = resolution_at(run.fsc, 0.143, run.box, run.pixel_size)
    write_mrc(d / "run_half1_class001_unfil.mrc", halves[0], run.pixel_size, provenance=run.provenance)
    write_mrc(d / "run_half2_class001_unfil.mrc", halves[1], run.pixel_size, provenance=run.provenance)
    blocks = model_blocks(models[0], ["run_class001.mrc"], dimensionality=3, tau2_fudge=run.opts.tau2_fudge,
                          acc_rot=sampling.fine_angular_step,
                          acc_trans_angst=sampling.fine_offset_step * run.pixel_size,
                          avg_pmax=float(run.table["rlnMaxValueProbDistribution"].mean()),
                          group_ids=run.group_ids, fsc=run.fsc, extra_general=_general(run, res_a))
    write_star(d / "run_model.star", blocks, run.provenance)
    write_particles(d / "run_data.star", run.table, run.optics, run.provenance)
    plot_fsc(d / "run_fsc.png", [(run.fsc, "gold-standard FSC (half maps)")], run.box, run.pixel_size)
    resolution = resolution_text(run.fsc, 0.143, run.box, run.pixel_size)
    write_figures_index(d, [{
        "file": "run_fsc.png", "title": f"Gold-standard FSC of the refinement: 0.143 at {resolution}",
        "caption": "Fourier shell correlation between the two independently refined half maps (no mask), against "
                   "spatial frequency (resolution in Å on the top axis); the resolution is read where it falls "
                   "below 0.143 (lower dashed line). A curve that never falls is limited by the pixel size "
                   "(≥ Nyquist)."}])
    write_mrc(d / "run_class001.mrc", full, run.pixel_size, provenance=run.provenance)
