"""The Dask client every distributed stage uses: in-process, a local cluster, SLURM, or an existing scheduler.

``make_client(workers=None, scheduler=None, config=None)`` with ``config`` the
``cluster`` section of the workflow config (config/schema.yaml):

* ``kind: scheduler`` (or ``scheduler``/``address`` given): connect to that
  scheduler (e.g. ``tcp://host:8786``);
* ``kind: slurm``: start workers as SLURM jobs with ``dask_jobqueue.SLURMCluster``
  and scale to ``workers`` jobs (or adapt between ``adaptive.minimum``, at least 1, and
  ``adaptive.maximum``).  Only the keys the config *sets* are passed: anything
  it leaves out comes from the site's own dask-jobqueue configuration
  (``~/.config/dask/jobqueue.yaml``, ``jobqueue.slurm.*``), as an admin set it;
* ``kind: local`` with ``workers`` > 1: a ``LocalCluster`` of that many worker
  processes with one thread each (BLAS inside a task stays single-threaded,
  so N workers use N cores);
* ``workers`` None or 1 (local): no cluster — callers run in-process (``None``
  is returned), through the same code path.

When a cluster starts, its dashboard address is printed (stderr).  The client
owns its cluster: :func:`close_client` (or leaving :func:`client_from_args`,
also on an error) shuts down the workers, so no SLURM job outlives its stage.

Results do not depend on the choice: the reduction adds chunk results in a
fixed order whatever the workers (see :mod:`spa.parallel`).
"""

from __future__ import annotations

import contextlib
import sys

# cluster-section key -> SLURMCluster keyword (same name unless listed)
_SLURM_KEYS = {"cores": "cores", "processes": "processes", "memory": "memory", "walltime": "walltime",
               "partition": "queue", "queue": "queue", "account": "account", "interface": "interface",
               "job_extra_directives": "job_extra_directives", "local_directory": "local_directory",
               "log_directory": "log_directory", "python": "python", "job_script_prologue": "job_script_prologue"}


def cluster_config(config: dict | None) -> dict:
    """The ``cluster`` section of a config (empty dict if absent); a bare section is accepted as is."""
    config = config or {}
    if "cluster" in config:
        return dict(config.get("cluster") or {})
    return dict(config)


def slurm_kwargs(cfg: dict) -> dict:
    """``SLURMCluster`` keywords for the keys the cluster section sets (None and absent keys are left to the
    site's dask-jobqueue configuration).  ``gpus: N`` adds ``--gres=gpu:N`` to the job directives."""
    kwargs: dict = {}
    for key, name in _SLURM_KEYS.items():
        value = cfg.get(key)
        if value is not None:
            kwargs[name] = list(value) if name == "job_extra_directives" else value
    gpus = cfg.get("gpus")
    if gpus:
        kwargs.setdefault("job_extra_directives", [])
        kwargs["job_extra_directives"] = [*kwargs["job_extra_directives"], f"--gres=gpu:{int(gpus)}"]
    return kwargs


def _announce(cluster, what: str) -> None:
    """One line on stderr (the stage's log): what started and where its Dask dashboard is."""
    import importlib.util

    link = getattr(cluster, "dashboard_link", None)
    if link and importlib.util.find_spec("bokeh") is None:  # the address would only say bokeh is missing
        link = f"{link} (needs bokeh: pip install -e '.[slurm]')"
    print(f"dask: {what}; dashboard {link or '(none)'}", file=sys.stderr, flush=True)


def _queue_state(cluster) -> str | None:
    """The worker jobs as squeue shows them (``123 PENDING (Resources), ...``); None when none was submitted."""
    import subprocess

    ids = [str(job.job_id) for job in getattr(cluster, "workers", {}).values() if getattr(job, "job_id", None)]
    if not ids:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T (%r)"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    rows = [" ".join(line.split()) for line in out.splitlines() if line.strip()]
    return "squeue: " + ", ".join(rows) if rows else f"jobs {', '.join(ids)} are no longer queued"


def _wait_for_slurm_workers(client, cluster, n: int, timeout: float) -> None:
    """Wait until ``n`` worker jobs have connected; else a one-line error saying how many did, the
    ``cluster.start_timeout`` that ran out and why squeue says the others wait (the caller cancels them)."""
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError as exc:
        from spa.errors import SpaInputError

        arrived = getattr(exc, "available_workers", len(client.scheduler_info().get("workers", {})))
        started = f"{arrived} of {n} SLURM worker job(s) started within {timeout:g} s (cluster.start_timeout"
        queue = _queue_state(cluster)
        if queue is None:  # sbatch refused them (unknown partition or account, ...): its error is logged above
            raise SpaInputError("cluster", f"{started}): sbatch submitted none (its error is above)") from None
        raise SpaInputError("cluster", f"{started}; raise it for a busy queue) — {queue}; "
                                       "the worker jobs were cancelled") from None


def make_client(workers: int | None = None, scheduler: str | None = None, config: dict | None = None,
                processes: bool = True):
    """A ``distributed.Client`` as described in the module docstring, or None for in-process runs."""
    cfg = cluster_config(config)
    scheduler = scheduler or cfg.get("scheduler") or cfg.get("address")
    kind = str(cfg.get("kind") or "local").lower()
    if workers is None:
        workers = cfg.get("workers")
    if kind == "scheduler" and not scheduler:
        from spa.errors import SpaInputError

        raise SpaInputError("cluster", "kind: scheduler needs cluster.address (e.g. tcp://host:8786)")
    if scheduler:
        from distributed import Client  # noqa: PLC0415

        client = Client(scheduler)
        print(f"dask: connected to {scheduler}; dashboard {client.dashboard_link}", file=sys.stderr, flush=True)
        return client
    if kind == "slurm":
        from dask_jobqueue import SLURMCluster  # noqa: PLC0415
        from distributed import Client  # noqa: PLC0415

        cluster, client = SLURMCluster(**slurm_kwargs(cfg)), None
        try:
            adaptive = cfg.get("adaptive") or {}
            n = int(workers or 1)
            if adaptive.get("maximum"):
                # at least one job: with none, and no task submitted yet, Dask's adaptive target stays at zero
                # and the stage would wait for a worker until start_timeout (measured on SLURM)
                n = max(1, int(adaptive.get("minimum") or 1))
                cluster.adapt(minimum_jobs=n, maximum_jobs=max(n, int(adaptive["maximum"])))
            else:
                cluster.scale(jobs=n)
            _announce(cluster, f"SLURM cluster, {n} worker job(s)")
            client = Client(cluster)
            _wait_for_slurm_workers(client, cluster, n, float(cfg.get("start_timeout") or 300))
        except BaseException:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
            cluster.close()  # cancels the worker jobs, queued or running
            raise
        return client
    if workers is None or int(workers) <= 1:
        return None
    from distributed import Client, LocalCluster  # noqa: PLC0415

    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=processes,
                           dashboard_address=cfg.get("dashboard_address", ":0"))
    client = Client(cluster)
    _announce(cluster, f"local cluster, {int(workers)} worker process(es)")
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
