"""Files a 2D classification writes, named and laid out as RELION's Class2D job writes them.

* ``run_itNNN_classes.mrcs``: class averages (K, B, B), real space, Å/px in the header;
* ``run_itNNN_model.star``: ``data_model_general``, ``data_model_classes``
  (rlnReferenceImage, rlnClassDistribution, rlnAccuracyRotations,
  rlnAccuracyTranslationsAngst, rlnEstimatedResolution, …),
  ``data_model_class_N`` (per shell: rlnSpectralIndex, rlnResolution,
  rlnAngstromResolution, rlnSsnrMap, rlnReferenceTau2), and
  ``data_model_optics_group_N`` (rlnSpectralIndex, rlnResolution, rlnSigma2Noise);
* ``run_itNNN_data.star``: the particles with rlnClassNumber, rlnAnglePsi,
  rlnOriginXAngst/YAngst, rlnMaxValueProbDistribution,
  rlnNrOfSignificantSamples, rlnLogLikeliContribution, and two of our own:
  rlnSpaSignalZ (the whitened matched-filter score of the best pose; in the
  last iteration against the other random half's averages) and, in the last
  iteration, rlnSpaNoisePValue (the fraction of noise decoys that match as
  well; :mod:`spa.em.decoys`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spa.em.model import MlModel
from spa.em.outputs import copy_final, model_blocks
from spa.io.mrc import write_mrcs
from spa.io.star import write_particles, write_star


def names(output_dir, iteration: int | None, rootname: str = "run") -> dict:
    d = Path(output_dir)
    it = "" if iteration is None else f"_it{iteration:03d}"
    return {k: d / f"{rootname}{it}_{k}.{ext}" for k, ext in (("classes", "mrcs"), ("model", "star"),
                                                               ("data", "star"))}


def particles_table(table: pd.DataFrame, results: dict, psi_deg: np.ndarray, pixel_size: float) -> pd.DataFrame:
    """The input rows with this iteration's class, ψ, offsets and posterior statistics."""
    out = table.copy()
    out["rlnClassNumber"] = results["class"].astype(np.int64) + 1
    out["rlnAnglePsi"] = np.asarray(psi_deg, np.float64)
    out["rlnOriginXAngst"] = results["offset"][:, 0].astype(np.float64) * pixel_size
    out["rlnOriginYAngst"] = results["offset"][:, 1].astype(np.float64) * pixel_size
    out["rlnMaxValueProbDistribution"] = results["max_prob"].astype(np.float64)
    out["rlnNrOfSignificantSamples"] = results["n_significant"].astype(np.int64)
    out["rlnLogLikeliContribution"] = results["loglike"].astype(np.float64)
    if "signal_z" in results:
        out["rlnSpaSignalZ"] = results["signal_z"].astype(np.float64)
    if "noise_pvalue" in results:
        out["rlnSpaNoisePValue"] = results["noise_pvalue"].astype(np.float64)
    if "rlnGroupNumber" not in out:
        out["rlnGroupNumber"] = out["rlnOpticsGroup"] if "rlnOpticsGroup" in out else 1
    return out


def write_iteration(output_dir, iteration: int, classes: np.ndarray, model: MlModel, table: pd.DataFrame,
                    optics: pd.DataFrame, *, tau2_fudge: float, acc_rot: float, acc_trans_angst: float,
                    group_ids=None, provenance=None, rootname: str = "run") -> dict:
    """Write the three files of one iteration; returns their paths."""
    p = names(output_dir, iteration, rootname)
    write_mrcs(p["classes"], classes, model.pixel_size, provenance)
    avg_pmax = float(table["rlnMaxValueProbDistribution"].mean()) if len(table) else 0.0
    references = [f"{k + 1:06d}@{p['classes'].name}" for k in range(model.n_classes)]
    write_star(p["model"], model_blocks(model, references, dimensionality=2, tau2_fudge=tau2_fudge, acc_rot=acc_rot,
                                        acc_trans_angst=acc_trans_angst, avg_pmax=avg_pmax, group_ids=group_ids),
               provenance)
    write_particles(p["data"], table, optics, provenance)
    return p


def write_final(output_dir, iteration: int, rootname: str = "run") -> None:
    """Copy iteration ``iteration``'s files to the names without the iteration (run_classes.mrcs, …)."""
    src = names(output_dir, iteration, rootname)
    dst = names(output_dir, None, rootname)
    for key in src:
        copy_final(src[key], dst[key], {src["classes"].name: dst["classes"].name} if key == "model" else None)
