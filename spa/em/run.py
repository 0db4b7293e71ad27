"""The driver every iterative stage shares: set-up, the E-step context, the loop, checkpoints, continue.

A stage (2D classification, 3D classification, refinement) derives from
:class:`EMRun` and says what is its own: how a run starts
(:meth:`EMRun.initialise`), one iteration (:meth:`EMRun.iterate`), when it
is done, what it writes and what a checkpoint holds.  The rest is here:

* the particles as the E-step needs them (CTF and optics arrays, mask radius,
  optics groups) and the E-step context built from the options and the
  current model (:meth:`EMRun.context`);
* the loop (:meth:`EMRun.run`): start or continue, iterate, write, checkpoint,
  and a log line per iteration with its wall time and an estimate of the time
  left;
* checkpoints that cannot mix two runs: each records a fingerprint of the
  inputs (the particle table's content, the image files' sizes and times,
  references), of the options that change results and of the code (a digest
  of spa's own source).  ``--continue`` with a different fingerprint stops
  with a message naming what changed; ``--resume`` (what the workflow's rules
  pass) continues when the fingerprint matches and otherwise starts afresh,
  saying why; ``--restart`` starts afresh in a cleaned folder; a run with none
  of them also starts afresh, after removing the files an earlier run left
  there (a later ``--continue`` could otherwise pick up its checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spa.backend import get_backend
from spa.em.engine import EStepContext, last_checkpoint, load_checkpoint, particle_arrays, save_checkpoint
from spa.errors import SpaInputError
from spa.io.atomic import remove_stale_temporaries
from spa.io.star import has_ctf
from spa.progress import duration, progress_printer


def mask_radius_px(particle_diameter: float | None, box: int, pixel_size: float) -> float:
    """Mask radius in pixels from RELION's --particle_diameter (Å; default 90 % of the box)."""
    d = particle_diameter if particle_diameter else 0.9 * box * pixel_size
    return float(min(0.5 * d / pixel_size, box / 2 - 1.0))


def coarse_shells_for(angular_step_deg: float, radius_px: float, box: int) -> int:
    """Coarse-pass window: frequencies where half an angular step moves the particle's rim by less than
    a quarter wavelength (finer shells cannot tell the coarse samples apart anyway)."""
    d = max(radius_px * math.radians(angular_step_deg) / 2.0, 1e-3)
    return int(max(8, math.ceil(box / (4.0 * d))))


# -- fingerprints ----------------------------------------------------------------------------
def table_digest(table: pd.DataFrame) -> str:
    """Digest of a particle table's columns and values (order included)."""
    h = hashlib.sha256(json.dumps([str(c) for c in table.columns]).encode())
    h.update(np.ascontiguousarray(pd.util.hash_pandas_object(table, index=False).to_numpy()).tobytes())
    return h.hexdigest()[:16]


def source_digest(source) -> dict:
    """What identifies the images: each file's size and modification time (a Zarr stack: its metadata's),
    or the digest of in-memory images."""
    files = getattr(source, "files", None)
    if files is not None:
        out = {}
        for f in files:
            f = Path(f)
            meta = [p for p in (f / "zarr.json", f / "images" / "zarr.json") if p.exists()] if f.is_dir() else [f]
            out[str(f)] = [[p.stat().st_size, p.stat().st_mtime_ns] for p in meta]
        return out
    images = getattr(source, "images", None)
    if images is not None:
        return {"in-memory images": hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]}
    return {"source": type(source).__name__}


_CODE_DIGEST: list = []


def code_digest() -> str:
    """Digest of spa's own source files (computed once per process): a checkpoint made by other code is
    not continued."""
    if not _CODE_DIGEST:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
        _CODE_DIGEST.append(h.hexdigest()[:16])
    return _CODE_DIGEST[0]


def array_digest(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a, np.float32)).tobytes()).hexdigest()[:16]


def _differences(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two fingerprints."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "options" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"option {k}: {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
        elif key == "particles":
            out.append("the particle table differs" + (f" ({a['rows']} → {b['rows']} rows)"
                                                       if isinstance(a, dict) and isinstance(b, dict)
                                                       and a.get("rows") != b.get("rows") else ""))
        elif key == "code":
            out.append("spa's code changed")
        elif key == "images" and isinstance(a, dict) and isinstance(b, dict):
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            out.append("image files changed: " + ", ".join(changed[:3]) + (" …" if len(changed) > 3 else ""))
        else:
            out.append(f"{key} differs")
    return out


# -- the driver ---------------------------------------------------------------------------------
class EMRun:
    """One run of an iterative stage (see the module docstring).  Subclasses define the hooks below."""

    stage = "em"  # the command's name: log lines and messages start with it
    rootname = "run"
    converges = False  # True where convergence, not a fixed count, ends the run (the count is a bound)

    def __init__(self, table, source, opts, output_dir, *, optics=None, client=None, provenance=None, log=print,
                 progress=None):
        self.opts = opts.check()
        self.table = table.reset_index(drop=True)
        self.source = source
        self.output_dir = Path(output_dir)
        self.client = client
        self.provenance = provenance
        self.log = log or (lambda *a: None)
        self.progress = progress  # label → progress(done, total) callback (e.g. spa.progress.progress_printer)
        self.box = int(source.box)
        px = self.table["rlnImagePixelSize"].iloc[0] if "rlnImagePixelSize" in self.table else source.pixel_size
        self.pixel_size = float(px)
        if optics is None:
            from spa.em.outputs import optics_from_table

            optics = optics_from_table(self.table, self.pixel_size, self.box)
        self.optics = optics
        self.backend = get_backend(opts.backend).name
        if getattr(opts, "do_ctf", False):
            has_ctf(self.table)  # some CTF columns but not all: an error, not a run without CTF
        self.particles = particle_arrays(self.table, self.pixel_size)
        og = self.table["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in self.table else np.ones(len(self.table))
        self.group_ids = np.unique(og)
        self.n_groups = len(self.group_ids)
        self.radius = mask_radius_px(opts.particle_diameter, self.box, self.pixel_size)
        self._input_digest = {"rows": len(self.table), "digest": table_digest(self.table)}

    # -- what a stage defines --------------------------------------------------------------
    def initialise(self):
        """The state a run starts from (references, model, …); may itself count as iteration 1."""
        raise NotImplementedError

    def iterate(self, state):
        """One iteration → the next state."""
        raise NotImplementedError

    # the defaults: a state whose first item is the model (MlModel), a fixed number ``opts.n_iter``
    def iteration_of(self, state) -> int:
        return state[0].iteration

    def finished(self, state) -> bool:
        return state[0].iteration >= self.opts.n_iter

    def iterations_left(self, state) -> int | None:
        """Iterations still to run (an upper bound where convergence decides; None when unknown)."""
        return max(0, self.opts.n_iter - state[0].iteration)

    def write_iteration(self, state) -> None:
        """The iteration's RELION-named files."""

    def checkpoint_arrays(self, state) -> dict:
        raise NotImplementedError

    def restore(self, arrays):
        """The state from a checkpoint's arrays (the inverse of :meth:`checkpoint_arrays`)."""
        raise NotImplementedError

    def describe(self, state) -> str:
        """The log line of an iteration (after "<stage>: iteration i/n: ")."""
        return ""

    def finish(self, state):
        """The final outputs after the last iteration; returns what :meth:`run` returns."""
        return state

    def extra_inputs(self) -> dict:
        """Inputs besides particles and options that a checkpoint must match (e.g. reference maps)."""
        return {}

    # -- shared ------------------------------------------------------------------------------
    def context(self, model, refs, sampling, coarse_shells: int, **extra) -> EStepContext:
        """The E-step context of an iteration: the options, the current model and the pose grid."""
        o = self.opts
        return EStepContext(
            refs=refs, sampling=sampling, sigma2=model.sigma2_noise,
            log_class_prior=np.log(np.maximum(model.pdf_class, 1e-300)), sigma_offset_px=model.sigma_offset_px,
            coarse_shells=min(model.current_shells, coarse_shells), fine_shells=model.current_shells,
            pixel_size=self.pixel_size, mask_radius_px=self.radius, do_ctf=o.do_ctf,
            ignore_first_peak=o.ignore_ctf_first_peak, significant_fraction=o.significant_fraction,
            max_significant=o.max_significant, backend=self.backend, **extra,
        )

    def pass_progress(self, what: str):
        """The ``progress(done, total)`` callback of one long pass of this run (``what``): the run's own
        (``progress``, given by the command: an updating line on a terminal), else plain lines to its log."""
        label = f"{self.stage}: {what}"
        return self.progress(label) if self.progress else progress_printer(label, write=self.log)

    def fingerprint(self) -> dict:
        """What a checkpoint must match to be continued (JSON-serialisable)."""
        return {"stage": self.stage, "code": code_digest(), "options": self.opts.fingerprint(),
                "particles": self._input_digest, "images": source_digest(self.source), **self.extra_inputs()}

    def save(self, state) -> None:
        arrays = self.checkpoint_arrays(state)
        arrays["fingerprint"] = np.array(json.dumps(self.fingerprint(), sort_keys=True, default=str))
        save_checkpoint(self.output_dir, self.iteration_of(state), arrays, self.rootname)

    def _resume(self, strict: bool = True):
        """The state of the last checkpoint if it belongs to this run; None when there is none.

        A checkpoint of another run (other inputs, options or code) is an error when ``strict``, else
        reported and ignored (the run then starts afresh)."""
        found = last_checkpoint(self.output_dir, self.rootname)
        if found is None:
            return None
        arrays = load_checkpoint(found[1])
        if "fingerprint" not in arrays:
            diff = ["it has no record of its inputs and options (an older spa made it)"]
        else:
            old = json.loads(str(arrays["fingerprint"]))
            new = json.loads(json.dumps(self.fingerprint(), sort_keys=True, default=str))
            diff = _differences(old, new)
        if diff and strict:
            raise SpaInputError(found[1], "cannot continue: the checkpoint was made with other inputs, options "
                                          "or code (" + "; ".join(diff) + "); use --restart to start afresh")
        if diff:
            self.log(f"{self.stage}: starting afresh: the checkpoint in {self.output_dir} belongs to another run "
                     f"({'; '.join(diff)})")
            return None
        return self.restore(arrays)

    def clear_outputs(self) -> None:
        """Remove what an earlier run of this stage wrote here (``run_*`` files only)."""
        pattern = re.compile(rf"^{re.escape(self.rootname)}_")
        if self.output_dir.is_dir():
            for p in self.output_dir.iterdir():
                if p.is_file() and pattern.match(p.name):
                    p.unlink()

    def start(self):
        """A fresh run's first state (and, where initialising is an iteration, its files)."""
        return self.initialise()

    def run(self, continue_: bool = False, restart: bool = False, resume: bool = False):
        """Run to the end; ``continue_`` from the last checkpoint (an error if it belongs to another run),
        ``resume`` from it when it belongs to this run, else afresh (see the module docstring)."""
        for p in remove_stale_temporaries(self.output_dir):  # left by a run that was killed mid-write
            self.log(f"{self.stage}: removed {p.name}, left by an earlier run that was stopped")
        state = self._resume(strict=not resume) if (continue_ or resume) and not restart else None
        if state is not None:
            self.log(f"{self.stage}: continuing after iteration {self.iteration_of(state)}")
        else:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.clear_outputs()
            state = self.start()
        times = []
        while not self.finished(state):
            t0 = time.perf_counter()
            state = self.iterate(state)
            self.write_iteration(state)
            self.save(state)
            times.append(time.perf_counter() - t0)
            self.log(self._progress_line(state, times))
        return self.finish(state)

    def _progress_line(self, state, times) -> str:
        i = self.iteration_of(state)
        left = self.iterations_left(state)
        head = f"{self.stage}: iteration {i}"
        if left is not None:
            head += f" (of at most {i + left})" if self.converges else f"/{i + left}"
        text = self.describe(state)
        line = head + (f": {text}" if text else "") + f"; {times[-1]:.0f} s"
        if left:
            eta = duration(float(np.mean(times[-3:])) * left)
            line += f", {'at most ' if self.converges else ''}about {eta} left"
        return line


