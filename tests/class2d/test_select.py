"""Class selection (by hand and automatic), recentring, duplicate removal, and the class2d/select commands."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

import pytest

from spa.class2d.recentre import centre_of_mass, recentre, remove_duplicates
from spa.class2d.select import SelectionRules, auto_select, noise_like, parse_class_list, rejection_reasons
from spa.class2d.synthetic import make_particles, make_views, rotate_shift
from spa.cli import main as spa_main
from spa.fourier import shift_image
from spa.io.mrc import write_mrcs
from spa.io.star import read_particles, read_star, write_particles
from tests.conftest import listed_figures

PX = 3.0


def _blob(box, cx, cy, s=2.0):
    c = np.arange(box) - box // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s)).astype(np.float32)


@pytest.mark.parametrize("psi", [0.0, 30.0, 135.0, 250.0])
def test_recentre_moves_class_centre_of_mass_to_the_box_centre(psi):
    box = 40
    cls_img = _blob(box, 4.0, -3.0)
    origin = np.array([1.5, -0.5])  # px, RELION sign
    image = rotate_shift(cls_img, psi, origin)  # a particle of this class at (ψ, origin)
    table = pd.DataFrame({"rlnClassNumber": [1], "rlnAnglePsi": [psi], "rlnOriginXAngst": [origin[0] * PX],
                          "rlnOriginYAngst": [origin[1] * PX]})
    new = recentre(table, cls_img[None], PX)
    o = np.array([new["rlnOriginXAngst"][0], new["rlnOriginYAngst"][0]]) / PX
    centred = shift_image(image, o[0], o[1])  # translating by +origin centres the particle
    np.testing.assert_allclose(centre_of_mass(centred[None])[0], 0.0, atol=0.15)


def test_remove_duplicates_keeps_the_better_of_close_pairs():
    t = pd.DataFrame({
        "rlnMicrographName": ["m1", "m1", "m1", "m2", "m2"],
        "rlnCoordinateX": [100.0, 104.0, 300.0, 100.0, 103.0],
        "rlnCoordinateY": [100.0, 100.0, 300.0, 100.0, 100.0],
        "rlnOriginXAngst": [0.0, 0.0, 0.0, 0.0, 30.0],  # the last one's centre moves 10 px away
        "rlnOriginYAngst": 0.0,
        "rlnMaxValueProbDistribution": [0.2, 0.5, 0.3, 0.4, 0.1],
        "rlnMicrographOriginalPixelSize": PX,
    })
    kept, removed, note = remove_duplicates(t, min_distance=20.0, pixel_size=PX)  # 20 Å = 6.7 px
    assert removed == 1 and note == ""
    assert kept["rlnCoordinateX"].tolist() == [104.0, 300.0, 100.0, 103.0]
    no_coords, removed, note = remove_duplicates(t.drop(columns=["rlnCoordinateX"]), 20.0, PX)
    assert removed == 0 and "not removed" in note


def test_parse_class_list():
    assert parse_class_list("1,4,7-9", 10) == [1, 4, 7, 8, 9]
    with pytest.raises(ValueError):
        parse_class_list("0,3", 5)


def _write_dataset(tmp_path, n, junk, seed=2):
    views = make_views(3, 48, PX, 110, 1)
    images, table = make_particles(views, n, PX, snr=0.1, max_shift_px=2.0, rng=seed, junk_fraction=junk)
    write_mrcs(tmp_path / "stack.mrcs", images, PX)
    table["rlnImageName"] = [f"{i + 1:06d}@stack.mrcs" for i in range(n)]
    table["rlnMicrographName"] = [f"mic{i // 50:03d}.mrc" for i in range(n)]
    table["rlnCoordinateX"] = 200.0 + 60.0 * (np.arange(n) % 50)
    table["rlnCoordinateY"] = 500.0
    truth = table[["trueClass"]].copy()
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnImagePixelSize": [PX],
                           "rlnImageSize": [48], "rlnImageDimensionality": [2], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    parts = table.drop(columns=["trueClass", "truePsi", "trueOriginX", "trueOriginY"])
    write_particles(tmp_path / "particles.star", parts, optics)
    return truth


def test_class2d_and_select_commands_by_hand(tmp_path):
    _write_dataset(tmp_path, 240, 0.0)
    rc = spa_main(["class2d", "--particles", str(tmp_path / "particles.star"), "--classes", "3", "--iter", "2",
                   "--particle-diameter", "120", "--offset-range", "3", "--output-dir", str(tmp_path / "c2d")])
    assert rc == 0
    assert (tmp_path / "c2d" / "run_classes.png").stat().st_size > 1000
    assert listed_figures(tmp_path / "c2d") == ["run_classes.png"]
    parts, _ = read_particles(tmp_path / "c2d" / "run_data.star")
    assert parts["rlnClassNumber"].between(1, 3).all()
    rc = spa_main(["select", "--class2d-dir", str(tmp_path / "c2d"), "--classes", "1,3", "--output-dir",
                   str(tmp_path / "sel"), "--remove-duplicates", "30"])
    assert rc == 0
    sel, _ = read_particles(tmp_path / "sel" / "particles.star")
    assert set(sel["rlnClassNumber"].unique()) <= {1, 3}
    assert len(sel) == parts["rlnClassNumber"].isin([1, 3]).sum()  # coordinates 60 px apart: no duplicates
    ca = read_star(tmp_path / "sel" / "class_averages.star")["model_classes"]
    assert ca["rlnSelected"].tolist() == [1, 0, 1]
    assert listed_figures(tmp_path / "sel") == ["selected_classes.png"]
    report = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert report["particles_kept"] == len(sel) and report["classes_kept"] == [1, 3]
    assert [d["class"] for d in report["classes_dropped"]] == [2]
    assert "not among" in report["classes_dropped"][0]["reason"]
    assert report["particles_in_dropped_classes"] == (parts["rlnClassNumber"] == 2).sum()
    # bad input: one line, non-zero exit
    assert spa_main(["select", "--class2d-dir", str(tmp_path / "nothing"), "--auto", "--output-dir",
                     str(tmp_path / "x")]) == 1


@pytest.mark.slow
def test_auto_selection_rejects_junk(tmp_path):
    truth = _write_dataset(tmp_path, 1000, 0.2, seed=5)
    rc = spa_main(["class2d", "--particles", str(tmp_path / "particles.star"), "--classes", "6", "--iter", "10",
                   "--particle-diameter", "120", "--offset-range", "3", "--output-dir", str(tmp_path / "c2d")])
    assert rc == 0
    rc = spa_main(["select", "--class2d-dir", str(tmp_path / "c2d"), "--auto", "--output-dir", str(tmp_path / "sel")])
    assert rc == 0
    sel, _ = read_particles(tmp_path / "sel" / "particles.star")
    idx = sel["rlnImageName"].str.split("@").str[0].astype(int).to_numpy() - 1
    kept = np.zeros(len(truth), bool)
    kept[idx] = True
    junk = truth["trueClass"].to_numpy() < 0
    assert (~kept[junk]).mean() >= 0.9  # ≥ 90 % of junk removed
    assert kept[~junk].mean() >= 0.9  # ≥ 90 % of good particles kept
    # the noise p-values by themselves: particles match better than noise decoys, noise images do not
    # (nominally 5 % of noise below 0.05; measured up to ~2× that after 10 iterations of alignment)
    p = read_star(tmp_path / "c2d" / "run_data.star")["particles"]["rlnSpaNoisePValue"].to_numpy()
    assert (p[~junk] <= 0.05).mean() >= 0.95
    assert (p[junk] > 0.05).mean() >= 0.8


def test_noise_like_particles_are_dropped_only_above_the_threshold():
    t = pd.DataFrame({"rlnClassNumber": [1, 1, 2], "rlnSpaNoisePValue": [0.001, 0.3, 0.06]})
    assert noise_like(t, SelectionRules(max_noise_pvalue=0.05)).tolist() == [False, True, True]
    assert noise_like(t, SelectionRules(max_noise_pvalue=0.1)).tolist() == [False, True, False]
    assert not noise_like(t, SelectionRules(max_noise_pvalue=1.0)).any()
    assert not noise_like(t.drop(columns=["rlnSpaNoisePValue"]), SelectionRules()).any()  # older class2d runs


def test_select_thresholds_on_the_command_line(tmp_path):
    _write_dataset(tmp_path, 120, 0.0)
    assert spa_main(["class2d", "--particles", str(tmp_path / "particles.star"), "--classes", "2", "--iter", "1",
                     "--particle-diameter", "120", "--output-dir", str(tmp_path / "c2d")]) == 0
    p = read_star(tmp_path / "c2d" / "run_data.star")["particles"]["rlnSpaNoisePValue"].to_numpy()
    cut = float(np.median(p))
    assert spa_main(["select", "--class2d-dir", str(tmp_path / "c2d"), "--classes", "1,2", "--threshold",
                     f"max_noise_pvalue={cut}", "--output-dir", str(tmp_path / "sel")]) == 0
    sel, _ = read_particles(tmp_path / "sel" / "particles.star")
    assert len(sel) == (p <= cut).sum()
    ca = read_star(tmp_path / "sel" / "class_averages.star")["model_classes"]
    assert ca["spaNoiseLikeCount"].sum() == (p > cut).sum()
    # p ≥ 1/1001 always: a threshold below keeps nothing, which is an error, not an empty file
    assert spa_main(["select", "--class2d-dir", str(tmp_path / "c2d"), "--classes", "1,2", "--threshold",
                     "max_noise_pvalue=1e-9", "--output-dir", str(tmp_path / "none")]) == 1
    assert not (tmp_path / "none" / "particles.star").exists()
    for bad in ("max_noise_pvalue", "no_such_rule=1", "min_fraction=abc"):
        assert spa_main(["select", "--class2d-dir", str(tmp_path / "c2d"), "--auto", "--threshold", bad,
                         "--output-dir", str(tmp_path / "bad")]) == 1
    assert not (tmp_path / "bad").exists()
    from spa.commands.select import _parse_thresholds

    # switches as the workflow writes them (Python's str of a YAML boolean)
    assert _parse_thresholds(["residual_log_scores=False", "max_edge_pvalue=0.01"]) == {
        "residual_log_scores": False, "max_edge_pvalue": 0.01}
    assert _parse_thresholds(["residual_log_scores=true"]) == {"residual_log_scores": True}


def test_per_particle_ssnr_rejects_a_large_noise_class_and_keeps_a_small_good_one():
    """Class SSNR grows with size: judged per particle, a 130-image noise class (SSNR 30) goes and a
    70-image good class (SSNR 60) stays, while contrast and resolution alone cannot tell them apart."""
    n = np.array([400, 450, 380, 70, 130])
    ssnr = np.array([340.0, 420.0, 330.0, 60.0, 30.0])
    feats = pd.DataFrame({"rlnClassNumber": np.arange(1, 6), "fraction": n / n.sum(), "n_particles": n,
                          "resolution": [14.0, 14.0, 16.0, 25.0, 25.0], "ssnr": ssnr,
                          "contrast": [12.0, 13.0, 11.0, 4.5, 4.0], "concentration": 0.9,
                          "particle_ssnr": ssnr / n})
    keep = auto_select(feats, SelectionRules())
    assert keep.tolist() == [True, True, True, True, False]
    # the reasons the report shows: one for the dropped class, none for the kept ones
    reasons = rejection_reasons(feats, SelectionRules())
    assert [r == "" for r in reasons] == keep.tolist() and reasons[4].startswith("SSNR per particle")
    strict = SelectionRules(min_fraction=0.3, max_resolution=20)
    reasons = rejection_reasons(feats, strict)
    assert [r == "" for r in reasons] == auto_select(feats, strict).tolist()
    assert "resolution 25 Å > 20 Å" in reasons[3] and "% of the particles < 30 %" in reasons[3]
    assert auto_select(feats, SelectionRules(min_particle_ssnr_ratio=0.0)).tolist() == [True] * 5


def test_continue_after_a_kill_mid_run_gives_the_uninterrupted_result(tmp_path):
    """`spa class2d` killed (SIGKILL) while iterating, then rerun with --continue: the same final files."""
    import signal
    import subprocess
    import sys
    import time

    _write_dataset(tmp_path, 600, 0.1)
    args = ["class2d", "--particles", str(tmp_path / "particles.star"), "--classes", "3", "--iter", "6",
            "--particle-diameter", "120", "--offset-range", "3", "--seed", "3"]
    assert spa_main(args + ["--output-dir", str(tmp_path / "full")]) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "spa.cli", *args, "--output-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "run_it001_optimiser.npz").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "run_classes.mrcs").exists(), "the run finished before it could be killed"
    assert spa_main(args + ["--output-dir", str(out), "--continue"]) == 0
    full, _ = read_particles(tmp_path / "full" / "run_data.star")
    cont, _ = read_particles(out / "run_data.star")
    for col in ("rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnSpaNoisePValue"):
        assert np.array_equal(full[col].to_numpy(), cont[col].to_numpy()), col
    from spa.io.mrc import read_mrc

    assert np.array_equal(read_mrc(tmp_path / "full" / "run_classes.mrcs")[0], read_mrc(out / "run_classes.mrcs")[0])


@pytest.mark.slow
def test_auto_selection_removes_pure_noise_at_snr_005(tmp_path):
    """`spa simulate` particles (3D projections, CTF, box 64) at SNR 0.05 with 20 % pure-noise images:
    class2d + select --auto remove ≥ 90 % of the noise and keep ≥ 90 % of the particles; the class
    rules alone leave the noise images that sit inside good classes (measured: 80–87 % removed)."""
    sim, c2d = tmp_path / "sim", tmp_path / "c2d"
    assert spa_main(["simulate", "--preset", "demo", "--n-particles", "2000", "--snr", "0.05", "--junk-fraction",
                     "0.2", "--junk-kinds", "noise", "--output-dir", str(sim), "--seed", "2"]) == 0
    assert spa_main(["class2d", "--particles", str(sim / "particles.star"), "--classes", "8", "--iter", "15",
                     "--output-dir", str(c2d), "--seed", "2"]) == 0
    noise = read_star(sim / "truth" / "particles.star")["particles"]["rlnSpaJunkKind"].to_numpy() == 1
    names = read_star(c2d / "run_data.star")["particles"]["rlnImageName"].to_list()
    removed = {}
    for label, extra in (("classes", ["--threshold", "max_noise_pvalue=1"]), ("particles", [])):
        assert spa_main(["select", "--class2d-dir", str(c2d), "--auto", "--output-dir", str(tmp_path / label)]
                        + extra) == 0
        kept = np.isin(names, read_star(tmp_path / label / "particles.star")["particles"]["rlnImageName"])
        removed[label] = (~kept[noise]).mean()
        good_kept = kept[~noise].mean()
    assert removed["particles"] >= 0.9, removed
    assert good_kept >= 0.9, good_kept
    assert removed["particles"] > removed["classes"], removed
