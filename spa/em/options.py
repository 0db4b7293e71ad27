"""Options of the iterative stages: one base for what they share, checked in one place.

Every field has RELION's meaning (lengths in Å, angles in degrees, shifts in
pixels unless a name says otherwise).  A stage's options derive from
:class:`EMOptions` and add what only it has; defaults that differ between
stages (T, the starting resolution, the significant-sample cap) are set in the
subclass.  :meth:`EMOptions.check` reports a bad value by its *field* name:
the commands map their own flags onto fields, and a library caller has no
flags.  :meth:`EMOptions.fingerprint` lists what changes a run's result, for
checkpoints (:mod:`spa.em.run`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from spa.errors import SpaInputError


@dataclass(kw_only=True)
class EMOptions:
    """What 2D classification, 3D classification and refinement share."""

    particle_diameter: float | None = None  # Å; default 90 % of the box
    ini_high: float = 40.0  # Å: low-pass of the starting references and first Fourier window
    tau2_fudge: float = 1.0  # T, the regularisation parameter
    do_ctf: bool = True
    ignore_ctf_first_peak: bool = False
    offset_range: float = 5.0  # px, around each particle's current offset
    offset_step: float = 1.0  # px
    oversampling: int = 1  # adaptive oversampling order of the fine pass
    significant_fraction: float = 0.999  # posterior mass the significant coarse samples hold
    max_significant: int = 64  # at most this many coarse samples per particle go to the fine pass
    incr_shells: int = 10  # Fourier shells beyond the resolution in the next window
    chunk_size: int = 256  # particles per E-step task (align with the stack's chunks)
    reduction_lanes: int = 1  # independent running sums per pass (spa.parallel); more for large clusters
    seed: int = 0
    backend: str | None = None  # numpy, cupy or auto: where the arithmetic runs, not what it gives

    #: fields that do not change a result (left out of the fingerprint)
    NEUTRAL: ClassVar[tuple] = ("backend",)
    #: fields a continued run may change: how many iterations to run (RELION's --continue takes a new
    #: --iter likewise); a stage lists its own
    CONTINUABLE: ClassVar[tuple] = ()

    def check(self) -> "EMOptions":
        """Raise :class:`SpaInputError` naming the first field with a value out of range; return self."""
        positive = ("ini_high", "tau2_fudge", "offset_step", "chunk_size", "max_significant", "reduction_lanes")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SpaInputError(None, f"option {name} must be > 0, got {value!r}")
        if self.particle_diameter is not None and not self.particle_diameter > 0:
            raise SpaInputError(None, f"option particle_diameter must be > 0 Å, got {self.particle_diameter!r}")
        if not self.offset_range >= 0:
            raise SpaInputError(None, f"option offset_range must be ≥ 0 px, got {self.offset_range!r}")
        if not 0 < self.significant_fraction <= 1:
            raise SpaInputError(None, "option significant_fraction must be in (0, 1], got "
                                      f"{self.significant_fraction!r}")
        if self.oversampling not in (0, 1, 2):
            raise SpaInputError(None, f"option oversampling must be 0, 1 or 2, got {self.oversampling!r}")
        if self.incr_shells < 0:
            raise SpaInputError(None, f"option incr_shells must be ≥ 0, got {self.incr_shells!r}")
        self.check_stage()
        return self

    def check_stage(self) -> None:
        """The checks of a stage's own fields (none here)."""

    def fingerprint(self) -> dict:
        """Field → value of every field that changes the result (JSON-serialisable)."""
        return {k: v for k, v in asdict(self).items() if k not in self.NEUTRAL + tuple(self.CONTINUABLE)}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def at_least(options: EMOptions, name: str, minimum: float, unit: str = "") -> None:
    """Raise when field ``name`` is below ``minimum`` (a stage's own check)."""
    value = getattr(options, name)
    if value is None or not value >= minimum:
        raise SpaInputError(None, f"option {name} must be ≥ {minimum:g}{unit}, got {value!r}")
