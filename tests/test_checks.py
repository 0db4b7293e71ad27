"""Outputs are checked before any compute, and bad input leaves no empty output folder behind.

Every command, through ``spa.cli``: an output folder whose path runs through a file, and a read-only
output folder, are one-line errors naming the folder (not a temporary file) before anything is read;
a particle STAR with some CTF columns but not all is an error naming the file and the missing columns
(not a run without CTF); NaN images are an error naming the image file and the image, in-process and
from Dask worker processes alike, and the output folder the command made is gone again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

import numpy as np
import pytest

from spa.cli import main as spa_main
from spa.io.star import read_star, write_star


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """40 simulated particles (box 24) as a RELION .mrcs stack, with poses (the truth STAR) and a map."""
    root = tmp_path_factory.mktemp("sim")
    assert spa_main(["simulate", "--preset", "tiny", "--n-particles", "40", "--box", "24", "--seed", "2",
                     "--output-dir", str(root / "sim")]) == 0
    assert spa_main(["convert", "--particles", str(root / "sim" / "truth" / "particles.star"), "--to", "mrcs",
                     "--output-dir", str(root / "relion")]) == 0
    return root


def _copy_set(sim, dest, drop=(), nan_image=None):
    """The RELION set copied into ``dest`` (its own stack), without the columns ``drop``, and with NaN
    pixels in image ``nan_image`` (1-based) if given."""
    dest.mkdir()
    shutil.copy(sim / "relion" / "particles.mrcs", dest / "particles.mrcs")
    blocks = read_star(sim / "relion" / "particles.star")
    blocks["particles"] = blocks["particles"].drop(columns=list(drop))
    write_star(dest / "particles.star", blocks)
    if nan_image is not None:
        import mrcfile

        with mrcfile.mmap(dest / "particles.mrcs", mode="r+") as m:
            m.data[nan_image - 1, 3, 4] = np.nan
    return dest / "particles.star"


def _commands(star, ref, out):
    """Each command's arguments with ``out`` as its output folder (or the folder of its output file)."""
    return {
        "simulate": ["simulate", "--preset", "tiny", "--n-particles", "20", "--output-dir", out],
        "convert": ["convert", "--particles", star, "--to", "zarr", "--output-dir", out],
        "reconstruct": ["reconstruct", "--particles", star, "--output", f"{out}/map.mrc"],
        "class2d": ["class2d", "--particles", star, "--classes", "2", "--iter", "1", "--output-dir", out],
        "initial-model": ["initial-model", "--particles", star, "--iter", "2", "--output-dir", out],
        "class3d": ["class3d", "--particles", star, "--reference", ref, "--classes", "2", "--iter", "1",
                    "--output-dir", out],
        "refine3d": ["refine3d", "--particles", star, "--reference", ref, "--max-iter", "1", "--output-dir", out],
        "select": ["select", "--class2d-dir", out + "_class2d", "--auto", "--output-dir", out],
        "fsc": ["fsc", "--map1", ref, "--map2", ref, "--output-dir", out],
        "consensus": ["consensus", "classes", "--runs", star, star, "--output-dir", out],
    }


def _fails(argv, capsys, *words):
    """The command exits 1 with one line on stderr that holds every one of ``words``; returns the line.
    (A Dask cluster's start-up line — its dashboard address — is information, not part of the error.)"""
    rc = spa_main([str(a) for a in argv])
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("dask: "))
    assert rc == 1, err
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert str(w) in err, (w, err)
    assert "Traceback" not in err and ".tmp" not in err
    return err


# ---------------------------------------------------------------- the output folder, first of all


@pytest.mark.parametrize("command", list(_commands("p", "r", "o")))
def test_an_output_path_through_a_file_is_refused_first(tmp_path, capsys, command):
    """Refused before anything is read: the inputs here do not even exist."""
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder's parent should be")
    out = str(blocker / "out")
    argv = _commands(tmp_path / "missing.star", tmp_path / "missing.mrc", out)[command]
    line = _fails(argv, capsys, blocker, "is a file, not a folder")
    assert "missing" not in line
    assert blocker.is_file()


def test_an_output_folder_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "out"
    target.write_text("")
    _fails(_commands("p.star", "r.mrc", str(target))["class2d"], capsys, target, "is a file, not a folder")
    _fails(["reconstruct", "--particles", "p.star", "--output", str(tmp_path)], capsys, tmp_path, "is a folder")


@contextlib.contextmanager
def read_only(folder):
    """``folder`` read-only, even for root (the immutable attribute), or the test is skipped."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("running as root, and no way to make a folder read-only here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("command", ["convert", "class2d", "reconstruct", "simulate"])
def test_a_read_only_output_folder_is_named(sim, tmp_path, capsys, command):
    star = sim / "relion" / "particles.star"
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")
    deeper = out / "new" / "deeper"
    with read_only(out):
        argv = _commands(star, sim / "sim" / "truth" / "class001.mrc", str(out))[command]
        _fails(argv, capsys, f"{out}: cannot write in the ", "folder")
        # a folder still to be made in it: the folder that cannot be written is named
        argv = _commands(star, sim / "sim" / "truth" / "class001.mrc", str(deeper))[command]
        _fails(argv, capsys, f"{out}: cannot make the ", str(deeper), "in this folder")
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"]


# ---------------------------------------------------------------- CTF columns: all or none


@pytest.mark.parametrize("command", ["class2d", "initial-model", "class3d", "refine3d", "reconstruct"])
def test_some_ctf_columns_but_not_all_is_an_error(sim, tmp_path, capsys, command):
    star = _copy_set(sim, tmp_path / "in", drop=("rlnDefocusV", "rlnDefocusAngle"))
    out = tmp_path / "out"
    argv = _commands(star, sim / "sim" / "truth" / "class001.mrc", str(out))[command]
    _fails(argv, capsys, star, "rlnDefocusV", "rlnDefocusAngle")
    assert not out.exists()


def test_no_ctf_columns_at_all_runs_without_ctf_where_a_stage_can(sim, tmp_path, capsys):
    star = _copy_set(sim, tmp_path / "in", drop=("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"))
    out = tmp_path / "out"
    assert spa_main(["class2d", "--particles", str(star), "--classes", "2", "--iter", "1", "--noise-decoys", "0",
                     "--output-dir", str(out)]) == 0
    assert "running without CTF correction" in capsys.readouterr().err
    _fails(_commands(star, sim / "sim" / "truth" / "class001.mrc", str(tmp_path / "r"))["refine3d"], capsys,
           star, "no CTF columns", "--no-ctf")


# ---------------------------------------------------------------- NaN images


@pytest.mark.parametrize("command,workers", [("class2d", 1), ("refine3d", 1), ("convert", 1), ("reconstruct", 1),
                                             ("reconstruct", 2)])
def test_nan_images_name_the_image_and_leave_no_output_folder(sim, tmp_path, capsys, command, workers):
    star = _copy_set(sim, tmp_path / "in", nan_image=7)
    out = tmp_path / "results" / "out"
    argv = _commands(star, sim / "sim" / "truth" / "class001.mrc", str(out))[command] + ["--workers", str(workers)]
    if command == "convert":
        argv = argv[:-2]  # no Dask
    _fails(argv, capsys, tmp_path / "in" / "particles.mrcs", "image 7", "NaN")
    assert not (tmp_path / "results").exists()


def test_a_folder_that_was_there_before_stays(sim, tmp_path, capsys):
    star = _copy_set(sim, tmp_path / "in", nan_image=1)
    out = tmp_path / "out"
    out.mkdir()
    _fails(_commands(star, "r.mrc", str(out))["class2d"], capsys, "image 1", "NaN")
    assert out.is_dir() and not any(out.iterdir())


def test_a_write_into_a_read_only_folder_names_the_folder_not_a_temporary(tmp_path):
    import pandas as pd

    from spa.errors import SpaInputError

    out = tmp_path / "out"
    out.mkdir()
    with read_only(out), pytest.raises(SpaInputError) as err:
        write_star(out / "table.star", {"t": pd.DataFrame({"rlnClassNumber": [1]})})
    assert str(err.value).startswith(f"{out}: cannot write in the folder of table.star")
    assert ".tmp" not in str(err.value)
    # a write that fails leaves no folder it made behind
    with pytest.raises(TypeError):
        write_star(tmp_path / "new" / "deeper" / "t.star", {"t": object()})
    assert not (tmp_path / "new").exists()


def test_a_resumed_run_removes_what_a_killed_write_left(tmp_path):
    """A run killed while it wrote a checkpoint leaves the temporary beside it; the next run removes it."""
    from spa.class2d.classify import Class2DOptions, run_class2d
    from spa.class2d.synthetic import make_particles, make_views
    from spa.em.engine import ArrayImages

    images, table = make_particles(make_views(2, 24, 4.0, 70, 1), 40, 4.0, snr=0.5, rng=2)
    opts = Class2DOptions(n_classes=2, n_iter=1, noise_decoys=0, seed=1)
    run_class2d(table, ArrayImages(images, 4.0), opts, tmp_path, log=None)
    stale = tmp_path / ".run_it002_optimiser.npz.k3x_9q0a.tmp.npz"
    stale.write_bytes(b"half a checkpoint")
    lines = []
    opts.n_iter = 2
    model, _, _ = run_class2d(table, ArrayImages(images, 4.0), opts, tmp_path, log=lines.append, resume=True)
    assert model.iteration == 2 and not stale.exists()
    assert "class2d: continuing after iteration 1" in lines
    assert any(stale.name in line for line in lines)
