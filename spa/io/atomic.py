"""Write files so that they appear at their final path only when complete; check output folders first.

* :func:`atomic_path`: a temporary path beside the final one, renamed onto
  it on success and removed on failure (with the folders the write made,
  when they are left empty).
* :func:`check_output_folder` / :func:`output_folder`: before a command
  computes anything, its output folder must exist or be makeable, and be
  writable; the error names that folder (or the file that stands where a
  folder must be), never a temporary file.  Folders a failed run made and
  left empty are removed again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from spa.errors import SpaInputError


def _missing_folders(folder: Path) -> list[Path]:
    """The folders of ``folder``'s path that do not exist yet, outermost first (none if it exists)."""
    missing = []
    p = Path(folder)
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing[::-1]


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (outermost first, as :func:`_missing_folders` lists them) that are empty."""
    for d in reversed(folders):
        try:
            d.rmdir()
        except OSError:
            return  # not empty (or gone): its parents are not empty either


def check_output_folder(folder: str | os.PathLike, what: str = "output folder") -> list[Path]:
    """Check that ``folder`` exists or can be made, and that files can be written in it — without making it.

    Returns the folders of its path that do not exist yet (outermost first):
    the ones writing into it will make.  Raises :class:`SpaInputError`
    naming the folder when a file stands where a folder must be, or when the
    folder (or the existing folder it would be made in) cannot be written.
    """
    folder = Path(folder)
    missing = _missing_folders(folder)
    base = missing[0].parent if missing else folder
    if not base.is_dir():
        if base == folder:
            raise SpaInputError(folder, f"is a file, not a folder: it cannot be the {what}")
        raise SpaInputError(base, f"is a file, not a folder: the {what} {folder} cannot be made in it")
    try:
        fd, probe = tempfile.mkstemp(prefix=".spa-write-check.", dir=base)
    except OSError as exc:
        why = exc.strerror or exc
        if base == folder:
            raise SpaInputError(base, f"cannot write in the {what} ({why})") from None
        raise SpaInputError(base, f"cannot make the {what} {folder} in this folder ({why})") from None
    os.close(fd)
    os.unlink(probe)
    return missing


@contextlib.contextmanager
def output_folder(folder: str | os.PathLike, what: str = "output folder"):
    """``with output_folder(d):`` — :func:`check_output_folder` first; on any exception inside, the
    folders of ``d``'s path that did not exist before and are empty again are removed (a run that
    fails leaves no empty output folder behind)."""
    missing = check_output_folder(folder, what)
    try:
        yield Path(folder)
    except BaseException:
        _remove_empty(missing)
        raise


#: the name :func:`atomic_path` gives its temporary: ``.<final name>.<8 random characters>.tmp<suffix>``
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries :func:`atomic_path` left in ``folder`` when its process was killed (``kill -9``
    cannot be cleaned up after); returns what was removed.  Only for a folder no other process is
    writing in at the time (a stage's own output folder, when the stage starts)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if _TEMPORARY.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``final``; rename it onto ``final`` on success.

    On any exception the temporary file (or directory, e.g. a Zarr group) is
    removed, ``final`` is left untouched, and so are folders this call made
    for it unless they are left empty.  The temporary name keeps the final
    suffix (``suffix`` overrides) because some writers pick their format from
    it.  A folder that cannot be made or written is a :class:`SpaInputError`
    naming it (not the temporary file).
    """
    final = Path(final)
    made = _missing_folders(final.parent)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        sfx = final.suffix if suffix is None else suffix
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{sfx}", dir=final.parent)
    except OSError as exc:
        _remove_empty(made)
        check_output_folder(final.parent, "folder of " + final.name)  # raises, naming the folder
        raise SpaInputError(final.parent, f"cannot write {final.name} here ({exc.strerror or exc})") from None
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
        _remove_empty(made)
        raise
