"""`spa simulate`: presets for each kind, complete outputs, same seed → same arrays, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from spa.cli import main
from spa.io.mrc import read_mrc
from spa.io.star import read_particles, read_star
from spa.io.zarrstack import open_stack


def _run(*argv) -> int:
    return main(["simulate", *map(str, argv)])


def test_particles_tiny_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert _run("--kind", "particles", "--preset", "tiny", "--output-dir", tmp_path / name, "--seed", 5,
                    "--n-particles", 300, "--conformations", 2, "--junk-fraction", 0.1) == 0
    a = np.asarray(open_stack(tmp_path / "a" / "particles.zarr")[:])
    b = np.asarray(open_stack(tmp_path / "b" / "particles.zarr")[:])
    assert a.shape == (300, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, b)
    for f in ("class001.mrc", "class002.mrc"):
        assert np.array_equal(read_mrc(tmp_path / "a" / "truth" / f)[0], read_mrc(tmp_path / "b" / "truth" / f)[0])
    truth, _ = read_particles(tmp_path / "a" / "truth" / "particles.star")
    assert set(truth["rlnClassNumber"]) == {0, 1, 2}
    # no temporary leftovers beside the outputs
    assert not [p for p in (tmp_path / "a").rglob(".*tmp*")]


def test_other_seed_other_data(tmp_path):
    _run("--kind", "particles", "--preset", "tiny", "--output-dir", tmp_path / "a", "--seed", 1, "--n-particles", 50)
    _run("--kind", "particles", "--preset", "tiny", "--output-dir", tmp_path / "b", "--seed", 2, "--n-particles", 50)
    a = np.asarray(open_stack(tmp_path / "a" / "particles.zarr")[:])
    b = np.asarray(open_stack(tmp_path / "b" / "particles.zarr")[:])
    assert not np.allclose(a, b)


def test_micrographs_and_movies_tiny(tmp_path):
    assert _run("--kind", "micrographs", "--preset", "tiny", "--output-dir", tmp_path / "m", "--seed", 3) == 0
    mics = read_star(tmp_path / "m" / "micrographs.star")["micrographs"]
    assert len(mics) == 2 and (tmp_path / "m" / mics["rlnMicrographName"].iloc[0]).exists()
    assert (tmp_path / "m" / "truth" / "coordinates.star").exists()
    assert _run("--kind", "movies", "--preset", "tiny", "--output-dir", tmp_path / "v", "--seed", 3, "--tiff") == 0
    movies = read_star(tmp_path / "v" / "movies.star")["movies"]
    assert movies["rlnMicrographMovieName"].iloc[0].endswith(".tif")
    assert (tmp_path / "v" / "gain.mrc").exists() and (tmp_path / "v" / "truth" / "motion" / "mov0001.star").exists()


def test_symmetric_assembly_option(tmp_path):
    assert _run("--kind", "particles", "--preset", "tiny", "--output-dir", tmp_path, "--n-particles", 20,
                "--symmetry", "D2") == 0
    vol, _ = read_mrc(tmp_path / "truth" / "class001.mrc")
    # D2 contains the 180° turn about z: (x, y) → (−x, −y) about the centre voxel
    b = vol.shape[0]
    turned = np.roll(vol[:, ::-1, ::-1], (1 - b % 2, 1 - b % 2), axis=(1, 2))
    assert np.corrcoef(vol.ravel(), turned.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("argv", [["--snr", "-1"], ["--box", "4"], ["--junk-fraction", "1.5"], ["--symmetry", "Q7"]])
def test_bad_options_fail_with_one_line(tmp_path, capsys, argv):
    rc = _run("--kind", "particles", "--preset", "tiny", "--output-dir", tmp_path / "x", *argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "error" in err[0]
    assert not (tmp_path / "x" / "particles.star").exists()
