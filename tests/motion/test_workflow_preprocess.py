"""The preprocessing rules through Snakemake: config/examples/movies.yaml (simulate movies -> import ->
motion) end to end, and the user's movie folder processed on the fly (a new movie alone on the next run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spa.io.star import read_micrographs

REPO = Path(__file__).resolve().parents[2]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=workdir)


@pytest.mark.workflow
def test_movies_example_and_a_movie_folder_on_the_fly(tmp_path):
    example = REPO / "config" / "examples" / "movies.yaml"
    target = "results_movies/motion/corrected_micrographs.star"
    run = snakemake(tmp_path, target, "--configfile", str(example))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    table, optics = read_micrographs(tmp_path / target)
    assert len(table) == 3 and optics["rlnMicrographPixelSize"].iloc[0] == 1.5
    assert all((tmp_path / name).exists() for name in table["rlnMicrographNameNoDW"])
    assert (tmp_path / "results_movies" / "motion" / "figures.json").exists()

    # the user's folder: two movies, then a third arrives during the session
    sim = tmp_path / "results_movies" / "simulate_movies"
    data = tmp_path / "data"
    data.mkdir()
    for m in (1, 2):
        shutil.copy(sim / "movies" / f"mov000{m}.mrc", data)
    cfg = tmp_path / "user.yaml"
    cfg.write_text(yaml.safe_dump({
        "results": "results_user",
        "input": {"movies": "data/*.mrc"},
        "import": {"pixel_size": 1.5, "dose_per_frame": 4.0, "gain": str(sim / "gain.mrc")},
        "motion": {"bfactor": 1000, "patches_x": 1, "patches_y": 1},
    }))
    target = "results_user/motion/corrected_micrographs.star"
    run = snakemake(tmp_path, target, "--configfile", str(cfg))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert len(read_micrographs(tmp_path / target)[0]) == 2
    shutil.copy(sim / "movies" / "mov0003.mrc", data)
    run = snakemake(tmp_path, target, "--configfile", str(cfg))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    log = (tmp_path / "results_user" / "logs" / "motion.log").read_text()
    assert "1 movies corrected, 2 done before" in log
    assert len(read_micrographs(tmp_path / target)[0]) == 3
