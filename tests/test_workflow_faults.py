"""A whole Snakemake run killed with SIGKILL in the middle of a stage, then run again.

The tiny example up to the refined map (simulate → class2d → select → initial_model → refine3d),
killed (the process group: Snakemake and the `spa refine3d` it runs) once refine3d has checkpointed
its first iteration.  Run again with the same command — after `--unlock`, which Snakemake asks for
because its lock outlives a killed process — the finished stages are not redone (their files keep
their modification times), refine3d continues from its checkpoint instead of starting over, no file
is corrupt or left half-written, and the final map equals that of an uninterrupted run bit for bit
(one BLAS thread).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "config" / "examples" / "tiny.yaml"
RESULTS = yaml.safe_load(TINY.read_text())["results"]
TARGET = f"{RESULTS}/refine3d/run_class001.mrc"
FINISHED_STAGES = ("simulate", "class2d", "select", "initial_model")


def command(workdir: Path, *extra: str) -> list[str]:
    """The user's command (the local profile's --rerun-incomplete included), the target before --configfile."""
    return [sys.executable, "-m", "snakemake", TARGET, "--snakefile", str(REPO / "Snakefile"), "--directory",
            str(workdir), "--cores", "2", "--rerun-incomplete", *extra, "--configfile", str(TINY)]


def environment() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run(workdir: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(command(workdir, *extra), cwd=workdir, env=environment(), capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` → its modification time (ns)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_nothing_corrupt(results: Path) -> None:
    """Every STAR, MRC and checkpoint reads back; no temporary file is left beside them."""
    from spa.io.mrc import read_mrc
    from spa.io.star import read_star

    leftovers = [p for p in results.rglob(".*") if ".tmp" in p.name]
    assert not leftovers, leftovers
    for p in results.rglob("*"):
        if p.suffix == ".star":
            read_star(p)
        elif p.suffix in (".mrc", ".mrcs") and p.is_file():
            read_mrc(p)
        elif p.suffix == ".npz":
            with np.load(p) as z:
                [z[k] for k in z.files]


@pytest.mark.slow
@pytest.mark.workflow
def test_a_run_killed_mid_stage_continues_and_ends_as_an_uninterrupted_one(tmp_path):
    from spa.io.mrc import read_mrc
    from spa.io.star import read_particles

    killed = tmp_path / "killed"
    killed.mkdir()
    log = killed / RESULTS / "logs" / "refine3d.log"
    with open(tmp_path / "first.txt", "w") as out:
        first = subprocess.Popen(command(killed), cwd=killed, env=environment(), stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (log.exists() and "refine3d: iteration 1" in log.read_text()):
            assert first.poll() is None, (tmp_path / "first.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "refine3d never finished its first iteration"
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # Snakemake and its jobs: one process group
        first.wait()
    results = killed / RESULTS
    assert not (results / "refine3d" / "run_class001.mrc").exists()
    checkpoint = results / "refine3d" / "run_it001_optimiser.npz"
    assert checkpoint.is_file()
    before = {stage: files(results / stage) for stage in FINISHED_STAGES}
    checkpoint_time = checkpoint.stat().st_mtime_ns

    run(killed, "--unlock")
    again = run(killed)
    ran = again.stdout + again.stderr
    assert "rule refine3d:" in ran
    for stage in FINISHED_STAGES:
        assert f"rule {stage}:" not in ran, stage
        assert files(results / stage) == before[stage], f"{stage} was redone"
    assert "refine3d: continuing after iteration 1" in log.read_text()
    assert checkpoint.stat().st_mtime_ns == checkpoint_time
    assert_nothing_corrupt(results)

    whole = tmp_path / "uninterrupted"
    whole.mkdir()
    run(whole)
    for name in ("run_class001.mrc", "run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc"):
        resumed, _ = read_mrc(results / "refine3d" / name)
        reference, _ = read_mrc(whole / RESULTS / "refine3d" / name)
        assert np.array_equal(resumed, reference), name
    poses = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    a, _ = read_particles(results / "refine3d" / "run_data.star")
    b, _ = read_particles(whole / RESULTS / "refine3d" / "run_data.star")
    assert a[poses].equals(b[poses])
