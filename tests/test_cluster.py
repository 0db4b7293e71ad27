"""The cluster section: schema-validated configs, SLURM job options (the site's dask-jobqueue config
respected), the dashboard line, and workers closed when a stage ends or fails."""

import argparse
from pathlib import Path

import dask
import pytest
import yaml

from spa.cluster import make_client, slurm_kwargs
from spa.commands._common import dask_client, load_config
from spa.errors import SpaInputError


def _args(tmp_path, cfg, **kw):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return argparse.Namespace(config=str(path), workers=kw.get("workers"), scheduler=None)


def test_config_file_is_validated_by_the_workflow_schema(tmp_path):
    ok = load_config(_args(tmp_path, {"cluster": {"kind": "slurm", "cores": 4}, "class2d": {"classes": 5}}), "class2d")
    assert ok["classes"] == 5 and ok["cluster"]["kind"] == "slurm"  # the cluster section survives narrowing
    with pytest.raises(SpaInputError, match="unknown config key 'cluster.corez'"):
        load_config(_args(tmp_path, {"cluster": {"corez": 4}}))
    with pytest.raises(SpaInputError, match="cluster.kind"):
        load_config(_args(tmp_path, {"cluster": {"kind": "pbs"}}))
    with pytest.raises(SpaInputError, match="class2d.classes"):
        load_config(_args(tmp_path, {"class2d": {"classes": "many"}}))


def test_slurm_options_only_where_the_config_sets_them():
    kw = slurm_kwargs({"kind": "slurm", "cores": 8, "memory": None, "partition": "gpu", "account": "lab",
                       "gpus": 1, "job_extra_directives": ["--qos=high"]})
    assert kw == {"cores": 8, "queue": "gpu", "account": "lab",
                  "job_extra_directives": ["--qos=high", "--gres=gpu:1"]}
    assert slurm_kwargs({"kind": "slurm"}) == {}


def test_the_sites_jobqueue_config_fills_what_spa_leaves_out():
    dask_jobqueue = pytest.importorskip("dask_jobqueue")
    site = {"jobqueue.slurm.cores": 7, "jobqueue.slurm.memory": "3GB", "jobqueue.slurm.queue": "site-queue",
            "jobqueue.slurm.walltime": "02:00:00"}
    with dask.config.set(site):
        cluster = dask_jobqueue.SLURMCluster(**slurm_kwargs({"kind": "slurm", "partition": "gpu"}))
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    assert "--cpus-per-task=7" in script and "-t 02:00:00" in script  # the site's
    assert "-p gpu" in script and "site-queue" not in script  # spa's where it sets a value


def test_local_cluster_prints_its_dashboard_and_closes(capsys):
    client = make_client(workers=2, processes=False)
    try:
        assert len(client.scheduler_info()["workers"]) == 2
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    import importlib.util
    import re

    err = capsys.readouterr().err
    assert re.search(r"dashboard http://[\w.]+:\d+/status", err), err  # where to watch the stage
    # without bokeh that address only says bokeh is missing: the line says so, and how to get it
    assert ("needs bokeh" in err) == (importlib.util.find_spec("bokeh") is None)


def test_workers_closed_when_a_stage_fails(tmp_path):
    args = argparse.Namespace(config=None, workers=2, scheduler=None)
    seen = {}
    with pytest.raises(RuntimeError, match="stage failed"):
        with dask_client(args, {}) as client:
            seen["cluster"] = client.cluster
            raise RuntimeError("stage failed")
    assert seen["cluster"].status.name == "closed"
    with dask_client(argparse.Namespace(config=None, workers=1, scheduler=None), {}) as client:
        assert client is None  # one local worker: in-process


def test_scheduler_kind_needs_an_address():
    with pytest.raises(SpaInputError, match="cluster.address"):
        make_client(config={"kind": "scheduler"})


def test_a_stage_stopped_with_sigterm_closes_its_workers(tmp_path):
    """SIGTERM (scancel of the stage's job, a killed snakemake) stops a stage as an error does: its worker
    processes end with it, and no final output appears."""
    import os
    import signal
    import subprocess
    import sys
    import time

    psutil = pytest.importorskip("psutil")
    from spa.cli import main as spa

    assert spa(["simulate", "--kind", "particles", "--preset", "tiny", "--n-particles", "96", "--seed", "3",
                "--output-dir", str(tmp_path / "sim")]) == 0
    out = tmp_path / "class2d"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                         os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "spa.cli", "class2d", "--particles", str(tmp_path / "sim" / "particles.star"),
                             "--classes", "3", "--iter", "40", "--workers", "2", "--backend", "numpy",
                             "--output-dir", str(out)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in proc.stderr:  # the cluster is up once its dashboard line is printed
            lines.append(line)
            if line.startswith("dask:"):
                break
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2, lines
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 143, rest[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped (SIGTERM)" in rest
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive
    assert not (out / "run_classes.mrcs").exists()


def test_a_sigterm_lost_in_a_finaliser_is_raised_again():
    """The stop raised by the SIGTERM handler inside a ``__del__`` (where Python drops exceptions; Dask
    releases futures there) still stops the stage: the signal is sent again and raised just after."""
    import signal

    import time

    from spa.cli import Terminated, sigterm_raises

    previous = signal.getsignal(signal.SIGTERM)

    class Released:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)  # the handler runs here, inside the finaliser

    reached = []
    with pytest.raises(Terminated):
        with sigterm_raises():
            Released()
            reached.append("after the finaliser")
            time.sleep(5)  # the signal comes again (a sleep is cut short by it)
    assert reached  # the finaliser did swallow the first one
    assert signal.getsignal(signal.SIGTERM) == previous  # and the handler is put back


def test_workflow_passes_the_cluster_section_and_a_change_reruns_no_stage(tmp_path):
    """With workers on SLURM the EM rules read results/cluster.yaml and start cluster.workers workers (the
    job itself takes one core); changing the section remakes the file but reruns no stage."""
    import os
    import re
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}

    def snakemake(*args, cfg):
        cfg_file = tmp_path / "config.yaml"
        cfg_file.write_text(yaml.safe_dump({"workers": 1, "cluster": {"kind": "slurm", "workers": 6, **cfg}}))
        run = subprocess.run([sys.executable, "-m", "snakemake", *args, "--snakefile", str(repo / "Snakefile"),
                              "--directory", str(tmp_path), "--cores", "2", "--configfile", str(cfg_file)],
                             capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout + run.stderr

    out = snakemake("results/class2d/run_data.star", "--dry-run", "--printshellcmds", cfg={"memory": "2GB"})
    shell = next(line for line in out.splitlines() if "spa class2d" in line)
    assert "--config results/cluster.yaml" in shell and "--workers 6 " in shell
    snakemake("results/cluster.yaml", cfg={"memory": "2GB"})
    written = yaml.safe_load((tmp_path / "results" / "cluster.yaml").read_text())["cluster"]
    assert written["memory"] == "2GB" and written["kind"] == "slurm"
    # class2d's inputs and outputs as if it had run after that
    for name in ("simulate/particles.star", "simulate/truth/particles.star", "simulate/truth/class001.mrc"):
        (tmp_path / "results" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "results" / name).touch()
    (tmp_path / "results" / "simulate" / "particles.zarr").mkdir()
    time.sleep(1.1)
    (tmp_path / "results" / "class2d").mkdir()
    for name in ("run_data.star", "run_model.star", "run_classes.mrcs"):
        (tmp_path / "results" / "class2d" / name).touch()
    target = "results/class2d/run_data.star"
    assert "Nothing to be done" in snakemake(target, "--dry-run", cfg={"memory": "2GB"})
    out = snakemake(target, "--dry-run", cfg={"memory": "8GB"})
    assert re.findall(r"^rule (\w+):", out, flags=re.MULTILINE) == ["cluster_config"]


def test_workflow_passes_chunk_size_and_lanes_only_where_set(tmp_path):
    """config chunk_size / reduction_lanes reach the commands that take them (docs/scaling.md); the default
    config's commands carry neither (their defaults apply)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}

    def commands(cfg):
        cfg_file = tmp_path / "config.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg))
        run = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"), "--directory",
                              str(tmp_path), "--cores", "2", "--dry-run", "--printshellcmds", "--configfile",
                              str(cfg_file)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        lines = [line for line in run.stdout.splitlines() if line.lstrip().startswith("spa ") or "Shell command: spa" in line]
        return {line.split("spa ", 1)[1].split()[0]: line for line in lines}

    default = commands({})
    assert not any("--chunk-size" in c or "--reduction-lanes" in c for c in default.values())
    tuned = commands({"chunk_size": 1024, "reduction_lanes": 32})
    for stage in ("class2d", "class3d", "refine3d"):
        assert "--chunk-size 1024" in tuned[stage] and "--reduction-lanes 32" in tuned[stage], tuned[stage]
    assert "--chunk-size 1024" in tuned["reconstruct"] and "--reduction-lanes" not in tuned["reconstruct"]
    assert "--chunk-size" not in tuned["initial-model"]
