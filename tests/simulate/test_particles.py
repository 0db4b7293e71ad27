"""Simulated particles: RELION origin sign, CTF in the spectrum, SNR, labels, files, determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from spa.ctf import ctf_2d
from spa.fourier import radial_average, shells_2d, shift_image
from spa.io.images import ParticleImages
from spa.io.mrc import read_mrc
from spa.io.star import read_particles
from spa.simulate.particles import (
    ParticleSpec,
    apply_ctf,
    clean_projections,
    ctfs_for,
    draw_truth,
    molecules_for,
    simulate_particles,
)


def _ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    spec = ParticleSpec(n=600, box=48, pixel_size=2.5, snr=0.3, junk_fraction=0.1, conformations=2,
                        particles_per_micrograph=200)
    res = simulate_particles(out, spec, seed=4, workers=2)
    return out, spec, res


def test_origin_sign_is_relions(dataset):
    """Translating a particle by +rlnOrigin/pixel centres it (compare to the unshifted projection)."""
    _, spec, _ = dataset
    mols = molecules_for(spec, 4)
    truth = draw_truth(spec, 4).iloc[:6].copy()
    truth["rlnClassNumber"] = 1
    truth["rlnSpaJunkKind"] = 0
    truth["rlnOriginXAngst"] = [3.0, -4.5, 6.25, 0.0, -7.5, 2.5]
    truth["rlnOriginYAngst"] = [-5.0, 2.5, 0.0, 7.5, -3.75, 5.0]
    shifted = clean_projections(spec, truth, mols)
    centred_truth = truth.copy()
    centred_truth[["rlnOriginXAngst", "rlnOriginYAngst"]] = 0.0
    centred = clean_projections(spec, centred_truth, mols)
    ox = truth["rlnOriginXAngst"].to_numpy() / spec.pixel_size
    oy = truth["rlnOriginYAngst"].to_numpy() / spec.pixel_size
    recentred = shift_image(shifted, ox, oy)
    wrong_way = shift_image(shifted, -ox, -oy)
    for i in range(6):
        assert _ncc(recentred[i], centred[i]) > 0.998  # sub-pixel Fourier shift of a 0.6-px-wide Gaussian
        assert _ncc(wrong_way[i], centred[i]) < 0.95
        # the particle's centre of mass sits at box centre − origin
        rows, cols = np.indices(shifted[i].shape)
        com = np.array([(shifted[i] * cols).sum(), (shifted[i] * rows).sum()]) / shifted[i].sum()
        com0 = np.array([(centred[i] * cols).sum(), (centred[i] * rows).sum()]) / centred[i].sum()
        assert np.allclose(com - com0, [-ox[i], -oy[i]], atol=0.05)


def test_written_images_carry_the_true_origin(dataset):
    out, spec, _ = dataset
    parts, _ = read_particles(out / "truth" / "particles.star")
    good = parts[parts["rlnSpaIsJunk"] == 0].iloc[:40]
    images = ParticleImages(good, out / "truth" / "particles.star").read(np.arange(len(good)))
    expected = apply_ctf(clean_projections(spec, good, molecules_for(spec, 4)), ctfs_for(spec, good))
    ox = good["rlnOriginXAngst"].to_numpy() / spec.pixel_size
    oy = good["rlnOriginYAngst"].to_numpy() / spec.pixel_size
    # centring the noisy images with +origin matches the centred clean signal better than −origin
    centred_expected = shift_image(expected, ox, oy)
    plus = np.mean([_ncc(a, b) for a, b in zip(shift_image(images, ox, oy), centred_expected)])
    minus = np.mean([_ncc(a, b) for a, b in zip(shift_image(images, -ox, -oy), centred_expected)])
    assert plus > 0.4 and plus > minus + 0.1


def test_snr_matches_request(dataset):
    out, spec, res = dataset
    parts, _ = read_particles(out / "truth" / "particles.star")
    good = parts[parts["rlnSpaIsJunk"] == 0]
    images = ParticleImages(good, out / "truth" / "particles.star").read(np.arange(len(good)))
    signal = apply_ctf(clean_projections(spec, good, molecules_for(spec, 4)), ctfs_for(spec, good))
    noise = images - signal
    measured = signal.var(axis=(1, 2)).mean() / noise.var(axis=(1, 2)).mean()
    assert measured == pytest.approx(spec.snr, rel=0.15)
    assert noise.std() == pytest.approx(res.noise_sigma, rel=0.03)
    # pure-noise junk has no signal: its variance is the noise variance
    junk = parts[parts["rlnSpaJunkKind"] == 1]
    jimg = ParticleImages(junk, out / "truth" / "particles.star").read(np.arange(len(junk)))
    assert jimg.var() == pytest.approx(res.noise_sigma**2, rel=0.1)


def test_true_defocus_appears_in_the_power_spectrum():
    """The spectrum's rings sit where the CTF formula puts them for the true defocus."""
    spec = ParticleSpec(n=256, box=96, pixel_size=1.5, snr=2.0, astigmatism=0.0, defocus_min=15000.0,
                        defocus_max=15000.0, particles_per_micrograph=256, offset_sigma=0.0)
    mols = molecules_for(spec, 1)
    truth = draw_truth(spec, 1)
    rng = np.random.default_rng(0)
    from spa.simulate.particles import render_chunk
    from spa.simulate.noise import noise_filter

    images = render_chunk(spec, truth, mols, 0.05, noise_filter(spec.box, spec.pixel_size), rng)
    ps = (np.abs(np.fft.rfft2(images)) ** 2).mean(0)
    shells = shells_2d(spec.box)
    prof = radial_average(ps, shells, spec.box // 2 + 1)
    lo = 6  # skip the lowest shells (particle envelope)
    logp = np.log(prof[lo:])
    trend = np.convolve(logp, np.ones(7) / 7, mode="same")
    detrended = (logp - trend)[3:-3]

    def score(defocus):
        c2 = radial_average(ctf_2d(spec.box, spec.pixel_size, defocus, defocus, 0, 300, 2.7, 0.1) ** 2,
                            shells, spec.box // 2 + 1)[lo:][3:-3]
        return np.corrcoef(detrended, c2)[0, 1]

    true_df = truth["rlnDefocusU"].mean()
    candidates = np.arange(8000, 22001, 250)
    scores = np.array([score(d) for d in candidates])
    assert abs(candidates[scores.argmax()] - true_df) <= 500
    assert scores.max() > 0.5


def test_files_and_labels(dataset):
    out, spec, res = dataset
    parts, optics = read_particles(out / "particles.star")
    assert len(parts) == spec.n
    for col in ("rlnAngleRot", "rlnOriginXAngst", "rlnClassNumber", "rlnSpaIsJunk"):
        assert col not in parts.columns  # what a pipeline gets: no answers
    for col in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnMicrographName", "rlnRandomSubset"):
        assert col in parts.columns
    assert set(parts["rlnRandomSubset"]) == {1, 2}
    assert optics["rlnImagePixelSize"].iloc[0] == spec.pixel_size and optics["rlnImageSize"].iloc[0] == spec.box
    truth, _ = read_particles(out / "truth" / "particles.star")
    assert (truth["rlnImageName"].str.split("@").str[0] == parts["rlnImageName"].str.split("@").str[0]).all()
    assert truth["rlnSpaIsJunk"].sum() == round(0.1 * spec.n)
    assert set(truth.loc[truth["rlnSpaIsJunk"] == 1, "rlnClassNumber"]) == {0}
    assert set(truth.loc[truth["rlnSpaIsJunk"] == 0, "rlnClassNumber"]) == {1, 2}
    images = ParticleImages(parts, out / "particles.star").read([0, 1])
    assert images.dtype == np.float32 and images.shape == (2, spec.box, spec.box)
    # the two class maps differ (a hinge), and have the box and pixel size of the particles
    (m1, p1), (m2, _) = read_mrc(res.maps[0]), read_mrc(res.maps[1])
    assert m1.shape == (spec.box,) * 3 and p1 == pytest.approx(spec.pixel_size)
    assert _ncc(m1, m2) < 0.97


def test_same_seed_same_images_whatever_the_workers(tmp_path):
    spec = ParticleSpec(n=300, box=32, pixel_size=4.0, snr=0.1, junk_fraction=0.1)
    a = simulate_particles(tmp_path / "a", spec, seed=7, workers=1)
    b = simulate_particles(tmp_path / "b", spec, seed=7, workers=2)
    c = simulate_particles(tmp_path / "c", replace(spec), seed=8, workers=1)
    from spa.io.zarrstack import open_stack

    xa, xb, xc = (np.asarray(open_stack(r.stack)[:]) for r in (a, b, c))
    assert np.array_equal(xa, xb)
    assert not np.allclose(xa, xc)
    assert (tmp_path / "a" / "truth" / "particles.star").read_text() == (tmp_path / "b" / "truth" / "particles.star").read_text()
