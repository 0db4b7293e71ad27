"""Postprocessing against known truth: masks, the phase-randomisation correction, the B-factor."""

import json

import numpy as np
import pytest

from spa.em.fsc import fsc, reaches_threshold_at_nyquist, resolution_at, resolution_text
from spa.fourier import lowpass, radius_3d
from spa.postprocess.masks import solvent_mask
from spa.postprocess.phase_randomisation import corrected_fsc, randomise_phases
from spa.postprocess.postprocess import postprocess
from spa.postprocess.sharpen import guinier_fit
from spa.simulate.density import render_map
from spa.simulate.molecule import make_molecule

BOX, PIXEL = 64, 1.5


@pytest.fixture(scope="module")
def truth():
    mol = make_molecule(0.55 * BOX * PIXEL, seed=4)
    return render_map(mol, BOX, PIXEL).astype(np.float32)


def _apply_b(volume, b):
    """Multiply the map's Fourier coefficients by exp(−B s²/4): B > 0 decays (as a real map's)."""
    f = np.fft.rfftn(volume)
    s = radius_3d(BOX) / (BOX * PIXEL)
    return np.fft.irfftn(f * np.exp(-b * s**2 / 4), s=volume.shape, axes=(0, 1, 2)).astype(np.float32)


def _halves(signal, noise_sigma, seed):
    rng = np.random.default_rng(seed)
    return [(signal + noise_sigma * rng.standard_normal(signal.shape)).astype(np.float32) for _ in range(2)]


def test_solvent_mask_covers_the_molecule_with_a_soft_edge(truth):
    mask, level = solvent_mask(truth, PIXEL, lowpass_resolution=15.0, extend=3.0, soft_edge=6.0)
    positive = np.clip(truth, 0, None)
    assert (positive * (mask > 0.99)).sum() / positive.sum() > 0.98  # the molecule is inside
    assert 0.03 < mask.mean() < 0.5  # and the solvent mostly outside
    # the edge: values between 0 and 1 only in a shell about soft_edge / pixel wide
    edge = (mask > 0.01) & (mask < 0.99)
    assert edge.any() and mask.min() == 0.0 and mask.max() == 1.0
    tight, _ = solvent_mask(truth, PIXEL, lowpass_resolution=15.0, extend=0.0, soft_edge=0.0)
    assert set(np.unique(tight)) <= {0.0, 1.0} and tight.mean() < mask.mean()
    # a user threshold above the map's maximum leaves nothing
    empty, _ = solvent_mask(truth, PIXEL, threshold=float(truth.max()) * 10)
    assert empty.max() == 0.0


def test_phase_randomisation_keeps_amplitudes_and_scrambles_beyond_the_shell(truth):
    rng = np.random.default_rng(0)
    r = randomise_phases(truth, 10, rng)
    curve = fsc(truth, r)
    assert np.all(curve[1:9] > 0.999)  # untouched below
    assert np.abs(curve[12:]).max() < 0.2  # unrelated beyond
    amp = lambda v: np.abs(np.fft.rfftn(v))  # noqa: E731
    assert np.allclose(amp(r), amp(truth), rtol=1e-3, atol=1e-3 * amp(truth).max())


def test_tight_mask_inflates_the_fsc_and_the_correction_removes_it(truth):
    """Signal only to 9 Å, strong noise: beyond 9 Å the true FSC is 0; a tight sharp mask makes the masked FSC
    show correlation there, the corrected curve does not."""
    signal = lowpass(truth, PIXEL, 9.0, ndim=3)
    h1, h2 = _halves(signal, 1.0 * signal.std(), seed=1)
    tight, _ = solvent_mask(signal, PIXEL, lowpass_resolution=8.0, extend=0.0, soft_edge=0.0)
    c = corrected_fsc(h1, h2, tight, seed=0)
    beyond = slice(int(BOX * PIXEL / 7.0), BOX // 2)  # shells beyond 7 Å
    assert c.masked[beyond].mean() > 0.1  # inflated by the mask
    assert abs(c.corrected[beyond].mean()) < 0.05  # corrected to ~0
    # where there is signal the correction changes little
    low = slice(2, int(BOX * PIXEL / 20.0))
    assert np.allclose(c.corrected[low], c.masked[low], atol=0.02)


@pytest.mark.parametrize("applied", [50.0, 100.0, 150.0])
def test_bfactor_recovered_within_20(truth, applied):
    """Halves = truth decayed by a known B + noise: the fitted B-factor used for sharpening is −(B + B₀), with
    B₀ the truth map's own fall-off measured on the noise-free map over the same range."""
    decayed = _apply_b(truth, applied)
    h1, h2 = _halves(decayed, 0.05 * decayed.std(), seed=2)
    mask, _ = solvent_mask(decayed, PIXEL)
    result = postprocess(h1, h2, mask, PIXEL, seed=0)
    intrinsic = guinier_fit(truth * mask, PIXEL, result.resolution).bfactor
    assert abs(-result.bfactor_used - (applied + intrinsic)) < 20.0
    # after sharpening the amplitudes no longer fall over the fitted range (FSC weights ≈ 1 at this noise)
    assert abs(guinier_fit(result.sharpened * mask, PIXEL, result.resolution).bfactor) < 10.0


def test_user_bfactor_is_used_and_nyquist_is_reported_as_a_bound(truth):
    h1, h2 = _halves(truth, 0.01 * truth.std(), seed=3)
    mask, _ = solvent_mask(truth, PIXEL)
    result = postprocess(h1, h2, mask, PIXEL, bfactor=-75.0)
    assert result.bfactor_used == -75.0 and not result.bfactor_automatic
    assert result.at_nyquist and result.resolution == pytest.approx(2 * PIXEL)
    assert resolution_text(result.curves.corrected, 0.143, BOX, PIXEL).startswith("≥ Nyquist")
    curve = np.linspace(1, 0, 33)
    assert not reaches_threshold_at_nyquist(curve) and resolution_at(curve, 0.143, BOX, PIXEL) > 2 * PIXEL


def test_command_writes_relion_files_and_rejects_bad_input(tmp_path, truth):
    from spa.cli import main
    from spa.io.mrc import write_mrc
    from spa.io.star import read_star

    h1, h2 = _halves(lowpass(truth, PIXEL, 6.0, ndim=3), 0.5 * truth.std(), seed=5)
    write_mrc(tmp_path / "h1.mrc", h1, PIXEL)
    write_mrc(tmp_path / "h2.mrc", h2, PIXEL)
    assert main(["mask", "--map", str(tmp_path / "h1.mrc"), "--output", str(tmp_path / "mask.mrc")]) == 0
    out = tmp_path / "pp"
    assert main(["postprocess", "--half1", str(tmp_path / "h1.mrc"), "--half2", str(tmp_path / "h2.mrc"),
                 "--mask", str(tmp_path / "mask.mrc"), "--output-dir", str(out)]) == 0
    for name in ("postprocess.mrc", "postprocess_masked.mrc", "postprocess.star", "postprocess_fsc.png",
                 "postprocess_guinier.png", "figures.json"):
        assert (out / name).stat().st_size > 0, name
    star = read_star(out / "postprocess.star")
    general = star["general"]
    assert 5.0 < float(general["rlnFinalResolution"]) < 9.0  # signal stops at 6 Å
    assert {"rlnFourierShellCorrelationCorrected", "rlnFourierShellCorrelationUnmaskedMaps",
            "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"} <= set(star["fsc"].columns)
    assert "rlnLogAmplitudesSharpened" in star["guinier"].columns
    assert [f["file"] for f in json.loads((out / "figures.json").read_text())] == [
        "postprocess_fsc.png", "postprocess_guinier.png"]
    # a density map given as the mask, and half maps of different boxes: one-line errors, no output folder
    bad = tmp_path / "bad"
    assert main(["postprocess", "--half1", str(tmp_path / "h1.mrc"), "--half2", str(tmp_path / "h2.mrc"),
                 "--mask", str(tmp_path / "h1.mrc"), "--output-dir", str(bad)]) == 1
    write_mrc(tmp_path / "small.mrc", h2[:32, :32, :32], PIXEL)
    assert main(["postprocess", "--half1", str(tmp_path / "h1.mrc"), "--half2", str(tmp_path / "small.mrc"),
                 "--output-dir", str(bad)]) == 1
    assert not bad.exists()


def test_no_bfactor_is_fitted_for_a_map_resolved_only_to_12_angstrom(truth, tmp_path):
    """A map resolved to ~12 Å has no Guinier region between 10 Å and its resolution: no B-factor is fitted
    and the map is not sharpened (fitting the lowest shells instead gave −3000 Å² and NaN maps)."""
    from spa.cli import main
    from spa.io.mrc import read_mrc, write_mrc

    signal = lowpass(truth, PIXEL, 20.0, ndim=3)
    h1, h2 = _halves(signal, signal.std(), seed=6)
    mask, _ = solvent_mask(signal, PIXEL)
    result = postprocess(h1, h2, mask, PIXEL, seed=0)
    assert 11.0 < result.resolution < 20.0
    assert result.bfactor_automatic and not result.bfactor_fitted and result.bfactor_used == 0.0
    assert np.isfinite(result.sharpened).all()
    # the command says so in postprocess.json and on stderr
    write_mrc(tmp_path / "h1.mrc", h1, PIXEL)
    write_mrc(tmp_path / "h2.mrc", h2, PIXEL)
    out = tmp_path / "pp"
    assert main(["postprocess", "--half1", str(tmp_path / "h1.mrc"), "--half2", str(tmp_path / "h2.mrc"),
                 "--output-dir", str(out)]) == 0
    summary = json.loads((out / "postprocess.json").read_text())
    assert summary["bfactor_fitted"] is False and summary["bfactor_used_A2"] == 0.0
    assert np.isfinite(read_mrc(out / "postprocess.mrc")[0]).all()
    titles = [f["title"] for f in json.loads((out / "figures.json").read_text())]
    assert any("no B-factor fitted" in t for t in titles), titles
