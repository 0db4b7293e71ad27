"""Gold-standard auto-refinement on simulated particles with known poses."""

import os
import shutil

import numpy as np
import pytest

from spa.cli import main
from spa.em.fsc import fsc, resolution_at
from spa.geometry.distance import align_rotation_sets
from spa.geometry.euler import euler_to_matrix
from spa.io.mrc import read_mrc
from spa.io.star import read_particles, read_star
from tests.conftest import listed_figures

# tests/test_backend.py reruns test_writes_relion_named_outputs under the CuPy emulator (tests/fakegpu, ~13×
# slower than NumPy): there it checks that the CuPy path runs and writes every output, on less work
EMULATED = bool(os.environ.get("SPA_FAKEGPU"))
ARGS = ["--max-iter", "4", "--offset-range", "3", "--seed", "7"] + (["--healpix-order", "1"] if EMULATED else [])
N_PARTICLES = "150" if EMULATED else "400"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--kind", "particles", "--preset", "tiny", "--n-particles", N_PARTICLES, "--snr", "1",
                 "--output-dir", str(d), "--seed", "2"]) == 0
    return d


@pytest.fixture(scope="module")
def refined(simulated, tmp_path_factory):
    out = tmp_path_factory.mktemp("refine")
    assert main(["refine3d", "--particles", str(simulated / "particles.star"), "--reference",
                 str(simulated / "truth" / "class001.mrc"), "--output-dir", str(out), *ARGS]) == 0
    return out


def test_writes_relion_named_outputs(refined):
    for name in ("run_class001.mrc", "run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc",
                 "run_model.star", "run_data.star", "run_fsc.png", "run_it001_half1_class001.mrc",
                 "run_it001_data.star"):
        assert (refined / name).exists(), name
    assert listed_figures(refined) == ["run_fsc.png"]
    model = read_star(refined / "run_model.star")
    fsc_curve = model["model_class_1"]["rlnGoldStandardFsc"].to_numpy()
    assert fsc_curve[1] > 0.9 and fsc_curve[-1] < 0.5


def test_resolution_close_to_the_true_pose_reconstruction(simulated, refined, tmp_path):
    truth, pixel = read_mrc(simulated / "truth" / "class001.mrc")
    assert main(["reconstruct", "--particles", str(simulated / "truth" / "particles.star"),
                 "--output", str(tmp_path / "true_poses.mrc")]) == 0
    ideal, _ = read_mrc(tmp_path / "true_poses.mrc")
    refined_map, _ = read_mrc(refined / "run_class001.mrc")
    box = truth.shape[0]
    res_ideal = resolution_at(fsc(ideal, truth), 0.5, box, pixel)
    res_refined = resolution_at(fsc(refined_map, truth), 0.5, box, pixel)
    assert res_refined <= 1.15 * res_ideal, (res_refined, res_ideal)


def test_poses_and_origins_match_the_truth(simulated, refined):
    est, _ = read_particles(refined / "run_data.star")
    true, _ = read_particles(simulated / "truth" / "particles.star")
    assert list(est["rlnImageName"]) == list(true["rlnImageName"])
    r_est = euler_to_matrix(est["rlnAngleRot"], est["rlnAngleTilt"], est["rlnAnglePsi"])
    r_true = euler_to_matrix(true["rlnAngleRot"], true["rlnAngleTilt"], true["rlnAnglePsi"])
    fit = align_rotation_sets(r_est, r_true)
    # the reference is the truth, so no global rotation should be needed
    assert np.degrees(np.arccos(np.clip((np.trace(fit.rotation) - 1) / 2, -1, 1))) < 3.0
    assert np.median(fit.residuals_deg) < 6.0  # the finest sampling here is 3.75°
    assert np.mean(fit.residuals_deg < 15.0) > 0.85
    px = float(true["rlnImagePixelSize"].iloc[0])
    err = np.hypot(est["rlnOriginXAngst"] - true["rlnOriginXAngst"], est["rlnOriginYAngst"] - true["rlnOriginYAngst"])
    assert np.median(err) / px < 0.75


def test_continue_after_a_stop_gives_the_same_map(simulated, refined, tmp_path):
    """Drop everything after iteration 1 (as if killed there), continue: same final map as the full run."""
    out = tmp_path / "resumed"
    shutil.copytree(refined, out)
    for f in out.iterdir():
        if not f.name.startswith("run_it001"):
            f.unlink()
    assert main(["refine3d", "--particles", str(simulated / "particles.star"), "--reference",
                 str(simulated / "truth" / "class001.mrc"), "--output-dir", str(out), *ARGS, "--continue"]) == 0
    a, _ = read_mrc(refined / "run_class001.mrc")
    b, _ = read_mrc(out / "run_class001.mrc")
    np.testing.assert_array_equal(a, b)


def test_gold_standard_fsc_is_not_inflated_beyond_the_data(tmp_path):
    """One iteration at low resolution, then the final one: the unfil halves' FSC must fall to noise
    in the outer shells.  (Regularised halves whose outer shells were damped to ~0 gave an FSC of
    ~0.35 there: what the mask leaked from the strong low-resolution shells, alike in both halves.)"""
    sim = tmp_path / "sim"
    assert main(["simulate", "--kind", "particles", "--preset", "tiny", "--n-particles", "400", "--snr", "0.05",
                 "--output-dir", str(sim), "--seed", "3"]) == 0
    out = tmp_path / "refine"
    assert main(["refine3d", "--particles", str(sim / "particles.star"), "--reference",
                 str(sim / "truth" / "class001.mrc"), "--output-dir", str(out), "--max-iter", "2",
                 "--seed", "7"]) == 0
    half1, _ = read_mrc(out / "run_half1_class001_unfil.mrc")
    half2, _ = read_mrc(out / "run_half2_class001_unfil.mrc")
    outer = fsc(half1, half2)[-4:]
    assert np.mean(outer) < 0.2, outer


def test_starting_at_the_local_order_searches_around_the_input_poses(simulated, tmp_path, capsys):
    """RELION: --healpix-order ≥ --auto-local-healpix-order with poses in the STAR → local searches
    from iteration 1, centred on those poses (the truth here, so they must stay close to it)."""
    out = tmp_path / "local"
    assert main(["refine3d", "--particles", str(simulated / "truth" / "particles.star"), "--reference",
                 str(simulated / "truth" / "class001.mrc"), "--output-dir", str(out), "--healpix-order", "3",
                 "--auto-local-healpix-order", "3", "--max-iter", "2", "--offset-range", "2",
                 "--seed", "7"]) == 0
    assert "local searches around the input poses" in capsys.readouterr().err
    est, _ = read_particles(out / "run_data.star")
    true, _ = read_particles(simulated / "truth" / "particles.star")
    err = align_rotation_sets(euler_to_matrix(est["rlnAngleRot"], est["rlnAngleTilt"], est["rlnAnglePsi"]),
                              euler_to_matrix(true["rlnAngleRot"], true["rlnAngleTilt"], true["rlnAnglePsi"]))
    # a local search cannot leave the prior's reach (3σ = 3 × 2 × 3.75°): no particle far off
    assert np.max(err.residuals_deg) < 25.0
    assert np.median(err.residuals_deg) < 6.0  # as the global run: fine step 3.75°, box 32


def test_like_refine3d_rebuilds_the_final_map_and_the_true_poses_do_no_worse(simulated, refined, tmp_path, capsys):
    """`spa reconstruct --like-refine3d` is the yardstick of "the refined map reaches what the true poses
    allow": from refine3d's own poses it must give refine3d's final map back (what is left is the spread of
    the posterior), and from the true poses of the same particles and halves a map at least as good."""
    truth, pixel = read_mrc(simulated / "truth" / "class001.mrc")
    box = truth.shape[0]
    own, true_poses = tmp_path / "own", tmp_path / "true_poses"
    assert main(["reconstruct", "--particles", str(refined / "run_data.star"), "--like-refine3d",
                 "--output-dir", str(own)]) == 0
    assert main(["reconstruct", "--particles", str(refined / "run_data.star"), "--poses-from",
                 str(simulated / "truth" / "particles.star"), "--like-refine3d", "--output-dir", str(true_poses)]) == 0
    final, _ = read_mrc(refined / "run_class001.mrc")
    rebuilt, _ = read_mrc(own / "run_class001.mrc")
    same = fsc(final, rebuilt)
    assert same[: 3 * box // 8 + 1].min() > 0.95, same  # to 3/4 of Nyquist the same map
    for half in ("half1", "half2"):
        a, _ = read_mrc(refined / f"run_{half}_class001_unfil.mrc")
        b, _ = read_mrc(own / f"run_{half}_class001_unfil.mrc")
        assert fsc(a, b)[: 3 * box // 8 + 1].min() > 0.9 and abs(a.std() / b.std() - 1) < 0.1
    res_final = resolution_at(fsc(final, truth), 0.5, box, pixel)
    res_rebuilt = resolution_at(fsc(rebuilt, truth), 0.5, box, pixel)
    assert abs(res_rebuilt / res_final - 1) < 0.05, (res_rebuilt, res_final)
    ideal, _ = read_mrc(true_poses / "run_class001.mrc")
    res_ideal = resolution_at(fsc(ideal, truth), 0.5, box, pixel)
    assert res_ideal <= 1.02 * res_final, (res_ideal, res_final)
    import json

    halves = read_particles(refined / "run_data.star")[0]["rlnRandomSubset"].value_counts()
    assert json.loads((true_poses / "true_poses.json").read_text())["particles"] == [halves[1], halves[2]]


def test_true_poses_of_particles_missing_from_the_truth_are_an_error(simulated, refined, tmp_path, capsys):
    from spa.io.star import write_particles

    truth, optics = read_particles(simulated / "truth" / "particles.star")
    short = tmp_path / "short.star"
    write_particles(short, truth.iloc[:-5], optics)
    out = tmp_path / "out"
    assert main(["reconstruct", "--particles", str(refined / "run_data.star"), "--poses-from", str(short),
                 "--like-refine3d", "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "short.star" in err and "5 particle(s)" in err and not out.exists()
    assert main(["reconstruct", "--particles", str(refined / "run_data.star"), "--like-refine3d",
                 "--output", str(tmp_path / "x.mrc")]) == 1


def test_in_loop_fsc_with_a_tight_solvent_mask_is_corrected(simulated, tmp_path):
    """refine3d --solvent-mask: the gold-standard FSC that drives the schedule is measured in the mask. Halves
    with signal only to ~13 Å (a 16 Å low-pass) and independent noise: a tight, sharp mask alone correlates them beyond
    12 Å (the uncorrected masked FSC), the in-loop curve (phase-randomisation corrected) stays at ~0 there."""
    from spa.em.driver3d import load_particles
    from spa.em.volume_refs import VolumeReferences
    from spa.fourier import lowpass
    from spa.io.mrc import write_mrc
    from spa.postprocess.masks import solvent_mask
    from spa.refine3d.refine import Refine3D, Refine3DOptions

    truth, pixel = read_mrc(simulated / "truth" / "class001.mrc")
    box = truth.shape[0]
    signal = lowpass(truth, pixel, 16.0, ndim=3)
    tight, _ = solvent_mask(signal, pixel, lowpass_resolution=16.0, extend=0.0, soft_edge=0.0)
    write_mrc(tmp_path / "tight.mrc", tight, pixel)
    rng = np.random.default_rng(5)
    h1, h2 = [(signal + 0.5 * signal.std() * rng.standard_normal(signal.shape)).astype(np.float32) for _ in range(2)]
    table, optics, source, _, _ = load_particles(simulated / "particles.star")
    run = Refine3D(table, source, truth, Refine3DOptions(solvent_mask=str(tmp_path / "tight.mrc"), seed=7),
                   tmp_path / "run", optics=optics, log=lambda *_: None)
    refs = [VolumeReferences(h[None]) for h in (h1, h2)]
    run._finish_halves(refs, [h1, h2], box // 2)
    beyond = slice(int(box * pixel / 12.0) + 1, box // 2 + 1)  # shells beyond 12 Å
    uncorrected = fsc(h1, h2, tight)
    assert uncorrected[beyond].mean() > 0.15  # the mask's own correlation ...
    assert resolution_at(uncorrected, 0.143, box, pixel) < 10.0  # ... would claim 8-9 Å
    assert abs(run.fsc[beyond].mean()) < 0.08, run.fsc  # ±0.15 per shell of noise at box 32
    assert run.fsc[1:8].min() > 0.9  # the signal is kept
    assert resolution_at(run.fsc, 0.143, box, pixel) > 11.0
