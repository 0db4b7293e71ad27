"""Plumbing shared by stage commands: config loading, seed, Dask client, outputs checked first, progress."""

from __future__ import annotations

import contextlib
from pathlib import Path

import yaml

from spa.errors import SpaInputError
from spa.progress import progress_printer  # noqa: F401  (the commands' progress callbacks)


def load_config(args, section: str | None = None) -> dict:
    """The ``--config`` YAML (or {}), narrowed to ``section`` if it has one."""
    path = getattr(args, "config", None)
    if not path:
        return {}
    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise SpaInputError(path, "config file not found") from None
    except yaml.YAMLError as exc:
        raise SpaInputError(path, f"not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(cfg, dict):
        raise SpaInputError(path, "config must be a mapping of keys to values")
    if section and isinstance(cfg.get(section), dict):
        merged = {k: v for k, v in cfg.items() if not isinstance(v, dict)}
        merged.update(cfg[section])
        return merged
    return cfg


def option(args, name: str, config: dict, default=None):
    """Command line wins over config, config over the default."""
    value = getattr(args, name, None)
    if value is not None:
        return value
    return config.get(name, config.get(name.replace("_", "-"), default))


def seed_of(args, config: dict) -> int:
    return int(option(args, "seed", config, 0))


@contextlib.contextmanager
def dask_client(args, config: dict | None = None):
    """A Dask client for ``--workers N`` (N > 1) or ``--scheduler ADDR``; None means run in-process."""
    config = config or {}
    workers = option(args, "workers", config, 1)
    scheduler = option(args, "scheduler", config, None)
    if (not workers or int(workers) <= 1) and not scheduler:
        yield None
        return
    from spa.cluster import make_client

    client = make_client(workers=int(workers or 1), scheduler=scheduler, config=config.get("cluster"))
    try:
        yield client
    finally:
        client.close()
        cluster = getattr(client, "cluster", None)
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def checked_outputs(args):
    """Around a command (``spa.cli.main`` puts every command in it): before anything is read or
    computed, its output folder (``--output-dir``) or the folder of its output file (``--output``) must
    exist or be makeable, and be writable — else a one-line error naming that folder; when the command
    then fails, the folders it made and left empty are removed (no empty output folder behind)."""
    from spa.io.atomic import output_folder

    with contextlib.ExitStack() as stack:
        folder = getattr(args, "output_dir", None)
        if folder:
            stack.enter_context(output_folder(folder))
        file = getattr(args, "output", None)
        if file:
            if Path(file).is_dir():
                raise SpaInputError(file, "is a folder: --output names the file to write")
            stack.enter_context(output_folder(Path(file).parent, f"output folder of {Path(file).name}"))
        yield
