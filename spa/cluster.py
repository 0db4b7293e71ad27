"""The Dask client every distributed stage uses: in-process, a local cluster, SLURM, or an existing scheduler.

``make_client(workers=None, scheduler=None, config=None)``:

* ``scheduler`` (an address such as ``tcp://host:8786``): connect to it;
* ``config["cluster"]["kind"] == "slurm"``: start workers as SLURM jobs with
  ``dask_jobqueue.SLURMCluster`` (cores, memory, walltime, queue, interface,
  job_extra_directives from the config) and scale to ``workers`` jobs;
* ``workers`` > 1 (or ``kind: local``): a ``LocalCluster`` of that many worker
  processes with one thread each (BLAS inside a task stays single-threaded,
  so N workers use N cores);
* ``workers`` None or 1: no cluster — callers run in-process (``None`` is
  returned), through the same code path.

Results do not depend on the choice: the EM engine sums chunk results in a
fixed tree order (see :mod:`spa.em.engine`).
"""

from __future__ import annotations

import contextlib


def cluster_config(config: dict | None) -> dict:
    """The ``cluster`` section of a config (empty dict if absent); a bare section is accepted as is."""
    config = config or {}
    if "cluster" in config:
        return dict(config.get("cluster") or {})
    return dict(config)


def make_client(workers: int | None = None, scheduler: str | None = None, config: dict | None = None,
                processes: bool = True):
    """A ``distributed.Client`` as described in the module docstring, or None for in-process runs.

    The client owns its cluster: ``close_client(client)`` shuts both down.
    """
    cfg = cluster_config(config)
    scheduler = scheduler or cfg.get("scheduler")
    kind = str(cfg.get("kind", "local")).lower()
    if workers is None:
        workers = cfg.get("workers")
    if scheduler:
        from distributed import Client  # noqa: PLC0415

        return Client(scheduler)
    if kind == "slurm":
        from dask_jobqueue import SLURMCluster  # noqa: PLC0415
        from distributed import Client  # noqa: PLC0415

        extra = list(cfg.get("job_extra_directives", []))
        cluster = SLURMCluster(
            cores=int(cfg.get("cores", 1)), processes=int(cfg.get("processes", 1)),
            memory=str(cfg.get("memory", "4GB")), walltime=str(cfg.get("walltime", "01:00:00")),
            queue=cfg.get("queue"), interface=cfg.get("interface"), job_extra_directives=extra,
        )
        cluster.scale(jobs=int(workers or 1))
        client = Client(cluster)
        client.wait_for_workers(int(workers or 1), timeout=float(cfg.get("start_timeout", 300)))
        return client
    if workers is None or int(workers) <= 1:
        return None
    from distributed import Client, LocalCluster  # noqa: PLC0415

    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=processes,
                           dashboard_address=None)
    client = Client(cluster)
    if processes:
        from spa.backend import keep_heap_top  # noqa: PLC0415

        client.run(keep_heap_top)  # each worker process keeps its freed heap, as the commands do
    return client


def close_client(client) -> None:
    """Close a client from :func:`make_client` and the cluster it started (None: nothing to do)."""
    if client is None:
        return
    cluster = getattr(client, "cluster", None)
    with contextlib.suppress(Exception):
        client.close()
    if cluster is not None:
        with contextlib.suppress(Exception):
            cluster.close()


@contextlib.contextmanager
def client_from_args(args, config: dict | None = None):
    """``with client_from_args(args) as client:`` for commands with --workers/--scheduler."""
    client = make_client(getattr(args, "workers", None), getattr(args, "scheduler", None), config)
    try:
        yield client
    finally:
        close_client(client)
