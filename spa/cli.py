"""The ``spa`` command: a thin dispatcher over one module per stage.

Each stage lives in ``spa/commands/<name>.py`` with a module docstring (its
``--help`` text), ``add_args(parser)`` and ``main(args) -> int``.  Modules are
imported only when their command runs, so ``spa --help`` is instant.

Every command runs inside :func:`spa.commands._common.checked_outputs`: its
output folder is checked (makeable, writable) before it reads or computes
anything, and a folder it made is removed again when it fails and leaves it
empty.  Every error that a user can cause is a :class:`spa.errors.SpaInputError`
(or ``FileNotFoundError``/``ValueError`` from validation) and is printed as one
line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import time

# command name -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("spa.commands.simulate", "make the built-in demo data with ground truth"),
    "import": ("spa.commands.import_data", "import movies or micrographs into RELION STAR files with optics groups"),
    "motion": ("spa.commands.motion", "motion correction: gain, global and local alignment, dose weighting"),
    "reconstruct": ("spa.commands.reconstruct", "reconstruct a map from particles with known poses"),
    "fsc": ("spa.commands.fsc", "Fourier shell correlation between two maps"),
    "convert": ("spa.commands.convert", "convert particle stacks between RELION .mrcs and spa .zarr"),
    "ctf": ("spa.commands.ctf", "estimate the CTF of micrographs (CTFFIND-like or sector zeros)"),
    "pick": ("spa.commands.pick", "pick particles on micrographs (LoG), RELION coordinate files"),
    "clean": ("spa.commands.clean", "mask carbon, contamination and aggregates on micrographs; drop picks inside"),
    "extract": ("spa.commands.extract", "extract particle images from micrographs at picked coordinates"),
    "class2d": ("spa.commands.class2d", "2D classification (regularised likelihood)"),
    "select": ("spa.commands.select", "select 2D classes (by hand or automatically), recentre, remove duplicates"),
    "initial-model": ("spa.commands.initial_model", "ab-initio 3D initial model by stochastic gradient descent"),
    "class3d": ("spa.commands.class3d", "3D classification"),
    "refine3d": ("spa.commands.refine3d", "gold-standard 3D auto-refinement"),
    "mask": ("spa.commands.mask", "solvent mask from a map (threshold, extension, soft edge)"),
    "postprocess": ("spa.commands.postprocess", "masked FSC with phase randomisation, B-factor, sharpened map"),
    "locres": ("spa.commands.locres", "local resolution of two half maps and the locally filtered map"),
    "validate": ("spa.commands.validate", "validate a refinement (angular distribution, reprojections, ResLog, noise tests, alignability, hand)"),
    "truth": ("spa.commands.truth", "ground truth (poses, map) for particles picked from simulated micrographs"),
    "consensus": ("spa.commands.consensus", "keep what repeated runs agree on (classes, poses)"),
    "report": ("spa.commands.report", "the run report: one HTML page with a summary and every stage's figures"),
    "provenance": ("spa.commands.provenance", "print what made an output file"),
}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Options every stage shares (see CLI.md)."""
    g = parser.add_argument_group("common options")
    g.add_argument("--config", help="YAML config; command-line options win over it")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: from config, else 0)")
    g.add_argument("--workers", type=int, default=None, help="local Dask workers (default 1: in-process)")
    g.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    g.add_argument("--backend", choices=["auto", "numpy", "cupy"], default=None, help="array backend (default: $SPA_BACKEND or auto)")
    g.add_argument("--continue", dest="continue_", action="store_true",
                   help="resume from the last finished iteration (refused when its inputs or options differ)")
    g.add_argument("--restart", action="store_true",
                   help="start afresh, removing what an earlier run of the stage wrote in the output folder")
    g.add_argument("--resume", action="store_true",
                   help="continue when the last checkpoint belongs to this run (same inputs, options and code), "
                        "else start afresh (what the workflow passes)")


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (mod, summary) in COMMANDS.items():
        if importlib.util.find_spec(mod) is not None:
            out[name] = (mod, summary)
    return out


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    from spa import __version__

    parser = argparse.ArgumentParser(prog="spa", description="cryo-EM single-particle analysis")
    parser.add_argument("--version", action="version", version=f"spa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, summary) in _available().items():
        if command is not None and name != command:
            sub.add_parser(name, help=summary)
            continue
        module = importlib.import_module(mod)
        p = sub.add_parser(
            name, help=summary, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_args(p)
        if getattr(module, "COMMON_ARGS", True):
            add_common_args(p)
        p.set_defaults(_module=module)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``scancel``, a killed Snakemake, a wall-time limit) raised as an exception, so that a stage
    stops as after Ctrl-C: its Dask workers (SLURM jobs included) are closed and no partial output stays."""


@contextlib.contextmanager
def sigterm_raises():
    """Within: SIGTERM raises :class:`Terminated` in the main thread (elsewhere: nothing changes).

    A signal handler's exception is lost when it lands in a ``__del__`` (Dask futures are released there
    all the time): Python then only reports it to ``sys.unraisablehook``.  This hook sends the signal
    again, so the stop is raised at the next point where it can be.  While the exception is on its way
    out, further SIGTERMs are ignored (they must not interrupt the clean-up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = {"in_flight": False}

    def handler(signum, frame):
        if not state["in_flight"]:
            state["in_flight"] = True
            raise Terminated()

    def send_again():
        time.sleep(0.01)  # once the hook has returned (raised in the hook, it would be lost again)
        os.kill(os.getpid(), signal.SIGTERM)

    def unraisable(info):
        if isinstance(info.exc_value, Terminated):
            state["in_flight"] = False
            threading.Thread(target=send_again, daemon=True).start()
        else:
            previous_hook(info)

    previous, previous_hook = signal.signal(signal.SIGTERM, handler), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)  # main() called in-process (tests) leaves things as they were
        sys.unraisablehook = previous_hook


def main(argv: list[str] | None = None) -> int:
    from spa.errors import SpaInputError

    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    args.argv = ["spa", *argv]
    from spa.backend import keep_heap_top

    keep_heap_top()
    from spa.commands._common import checked_outputs

    try:
        with sigterm_raises(), checked_outputs(args):
            return int(args._module.main(args) or 0)
    except SpaInputError as exc:
        print(f"spa {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        name = getattr(exc, "filename", None)
        print(f"spa {args.command}: error: {name or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"spa {args.command}: stopped (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"spa {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
