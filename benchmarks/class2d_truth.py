"""2D class averages and in-plane angles of a class2d run against a simulation's truth.

    python benchmarks/class2d_truth.py --class2d-dir C2D --sim SIM_DIR [--min-particles 30]

``SIM_DIR`` is the ``spa simulate --kind particles`` output the run classified
(its ``truth/particles.star`` rows in the same order as the run's, and
``truth/class001.mrc``).  Per class, over its true particles (junk left out):

* the **dominant true view**: the projection direction with the most class
  members within 10° of it; ``view_fraction`` = that share of the class;
* ``corr``: the best Pearson correlation inside the mask between the class
  average and the clean (CTF-free) projection of the true map in that
  direction, over in-plane rotations (1°) and shifts (±4 px), both low-passed
  to the class's estimated resolution (the average cannot hold more);
  ``corr_nyquist`` the same without the low-pass;
* **in-plane angle error** of the particles within 10° of the dominant
  direction: α_i, the in-plane rotation that best takes the dominant view to
  particle i's true orientation (the z-rotation nearest to R_i·R_0ᵀ), against
  its assigned rlnAnglePsi; the class's own frame rotation (circular mean of
  ψ_i − α_i) removed, the error is the rest.

Issue 3's criteria: corr ≥ 0.9 for each class; in-plane error small (the
distribution is reported: median, 90th percentile, fraction within 6°).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from spa.class2d.synthetic import rotate_shift
from spa.em.projector import Projector
from spa.fourier import lowpass, real_radius, soft_circular_mask
from spa.geometry.euler import euler_to_matrix
from spa.io.mrc import read_mrc
from spa.io.star import read_star


def wrap(deg):
    return (np.asarray(deg) + 180.0) % 360.0 - 180.0


def inplane_angle(r_particle, r_view):
    """Degrees of the z-rotation nearest to R_i·R_0ᵀ (RELION's Rz(ψ) form [[c, s], [−s, c]])."""
    m = np.einsum("nij,kj->nik", r_particle, r_view)
    return np.rad2deg(np.arctan2(m[:, 0, 1] - m[:, 1, 0], m[:, 0, 0] + m[:, 1, 1]))


def best_correlation(avg, proj, radius, max_shift=4, step=1.0):
    """Best Pearson correlation inside a circle over in-plane rotations of ``proj`` and shifts."""
    box = avg.shape[-1]
    inside = real_radius(box, 2) <= radius
    a = np.where(inside, avg - avg[inside].mean(), 0.0)
    a /= np.sqrt((a * a).sum())
    fa = np.conj(np.fft.rfft2(a))
    best = -1.0
    for psi in np.arange(0.0, 360.0, step):
        p = rotate_shift(proj, psi, (0.0, 0.0)).astype(np.float64)
        p = np.where(inside, p - p[inside].mean(), 0.0)
        p /= max(np.sqrt((p * p).sum()), 1e-30)
        cc = np.fft.irfft2(np.fft.rfft2(p) * fa, s=(box, box))
        near = np.r_[0 : max_shift + 1, box - max_shift : box]
        best = max(best, float(cc[np.ix_(near, near)].max()))
    return best


def compare(class2d_dir, sim_dir, min_particles=30, view_radius_deg=10.0, classes=None):
    """(per-class table, in-plane errors (deg) of the particles near their class's dominant view).

    ``classes``: 1-based class numbers to include (default all with ≥ ``min_particles`` true particles).
    """
    c2d, sim = Path(class2d_dir), Path(sim_dir)
    data = read_star(c2d / "run_data.star")["particles"]
    truth = read_star(sim / "truth" / "particles.star")["particles"]
    model = read_star(c2d / "run_model.star")["model_classes"]
    averages, px = read_mrc(c2d / "run_classes.mrcs")
    averages = averages.reshape(-1, averages.shape[-2], averages.shape[-1]).astype(np.float64)
    volume, _ = read_mrc(sim / "truth" / "class001.mrc")
    box = averages.shape[-1]
    projector = Projector(volume.astype(np.float32))
    radius = 0.45 * box
    good = truth["rlnSpaJunkKind"].to_numpy() == 0 if "rlnSpaJunkKind" in truth else np.ones(len(truth), bool)
    r_true = euler_to_matrix(truth["rlnAngleRot"], truth["rlnAngleTilt"], truth["rlnAnglePsi"])
    direction = r_true[:, 2, :]  # projection direction: the third row of A
    cls = data["rlnClassNumber"].to_numpy()
    psi = data["rlnAnglePsi"].to_numpy()
    rows, errors = [], []
    cos_r = np.cos(np.deg2rad(view_radius_deg))
    for k in range(1, len(averages) + 1):
        members = np.flatnonzero((cls == k) & good)
        if len(members) < min_particles or (classes is not None and k not in classes):
            continue
        d = direction[members]
        near = d @ d.T >= cos_r
        centre = members[int(np.argmax(near.sum(axis=1)))]
        in_view = members[direction[members] @ direction[centre] >= cos_r]
        r0 = euler_to_matrix(truth["rlnAngleRot"][centre], truth["rlnAngleTilt"][centre], 0.0)
        proj = np.asarray(projector.project_images(r0[None]))[0].astype(np.float64)
        res = float(model["rlnEstimatedResolution"].iloc[k - 1])
        mask = soft_circular_mask(box, radius, 3.0)
        corr = best_correlation(lowpass(averages[k - 1], px, res) * mask, lowpass(proj, px, res) * mask, radius)
        corr_ny = best_correlation(averages[k - 1] * mask, proj * mask, radius)
        alpha = inplane_angle(r_true[in_view], r0)
        delta = np.deg2rad(psi[in_view] - alpha)
        frame = np.angle(np.mean(np.exp(1j * delta)))
        err = np.abs(wrap(np.rad2deg(delta - frame)))
        errors.append(err)
        rows.append({"class": k, "particles": int((cls == k).sum()), "true_particles": len(members),
                     "view_fraction": len(in_view) / len(members), "resolution": res, "corr": corr,
                     "corr_nyquist": corr_ny, "inplane_median": float(np.median(err)),
                     "inplane_p90": float(np.percentile(err, 90))})
    err = np.concatenate(errors) if errors else np.zeros(0)
    return pd.DataFrame(rows), err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--class2d-dir", required=True)
    ap.add_argument("--sim", required=True)
    ap.add_argument("--min-particles", type=int, default=30)
    ap.add_argument("--select-dir", default=None, help="only the classes this `spa select` kept")
    a = ap.parse_args()
    kept = None
    if a.select_dir:
        ca = read_star(Path(a.select_dir) / "class_averages.star")["model_classes"]
        kept = set(ca["rlnClassNumber"][ca["rlnSelected"] == 1].astype(int))
    table, err = compare(a.class2d_dir, a.sim, a.min_particles, classes=kept)
    pd.set_option("display.width", 160)
    print(table.round(3).to_string(index=False))
    print(f"classes with corr ≥ 0.9: {(table['corr'] >= 0.9).sum()} of {len(table)} (min {table['corr'].min():.3f}, "
          f"median {table['corr'].median():.3f})")
    print(f"in-plane error of {len(err)} particles within 10° of their class's dominant view: median "
          f"{np.median(err):.1f}°, 90th percentile {np.percentile(err, 90):.1f}°, within 6° {np.mean(err <= 6):.1%}")


if __name__ == "__main__":
    main()
