"""The cluster section: schema-validated configs, SLURM job options (the site's dask-jobqueue config
respected), the dashboard line, and workers closed when a stage ends or fails."""

import argparse

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
    assert "dashboard" in capsys.readouterr().err


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
