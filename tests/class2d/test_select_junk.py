"""2D selection against edge and overlap junk (`spa simulate --junk-kinds all`): class features in
class_averages.star and the per-particle edge / second-particle residual test, against the simulated truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spa.cli import main as spa_main
from spa.class2d.residual import Radon, ResidualContext, calibration_scores, pvalues, robust_z
from spa.class2d.select import SelectionRules
from spa.io.star import read_star
from spa.simulate.molecule import make_molecule
from spa.simulate.particles import ParticleSpec, clean_projections, draw_truth, junk_kind_codes
from tests.conftest import listed_figures


def test_junk_kinds_parse_and_old_kinds_draw_as_before():
    assert junk_kind_codes("both") == [1, 2] and junk_kind_codes("edge, overlap") == [3, 4]
    assert junk_kind_codes("all") == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        ParticleSpec(junk_kinds="carbon")
    # the main random stream is untouched: poses and junk rows of "noise" equal those of "edge,overlap"
    a = draw_truth(ParticleSpec(n=200, junk_fraction=0.3, junk_kinds="noise"), 4)
    b = draw_truth(ParticleSpec(n=200, junk_fraction=0.3, junk_kinds="edge,overlap"), 4)
    assert np.array_equal(a["rlnAnglePsi"], b["rlnAnglePsi"])
    assert np.array_equal(a["rlnSpaIsJunk"], b["rlnSpaIsJunk"])
    assert set(b.loc[b["rlnSpaIsJunk"] == 1, "rlnSpaJunkKind"]) == {3, 4}
    assert abs((b["rlnSpaJunkKind"] == 3).sum() - (b["rlnSpaJunkKind"] == 4).sum()) <= 1


def test_overlap_offset_moves_pairs_off_centre_and_changes_no_other_image():
    spec = ParticleSpec(n=120, box=48, pixel_size=3.0, junk_fraction=0.5, junk_kinds="overlap,noise")
    truth = draw_truth(spec, 3)
    molecules = [make_molecule(spec.diameter, seed=0)]
    centred = clean_projections(spec, truth, molecules, np.random.default_rng(5))
    shifted = clean_projections(ParticleSpec(**{**spec.__dict__, "overlap_offset": 0.5}), truth, molecules,
                                np.random.default_rng(5))
    pairs = truth["rlnSpaJunkKind"].to_numpy() == 4
    assert pairs.sum() >= 20
    assert np.array_equal(centred[~pairs], shifted[~pairs])

    def centroid_radius(images):  # distance (px) of the positive mass's centroid from the box centre
        c = np.arange(spec.box) - spec.box // 2
        w = np.maximum(images, 0)
        y = (w.sum(2) * c).sum(1) / w.sum((1, 2))
        x = (w.sum(1) * c).sum(1) / w.sum((1, 2))
        return np.hypot(x, y)

    # centred: the pair's centroid half a separation (0.25–0.4 diameters) out; offset up to 0.5: a quarter
    assert centroid_radius(shifted[pairs]).mean() < 0.75 * centroid_radius(centred[pairs]).mean()


def test_second_particle_search_finds_another_view_off_centre_in_noise():
    """The blob statistic: class averages (three views) at in-plane rotations as matched filters. A second
    particle — a fourth view, turned in plane, 1.3 radii off-centre — scores above what white noise reaches."""
    from spa.geometry.euler import euler_to_matrix
    from spa.simulate.projection import project_molecule

    box, pixel, diameter = 48, 3.0, 86.0
    molecule = make_molecule(diameter, seed=1)
    views = euler_to_matrix(np.array([0.0, 60.0, 120.0, 200.0]), np.array([0.0, 50.0, 90.0, 130.0]),
                            np.array([0.0, 0.0, 0.0, 70.0]))
    projections = project_molecule(molecule, views, box, pixel)
    radius = diameter / 2 / pixel
    sigma2 = np.full((1, box // 2 + 1), float(box * box))  # white noise of unit σ per pixel (numpy's FFT scale)
    ctx = ResidualContext(projections[:3], sigma2, pixel, radius)
    assert ctx.small < box and len(ctx.view_templates) == 3 * 12  # cropped to diameter / 8, 12 rotations
    rng = np.random.default_rng(0)
    second = project_molecule(molecule, views[3:], box, pixel, np.array([[1.3 * radius, 0.0]]))[0]
    second *= 0.15 / second.std()  # weak: a matched-filter z of about 5
    noise = rng.normal(size=(60, box, box))
    ctfs = np.ones((60, box, box // 2 + 1))
    _, z_noise = ctx.scores(noise, ctfs, np.zeros(60, int))
    _, z_pair = ctx.scores(noise + second, ctfs, np.zeros(60, int))
    assert np.isfinite(z_noise).all() and 1.5 < np.median(z_noise) < 5.0  # a maximum of ~N(0, 1) correlations
    assert np.mean(z_pair > np.quantile(z_noise, 0.98)) >= 0.9


def test_edge_test_finds_a_straight_step_in_noise_and_not_a_compact_blob():
    """Decoy-calibrated: a zero-mean, CTF-free step of 0.5 σ across the box is found (p ≤ 0.01); a centred blob of the
    same power scores far lower."""
    box, rng = 40, np.random.default_rng(3)
    c = np.arange(box) - box // 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    step = 0.5 * (np.cos(0.7) * xx + np.sin(0.7) * yy > 4)
    step -= step.mean()  # the residuals' mean is not tested (whitening drops it)
    blob = np.exp(-(xx**2 + yy**2) / (2 * 4.0**2))
    blob = (blob - blob.mean()) * np.sqrt(step.var() / blob.var())
    radon = Radon(box)
    null = radon.edge_score(rng.standard_normal((400, box, box)))
    noise = rng.standard_normal((20, box, box))
    assert (pvalues(radon.edge_score(noise + step), null) <= 0.01).mean() >= 0.9
    # a compact blob of the same power raises every angle's energy: it scores, but far below the edge
    assert np.median(radon.edge_score(noise + blob)) < 0.5 * np.median(radon.edge_score(noise + step))


def test_log_scores_make_the_class_null_p_values_error_rates():
    """The edge score of pure white noise (a good particle's residual when the average fits) is a maximum over
    angles, right-skewed: p-values from the robust z of the raw score are far too small (measured 1.8 % below
    0.001), from the robust z of its logarithm close to nominal."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    scores = Radon(32).edge_score(rng.standard_normal((1500, 32, 32)))
    cls = np.repeat(np.arange(3), 500)
    raw = norm.sf(robust_z(calibration_scores(scores, False), cls))
    log = norm.sf(robust_z(calibration_scores(scores, True), cls))
    assert (raw < 0.001).mean() > 0.005 and (raw < 0.02).mean() > 0.04
    assert (log < 0.001).mean() <= 0.004 and 0.01 <= (log < 0.02).mean() <= 0.03
    assert 0.03 <= (log < 0.05).mean() <= 0.07


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """400 particles, box 48, SNR 0.1, 40 % junk of the four kinds; class2d K = 6; select --auto."""
    d = tmp_path_factory.mktemp("junk")
    assert spa_main(["simulate", "--n-particles", "400", "--box", "48", "--pixel-size", "3", "--snr", "0.1",
                     "--junk-fraction", "0.4", "--junk-kinds", "all", "--output-dir", str(d / "sim"),
                     "--seed", "2"]) == 0
    assert spa_main(["class2d", "--particles", str(d / "sim" / "particles.star"), "--classes", "6", "--iter", "6",
                     "--noise-decoys", "300", "--output-dir", str(d / "c2d"), "--seed", "2"]) == 0
    assert spa_main(["select", "--class2d-dir", str(d / "c2d"), "--auto", "--output-dir", str(d / "sel"),
                     "--particle-diameter", "86.4", "--particles", str(d / "sim" / "particles.star")]) == 0
    kind = read_star(d / "sim" / "truth" / "particles.star")["particles"]["rlnSpaJunkKind"].to_numpy()
    names = read_star(d / "c2d" / "run_data.star")["particles"]["rlnImageName"].to_list()
    kept = np.isin(names, read_star(d / "sel" / "particles.star")["particles"]["rlnImageName"])
    return d, kind, kept


def test_select_removes_edges_and_overlapping_pairs_and_keeps_good_particles(run):
    d, kind, kept = run
    removed = {k: float((~kept[kind == k]).mean()) for k in range(5)}
    print("removed fraction per junk kind", removed)
    assert removed[0] <= 0.05, removed  # ≥ 95 % of the good particles kept
    assert removed[1] >= 0.9, removed  # pure noise, as before
    assert removed[3] >= 0.9, removed  # carbon edges
    assert removed[4] >= 0.5, removed  # overlapping pairs


def test_class_features_are_in_class_averages_star_and_figures(run):
    d, _, _ = run
    ca = read_star(d / "sel" / "class_averages.star")["model_classes"]
    for col in ("spaOutsideInsideRatio", "spaEdgeScore", "spaCentreOfMassRadius", "spaGyrationRatio",
                "spaEdgeOrPairCount"):
        assert col in ca and np.isfinite(ca[col].to_numpy(np.float64)).all(), col
    kept = ca["rlnSelected"].to_numpy() == 1
    assert (ca["spaOutsideInsideRatio"][kept] <= 0.25).all()
    parts = read_star(d / "sel" / "particles.star")["particles"]
    rules = SelectionRules()  # the defaults the run used
    assert (parts["rlnSpaEdgePValue"] >= rules.max_edge_pvalue).all()
    assert (parts["rlnSpaBlobPValue"] >= rules.max_overlap_pvalue).all()
    report = json.loads((d / "sel" / "selection.json").read_text())
    assert report["edge_or_pair_removed"] == int(ca["spaEdgeOrPairCount"][kept].sum()) > 0
    assert listed_figures(d / "sel") == ["selected_classes.png", "residual_examples.png"]
