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
    validate_config(cfg, path)
    if section and isinstance(cfg.get(section), dict):
        merged = {k: v for k, v in cfg.items() if not isinstance(v, dict) or k == "cluster"}
        merged.update(cfg[section])
        return merged
    return cfg


def validate_config(cfg: dict, path) -> None:
    """Check a ``--config`` file against the workflow's schema (spa/schema.yaml, the same file as
    config/schema.yaml): an unknown key or a bad value is a :class:`SpaInputError` naming the key.  The
    file may hold any subset of the keys (defaults are not required)."""
    import jsonschema

    schema_path = Path(__file__).resolve().parent.parent / "schema.yaml"
    schema = yaml.safe_load(schema_path.read_text())
    schema.pop("required", None)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            key = ".".join([*map(str, err.absolute_path), extra[0]]) if extra else key
            raise SpaInputError(path, f"unknown config key '{key}'")
        raise SpaInputError(path, f"config key '{key or '(top level)'}': {err.message}")


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
    """A Dask client for ``--workers N`` (N > 1), ``--scheduler ADDR`` or a config whose ``cluster.kind`` is
    slurm or scheduler; None means run in-process.  Workers are closed when the stage ends or fails."""
    from spa.cluster import close_client, cluster_config, make_client

    config = config or {}
    cluster = cluster_config(config.get("cluster"))
    workers = option(args, "workers", config, None) or cluster.get("workers") or 1
    scheduler = option(args, "scheduler", config, None)
    kind = str(cluster.get("kind") or "local").lower()
    if int(workers) <= 1 and not scheduler and kind == "local":
        yield None
        return
    client = make_client(workers=int(workers), scheduler=scheduler, config=cluster)
    try:
        yield client
    finally:
        close_client(client)


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
