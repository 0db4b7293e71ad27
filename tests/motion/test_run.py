"""spa import + spa motion as commands: RELION's file layout, resumable runs (a new movie alone is
processed), malformed movies rejected with the reason while the rest completes, Dask workers."""

from __future__ import annotations

import shutil

import mrcfile
import numpy as np
import pytest

from spa.cli import main as spa
from spa.io.mrc import read_mrc
from spa.io.star import read_micrographs, read_star
from spa.simulate.movies import MovieSpec, simulate_movies

MOTION = ["--patches-x", "2", "--patches-y", "2"]


@pytest.fixture(scope="module")
def movies(tmp_path_factory):
    """Three tiny movies (128² × 8 frames) with their gain."""
    folder = tmp_path_factory.mktemp("movies")
    spec = MovieSpec(n=3, size=128, pixel_size=1.5, diameter=40.0, n_frames=8, dose_per_frame=4.0,
                     particles_per_micrograph=3)
    simulate_movies(folder, spec, seed=2)
    return folder


def _import(movies, work, glob="mov000[12].mrc"):
    return spa(["import", "--movies", str(movies / "movies" / glob), "--pixel-size", "1.5",
                "--dose-per-frame", "4", "--gain", str(movies / "gain.mrc"), "--output-dir", str(work / "Import")])


def test_motion_writes_relion_layout_and_resumes(movies, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    live = tmp_path / "live"
    (live / "movies").mkdir(parents=True)
    shutil.copy(movies / "gain.mrc", live / "gain.mrc")
    for m in (1, 2):
        shutil.copy(movies / "movies" / f"mov000{m}.mrc", live / "movies")
    assert _import(live, tmp_path, "*.mrc") == 0
    assert spa(["motion", "--movies", "Import/movies.star", "--output-dir", "MotionCorr", *MOTION]) == 0
    table, optics = read_micrographs("MotionCorr/corrected_micrographs.star")
    assert len(table) == 2 and optics["rlnMicrographPixelSize"].iloc[0] == 1.5
    for col in ("rlnMicrographName", "rlnMicrographNameNoDW", "rlnMicrographMetadata"):
        assert all((tmp_path / p).exists() for p in table[col])
    assert (table["rlnAccumMotionTotal"] > table["rlnSpaMaxFrameShiftAngst"]).all()
    assert (table["rlnSpaMaxFrameShiftAngst"] > 0.5).all()  # Å: these movies drift
    dw, pixel = read_mrc(table["rlnMicrographName"].iloc[0])
    assert dw.shape == (128, 128) and pixel == 1.5
    meta = read_star(table["rlnMicrographMetadata"].iloc[0])
    assert set(meta) == {"general", "global_shift", "local_shift", "local_motion_model"}
    assert meta["general"]["rlnMotionModelVersion"] == 1 and len(meta["local_motion_model"]) == 36
    assert meta["global_shift"]["rlnMicrographFrameNumber"].tolist() == list(range(1, 9))
    assert (tmp_path / "MotionCorr" / "drift.png").exists() and (tmp_path / "MotionCorr" / "figures.json").exists()
    done = {p: (tmp_path / p).stat().st_mtime_ns for p in table["rlnMicrographMetadata"]}

    # a rerun does nothing; a movie that arrives is processed alone
    capsys.readouterr()
    assert spa(["motion", "--movies", "Import/movies.star", "--output-dir", "MotionCorr", *MOTION]) == 0
    assert "0 movies corrected, 2 done before" in capsys.readouterr().err
    shutil.copy(movies / "movies" / "mov0003.mrc", live / "movies")
    assert _import(live, tmp_path, "*.mrc") == 0
    assert spa(["motion", "--movies", "Import/movies.star", "--output-dir", "MotionCorr", *MOTION]) == 0
    assert "1 movies corrected, 2 done before" in capsys.readouterr().err
    table, _ = read_micrographs("MotionCorr/corrected_micrographs.star")
    assert len(table) == 3
    assert all((tmp_path / p).stat().st_mtime_ns == t for p, t in done.items())
    # other options: every movie again
    assert spa(["motion", "--movies", "Import/movies.star", "--output-dir", "MotionCorr", *MOTION,
                "--bfactor", "800"]) == 0
    assert "3 movies corrected, 0 done before" in capsys.readouterr().err


def test_malformed_movies_are_rejected_and_the_rest_completes(movies, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _import(movies, tmp_path, "mov000[12].mrc") == 0
    star = (tmp_path / "Import" / "movies.star").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    with mrcfile.new(bad / "nan.mrc") as m:
        data = np.ones((8, 128, 128), np.float32)
        data[5, 2, 2] = np.nan
        m.set_data(data)
        m.voxel_size = 1.5
    with mrcfile.new(bad / "short.mrc") as m:
        m.set_data(np.ones((6, 128, 128), np.float32))
        m.voxel_size = 1.5
    with mrcfile.new(bad / "wide.mrc") as m:
        m.set_data(np.ones((8, 128, 96), np.float32))
        m.voxel_size = 1.5
    cut = bad / "cut.mrc"
    cut.write_bytes((movies / "movies" / "mov0003.mrc").read_bytes()[:-5000])
    extra = "".join(f"{bad / n}\t1\n" for n in ("nan.mrc", "short.mrc", "wide.mrc", "cut.mrc", "gone.mrc"))
    (tmp_path / "Import" / "movies.star").write_text(star.rstrip("\n") + "\n" + extra)
    assert spa(["motion", "--movies", "Import/movies.star", "--output-dir", "MC", *MOTION, "--batch-size", "3"]) == 0
    table, _ = read_micrographs("MC/corrected_micrographs.star")
    assert len(table) == 2
    rejected = read_star("MC/movies_rejected.star")["movies"]
    reasons = {n.split("/")[-1]: r for n, r in zip(rejected["rlnMicrographMovieName"], rejected["rlnSpaRejectReason"])}
    assert set(reasons) == {"nan.mrc", "short.mrc", "wide.mrc", "cut.mrc", "gone.mrc"}
    assert "NaN" in reasons["nan.mrc"] and "6 frames, expected 8" in reasons["short.mrc"]
    assert "gain reference" in reasons["wide.mrc"] and "truncated" in reasons["cut.mrc"]
    assert "not found" in reasons["gone.mrc"]
    assert not list((tmp_path / "MC").rglob("nan*"))  # no output of a rejected movie


def test_dask_workers_give_the_in_process_result(movies, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    from spa.motion.correct import MotionOptions
    from spa.motion.run import run_motion

    monkeypatch.chdir(tmp_path)
    assert _import(movies, tmp_path, "mov000[12].mrc") == 0
    options = MotionOptions(patches_x=1, patches_y=1)
    run_motion("Import/movies.star", "A", options, batch_size=1)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        summary = run_motion("Import/movies.star", "B", options, client=client, batch_size=1)
    assert summary["processed"] == 2
    a, _ = read_micrographs("A/corrected_micrographs.star")
    b, _ = read_micrographs("B/corrected_micrographs.star")
    for x, y in zip(a["rlnMicrographName"], b["rlnMicrographName"]):
        assert np.array_equal(read_mrc(x)[0], read_mrc(y)[0])
