"""spa ctf and spa consensus ctf as commands: RELION's outputs, figures, resumable per micrograph, a bad
micrograph set aside with its reason while the rest completes, Dask workers giving the in-process result."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from spa.io.mrc import write_mrc
from spa.io.star import read_micrographs, read_star, write_micrographs

CTF_COLUMNS = {"rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfAstigmatism", "rlnCtfFigureOfMerit",
               "rlnCtfMaxResolution", "rlnPhaseShift"}


@pytest.fixture
def spa(capsys, monkeypatch):
    """Run a spa command in-process in a folder; its JSON summary."""
    from spa.cli import main

    def run(*args, cwd):
        monkeypatch.chdir(cwd)
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out.strip().splitlines()[-1])

    return run


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from spa.simulate.micrographs import MicrographSpec, simulate_micrographs

    out = tmp_path_factory.mktemp("mics")
    simulate_micrographs(out, MicrographSpec(n=3, size=384, pixel_size=1.5, diameter=90.0, defocus_min=9000,
                                             defocus_max=16000, astigmatism=800, contaminants=0.0), seed=7)
    return out


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_ctf_resumes_sets_bad_micrographs_aside_and_feeds_the_consensus(simulated, tmp_path, spa):
    work = tmp_path / "w"
    shutil.copytree(simulated, work)
    mics, optics = read_micrographs(work / "micrographs.star")
    # the motion stage's layout: a dose-weighted micrograph and the unweighted sum (what CTF reads)
    mics["rlnMicrographNameNoDW"] = mics["rlnMicrographName"]
    mics["rlnMicrographName"] = [n.replace(".mrc", "_DW.mrc") for n in mics["rlnMicrographName"]]
    mics["rlnAccumMotionTotal"] = [4.0, 6.0, 90.0]
    write_micrographs(work / "first.star", mics.iloc[:2], optics)
    first = spa("ctf", "--micrographs", "first.star", "--method", "ctffind", "--tile", "192", "--output-dir", "A",
                 cwd=work)
    assert (first["estimated"], first["done_before"]) == (2, 0)
    done = sorted((work / "A" / "ctf").rglob("*.star"))
    stamps = [p.stat().st_mtime_ns for p in done]

    # a new micrograph and a broken one join the table: only they are processed
    write_mrc(work / "micrographs" / "nan.mrc", np.full((384, 384), np.nan, np.float32), 1.5)
    broken = mics.iloc[[0]].assign(rlnMicrographName="micrographs/nan_DW.mrc", rlnMicrographNameNoDW="micrographs/nan.mrc")
    write_micrographs(work / "all.star", pd.concat([mics, broken], ignore_index=True), optics)
    second = spa("ctf", "--micrographs", "all.star", "--method", "ctffind", "--tile", "192", "--output-dir", "A",
                  cwd=work)
    assert (second["estimated"], second["done_before"], second["failed"]) == (1, 2, 1)
    assert [p.stat().st_mtime_ns for p in done] == stamps
    table = read_star(work / "A" / "micrographs_ctf.star")["micrographs"]
    assert CTF_COLUMNS <= set(table.columns) and len(table) == 3
    assert "rlnAccumMotionTotal" in table.columns  # the input's columns travel on
    failed = read_star(work / "A" / "micrographs_failed.star")["micrographs"]
    assert list(failed.rlnMicrographName) == ["micrographs/nan_DW.mrc"] and "NaN" in failed.rlnSpaRejectReason[0]
    truth = read_star(work / "truth" / "micrographs_ctf.star")["micrographs"]
    mean = 0.5 * (table.rlnDefocusU + table.rlnDefocusV).to_numpy()
    assert np.allclose(mean, 0.5 * (truth.rlnDefocusU + truth.rlnDefocusV).to_numpy(), rtol=0.015)
    figures = json.loads((work / "A" / "figures.json").read_text())
    assert 2 <= len(figures) <= 5 and all((work / "A" / f["file"]).stat().st_size > 0 for f in figures)

    spa("ctf", "--micrographs", "all.star", "--method", "zeros", "--tile", "192", "--output-dir", "B", cwd=work)
    summary = spa("consensus", "ctf", "--a", "A/micrographs_ctf.star", "--b", "B/micrographs_ctf.star",
                   "--max-fit-resolution", "12", "--output-dir", "C", cwd=work)
    assert (summary["kept"], summary["rejected"]) == (2, 1)
    rejected = read_star(work / "C" / "micrographs_rejected.star")["micrographs"]
    assert list(rejected.rlnSpaRejectReason) == ["drift 90.0 Å (> 50)"]
    kept = read_star(work / "C" / "micrographs_selected.star")["micrographs"]
    assert CTF_COLUMNS <= set(kept.columns) and "rlnMicrographNameNoDW" in kept.columns
    names = [f["file"] for f in json.loads((work / "C" / "figures.json").read_text())]
    assert "ctf_selection_table.png" in names


def test_dask_workers_give_the_in_process_result(simulated, tmp_path):
    from distributed import Client, LocalCluster

    from spa.ctf_estimation.fit2d import CtfSearch
    from spa.ctf_estimation.run import run_ctf

    search = CtfSearch(tile=192)
    star = simulated / "micrographs.star"
    run_ctf(star, tmp_path / "A", "zeros", search, batch_size=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        summary = run_ctf(star, tmp_path / "B", "zeros", search, client=client, batch_size=2)
    assert summary["estimated"] == 3
    a = read_star(tmp_path / "A" / "micrographs_ctf.star")["micrographs"]
    b = read_star(tmp_path / "B" / "micrographs_ctf.star")["micrographs"]
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("extra, message", [
    (["--method", "zeros", "--phase-shift"], "--phase-shift is searched by --method ctffind only"),
    (["--defocus-min", "30000", "--defocus-max", "20000"], "defocus-min < defocus-max"),
])
def test_bad_options_are_one_line_errors_and_write_nothing(simulated, tmp_path, capsys, extra, message):
    from spa.cli import main

    code = main(["ctf", "--micrographs", str(simulated / "micrographs.star"), *extra, "--output-dir",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "micrographs.star" in err
    assert not (tmp_path / "out").exists()
