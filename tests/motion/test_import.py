"""spa import: optics groups from globs, gain oriented and checked, bad movies set aside with the reason,
micrographs from a glob or a STAR."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import tifffile

from spa.cli import main as spa
from spa.errors import SpaInputError
from spa.io.mrc import read_mrc
from spa.io.star import read_micrographs, read_optics_table, read_star
from spa.motion.importing import Group, import_movies, make_groups


def _movie(path, n=5, shape=(16, 24), tiff=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(len(str(path))).poisson(2.0, size=(n, *shape)).astype(np.uint16)
    if tiff:
        tifffile.imwrite(path, data, photometric="minisblack")
    else:
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(data)
            m.voxel_size = 1.0
    return path


def test_two_globs_make_two_optics_groups_and_bad_movies_are_set_aside(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(3):
        _movie(tmp_path / "a" / f"m{i}.mrc")
    _movie(tmp_path / "a" / "short.mrc", n=4)  # one frame missing
    (tmp_path / "a" / "cut.mrc").write_bytes((tmp_path / "a" / "m0.mrc").read_bytes()[:1500])
    for i in range(2):
        _movie(tmp_path / "b" / f"t{i}.tif", tiff=True, shape=(24, 16))
    gain = np.ones((16, 24), np.float32)
    gain[0, -1] = 2.0
    with mrcfile.new(tmp_path / "gain.mrc") as m:
        m.set_data(gain.T[::-1].copy())  # the gain as stored: turned by 90° relative to the movies
        m.voxel_size = 1.0
    cfg = tmp_path / "c.yaml"
    cfg.write_text("input:\n  movies:\n    - glob: a/*.mrc\n      gain: gain.mrc\n      gain_rotation: 1\n"
                   "    - glob: b/*.tif\n      pixel_size: 0.5\n      dose_per_frame: 2.0\n"
                   "import:\n  pixel_size: 1.1\n  dose_per_frame: 1.5\n  voltage: 200\n")
    assert spa(["import", "--config", str(cfg), "--output-dir", "Import"]) == 0
    movies, optics = read_optics_table("Import/movies.star", "movies", "rlnMicrographOriginalPixelSize")
    assert movies["rlnMicrographMovieName"].tolist() == ["a/m0.mrc", "a/m1.mrc", "a/m2.mrc", "b/t0.tif", "b/t1.tif"]
    assert movies["rlnOpticsGroup"].tolist() == [1, 1, 1, 2, 2]
    assert optics["rlnMicrographOriginalPixelSize"].tolist() == [1.1, 0.5]
    assert optics["rlnMicrographDoseRate"].tolist() == [1.5, 2.0]
    assert optics["rlnVoltage"].tolist() == [200.0, 200.0] and optics["rlnImageSizeZ"].tolist() == [5, 5]
    oriented, _ = read_mrc(optics["rlnMicrographGainName"].iloc[0])
    assert np.array_equal(oriented, gain)  # turned back onto the movies' frames
    assert optics["rlnMicrographGainName"].iloc[1] == "None"
    rejected = read_star("Import/movies_rejected.star")["movies"]
    reasons = dict(zip(rejected["rlnMicrographMovieName"], rejected["rlnSpaRejectReason"]))
    assert set(reasons) == {"a/short.mrc", "a/cut.mrc"}
    assert "4 frames" in reasons["a/short.mrc"] and "truncated" in reasons["a/cut.mrc"]


def test_a_gain_that_does_not_fit_and_an_empty_glob_are_errors(tmp_path):
    _movie(tmp_path / "mov" / "m.mrc")
    with mrcfile.new(tmp_path / "g.mrc") as m:
        m.set_data(np.ones((24, 16), np.float32))
        m.voxel_size = 1.0
    group = Group(str(tmp_path / "mov" / "*.mrc"), "g1", 1.0, 300.0, 2.7, 0.1, 1.0, gain=str(tmp_path / "g.mrc"))
    with pytest.raises(SpaInputError, match="g.mrc.*24 x 16.*turned by 90"):
        import_movies([group], tmp_path / "out")
    assert not (tmp_path / "out" / "movies.star").exists()
    with pytest.raises(SpaInputError, match="matches no file"):
        import_movies(make_groups(str(tmp_path / "*.tiff"), {"pixel_size": 1.0}), tmp_path / "out")
    with pytest.raises(SpaInputError, match="pixel size"):
        make_groups("x/*.mrc", {})


def test_micrographs_from_a_glob_and_from_a_star(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mics").mkdir()
    for i in range(2):
        with mrcfile.new(tmp_path / "mics" / f"m{i}.mrc") as m:
            m.set_data(np.zeros((32, 32), np.float32))
            m.voxel_size = 1.3
    assert spa(["import", "--micrographs", "mics/*.mrc", "--cs", "2.0", "--output-dir", "I1"]) == 0
    table, optics = read_micrographs("I1/micrographs.star")
    assert table["rlnMicrographName"].tolist() == ["mics/m0.mrc", "mics/m1.mrc"]
    assert optics["rlnMicrographPixelSize"].iloc[0] == pytest.approx(1.3)  # from the MRC header
    assert optics["rlnSphericalAberration"].iloc[0] == 2.0
    assert spa(["import", "--micrographs", "I1/micrographs.star", "--output-dir", "I2"]) == 0
    again, _ = read_micrographs("I2/micrographs.star")
    assert again["rlnMicrographName"].tolist() == table["rlnMicrographName"].tolist()
