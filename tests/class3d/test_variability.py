"""3D variability analysis (probabilistic PCA at known poses) and the class seeds it gives."""

import numpy as np
import pytest

from spa.class3d import variability
from spa.cli import main
from spa.em import driver3d as d3
from spa.em.engine import particle_arrays
from spa.io.star import read_particles
from tests.class3d.conftest import accuracy as _accuracy, simulate_two_states


@pytest.fixture(scope="module")
def two_states(tmp_path_factory):
    """Two conformations, box 48 at 2 Å/px, SNR 1."""
    return simulate_two_states(tmp_path_factory, "var2c", n=400, snr=1, seed=3)


def _windowed(sim, angles, resolution=8.0):
    table, _, source, px, box = d3.load_particles(sim / "particles.star")
    truth, _ = read_particles(sim / "truth" / "particles.star")
    p = particle_arrays(truth, px)
    return variability.window_data(source, p, np.arange(len(table)), angles, p["centres"], box, px, resolution,
                                   0.45 * box), truth


def test_bimodality_tells_two_groups_from_one():
    rng = np.random.default_rng(0)
    one = rng.standard_normal(4000)
    two = np.concatenate([rng.normal(-2, 0.5, 2000), rng.normal(2, 0.5, 2000)])
    assert abs(variability.bimodality(one) - 2 / np.pi) < 0.03  # a Gaussian's 2-means split
    assert variability.bimodality(two) > 0.9


def test_kmeans_finds_separated_groups_whatever_their_sizes():
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.normal(0, 1, (300, 2)), rng.normal(8, 1, (60, 2))])
    labels = variability.kmeans(pts, 2, seed=3)
    assert sorted(np.bincount(labels).tolist()) == [60, 300]
    assert np.array_equal(labels, variability.kmeans(pts, 2, seed=3))  # same seed, same labels


def test_variability_at_the_true_poses_separates_the_conformations(two_states):
    """The most bimodal component splits the particles by conformation (measured 0.99; also at 6°
    pose noise on a 1200-particle SNR 0.5 set: 0.92), and the mean map is the data's average."""
    truth, _ = read_particles(two_states / "truth" / "particles.star")
    angles = truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    data, truth = _windowed(two_states, angles)
    labels, coords, chosen = variability.seed_labels(data, 2, seed=0)
    assert coords.shape == (len(truth), 3) and len(chosen) == 1
    assert _accuracy(labels, truth["rlnClassNumber"].to_numpy() - 1) >= 0.95
    maps = variability.class_maps(data, labels, 2, 48)
    assert maps.shape == (2, 48, 48, 48) and np.all(np.isfinite(maps))


def test_variability_at_wrong_poses_finds_no_groups(two_states):
    """With random poses no component splits the data by conformation: the analysis does not invent
    the answer (accuracy near chance)."""
    rng = np.random.default_rng(5)
    n = len(read_particles(two_states / "particles.star")[0])
    angles = np.column_stack([rng.uniform(-180, 180, n), np.degrees(np.arccos(rng.uniform(-1, 1, n))),
                              rng.uniform(-180, 180, n)])
    data, truth = _windowed(two_states, angles)
    labels, _, _ = variability.seed_labels(data, 2, seed=0)
    assert _accuracy(labels, truth["rlnClassNumber"].to_numpy() - 1) < 0.65


def test_class3d_from_one_reference_without_poses(two_states, tmp_path):
    """The default start from one reference and no poses: a short one-class alignment, then classes
    seeded by the 3D variability at those poses, then the global-search classification."""
    truth, _ = read_particles(two_states / "truth" / "particles.star")
    out = tmp_path / "c3"
    assert main(["class3d", "--particles", str(two_states / "particles.star"), "--reference",
                 str(two_states / "truth" / "class001.mrc"), "--classes", "2", "--iter", "4", "--consensus-iter", "5",
                 "--output-dir", str(out), "--seed", "1"]) == 0
    est, _ = read_particles(out / "run_data.star")
    labels = est["rlnClassNumber"].to_numpy()
    assert min(np.bincount(labels)[1:]) >= 0.3 * len(labels)
    assert _accuracy(labels, truth["rlnClassNumber"].to_numpy()) >= 0.85


def test_focus_mask_confines_the_components(two_states):
    """Focused classification: with a mask around the part that moves the components still split the
    conformations; with a mask that leaves that part out they cannot."""
    from scipy.ndimage import gaussian_filter

    from spa.io.mrc import read_mrc

    truth, _ = read_particles(two_states / "truth" / "particles.star")
    angles = truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    data, truth = _windowed(two_states, angles)
    a, _ = read_mrc(two_states / "truth" / "class001.mrc")
    b, _ = read_mrc(two_states / "truth" / "class002.mrc")
    moving = gaussian_filter(np.abs(b - a), 2.0)
    moving = gaussian_filter((moving > 0.15 * moving.max()).astype(np.float32), 1.5)
    moving = np.clip(moving / max(moving.max(), 1e-9), 0, 1)
    classes = truth["rlnClassNumber"].to_numpy() - 1
    focus = variability.small_mask(moving, data)
    labels, _, _ = variability.seed_labels(data, 2, seed=0, mask=focus)
    assert _accuracy(labels, classes) >= 0.95
    rest = variability.small_mask(1.0 - moving, data)
    labels, _, _ = variability.seed_labels(data, 2, seed=0, mask=rest)
    assert _accuracy(labels, classes) < 0.75


def test_analysis_rows_bounded_seeded_subset():
    assert np.array_equal(variability.analysis_rows(300, seed=1, max_particles=300), np.arange(300))
    rows = variability.analysis_rows(1000, seed=1, max_particles=250)
    assert len(rows) == 250 and np.all(np.diff(rows) > 0) and rows[-1] < 1000
    assert np.array_equal(rows, variability.analysis_rows(1000, seed=1, max_particles=250))
    assert not np.array_equal(rows, variability.analysis_rows(1000, seed=2, max_particles=250))


def test_seeds_from_a_random_subset_separate_the_conformations(two_states):
    """Seeds from half of the particles (the bounded subset of a large set) still split the states:
    the K seed maps are reconstructions, so every particle then starts from them."""
    truth, _ = read_particles(two_states / "truth" / "particles.star")
    table, _, source, px, box = d3.load_particles(two_states / "particles.star")
    rows = variability.analysis_rows(len(table), seed=0, max_particles=len(table) // 2)
    p = particle_arrays(truth, px)
    angles = truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)[rows]
    data = variability.window_data(source, p, rows, angles, p["centres"][rows], box, px, 8.0, 0.45 * box)
    assert data.X.shape[0] == len(rows)
    labels, _, _ = variability.seed_labels(data, 2, seed=0)
    assert _accuracy(labels, truth["rlnClassNumber"].to_numpy()[rows] - 1) >= 0.9
