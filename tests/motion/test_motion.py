"""spa motion against the truth of simulated movies: whole-frame trajectories, local motion, dose
weighting, binning, outlier frames."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft

from spa.io.movies import read_gain, read_movie
from spa.io.mrc import read_mrc
from spa.io.star import read_star
from spa.motion.correct import MotionOptions, correct_movie
from spa.simulate.movies import MovieSpec, local_field, simulate_movies

PIXEL = 1.5
# 256-px frames hold 1/256 of a 4k frame's signal: a stronger low-pass than the 4k default (500 Å²) suits them
GLOBAL_ONLY = dict(patches_x=1, patches_y=1, bfactor=1000.0)


def band_fsc(a, b, pixel_size, lo, hi):
    """Correlation of two images' transforms over spatial frequencies lo ≤ k < hi (1/Å)."""
    fa, fb = sfft.rfft2(a - a.mean()), sfft.rfft2(b - b.mean())
    ky = np.fft.fftfreq(a.shape[0])[:, None]
    kx = np.fft.rfftfreq(a.shape[1])[None, :]
    k = np.sqrt(ky * ky + kx * kx) / pixel_size
    m = (k >= lo) & (k < hi)
    return float((fa * fb.conj()).real[m].sum() / np.sqrt((abs(fa) ** 2)[m].sum() * (abs(fb) ** 2)[m].sum()))


def load(folder, m):
    movie = read_movie(folder / "movies" / f"mov{m:04d}.mrc")
    truth = read_star(folder / "truth" / "motion" / f"mov{m:04d}.star")
    shifts = truth["global_shift"][["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()
    image, _ = read_mrc(folder / "truth" / "micrographs" / f"mov{m:04d}.mrc")
    return movie, shifts, truth, image


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """Three 256² × 12-frame movies (4 e⁻/Å² per frame) with drift, damage and gain, no local motion."""
    folder = tmp_path_factory.mktemp("drift")
    spec = MovieSpec(n=3, size=256, pixel_size=PIXEL, diameter=90.0, n_frames=12, dose_per_frame=4.0,
                     local_motion=0.0, drift=3.0)
    simulate_movies(folder, spec, seed=11)
    return folder, read_gain(folder / "gain.mrc")


@pytest.fixture(scope="module")
def deforming(tmp_path_factory):
    """Two movies with local deformation (up to 6 Å at the end); the ice texture is stronger, so that a
    256 px patch holds about the signal a 4k movie's 5 × 5 patches hold."""
    folder = tmp_path_factory.mktemp("local")
    spec = MovieSpec(n=2, size=256, pixel_size=PIXEL, diameter=90.0, n_frames=12, dose_per_frame=4.0,
                     local_motion=6.0, drift=3.0, ice_texture=4.0)
    simulate_movies(folder, spec, seed=5)
    return folder, read_gain(folder / "gain.mrc")


def rms(a, b):
    return float(np.sqrt(((a - b) ** 2).sum(axis=1).mean()))


def test_whole_frame_trajectory_is_within_half_a_pixel_of_the_truth(drifting):
    folder, gain = drifting
    for m in (1, 2, 3):
        movie, truth, _, _ = load(folder, m)
        result = correct_movie(movie, gain, PIXEL, 4.0, MotionOptions(**GLOBAL_ONLY))
        assert np.abs(truth).max() > 3.0  # the movies do drift (pixels)
        assert result.shifts[0].tolist() == [0.0, 0.0]
        assert rms(result.shifts, truth) < 0.5, m
        # not aligning at all is far off: the test can fail
        assert rms(np.zeros_like(truth), truth) > 3.0


def test_an_outlier_frame_does_not_derail_the_trajectory(drifting):
    folder, gain = drifting
    movie, truth, _, _ = load(folder, 1)
    broken = movie.copy()
    broken[7] = np.random.default_rng(0).poisson(broken[7].mean(), broken[7].shape)  # a frame without signal
    raw = correct_movie(broken, gain, PIXEL, 4.0, MotionOptions(**GLOBAL_ONLY, smooth=False))
    assert raw.outliers[7] and raw.outliers.sum() <= 2  # found, and replaced by the smooth trajectory
    assert np.linalg.norm(raw.shifts[7] - truth[7]) < 1.0
    result = correct_movie(broken, gain, PIXEL, 4.0, MotionOptions(**GLOBAL_ONLY))
    assert rms(result.shifts, truth) < 0.5


def test_frame_grouping_and_super_resolution_binning(drifting):
    folder, gain = drifting
    movie, truth, _, image = load(folder, 2)
    grouped = correct_movie(movie, gain, PIXEL, 4.0, MotionOptions(**GLOBAL_ONLY, group_frames=2))
    assert rms(grouped.shifts, truth) < 0.5
    # a 'super-resolution' movie: every frame upsampled 2× in Fourier space (pixel 0.75 Å)
    spectra = sfft.rfft2(movie)
    big = np.zeros((12, 512, 257), complex)
    big[:, :128, :129], big[:, -128:, :129] = spectra[:, :128, :129], spectra[:, -128:, :129]
    super_res = sfft.irfft2(big, s=(512, 512)).astype(np.float32) * 4
    up_gain = np.kron(gain, np.ones((2, 2), np.float32))
    binned = correct_movie(super_res, up_gain, PIXEL / 2, 4.0, MotionOptions(**GLOBAL_ONLY, binning=2))
    assert binned.pixel_size == PIXEL and binned.unweighted.shape == (256, 256)
    assert rms(binned.shifts / 2, truth) < 0.5  # shifts are in unbinned (super-resolution) pixels
    plain = correct_movie(movie, gain, PIXEL, 4.0, MotionOptions(**GLOBAL_ONLY))
    assert band_fsc(binned.unweighted, image, PIXEL, 0.0, 0.2) > band_fsc(plain.unweighted, image, PIXEL, 0.0, 0.2) - 0.01


def test_dose_weighting_raises_the_high_resolution_signal(drifting):
    folder, gain = drifting
    for m in (1, 3):
        movie, _, _, image = load(folder, m)
        result = correct_movie(movie, gain, PIXEL, 4.0, MotionOptions(**GLOBAL_ONLY))
        low = [band_fsc(s, image, PIXEL, 0.0, 0.05) for s in (result.unweighted, result.dose_weighted)]
        high = [band_fsc(s, image, PIXEL, 0.15, 0.3) for s in (result.unweighted, result.dose_weighted)]
        assert abs(low[1] - low[0]) < 0.01  # nothing changes where nothing is damaged
        assert high[1] > 1.3 * high[0] > 0  # 6.7-3.3 Å: the weighted sum agrees better with the truth
        assert result.dose_weighted.mean() == pytest.approx(result.unweighted.mean(), rel=1e-4)


def test_local_alignment_beats_whole_frame_alignment(deforming):
    folder, gain = deforming
    for m in (1, 2):
        movie, truth_shifts, truth, image = load(folder, m)
        whole = correct_movie(movie, gain, PIXEL, 4.0, MotionOptions(**GLOBAL_ONLY))
        local = correct_movie(movie, gain, PIXEL, 4.0, MotionOptions(patches_x=4, patches_y=4))
        fsc_whole = band_fsc(whole.unweighted, image, PIXEL, 0.05, 0.15)
        fsc_local = band_fsc(local.unweighted, image, PIXEL, 0.05, 0.15)
        assert fsc_local > fsc_whole + 0.005, (m, fsc_whole, fsc_local)  # 20-6.7 Å
        # the fitted field against the true one (shift to apply = −(drift + deformation))
        coef = truth["spa_local_motion"]["rlnSpaCoefficientPx"].to_numpy().reshape(2, 2, 5)
        from spa.motion.local import evaluate

        rows, cols = np.mgrid[:256, :256]
        err_whole, err_local = [], []
        for f in range(12):
            u = local_field(coef, f / 11, 256)
            tx, ty = truth_shifts[f, 0] - u[0], truth_shifts[f, 1] - u[1]
            lx, ly = evaluate(local.local.coeffs, cols / 256 - 0.5, rows / 256 - 0.5, f)
            err_whole.append(((whole.shifts[f, 0] - tx) ** 2 + (whole.shifts[f, 1] - ty) ** 2).mean())
            err_local.append(((local.shifts[f, 0] + lx - tx) ** 2 + (local.shifts[f, 1] + ly - ty) ** 2).mean())
        assert np.sqrt(np.mean(err_local)) < 0.8 * np.sqrt(np.mean(err_whole)), m


def test_patches_without_local_motion_do_no_harm(drifting):
    """The cross-validated local model shrinks to (almost) nothing when the patches show no deformation."""
    folder, gain = drifting
    for m in (1, 2):
        movie, truth, _, image = load(folder, m)
        whole = correct_movie(movie, gain, PIXEL, 4.0, MotionOptions(**GLOBAL_ONLY))
        local = correct_movie(movie, gain, PIXEL, 4.0, MotionOptions(patches_x=4, patches_y=4, bfactor=1000.0))
        assert local.local is not None and local.local.ridge > 0  # shrunk
        fsc = [band_fsc(r.unweighted, image, PIXEL, 0.05, 0.15) for r in (whole, local)]
        assert fsc[1] > fsc[0] - 0.005, (m, fsc)
