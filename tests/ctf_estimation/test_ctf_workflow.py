"""The CTF rules through Snakemake: config/examples/micrographs_ctf.yaml (simulate micrographs -> ctf by
both estimators -> consensus) end to end against the simulation's truth, and a folder of the user's
micrographs processed on the fly (a micrograph added during the session is estimated alone)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from spa.io.star import read_micrographs, read_star

REPO = Path(__file__).resolve().parents[2]
TARGET = "ctf/consensus/micrographs_selected.star"


def snakemake(workdir: Path, target: str, *configs: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           target, "--cores", "2", "--configfile", *map(str, configs)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=workdir)


@pytest.mark.slow
def test_micrographs_ctf_example_and_a_folder_on_the_fly(tmp_path):
    example = REPO / "config" / "examples" / "micrographs_ctf.yaml"
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({"simulate": {"micrographs": {"n_micrographs": 3, "micrograph_size": 384}},
                                     "ctf": {"tile": 192}}))
    run = snakemake(tmp_path, f"results_micrographs/{TARGET}", example, small)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    res = tmp_path / "results_micrographs"
    kept, _ = read_micrographs(res / TARGET)
    rejected = read_star(res / "ctf" / "consensus" / "micrographs_rejected.star")["micrographs"]
    assert len(kept) + len(rejected) == 3
    truth = read_star(res / "simulate_micrographs" / "truth" / "micrographs_ctf.star")["micrographs"]
    for method in ("ctffind", "zeros"):
        table, _ = read_micrographs(res / "ctf" / method / "micrographs_ctf.star")
        assert list(table.rlnMicrographName) == list(truth.rlnMicrographName)
        assert np.allclose(table.rlnDefocusU + table.rlnDefocusV, truth.rlnDefocusU + truth.rlnDefocusV, rtol=0.02)
        assert json.loads((res / "ctf" / method / "figures.json").read_text())
    assert json.loads((res / "ctf" / "consensus" / "figures.json").read_text())

    # the user's micrographs: two, then a third arrives during the session
    data = tmp_path / "data"
    data.mkdir()
    for m in (1, 2):
        shutil.copy(res / "simulate_micrographs" / "micrographs" / f"mic000{m}.mrc", data)
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({"results": "results_user", "input": {"micrographs": "data/*.mrc"},
                                    "import": {"pixel_size": 1.5}, "ctf": {"tile": 192}}))
    run = snakemake(tmp_path, f"results_user/{TARGET}", user)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

    def summary(method):
        log = (tmp_path / "results_user" / "logs" / f"ctf_{method}.log").read_text()
        return json.loads(next(line for line in log.splitlines() if line.startswith("{"))), log

    # a micrograph whose fit failed in the first run is tried again, not taken as done
    failed_first = {method: summary(method)[0]["failed"] for method in ("ctffind", "zeros")}
    shutil.copy(res / "simulate_micrographs" / "micrographs" / "mic0003.mrc", data)
    run = snakemake(tmp_path, f"results_user/{TARGET}", user)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for method in ("ctffind", "zeros"):
        second, log = summary(method)
        retried = failed_first[method]
        assert (second["estimated"] + second["failed"], second["done_before"]) == (1 + retried, 2 - retried), log[-500:]
    selected = read_micrographs(tmp_path / "results_user" / TARGET)[0]
    rejected = read_star(tmp_path / "results_user" / "ctf" / "consensus" / "micrographs_rejected.star")["micrographs"]
    assert len(selected) + len(rejected) == 3
