"""On a real one-node SLURM (Debian's slurm-wlm, started by tests/integration/slurm/cluster.sh): the demo
workflow with profiles/slurm (every job through sbatch, listed by sacct), and an EM stage whose Dask workers
are SLURM jobs giving the same class averages as an in-process run, and cancelling its worker jobs when
stopped with SIGTERM.

Skipped, with the reason, where the cluster cannot run (no root, no apt); with SPA_SLURM_TESTS=require (as
.ci/run sets) that is a failure instead."""

import importlib.util
import os
import re
import shutil
import signal
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
                              yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["set-resources"]]]


def _unavailable(reason: str):
    """Skip, printing why; under SPA_SLURM_TESTS=require (.ci/run) fail instead."""
    if os.environ.get("SPA_SLURM_TESTS") == "require":
        pytest.fail(f"SLURM required but not available: {reason}")
    print(f"\nSLURM tests skipped: {reason}", file=sys.stderr)
    pytest.skip(f"no SLURM here: {reason}")


def _need(module: str):
    if importlib.util.find_spec(module) is None:
        _unavailable(f"{module} is not installed (pip install -e '.[slurm]')")


@pytest.fixture(scope="module")
def slurm():
    run = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        reason = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["cluster.sh failed"]
        _unavailable(reason[0])
    return run.stdout


def _env():
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _sacct_since(start: str, *args: str) -> list[tuple[str, str]]:
    """sacct rows (JobName, State unless ``args`` ask otherwise) of the jobs since ``start``."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-S", start, *(args or ("-o", "JobName,State"))],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]


def _local_rules() -> set[str]:
    """Rules that run where snakemake runs: the Snakefile's `localrules:` and rules marked `localrule: True`."""
    text = "".join(p.read_text() for p in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))])
    names = set()
    for block in re.findall(r"^localrules:\s*\n((?:[ \t]+\w+,?[ \t]*\n)+)", text, flags=re.MULTILINE):
        names |= set(re.findall(r"\w+", block))
    for rule, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text, flags=re.MULTILINE):
        if re.search(r"^[ \t]+localrule: True", body, flags=re.MULTILINE):
            names.add(rule)
    return names


# The demo on the tiny preset, shortened to the least that still runs a job of every cluster rule but the
# 3D classification (the suite has a time budget; the local end-to-end test runs the whole demo).
SLURM_DEMO = {"simulate": {"preset": "tiny", "n_particles": 300, "snr": 1.0, "movies": {"enabled": False}},
              "class2d": {"classes": 4, "iter": 3}, "initial_model": {"iter": 4, "candidates": 1},
              "class3d": {"runs": 0}, "refine3d": {"max_iter": 2, "max_healpix_order": 2}}


def test_demo_workflow_runs_every_job_through_sbatch(slurm, tmp_path):
    _need("snakemake_executor_plugin_slurm")
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump({**SLURM_DEMO, "results": "results"}))
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--profile", str(REPO / "profiles" / "slurm"), "--configfile", str(cfg), *SMALL,
           # the test cluster answers at once: first status check after 1 s, not the plugin's 40 s (a busy
           # site's pace); finished files are visible at once here
           "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=_env(), cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert (tmp_path / "results" / "summary.json").exists()
    # every job of a rule that is not local was submitted with sbatch ...
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: .*?/rule_(\w+?)/", out))
    table = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.MULTILINE)}
    local = _local_rules()
    assert {"all", "summary", "cluster_config"} <= local
    cluster_jobs = sum(n for rule, n in counts.items() if rule != "total" and rule not in local)
    assert len(submitted) == cluster_jobs >= 6, (counts, submitted)
    assert not set(submitted.values()) & local
    # ... and sacct lists each one (the plugin names a run's jobs by its run ID) as COMPLETED
    run_id = re.search(r"SLURM run ID: ([\w-]+)", out).group(1)
    for _ in range(20):  # slurmdbd records a finished job within a second or two
        states = dict(_sacct_since(start, "--name", run_id, "-o", "JobID,State"))
        if set(submitted) <= set(states):
            break
        time.sleep(1)
    assert {job: states.get(job) for job in submitted} == {job: "COMPLETED" for job in submitted}


def _queued(name: str = "dask-worker", state: str | None = None) -> set[str]:
    """IDs of the jobs called ``name`` in the queue (pending, running or completing; or in ``state``)."""
    out = subprocess.run(["squeue", "-h", "-n", name, *(["-t", state] if state else []), "-o", "%i"],
                         capture_output=True, text=True, timeout=60)
    return set(out.stdout.split())


def test_em_stage_with_slurm_workers_equals_a_local_run(slurm, tmp_path):
    """class2d with two dask-jobqueue worker jobs: a local two-worker run's class averages bit for bit, the
    dashboard line, the worker jobs in sacct and gone at the end; stopped with SIGTERM (scancel of its job)
    the stage cancels its worker jobs and leaves no final output."""
    _need("dask_jobqueue")
    env = _env()
    spa = [sys.executable, "-m", "spa.cli"]
    subprocess.run([*spa, "simulate", "--kind", "particles", "--preset", "tiny", "--n-particles", "200",
                    "--snr", "1.0", "--output-dir", str(tmp_path / "sim")], check=True, capture_output=True, env=env)

    def class2d(out, *extra, iters=2):
        return [*spa, "class2d", "--particles", str(tmp_path / "sim" / "particles.star"), "--classes", "3",
                "--iter", str(iters), "--chunk-size", "64", "--seed", "1", "--backend", "numpy",
                "--output-dir", str(tmp_path / out), *extra]

    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump({"cluster": {"kind": "slurm", "cores": 1, "memory": "2GB", "walltime": "00:10:00",
                                               "local_directory": str(tmp_path / "scratch"),
                                               "log_directory": str(tmp_path / "worker_logs")}}))
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2))
    remote = subprocess.run(class2d("slurm", "--workers", "2", "--config", str(cfg)), capture_output=True, text=True,
                            env=env, timeout=600)
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert "dashboard" in remote.stderr
    workers = {job for name, job in _sacct_since(start, "-o", "JobName,JobID") if name.startswith("dask-worker")}
    assert len(workers) == 2, workers
    for _ in range(10):  # cancelled when the stage ended (squeue shows them until slurmctld has them out)
        if not workers & _queued():
            break
        time.sleep(0.5)
    assert not workers & _queued()
    # the same two workers on this machine (a LocalCluster): single-threaded workers both, so the same bits
    # (in-process, multi-threaded BLAS rounds differently: ~1e-5 relative)
    subprocess.run(class2d("local", "--workers", "2"), check=True, capture_output=True, env=env)
    import mrcfile

    with mrcfile.open(tmp_path / "slurm" / "run_classes.mrcs") as a, mrcfile.open(tmp_path / "local" / "run_classes.mrcs") as b:
        assert a.data.shape == b.data.shape and a.data.shape[0] == 3
        np.testing.assert_array_equal(a.data, b.data)  # the same sums in the same order, wherever they ran

    proc = subprocess.Popen(class2d("stopped", "--workers", "2", "--config", str(cfg), iters=200),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(_queued(state="RUNNING")) < 2:
            time.sleep(0.5)
        running = _queued(state="RUNNING")
        assert len(running) >= 2, "the worker jobs did not start"
        time.sleep(2)  # into the iterations
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    for _ in range(20):
        if not running & _queued():
            break
        time.sleep(0.5)
    assert not running & _queued()
    assert not (tmp_path / "stopped" / "run_classes.mrcs").exists()
    shutil.rmtree(tmp_path / "scratch", ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_particles(tmp_path_factory):
    """60 tiny simulated particles (a STAR file), for the stages that only need something to run on."""
    out = tmp_path_factory.mktemp("tiny")
    subprocess.run([sys.executable, "-m", "spa.cli", "simulate", "--kind", "particles", "--preset", "tiny",
                    "--n-particles", "60", "--output-dir", str(out)], check=True, capture_output=True, env=_env())
    return out / "particles.star"


def _class2d_on_slurm(particles, out, cluster: dict, tmp_path) -> subprocess.CompletedProcess:
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump({"cluster": {"kind": "slurm", "cores": 1, "memory": "1GB", "walltime": "00:05:00",
                                               "log_directory": str(tmp_path / "worker_logs"), **cluster}}))
    return subprocess.run([sys.executable, "-m", "spa.cli", "class2d", "--particles", str(particles), "--classes", "2",
                           "--iter", "1", "--config", str(cfg), "--output-dir", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=300)


def test_adaptive_worker_jobs_from_a_minimum_of_zero(slurm, tiny_particles, tmp_path):
    """adaptive {minimum: 0, maximum: 2}: the stage gets a worker job (with none, Dask's adaptive target stays
    at zero until tasks exist, and the stage waited for a worker until start_timeout), runs, and its worker
    jobs are gone at the end."""
    _need("dask_jobqueue")
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2))
    run = _class2d_on_slurm(tiny_particles, tmp_path / "out", {"adaptive": {"minimum": 0, "maximum": 2},
                                                                "start_timeout": 60}, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out" / "run_classes.mrcs").exists()
    for _ in range(20):  # slurmdbd records a job within a second or two
        rows = [row for row in _sacct_since(start, "-o", "JobName,JobID,Start,End") if row[0].startswith("dask-worker")]
        if rows:
            break
        time.sleep(1)
    workers = {row[1] for row in rows}
    # adaptive scaling may retire a worker job and start another later: the maximum bounds the jobs running
    # at once, not the jobs over the stage's life
    events = sorted([(r[2], 1) for r in rows] + [(r[3], -1) for r in rows if r[3] not in ("Unknown", "")])
    running = [sum(step for _, step in events[: i + 1]) for i in range(len(events))]
    assert workers and max(running) <= 2, rows
    for _ in range(20):
        if not workers & _queued():
            break
        time.sleep(0.5)
    assert not workers & _queued()


def test_worker_jobs_that_do_not_start_in_time_are_a_clear_error(slurm, tiny_particles, tmp_path):
    """Worker jobs still queued when cluster.start_timeout runs out (here: held until an hour from now): the
    stage stops with one line saying how many started, the timeout, and why squeue says they wait; the
    queued jobs are cancelled and no output folder is left behind."""
    _need("dask_jobqueue")
    # two fixed worker jobs (--workers 2 from the cluster section)
    run = _class2d_on_slurm(tiny_particles, tmp_path / "out", {"workers": 2, "start_timeout": 4,
                                                                "job_extra_directives": ["--begin=now+1hour"]},
                            tmp_path)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("spa class2d: error: cluster: 0 of 2 SLURM worker job(s) started within 4 s "
                           "(cluster.start_timeout; raise it for a busy queue) — squeue: "), last
    workers = set(re.findall(r"(\d+) PENDING \(BeginTime\)", last))
    assert len(workers) == 2, last
    for _ in range(20):
        if not workers & _queued():
            break
        time.sleep(0.5)
    assert not workers & _queued()  # cancelled, not left waiting for their begin time
    assert not (tmp_path / "out").exists()
