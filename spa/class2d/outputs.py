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

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from spa.em.model import MlModel
from spa.fourier import shell_resolution
from spa.io.atomic import atomic_path
from spa.io.mrc import write_mrcs
from spa.io.star import write_particles, write_star

OPTICS_COLUMNS = ("rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality",
                  "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMicrographOriginalPixelSize",
                  "rlnCtfDataAreCtfPremultiplied")


def optics_from_table(table: pd.DataFrame, pixel_size: float, box: int) -> pd.DataFrame:
    """A data_optics table from optics columns merged into particle rows (one row per group)."""
    if "rlnOpticsGroup" not in table:
        table = table.assign(rlnOpticsGroup=1)
    cols = [c for c in OPTICS_COLUMNS if c in table]
    optics = table[cols].drop_duplicates("rlnOpticsGroup").reset_index(drop=True)
    if "rlnImagePixelSize" not in optics:
        optics["rlnImagePixelSize"] = pixel_size
    if "rlnImageSize" not in optics:
        optics["rlnImageSize"] = box
    if "rlnOpticsGroupName" not in optics:
        optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]])
    return optics


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


def model_blocks(model: MlModel, classes_file: str, tau2_fudge: float, acc_rot: float, acc_trans_angst: float,
                 avg_pmax: float, group_ids) -> dict:
    """The blocks of run_itNNN_model.star."""
    k = model.n_classes
    box, px = model.box, model.pixel_size
    nsh = box // 2 + 1
    res = model.resolution_angstrom()
    blocks = {
        "model_general": {
            "rlnReferenceDimensionality": 2, "rlnDataDimensionality": 2, "rlnOriginalImageSize": box,
            "rlnCurrentResolution": float(box * px / max(int(np.max(model.resolution_shell)), 1)),
            "rlnCurrentImageSize": int(min(box, 2 * model.current_shells)), "rlnPaddingFactor": 2.0,
            "rlnIsHelix": 0, "rlnFourierSpaceInterpolator": 1, "rlnMinRadiusNnInterpolation": 10,
            "rlnPixelSize": px, "rlnNrClasses": k, "rlnNrBodies": 1, "rlnNrGroups": model.n_groups,
            "rlnNrOpticsGroups": model.n_groups,
            "rlnTau2FudgeFactor": tau2_fudge, "rlnNormCorrectionAverage": 1.0,
            "rlnSigmaOffsetsAngst": model.sigma_offset_px * px, "rlnOrientationalPriorMode": 0,
            "rlnSigmaPriorRotAngle": 0.0, "rlnSigmaPriorTiltAngle": 0.0, "rlnSigmaPriorPsiAngle": 0.0,
            "rlnLogLikelihood": model.loglike, "rlnAveragePmax": avg_pmax,
        },
        "model_classes": pd.DataFrame({
            "rlnReferenceImage": [f"{i + 1:06d}@{classes_file}" for i in range(k)],
            "rlnClassDistribution": model.pdf_class,
            "rlnAccuracyRotations": np.full(k, acc_rot),
            "rlnAccuracyTranslationsAngst": np.full(k, acc_trans_angst),
            "rlnEstimatedResolution": res,
            "rlnOverallFourierCompleteness": np.ones(k),
            "rlnClassPriorOffsetX": np.zeros(k), "rlnClassPriorOffsetY": np.zeros(k),
        }),
    }
    idx = np.arange(nsh)
    with np.errstate(divide="ignore"):
        inv_res = idx / (box * px)
    ang = shell_resolution(box, px)
    ang = np.where(np.isfinite(ang), ang, 999.0)
    for c in range(k):
        blocks[f"model_class_{c + 1}"] = pd.DataFrame({
            "rlnSpectralIndex": idx, "rlnResolution": inv_res, "rlnAngstromResolution": ang,
            "rlnSsnrMap": model.data_vs_prior[c], "rlnGoldStandardFsc": np.zeros(nsh),
            "rlnFourierCompleteness": np.ones(nsh), "rlnReferenceTau2": model.tau2[c],
        })
    for g in range(model.n_groups):
        gid = int(group_ids[g]) if group_ids is not None and g < len(group_ids) else g + 1
        blocks[f"model_optics_group_{gid}"] = pd.DataFrame({
            "rlnSpectralIndex": idx, "rlnResolution": inv_res, "rlnSigma2Noise": model.sigma2_noise[g],
        })
    return blocks


def write_iteration(output_dir, iteration: int, classes: np.ndarray, model: MlModel, table: pd.DataFrame,
                    optics: pd.DataFrame, *, tau2_fudge: float, acc_rot: float, acc_trans_angst: float,
                    group_ids=None, provenance=None, rootname: str = "run") -> dict:
    """Write the three files of one iteration; returns their paths."""
    p = names(output_dir, iteration, rootname)
    write_mrcs(p["classes"], classes, model.pixel_size, provenance)
    avg_pmax = float(table["rlnMaxValueProbDistribution"].mean()) if len(table) else 0.0
    write_star(p["model"], model_blocks(model, p["classes"].name, tau2_fudge, acc_rot, acc_trans_angst, avg_pmax,
                                        group_ids), provenance)
    write_particles(p["data"], table, optics, provenance)
    return p


def write_final(output_dir, iteration: int, rootname: str = "run") -> None:
    """Copy iteration ``iteration``'s files to the names without the iteration (run_classes.mrcs, …)."""
    src = names(output_dir, iteration, rootname)
    dst = names(output_dir, None, rootname)
    for key in src:
        if key == "model":
            text = src[key].read_text().replace(src["classes"].name, dst["classes"].name)
            with atomic_path(dst[key]) as tmp:
                Path(tmp).write_text(text)
        else:
            with atomic_path(dst[key]) as tmp:
                shutil.copyfile(src[key], tmp)
