"""Print what made a spa output file (version, command, config hash, seed)."""

from __future__ import annotations

import json

from spa.errors import SpaInputError
from spa.provenance import read_record

COMMON_ARGS = False


def add_args(p):
    p.add_argument("file", help="a STAR or MRC file written by spa")


def main(args) -> int:
    rec = read_record(args.file)
    if rec is None:
        raise SpaInputError(args.file, "no spa provenance recorded in this file")
    print(json.dumps(rec, indent=2, sort_keys=True) if isinstance(rec, dict) else rec)
    return 0
