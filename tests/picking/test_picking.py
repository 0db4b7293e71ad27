"""Picking and extraction against known truth: spa's simulated micrographs and the independent hb_c2 set."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spa.extraction.extract import ExtractOptions, cut_boxes, extract, normalise
from spa.io.mrc import read_mrc
from spa.picking.coordinates import match_to_truth, read_coordinates, write_coordinate_index
from spa.picking.log import LoGOptions, fourier_bin, pick_log

HB = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "hb_c2"


def _spa(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "spa.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def micrographs(tmp_path_factory):
    out = tmp_path_factory.mktemp("mics")
    run = _spa("simulate", "--kind", "micrographs", "--preset", "demo", "--n-micrographs", "2",
               "--output-dir", str(out))
    assert run.returncode == 0, run.stderr
    return out


def test_log_picker_finds_the_simulated_particles(micrographs):
    totals = np.zeros(3)
    for path in sorted((micrographs / "micrographs").glob("*.mrc")):
        image, pixel = read_mrc(path)
        truth = read_coordinates(micrographs / "truth" / "coordinates" / f"{path.stem}.star")
        picks = pick_log(image.squeeze(), pixel, LoGOptions(90.0, 130.0, threshold=2.0))
        m = match_to_truth(picks, truth, max_distance=0.2 * 120.0 / pixel)  # within a fifth of the diameter
        totals += [m["picks"], m["true"], m["matched"]]
        assert m["rms_px"] < 0.12 * 120.0 / pixel
    precision, recall = totals[2] / totals[0], totals[2] / totals[1]
    # the demo preset has carbon edges and contaminants: LoG's shape tests keep most of their picks out
    print("LoG precision, recall:", precision, recall)
    assert recall >= 0.85 and precision >= 0.85, (precision, recall)


def test_log_shape_tests_drop_an_edge_and_a_contaminant_and_keep_the_particles():
    """A straight step (a carbon edge) puts the band power along a line (roundness → 0); a contaminant has far
    more band power than the other picks.  LoG without the tests picks both; each test drops its own; the
    particle-like discs are kept and centred."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    size, pixel = 512, 2.0
    yy, xx = np.mgrid[:size, :size].astype(float)
    image = rng.normal(0.0, 1.0, (size, size)) + 25.0 * (xx > 400)  # carbon edge along column 400
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (size, size)), 2.0)
    centres = [(100.0, 120.0), (300.0, 110.0), (120.0, 300.0), (260.0, 260.0)]  # (row, column)
    for (r, c), amplitude in zip(centres + [(420.0, 200.0)], [6.0] * 4 + [60.0]):  # the last: a contaminant
        disc = (yy - r) ** 2 + (xx - c) ** 2 < 40**2
        image[disc] += amplitude * texture[disc] / texture.std()
    image = image.astype(np.float32)

    def found(**kw):
        picks = pick_log(image, pixel, LoGOptions(140.0, 180.0, threshold=2.0, **kw))
        return picks[["rlnCoordinateY", "rlnCoordinateX"]].to_numpy()

    def near(points, r, c, radius=8.0):
        return bool(len(points)) and np.hypot(points[:, 0] - r, points[:, 1] - c).min() < radius

    raw = found(recentre=0, min_roundness=0.0, max_energy_ratio=None)
    assert (np.abs(raw[:, 1] - 400) < 5).sum() >= 2 and near(raw, 420, 200, 20)  # both picked without the tests
    no_edge = found(max_energy_ratio=None)
    assert not (np.abs(no_edge[:, 1] - 400) < 40).any() and near(no_edge, 420, 200, 20)
    no_contaminant = found(min_roundness=0.0)
    assert not near(no_contaminant, 420, 200, 20)
    both = found()
    assert len(both) == 4 and all(near(both, r, c) for r, c in centres), both


def test_fourier_bin_keeps_positions_and_grey_values():
    img = np.zeros((64, 96), np.float32)
    img[20:24, 40:44] = 1.0
    binned = fourier_bin(img, 2)
    assert binned.shape == (32, 48)
    r, c = np.unravel_index(np.argmax(binned), binned.shape)
    assert abs(r * 2 - 21.5) <= 1.5 and abs(c * 2 - 41.5) <= 1.5
    assert binned.mean() == pytest.approx(img.mean(), abs=1e-6)


def test_extraction_boxes_edges_normalisation_and_dust():
    rng = np.random.default_rng(0)
    mic = rng.normal(10.0, 2.0, (200, 300)).astype(np.float32)
    mic[100, 150] = -1000.0  # a very dark pixel at a particle centre, and a hot pixel elsewhere
    mic[30, 30] = 1e4
    x = np.array([150.0, 10.0, 290.0, 32.0])
    y = np.array([100.0, 100.0, 100.0, 30.0])
    boxes, keep = cut_boxes(mic, x, y, 32)
    assert keep.tolist() == [True, False, False, True]  # boxes crossing an edge are dropped
    assert boxes[0][16, 16] == -1000.0  # the coordinate is the box's centre pixel B//2
    images, _ = extract(mic, x, y, ExtractOptions(32, dust_sigma=5.0), rng)
    outside = np.hypot(*np.meshgrid(np.arange(32) - 16, np.arange(32) - 16)) > 12
    assert abs(images[1][outside].mean()) < 0.1 and abs(images[1][outside].std() - 1) < 0.1
    assert np.abs(images).max() <= 5.0 + 1e-6  # the dust pixels were replaced
    plain, _ = extract(mic, x, y, ExtractOptions(32, dust_sigma=None, invert=True), rng)
    assert plain[0][16, 16] > 5.0  # inverted: the dark pixel is bright
    small, _ = extract(mic, x, y, ExtractOptions(32, rescaled_box=16), rng)
    assert small.shape == (2, 16, 16)
    with pytest.raises(ValueError):
        normalise(np.zeros((1, 8, 8), np.float32), 10.0, None, rng)


@pytest.mark.skipif(not HB.exists(), reason="../shared/testdata is absent")
def test_independent_micrographs_extracted_at_true_centres_reconstruct_the_truth(tmp_path):
    """hb_c2 (ASPIRE, RELION conventions): extract at the true coordinates with the micrographs' CTF, reconstruct
    with the true poses: the map matches the truth; without the contrast inversion it is the negative."""
    from spa.em.fsc import fsc, resolution_at

    index = tmp_path / "truth_autopick.star"
    write_coordinate_index(index, ["micrographs/mic_0000.mrc", "micrographs/mic_0001.mrc"],
                           [str(HB / "truth_coords" / "mic_0000.star"), str(HB / "truth_coords" / "mic_0001.star")])
    truth, pixel = read_mrc(HB / "truth_class1.mrc")
    maps = {}
    for label, extra in (("inverted", []), ("raw", ["--no-invert"])):
        out = tmp_path / label
        run = _spa("extract", "--micrographs", str(HB / "micrographs_truth.star"), "--coordinates", str(index),
                   "--box", "64", "--output-dir", str(out), *extra)
        assert run.returncode == 0, run.stderr
        run = _spa("reconstruct", "--particles", str(out / "particles.star"), "--output", str(out / "map.mrc"))
        assert run.returncode == 0, run.stderr
        maps[label], _ = read_mrc(out / "map.mrc")
    curve = fsc(maps["inverted"], truth)
    assert resolution_at(curve, 0.5, 64, pixel) < 8.0  # measured 6.0 Å from 132 particles
    assert np.all(fsc(maps["raw"], truth)[1:6] < -0.5)


@pytest.mark.skipif(not HB.exists(), reason="../shared/testdata is absent")
def test_pick_command_on_independent_micrographs(tmp_path):
    run = _spa("pick", "--micrographs", str(HB / "micrographs.star"), "--diameter-min", "50", "--diameter-max", "70",
               "--threshold", "3", "--output-dir", str(tmp_path / "pick"))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "pick" / "picks.png").stat().st_size > 0
    matched = true = 0
    for mic in ("mic_0000", "mic_0001"):
        picks = read_coordinates(tmp_path / "pick" / "coordinates" / f"{mic}_autopick.star")
        m = match_to_truth(picks, read_coordinates(HB / "truth_coords" / f"{mic}.star"), 0.2 * 64 / 1.640625)
        matched, true = matched + m["matched"], true + m["true"]
        assert m["rms_px"] < 6.0  # "within a few pixels" (hb_c2 README)
    assert matched / true >= 0.7  # measured 0.79 of 132 densely packed particles
