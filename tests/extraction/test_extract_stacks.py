"""spa extract against the simulator's truth: particles at the true centres, phase flipping, re-extraction with
recentring, Zarr and MRCS stacks, resuming, and bad input."""

import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.fft as sfft

from spa.cli import main
from spa.ctf import ctf_2d, ctf_from_table
from spa.io.images import ParticleImages
from spa.io.mrc import read_mrc, write_mrc
from spa.io.star import read_particles, read_star, write_particles, write_star
from spa.picking.coordinates import write_coordinate_index
from spa.simulate.micrographs import MicrographSpec, molecules_for, simulate_micrographs

SPEC = MicrographSpec(n=2, size=512, pixel_size=1.5, diameter=90.0, carbon_fraction=0.0, contaminants=0.0)  # SNR 0.05
SEED = 1
BOX = SPEC.particle_box  # 92 px


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    simulate_micrographs(root / "sim", SPEC, seed=SEED)
    # the CTF truth beside micrographs.star, so its micrograph names resolve (as the CTF stage's output would)
    shutil.copy(root / "sim" / "truth" / "micrographs_ctf.star", root / "sim" / "micrographs_ctf.star")
    names = [f"micrographs/mic{m:04d}.mrc" for m in (1, 2)]
    write_coordinate_index(root / "truth_autopick.star", names,
                           [str(root / "sim" / "truth" / "coordinates" / f"mic{m:04d}.star") for m in (1, 2)])
    return root


def _extract(sim, out, *extra, micrographs=None, coordinates=None):
    source = ["--reextract", str(extra[1])] if extra[:1] == ("--reextract",) else \
        ["--coordinates", str(coordinates or sim / "truth_autopick.star")]
    extra = extra[2:] if extra[:1] == ("--reextract",) else extra
    return main(["extract", "--micrographs", str(micrographs or sim / "sim" / "micrographs_ctf.star"),
                 *source, "--box", str(BOX), "--output-dir", str(out), *extra])


def _images(star):
    table, optics = read_particles(star)
    return table, optics, ParticleImages(table, star).read_all()


def _clean_projections(table, box, absolute=False):
    """The particles' noise-free images as the micrograph holds them after inversion: CTF ⊛ projection (on a
    padded box, then cropped: the CTF spreads signal beyond the box)."""
    from spa.geometry.euler import euler_to_matrix
    from spa.simulate.projection import project_molecule

    pad = 2 * box
    rot = euler_to_matrix(table.rlnAngleRot.to_numpy(), table.rlnAngleTilt.to_numpy(), table.rlnAnglePsi.to_numpy())
    proj = project_molecule(molecules_for(SPEC, SEED)[0], rot, pad, SPEC.pixel_size)
    ctf = ctf_2d(pad, SPEC.pixel_size, table.rlnDefocusU.to_numpy(), table.rlnDefocusV.to_numpy(),
                 table.rlnDefocusAngle.to_numpy(), SPEC.voltage, SPEC.cs, SPEC.amplitude_contrast)
    ctf = np.abs(ctf) if absolute else ctf
    image = sfft.fftshift(sfft.irfft2(sfft.rfft2(sfft.ifftshift(proj, axes=(1, 2))) * ctf, s=(pad, pad)), axes=(1, 2))
    lo = pad // 2 - box // 2
    return image[:, lo:lo + box, lo:lo + box]


def _correlation(a, b):
    a = a - a.mean(axis=(1, 2), keepdims=True)
    b = b - b.mean(axis=(1, 2), keepdims=True)
    return (a * b).sum(axis=(1, 2)) / np.sqrt((a * a).sum(axis=(1, 2)) * (b * b).sum(axis=(1, 2)))


def test_particles_at_true_centres_correlate_with_clean_projections(sim):
    out = sim / "zarr"
    assert _extract(sim, out, "--chunk", "16") == 0
    table, optics, images = _images(out / "particles.star")
    assert sorted(p.name for p in out.iterdir()) == ["figures.json", "particles.png", "particles.star",
                                                     "particles.zarr"]
    assert read_star(out / "particles.star")["particles"].rlnImageName.iloc[0] == "000001@particles.zarr"
    assert len(table) == 42 and int(optics.rlnCtfDataArePhaseFlipped.iloc[0]) == 0
    clean = _clean_projections(table, BOX)
    own = _correlation(images, clean)
    # the ceiling is √(SNR/(1+SNR)) = 0.22 at SNR 0.05 (less the ice texture): measured 0.174 ± 0.004
    assert own.mean() > 0.14 and (own > 0).all()
    assert own.mean() > _correlation(images, np.roll(clean, 1, axis=0)).mean() + 0.1  # not any particle's image
    # the coordinate is the box centre: the correlation of all particles peaks at zero shift
    shifted = {(dy, dx): _correlation(images, np.roll(clean, (dy, dx), axis=(1, 2))).mean()
               for dy in range(-2, 3) for dx in range(-2, 3)}
    assert max(shifted, key=shifted.get) == (0, 0)
    r = np.hypot(*np.meshgrid(np.arange(BOX) - BOX // 2, np.arange(BOX) - BOX // 2))
    background = images[:, r > 0.75 * BOX / 2]
    assert abs(background.mean()) < 0.01 and abs(background.std() - 1.0) < 0.01


def test_phase_flipped_particles_hold_abs_ctf_and_the_engine_models_it(sim):
    from spa.em.engine import particle_arrays, particle_ctfs
    from spa.reconstruct import reconstruct_table
    from spa.em.fsc import fsc

    out = sim / "flipped"
    assert _extract(sim, out, "--phase-flip") == 0
    table, optics, images = _images(out / "particles.star")
    assert int(optics.rlnCtfDataArePhaseFlipped.iloc[0]) == 1
    with_abs = _correlation(images, _clean_projections(table, BOX, absolute=True)).mean()
    with_ctf = _correlation(images, _clean_projections(table, BOX)).mean()
    assert with_abs > with_ctf + 0.02  # measured 0.173 vs 0.135 (± 0.004)
    # every CTF the stages use is |CTF| for these particles
    expected = np.abs(ctf_2d(BOX, SPEC.pixel_size, table.rlnDefocusU.to_numpy(), table.rlnDefocusV.to_numpy(),
                             table.rlnDefocusAngle.to_numpy(), SPEC.voltage, SPEC.cs, SPEC.amplitude_contrast))
    np.testing.assert_allclose(ctf_from_table(table, BOX), expected, atol=1e-6)
    np.testing.assert_allclose(particle_ctfs(particle_arrays(table, SPEC.pixel_size), BOX, SPEC.pixel_size),
                               expected, atol=1e-6)
    # reconstructed with the true poses, the flipped particles match the truth as well as the unflipped do,
    # and better than when their CTF is corrected twice (the flag ignored)
    truth, _ = read_mrc(sim / "sim" / "truth" / "class001.mrc")
    assert _extract(sim, sim / "plain") == 0
    plain, _ = read_particles(sim / "plain" / "particles.star")
    scores = {}
    for label, rows, star in (("plain", plain, sim / "plain" / "particles.star"),
                              ("flipped", table, out / "particles.star"),
                              ("flag ignored", table.assign(rlnCtfDataArePhaseFlipped=0), out / "particles.star")):
        rows = rows.assign(rlnOriginXAngst=0.0, rlnOriginYAngst=0.0)
        scores[label] = fsc(reconstruct_table(rows, star)[0], truth)[2:25].mean()
    assert scores["flipped"] > scores["plain"] - 0.02  # measured 0.322 and 0.322 (FSC with the truth, shells 2-24)
    assert scores["flipped"] > scores["flag ignored"] + 0.05  # measured 0.235


def test_reextraction_recentres_on_the_origins(sim):
    """Extract at coordinates off the true centres by known shifts d; with origins d (the particle sits at box
    centre − origin), re-extraction centres each box on the truth: the same images as extracting there."""
    truth = pd.concat([read_particles_coordinates(sim, m) for m in (1, 2)], ignore_index=True)
    rng = np.random.default_rng(3)
    d = rng.integers(-6, 7, (len(truth), 2)).astype(float)
    off = sim / "off"
    coords = []
    for m in (1, 2):
        rows = truth[truth.mic == m]
        moved = rows.assign(rlnCoordinateX=rows.rlnCoordinateX + d[rows.index, 0],
                            rlnCoordinateY=rows.rlnCoordinateY + d[rows.index, 1]).drop(columns="mic")
        write_star(off / f"mic{m:04d}.star", {"": moved})
        coords.append(str(off / f"mic{m:04d}.star"))
    write_coordinate_index(off / "autopick.star", [f"micrographs/mic{m:04d}.mrc" for m in (1, 2)], coords)
    assert _extract(sim, off / "extract", "--box", "64", coordinates=off / "autopick.star") == 0
    particles, optics = read_particles(off / "extract" / "particles.star")
    assert len(particles) == len(truth)  # no shifted box crosses an edge here
    d[0] += [0.4, -0.3]  # a sub-pixel part of the refined offset: kept in the new origin
    particles["rlnOriginXAngst"] = d[:, 0] * SPEC.pixel_size
    particles["rlnOriginYAngst"] = d[:, 1] * SPEC.pixel_size
    write_particles(off / "refined.star", particles, optics)

    assert _extract(sim, off / "re", "--reextract", off / "refined.star", "--box", "64", "--rescale", "32") == 0
    assert main(["extract", "--micrographs", str(sim / "sim" / "micrographs_ctf.star"), "--coordinates",
                 str(sim / "truth_autopick.star"), "--box", "64", "--rescale", "32",
                 "--output-dir", str(off / "direct")]) == 0
    re, re_optics, re_images = _images(off / "re" / "particles.star")
    direct, _, direct_images = _images(off / "direct" / "particles.star")
    assert float(re_optics.rlnImagePixelSize.iloc[0]) == pytest.approx(3.0) and re_images.shape[1:] == (32, 32)
    np.testing.assert_array_equal(re_images, direct_images)
    expected_x = truth.rlnCoordinateX.to_numpy().copy()
    expected_y = truth.rlnCoordinateY.to_numpy().copy()
    expected_x[0] -= 0.4
    expected_y[0] += 0.3
    np.testing.assert_allclose(re.rlnCoordinateX, expected_x, atol=1e-9)
    np.testing.assert_allclose(re.rlnCoordinateY, expected_y, atol=1e-9)
    origin = np.zeros((len(re), 2))
    origin[0] = [0.4 * SPEC.pixel_size, -0.3 * SPEC.pixel_size]  # rint(new) − new, in Å
    np.testing.assert_allclose(re[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), origin, atol=1e-9)
    np.testing.assert_allclose(re.rlnAnglePsi, truth.rlnAnglePsi)  # the particles keep their other columns


def read_particles_coordinates(sim, m):
    from spa.picking.coordinates import read_coordinates

    return read_coordinates(sim / "sim" / "truth" / "coordinates" / f"mic{m:04d}.star").assign(mic=m)


def test_zarr_and_mrcs_stacks_hold_the_same_images(sim, monkeypatch):
    assert _extract(sim, sim / "z", "--rescale", "46", "--chunk", "8") == 0
    assert _extract(sim, sim / "m", "--rescale", "46", "--format", "mrcs") == 0
    moved = shutil.copytree(sim / "m", sim / "elsewhere" / "m")  # relative image names: the folder can move
    monkeypatch.chdir(sim / "elsewhere")
    z_table, _, z_images = _images(sim / "z" / "particles.star")
    m_table, _, m_images = _images(moved / "particles.star")
    assert z_images.shape == (42, 46, 46)
    np.testing.assert_array_equal(z_images, m_images)
    pd.testing.assert_frame_equal(z_table.drop(columns="rlnImageName"), m_table.drop(columns="rlnImageName"))


@pytest.mark.filterwarnings("ignore:Data array contains NaN values")
def test_resumes_after_a_bad_micrograph_without_half_written_output(sim, tmp_path, capsys):
    work = shutil.copytree(sim / "sim", tmp_path / "sim")
    index = tmp_path / "autopick.star"
    write_coordinate_index(index, [f"micrographs/mic{m:04d}.mrc" for m in (1, 2)],
                           [str(work / "truth" / "coordinates" / f"mic{m:04d}.star") for m in (1, 2)])
    mics = work / "micrographs_ctf.star"
    good, pixel = read_mrc(work / "micrographs" / "mic0002.mrc")
    bad = good.copy()
    bad[10, 10] = np.nan
    write_mrc(work / "micrographs" / "mic0002.mrc", bad, pixel)
    out = tmp_path / "out"
    args = ["--chunk", "4"]
    assert _extract(sim, out, *args, micrographs=mics, coordinates=index) == 1
    err = capsys.readouterr().err
    assert "mic0002.mrc" in err and "NaN" in err
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []  # nothing half-written
    n1 = len(read_particles_coordinates(sim, 1))  # mic0001's particles: its whole chunks were kept
    assert len(list((out / ".extract" / "done").iterdir())) == n1 // 4

    write_mrc(work / "micrographs" / "mic0002.mrc", good, pixel)
    assert _extract(sim, out, *args, micrographs=mics, coordinates=index) == 0
    summary = capsys.readouterr().out
    assert f'"written": {42 - 4 * (n1 // 4)}' in summary  # only the chunks not done before
    _, _, resumed = _images(out / "particles.star")
    assert _extract(sim, tmp_path / "fresh", *args, micrographs=mics, coordinates=index) == 0
    _, _, fresh = _images(tmp_path / "fresh" / "particles.star")
    np.testing.assert_array_equal(resumed, fresh)
    assert not (out / ".extract").exists()
    capsys.readouterr()
    assert _extract(sim, out, *args, micrographs=mics, coordinates=index) == 0
    assert '"written": 0' in capsys.readouterr().out  # finished with the same inputs: nothing redone
    assert _extract(sim, out, *args, "--dust", "4", micrographs=mics, coordinates=index) == 0
    assert '"written": 42' in capsys.readouterr().out  # other options: every chunk redone


def test_bad_input_names_the_file(sim, tmp_path, capsys):
    work = shutil.copytree(sim / "sim", tmp_path / "sim")
    mics = work / "micrographs_ctf.star"
    index = tmp_path / "autopick.star"
    coords = [str(work / "truth" / "coordinates" / f"mic{m:04d}.star") for m in (1, 2)]
    write_coordinate_index(index, [f"micrographs/mic{m:04d}.mrc" for m in (1, 2)], coords)
    out = tmp_path / "out"

    def fails(*extra, micrographs=mics, coordinates=index):
        assert _extract(sim, out, *extra, micrographs=micrographs, coordinates=coordinates) == 1
        assert not out.exists()  # the folder the run made is removed again: no output at all
        return capsys.readouterr().err

    data = (work / "micrographs" / "mic0002.mrc").read_bytes()
    (work / "micrographs" / "mic0002.mrc").write_bytes(data[: len(data) // 2])  # corrupt: truncated
    err = fails()
    assert "mic0002.mrc" in err and "truncated" in err
    (work / "micrographs" / "mic0002.mrc").write_bytes(data)
    write_star(coords[0], {"": pd.DataFrame({"rlnCoordinateX": [100.0], "rlnFoo": [1.0]})})
    err = fails()
    assert "mic0001.star" in err and "rlnCoordinateY" in err
    write_star(coords[0], {"": pd.DataFrame({"rlnCoordinateX": [100.0], "rlnCoordinateY": [np.nan]})})
    err = fails()
    assert "mic0001.star" in err and "finite" in err
    err = fails("--phase-flip", micrographs=work / "micrographs.star")  # micrographs without CTF
    assert "micrographs.star" in err and "CTF" in err
    particles = pd.DataFrame({"rlnCoordinateX": [100.0], "rlnCoordinateY": [100.0], "rlnOpticsGroup": [1]})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                           "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [1.5]})
    write_particles(tmp_path / "no_mic.star", particles, optics)
    assert _extract(sim, out, "--reextract", tmp_path / "no_mic.star", micrographs=mics) == 1
    err = capsys.readouterr().err
    assert "no_mic.star" in err and "rlnMicrographName" in err and not out.exists()
