"""Errors that reach the user as one line naming the file and what is wrong."""

from __future__ import annotations

import os


class SpaInputError(Exception):
    """Bad user input: a file that is missing, corrupt or inconsistent.

    The message always starts with the offending path so the one-line error the
    CLI prints says *which* file and *what* is wrong.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self):
        # raised on a Dask worker process, it travels to the client pickled: rebuild it from its parts
        return (type(self), (self.path, self.problem))
