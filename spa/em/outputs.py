"""What every iterative stage writes the same way: the optics table and RELION's model STAR blocks.

``run_itNNN_model.star`` (RELION's MlModel): ``data_model_general``,
``data_model_classes`` (rlnReferenceImage, rlnClassDistribution,
rlnAccuracyRotations, rlnAccuracyTranslationsAngst, rlnEstimatedResolution,
…), ``data_model_class_N`` (per shell: rlnSpectralIndex, rlnResolution,
rlnAngstromResolution, rlnSsnrMap, rlnGoldStandardFsc, rlnReferenceTau2) and
``data_model_optics_group_N`` (rlnSpectralIndex, rlnResolution,
rlnSigma2Noise).  The stages' own modules name the files and write the maps
and particle tables.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from spa.em.model import MlModel
from spa.fourier import shell_resolution
from spa.io.atomic import atomic_path

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


def model_blocks(model: MlModel, references: list[str], *, dimensionality: int, tau2_fudge: float, acc_rot: float,
                 acc_trans_angst: float, avg_pmax: float, group_ids, fsc=None, extra_general: dict | None = None
                 ) -> dict:
    """The blocks of a model STAR file.

    ``references``: rlnReferenceImage per class (``000001@classes.mrcs`` for 2D,
    a map file per class for 3D); ``fsc`` (shells): rlnGoldStandardFsc of every
    class (zeros when None); ``extra_general``: entries added to model_general.
    """
    k = model.n_classes
    box, px = model.box, model.pixel_size
    nsh = box // 2 + 1
    general = {
        "rlnReferenceDimensionality": int(dimensionality), "rlnDataDimensionality": 2, "rlnOriginalImageSize": box,
        "rlnCurrentResolution": float(box * px / max(int(np.max(model.resolution_shell)), 1)),
        "rlnCurrentImageSize": int(min(box, 2 * model.current_shells)), "rlnPaddingFactor": 2.0,
        "rlnIsHelix": 0, "rlnFourierSpaceInterpolator": 1, "rlnMinRadiusNnInterpolation": 10,
        "rlnPixelSize": px, "rlnNrClasses": k, "rlnNrBodies": 1, "rlnNrGroups": model.n_groups,
        "rlnNrOpticsGroups": model.n_groups,
        "rlnTau2FudgeFactor": tau2_fudge, "rlnNormCorrectionAverage": 1.0,
        "rlnSigmaOffsetsAngst": model.sigma_offset_px * px, "rlnOrientationalPriorMode": 0,
        "rlnSigmaPriorRotAngle": 0.0, "rlnSigmaPriorTiltAngle": 0.0, "rlnSigmaPriorPsiAngle": 0.0,
        "rlnLogLikelihood": model.loglike, "rlnAveragePmax": avg_pmax,
    }
    general.update(extra_general or {})
    blocks = {
        "model_general": general,
        "model_classes": pd.DataFrame({
            "rlnReferenceImage": list(references),
            "rlnClassDistribution": model.pdf_class,
            "rlnAccuracyRotations": np.full(k, acc_rot),
            "rlnAccuracyTranslationsAngst": np.full(k, acc_trans_angst),
            "rlnEstimatedResolution": model.resolution_angstrom(),
            "rlnOverallFourierCompleteness": np.ones(k),
            "rlnClassPriorOffsetX": np.zeros(k), "rlnClassPriorOffsetY": np.zeros(k),
        }),
    }
    idx = np.arange(nsh)
    inv_res = idx / (box * px)
    ang = shell_resolution(box, px)
    ang = np.where(np.isfinite(ang), ang, 999.0)
    gold = np.zeros(nsh) if fsc is None else np.asarray(fsc, np.float64)[:nsh]
    for c in range(k):
        blocks[f"model_class_{c + 1}"] = pd.DataFrame({
            "rlnSpectralIndex": idx, "rlnResolution": inv_res, "rlnAngstromResolution": ang,
            "rlnSsnrMap": model.data_vs_prior[c], "rlnGoldStandardFsc": gold,
            "rlnFourierCompleteness": np.ones(nsh), "rlnReferenceTau2": model.tau2[c],
        })
    for g in range(model.n_groups):
        gid = int(group_ids[g]) if group_ids is not None and g < len(group_ids) else g + 1
        blocks[f"model_optics_group_{gid}"] = pd.DataFrame({
            "rlnSpectralIndex": idx, "rlnResolution": inv_res, "rlnSigma2Noise": model.sigma2_noise[g],
        })
    return blocks


def copy_final(src, dst, replace: dict | None = None) -> None:
    """Copy an iteration's file to its final name (atomically); in a text file, ``replace`` old → new names."""
    with atomic_path(dst) as tmp:
        if replace:
            text = Path(src).read_text()
            for old, new in replace.items():
                text = text.replace(old, new)
            Path(tmp).write_text(text)
        else:
            shutil.copyfile(src, tmp)
