"""Errors a user can act on.

Every error that stems from bad input names the file (and line, where there is one) and the
problem in one line, so the CLI can print ``str(err)`` and exit non-zero without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class PlmError(Exception):
    """Base class for errors the CLI reports as one line."""


class InputError(PlmError):
    """Bad input data: a missing path, an empty corpus, undecodable bytes, a malformed record."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class ConfigError(PlmError):
    """A parameter value that cannot work (unknown preset, inconsistent sizes)."""
