"""Write files so that they appear at their final path only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``final``; rename it onto ``final`` on success.

    On any exception the temporary file (or directory, e.g. a Zarr group) is
    removed and ``final`` is left untouched.  The temporary name keeps the
    final suffix (``suffix`` overrides) because some writers pick their format
    from it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sfx = final.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{sfx}", dir=final.parent)
    os.close(fd)
    os.unlink(tmp)  # the writer creates it (a file or a directory)
    tmp = Path(tmp)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise
