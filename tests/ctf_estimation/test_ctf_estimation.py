"""CTF estimation against known truth: spa's simulated micrographs (astigmatic), hb_c2 (another simulator), the
consensus of the two estimators and its rejections."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spa.consensus.ctf import CtfRules, consensus_resolution, ctf_consensus
from spa.ctf import electron_wavelength
from spa.ctf_estimation.fit2d import CtfSearch, estimate_ctffind
from spa.ctf_estimation.zeros import estimate_zeros
from spa.io.mrc import read_mrc
from spa.io.star import read_star

HB = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "hb_c2"
SEARCH = CtfSearch(tile=256)


def _angle_error(a, b):
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


def _check(fit, truth_u, truth_v, truth_angle, tolerance=0.01):
    mean_fit, mean_truth = 0.5 * (fit.defocus_u + fit.defocus_v), 0.5 * (truth_u + truth_v)
    assert abs(mean_fit - mean_truth) < tolerance * mean_truth, (fit, truth_u, truth_v)
    if truth_u - truth_v > 400:
        assert _angle_error(fit.defocus_angle, truth_angle) < 5.0, (fit, truth_angle)
        assert abs(fit.astigmatism - (truth_u - truth_v)) < 0.25 * (truth_u - truth_v) + 100


@pytest.fixture(scope="module")
def astigmatic(tmp_path_factory):
    from spa.simulate.micrographs import MicrographSpec, simulate_micrographs

    out = tmp_path_factory.mktemp("astig")
    simulate_micrographs(out, MicrographSpec(n=2, size=768, pixel_size=1.2, diameter=100.0, astigmatism=2500.0,
                                             defocus_min=9000, defocus_max=20000, carbon_fraction=0.0,
                                             contaminants=0.0), seed=3)
    return out


@pytest.mark.parametrize("estimate", [estimate_ctffind, estimate_zeros])
def test_defocus_and_astigmatism_of_simulated_micrographs(astigmatic, estimate):
    truth = read_star(astigmatic / "truth" / "micrographs_ctf.star")["micrographs"]
    for row in truth.itertuples():
        image, pixel = read_mrc(astigmatic / row.rlnMicrographName)
        fit = estimate(image.squeeze(), pixel, 300.0, 2.7, 0.1, SEARCH)
        _check(fit, row.rlnDefocusU, row.rlnDefocusV, row.rlnDefocusAngle, tolerance=0.02)
        assert fit.max_resolution < 10.0


@pytest.mark.skipif(not HB.exists(), reason="../shared/testdata is absent")
@pytest.mark.parametrize("estimate", [estimate_ctffind, estimate_zeros])
def test_independent_micrographs_within_one_percent(estimate):
    truth = read_star(HB / "micrographs_truth.star")["micrographs"]
    for row in truth.itertuples():
        image, pixel = read_mrc(HB / row.rlnMicrographName)
        fit = estimate(image.squeeze(), pixel, 300.0, 2.7, 0.1, SEARCH)
        _check(fit, row.rlnDefocusU, row.rlnDefocusV, row.rlnDefocusAngle, tolerance=0.01)  # the README's 1 %


def test_consensus_resolution_matches_the_phase_difference():
    pixel, voltage = 1.0, 300.0
    assert consensus_resolution((15000, 15000, 0), (15000, 15000, 0), pixel, voltage, 2.7, 0.1) == pytest.approx(2.0)
    # defoci 500 Å apart: |Δχ| = π λ Δf s² reaches π/2 at s = 1/√(2 λ Δf)
    expected = np.sqrt(2 * electron_wavelength(voltage) * 500.0)
    got = consensus_resolution((15500, 15500, 0), (15000, 15000, 0), pixel, voltage, 2.7, 0.1)
    assert abs(got - expected) < 0.1 * expected


def test_consensus_rejects_disagreement_poor_fits_and_drift():
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnMicrographPixelSize": [1.0], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    a = pd.DataFrame({"rlnMicrographName": ["good", "wrong", "blank", "drifty"], "rlnOpticsGroup": 1,
                      "rlnDefocusU": [15100.0, 15100.0, 15100.0, 15100.0], "rlnDefocusV": 14900.0,
                      "rlnDefocusAngle": 30.0, "rlnCtfMaxResolution": [3.5, 3.5, 25.0, 3.5],
                      "rlnAccumMotionTotal": [5.0, 5.0, 5.0, 120.0]})
    b = a.copy()
    b.loc[1, ["rlnDefocusU", "rlnDefocusV"]] = [17100.0, 16900.0]  # B found another defocus
    table = ctf_consensus(a, b, optics, CtfRules())
    reasons = dict(zip(table.rlnMicrographName, table.rlnSpaRejectReason))
    assert reasons["good"] == ""
    assert "agree only to" in reasons["wrong"]
    assert "CTF fit only to 25.0" in reasons["blank"]
    assert "drift 120.0" in reasons["drifty"]


def test_ctf_and_consensus_commands(astigmatic, tmp_path):
    star = astigmatic / "micrographs.star"
    for method in ("ctffind", "zeros"):
        run = subprocess.run([sys.executable, "-m", "spa.cli", "ctf", "--micrographs", str(star), "--method", method,
                              "--tile", "256", "--output-dir", str(tmp_path / method)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        table = read_star(tmp_path / method / "micrographs_ctf.star")["micrographs"]
        assert {"rlnDefocusU", "rlnCtfFigureOfMerit", "rlnCtfMaxResolution"} <= set(table.columns)
    run = subprocess.run([sys.executable, "-m", "spa.cli", "consensus", "ctf", "--a",
                          str(tmp_path / "ctffind" / "micrographs_ctf.star"), "--b",
                          str(tmp_path / "zeros" / "micrographs_ctf.star"), "--output-dir", str(tmp_path / "c")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    kept = read_star(tmp_path / "c" / "micrographs_selected.star")["micrographs"]
    assert len(kept) == 2  # both estimators agree on both clean astigmatic micrographs
    assert (tmp_path / "ctffind" / "ctf_fit.png").stat().st_size > 0
