"""Progress of a long pass: one updating line on a terminal, plain lines in a log file.

``progress_printer(label)`` makes the ``progress(done, total)`` callback that
:func:`spa.parallel.map_reduce` and the stages' long passes call.  To a
terminal it rewrites one line (``\\r``) at most a few times a second; to
anything else (a log file, a pipe: what Snakemake's ``> log 2>&1`` gives) it
writes whole lines, one each time another tenth of the pass is done or a
minute has gone by (once the pass has taken a few seconds: a short pass
gives one line), and one at the end — never a ``\\r``.  Each line says
how far the pass is, the time it has taken and an estimate of the time left.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable


def duration(seconds: float) -> str:
    """A short human duration: '42 s', '7 min', '2.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_printer(label: str, *, stream=None, write: Callable[[str], None] | None = None,
                     fraction: float = 0.1, seconds: float = 60.0, quiet: float = 5.0, refresh: float = 0.2,
                     clock: Callable[[], float] = time.monotonic) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that reports a pass as ``label: done/total (p %), t, about t' left``.

    ``stream`` (default: stderr): a terminal gets one line updated in place
    (at most every ``refresh`` s, and always at the end); other streams get a
    line each time ``done`` crosses another ``fraction`` of ``total`` or
    ``seconds`` have passed since the last line, once the pass has run for
    ``quiet`` seconds, and always one at the end.  ``write``
    (e.g. a stage's log function) takes those plain lines instead of a
    stream.
    """
    stream = sys.stderr if stream is None and write is None else stream
    tty = write is None and _isatty(stream)
    if write is None:
        def write(text: str) -> None:  # noqa: E306 - a plain line
            print(text, file=stream, flush=True)
    start = clock()
    state = {"last": None, "next": fraction}

    def text(done: int, total: int, now: float) -> str:
        elapsed = now - start
        pct = 100.0 * done / total if total else 100.0
        line = f"{label}: {done}/{total} ({pct:.0f} %), {duration(elapsed)}"
        if 0 < done < total:
            line += f", about {duration(elapsed * (total - done) / done)} left"
        return line

    def progress(done: int, total: int) -> None:
        now = clock()
        finished = done >= total
        if tty:
            if finished or state["last"] is None or now - state["last"] >= refresh:
                stream.write("\r" + text(done, total, now) + "\x1b[K" + ("\n" if finished else ""))
                stream.flush()
                state["last"] = now
            return
        frac = done / total if total else 1.0
        since = now - (start if state["last"] is None else state["last"])
        due = frac >= state["next"] - 1e-9 or since >= seconds
        if finished or (due and now - start >= quiet):
            write(text(done, total, now))
            state["last"] = now
        if finished or due:
            state["next"] = (math.floor(frac / fraction + 1e-9) + 1) * fraction

    return progress
