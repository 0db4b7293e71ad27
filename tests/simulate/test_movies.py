"""Simulated movies: frames sum to the micrograph after undoing the drift; damage, gain, TIFF flip, truth."""

from __future__ import annotations

from dataclasses import replace

import mrcfile
import numpy as np
import pytest
import scipy.fft as sfft
import tifffile

from spa.fourier import radial_average, shells_2d, shift_image
from spa.io.mrc import read_mrc
from spa.io.star import read_star
from spa.simulate.micrographs import contrast_scale, make_scene, molecules_for
from spa.simulate.movies import (
    MovieSpec,
    critical_exposure,
    drift_trajectory,
    expected_frames,
    local_coefficients,
    simulate_movies,
)

SPEC = MovieSpec(n=1, size=192, pixel_size=1.5, diameter=70.0, n_frames=6, dose_per_frame=3.0, carbon_fraction=0.0,
                 contaminants=0.0)


@pytest.fixture(scope="module")
def contrast():
    mols = molecules_for(SPEC, 1)
    kappa, sd = contrast_scale(SPEC, mols, 1)
    return make_scene(SPEC, 0, 1, mols, kappa, sd).contrast


def _ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_frames_sum_to_the_micrograph_after_undoing_the_drift(contrast):
    rng = np.random.default_rng(0)
    drift = drift_trajectory(rng, SPEC.n_frames, 4.0, SPEC.pixel_size)
    assert np.allclose(drift[0], 0) and np.abs(drift[1]).max() > 1.0
    frames = np.stack(list(expected_frames(contrast, SPEC, drift, np.zeros((2, 2, 5)), damage=False)))
    aligned = shift_image(frames, -drift[:, 0], -drift[:, 1]).sum(0)  # undo each frame's displacement
    target = SPEC.n_frames * SPEC.dose_per_frame * SPEC.pixel_size**2 * (1.0 + contrast)
    assert np.abs(aligned - target).max() < 1e-3 * target.mean()
    # without undoing the drift the sum is blurred: the test can fail
    assert np.abs(frames.sum(0) - target).max() > 0.01 * target.mean()
    # each frame shows the specimen moved by +drift (content at x - s in frame 1 appears at x)
    f3 = frames[3] - frames[3].mean()
    assert _ncc(shift_image(frames[0], drift[3, 0], drift[3, 1]), frames[3]) > 0.999
    assert _ncc(shift_image(frames[0], -drift[3, 0], -drift[3, 1]), f3) < 0.99


def test_local_motion_is_small_and_smooth(contrast):
    rng = np.random.default_rng(1)
    coef = local_coefficients(rng, 1.0, SPEC.size)
    zero = np.zeros((SPEC.n_frames, 2))
    plain = np.stack(list(expected_frames(contrast, SPEC, zero, np.zeros_like(coef), damage=False)))
    warped = np.stack(list(expected_frames(contrast, SPEC, zero, coef, damage=False)))
    assert np.allclose(warped[0], plain[0], atol=1e-4 * plain[0].mean())  # no deformation on frame 1
    c_last = _ncc(warped[-1], plain[-1])
    assert 0.5 < c_last < 0.9999  # the last frame is deformed, by about a pixel


def test_radiation_damage_follows_the_critical_exposure(contrast):
    zero = np.zeros((SPEC.n_frames, 2))
    frames = np.stack(list(expected_frames(contrast, SPEC, zero, np.zeros((2, 2, 5)), damage=True)))
    box = SPEC.size
    sh = shells_2d(box)
    f0 = radial_average(np.abs(sfft.rfft2(frames[0] - frames[0].mean())), sh, box // 2 + 1)
    f5 = radial_average(np.abs(sfft.rfft2(frames[5] - frames[5].mean())), sh, box // 2 + 1)
    shells = np.arange(10, box // 2, 10)
    k = shells / (box * SPEC.pixel_size)
    n0, n5 = SPEC.dose_per_frame * 0.5, SPEC.dose_per_frame * 5.5
    expected = np.exp(-(n5 - n0) / (2 * critical_exposure(k)))
    assert np.allclose(f5[shells] / f0[shells], expected, rtol=0.02)
    assert expected[-1] < expected[0]  # high frequencies fade faster


def test_movie_files_gain_and_truth(tmp_path):
    spec = replace(SPEC, n_frames=4, dose_per_frame=5.0)
    star = simulate_movies(tmp_path / "mrc", spec, seed=2)
    tif = simulate_movies(tmp_path / "tif", replace(spec, tiff=True), seed=2)
    movies = read_star(star)["movies"]
    assert list(movies["rlnMicrographMovieName"]) == ["movies/mov0001.mrc"]
    with mrcfile.open(tmp_path / "mrc" / "movies" / "mov0001.mrc") as m:
        raw = np.array(m.data)
        assert raw.shape == (4, spec.size, spec.size) and m.header.mode == 6 and m.voxel_size.x == pytest.approx(1.5)
    # TIFF frames are stored flipped along the slow axis: flipping back gives the MRC orientation
    stored = tifffile.imread(tmp_path / "tif" / "movies" / "mov0001.tif")
    assert np.array_equal(stored[:, ::-1, :], raw)
    assert read_star(tif)["movies"]["rlnMicrographMovieName"].iloc[0] == "movies/mov0001.tif"
    # raw counts × gain reference ≈ dose per frame · pixel² on average, and flattens the detector
    gain, _ = read_mrc(tmp_path / "mrc" / "gain.mrc")
    corrected = raw * gain
    expect = spec.dose_per_frame * spec.pixel_size**2
    assert corrected.mean() == pytest.approx(expect, rel=0.03)
    col_raw = raw.mean(axis=(0, 1))
    col_cor = corrected.mean(axis=(0, 1))
    assert col_cor.std() < 0.8 * col_raw.std()  # column-to-column gain variation removed
    # drift truth: frame 1 at zero, shifts = -displacement
    motion = read_star(tmp_path / "mrc" / "truth" / "motion" / "mov0001.star")
    gs = motion["global_shift"]
    assert list(gs["rlnMicrographFrameNumber"]) == [1, 2, 3, 4]
    assert np.allclose(gs["rlnMicrographShiftX"] * spec.pixel_size, -gs["rlnSpaDriftXAngst"])
    assert gs["rlnMicrographShiftX"].iloc[0] == 0 and motion["general"]["rlnMicrographDoseRate"] == 5.0
    # the aligned sum in the truth: noisy frames, gain-corrected and aligned, correlate with it
    truth_sum, _ = read_mrc(tmp_path / "mrc" / "truth" / "micrographs" / "mov0001.mrc")
    sx = -gs["rlnMicrographShiftX"].to_numpy()
    sy = -gs["rlnMicrographShiftY"].to_numpy()
    aligned = shift_image(corrected.astype(np.float32), -sx, -sy).sum(0)
    from scipy.ndimage import gaussian_filter

    good = _ncc(gaussian_filter(aligned, 3), gaussian_filter(truth_sum, 3))
    bad = _ncc(gaussian_filter(corrected.sum(0), 3), gaussian_filter(truth_sum, 3))
    assert good > 0.5 and good > bad
