"""M-step: new references, noise spectra, priors and resolution from the E-step's sums.

Per class k and Fourier pixel j (Scheres 2012, eq. 13; RELION's MAP update):

    V_k(j) = Σ_i,φ Γ_iφ·C_ij·X_ij(φ)/σ²_ij ÷ [Σ_i,φ Γ_iφ·C²_ij/σ²_ij + 1/(T·τ²_k(j))]

(done by the reference model's ``reconstruct`` on its own grid), with τ²_k the
current reference's power per shell (classification), T = ``tau2_fudge``;
σ² per optics group and shell = Σ Γ|X − C·A|² / (2·pixels); class fractions
= Σ Γ per class / N; the offset prior width σ_offset² = Σ Γ|t|² / (2N);
per-class resolution = the last shell before SSNR (data_vs_prior) drops below
1; the next iteration's Fourier window extends that by ``incr_shells``
(RELION's incr_size, 10).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from spa.backend import backend_of
from spa.em.model import MlModel, WsumModel
from spa.em.noise import update_sigma2


def resolution_shells(data_vs_prior: np.ndarray, window_shells: int) -> np.ndarray:
    """Per class: the shell before the first shell ≥ 1 with SSNR < 1 (within the window)."""
    dvp = np.asarray(data_vs_prior, np.float64)
    k, nsh = dvp.shape
    out = np.zeros(k, np.int64)
    w = min(int(window_shells), nsh)
    for c in range(k):
        low = np.nonzero(dvp[c, 1:w] < 1.0)[0]
        out[c] = low[0] if low.size else w - 1
    return out


def next_window(resolution_shell: np.ndarray, max_shells: int, incr_shells: int = 10, min_shells: int = 8) -> int:
    """Fourier window (number of shells) for the next iteration: best class resolution + ``incr_shells``."""
    best = int(np.max(resolution_shell)) if len(resolution_shell) else 0
    return int(max(min(min_shells, max_shells), min(max_shells, best + 1 + incr_shells)))


def maximize(model: MlModel, wsum: WsumModel, refs, *, tau2_fudge: float, mask_radius_px: float | None = None,
             update_sigma2_noise: bool = True, min_class_fraction: float = 1e-6):
    """One M-step → (new MlModel (same iteration number), new references).

    ``refs`` is the ReferenceModel the E-step used (its power spectrum is τ²).
    """
    tau2 = np.asarray(backend_of(refs.power_spectrum()).to_numpy(refs.power_spectrum()), np.float64)
    new_refs, dvp = refs.reconstruct(wsum.sums, tau2, tau2_fudge, mask_radius_px=mask_radius_px,
                                     max_shell=model.current_shells - 1)
    dvp = np.asarray(backend_of(dvp).to_numpy(dvp), np.float64)
    sigma2 = update_sigma2(wsum.sigma2, wsum.sigma2_count, model.sigma2_noise) if update_sigma2_noise \
        else model.sigma2_noise
    cw = np.asarray(wsum.class_weight, np.float64)
    pdf = cw / max(cw.sum(), 1e-300)
    pdf = np.maximum(pdf, min_class_fraction)
    pdf = pdf / pdf.sum()
    n = max(int(wsum.n_images), 1)
    sigma_offset = float(np.sqrt(max(wsum.offset2, 0.0) / (2.0 * n)))
    res = resolution_shells(dvp, model.current_shells)
    new = replace(model, pdf_class=pdf, sigma2_noise=np.asarray(sigma2, np.float64), tau2=tau2,
                  data_vs_prior=dvp, sigma_offset_px=sigma_offset, resolution_shell=res,
                  loglike=float(wsum.loglike), extra=dict(model.extra))
    return new, new_refs
