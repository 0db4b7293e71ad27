"""What made an output: spa version, command line, config values and hash, seed.

Recorded in every output: as comment lines at the top of STAR files (RELION
ignores comments) and in the labels of MRC headers; ``spa provenance FILE``
prints it back.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from typing import Any

from spa import __version__

STAR_PREFIX = "# spa-provenance: "


def config_hash(config: dict | None) -> str:
    """Short SHA-256 of the config values (key order does not matter)."""
    blob = json.dumps(config or {}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def make_record(command: list[str] | str | None = None, config: dict | None = None, seed: int | None = None, **extra: Any) -> dict:
    """A provenance record (JSON-serialisable dict).

    The timestamp is deliberately *not* part of what makes outputs reproducible:
    it is recorded but excluded from :func:`config_hash`.
    """
    if isinstance(command, (list, tuple)):
        command = " ".join(str(c) for c in command)
    rec = {
        "spa_version": __version__,
        "command": command,
        "seed": seed,
        "config_hash": config_hash(config),
        "config": config or {},
        "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    rec.update(extra)
    return rec


def star_comment(record: dict | None) -> str:
    """The comment line(s) that carry ``record`` at the top of a STAR file."""
    if not record:
        return ""
    return STAR_PREFIX + json.dumps(record, sort_keys=True, default=str) + "\n"


def mrc_labels(record: dict | None) -> list[str]:
    """Up to 10 MRC header labels (80 characters each) summarising ``record``."""
    if not record:
        return []
    labels = [
        f"spa {record.get('spa_version')} config {record.get('config_hash')} seed {record.get('seed')}",
        f"created {record.get('created')}",
    ]
    cmd = record.get("command") or ""
    for i in range(0, min(len(cmd), 80 * 8), 80):
        labels.append(cmd[i : i + 80])
    return [lab[:80] for lab in labels[:10]]


def read_record(path: str) -> dict | str | None:
    """Provenance of a spa output: the dict from a STAR file, the labels of an MRC file."""
    if str(path).endswith((".mrc", ".mrcs", ".map")):
        import mrcfile

        with mrcfile.open(path, header_only=True, permissive=True) as m:
            n = int(m.header.nlabl)
            return "\n".join(m.header.label[i].decode(errors="replace").rstrip() for i in range(n)) or None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith(STAR_PREFIX):
                return json.loads(line[len(STAR_PREFIX):])
            if line.strip() and not line.startswith("#"):
                break
    return None
