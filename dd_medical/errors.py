"""Exceptions with messages that name the file and the problem (never patient data)."""

from __future__ import annotations

from pathlib import Path


class DDMedicalError(Exception):
    """Base class of every error dd-medical raises on purpose."""


class InputError(DDMedicalError, ValueError):
    """Bad input: a missing, empty, corrupt, non-image or wrongly shaped file or array.

    ``str(err)`` is one line: ``"<path>: <problem>"`` when a path is known, else ``"<problem>"``.
    """

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)
