"""On a real one-node SLURM (Debian's slurm-wlm, started by tests/integration/slurm/cluster.sh): the demo
workflow with profiles/slurm (every job through sbatch, listed by sacct), and an EM stage whose Dask workers
are SLURM jobs giving the same map as an in-process run.

Skipped, with the reason, where the cluster cannot run (no root, no apt); with SPA_SLURM_TESTS=require (as
.ci/run sets) that is a failure instead."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "integration" / "slurm" / "cluster.sh"
# the one-node test cluster has ~24 GB and 2 cores: the profile's site-sized requests are scaled down
SMALL = ["--set-resources", *[f"{rule}:mem_mb=1500" for rule in
                              ("simulate", "reconstruct", "class2d", "initial_model", "class3d", "refine3d",
                               "postprocess", "locres")]]


@pytest.fixture(scope="module")
def slurm():
    run = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        reason = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["cluster.sh failed"]
        if os.environ.get("SPA_SLURM_TESTS") == "require":
            pytest.fail(f"SLURM required but not available: {reason[0]}")
        pytest.skip(f"no SLURM here: {reason[0]}")
    return run.stdout


def _env():
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _sacct_since(start: str) -> list[tuple[str, str]]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-S", start, "-o", "JobName,State"], capture_output=True,
                         text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]


def test_demo_workflow_runs_every_job_through_sbatch(slurm, tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--profile", str(REPO / "profiles" / "slurm"), "--configfile", str(REPO / "config/examples/tiny.yaml"),
           "--config", "results=results", *SMALL,
           # the test cluster answers at once: poll it every 2 s, not the plugin's 40 s (a busy site's pace)
           "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=_env(), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / "results" / "summary.json").exists()
    jobs = _sacct_since(start)
    # every job but the local rules (all, summary, cluster_config) went through sbatch: simulate, reconstruct,
    # class2d, select, initial_model, class3d x2, class3d_consensus, refine3d, fsc x3, mask, postprocess, locres
    assert len(jobs) >= 15, jobs
    assert all(state == "COMPLETED" for _, state in jobs), jobs


def test_em_stage_with_slurm_workers_equals_a_local_run(slurm, tmp_path):
    pytest.importorskip("dask_jobqueue")
    env = _env()
    spa = [sys.executable, "-m", "spa.cli"]
    subprocess.run([*spa, "simulate", "--kind", "particles", "--preset", "tiny", "--n-particles", "300",
                    "--output-dir", str(tmp_path / "sim")], check=True, capture_output=True, env=env)
    star = tmp_path / "sim" / "truth" / "particles.star"
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump({"cluster": {"kind": "slurm", "cores": 1, "memory": "2GB", "walltime": "00:10:00",
                                               "local_directory": str(tmp_path / "scratch"),
                                               "log_directory": str(tmp_path / "worker_logs")}}))
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    remote = subprocess.run([*spa, "reconstruct", "--particles", str(star), "--output", str(tmp_path / "slurm.mrc"),
                             "--chunk-size", "64", "--workers", "2", "--config", str(cfg)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert "dashboard" in remote.stderr
    subprocess.run([*spa, "reconstruct", "--particles", str(star), "--output", str(tmp_path / "local.mrc"),
                    "--chunk-size", "64"], check=True, capture_output=True, env=env)
    from spa.io.mrc import read_mrc

    a, _ = read_mrc(tmp_path / "slurm.mrc")
    b, _ = read_mrc(tmp_path / "local.mrc")
    assert np.allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())  # same fold of the same chunks
    workers = [j for j in _sacct_since(start) if j[0].startswith("dask-worker")]
    assert len(workers) == 2, workers
    time.sleep(1)
    assert not subprocess.run(["squeue", "-h", "-n", "dask-worker"], capture_output=True, text=True).stdout.strip()
    shutil.rmtree(tmp_path / "scratch", ignore_errors=True)
