"""One exception type for bad user input: it names the file and the fix."""

from __future__ import annotations

from pathlib import Path


class CalflowInputError(ValueError):
    """Bad input (file, config value, sessions row) with a message a user can act on.

    ``str(err)`` reads ``<file>: <problem>. Fix: <fix>`` so that the command line, Snakemake
    logs and tests all show the same single line.
    """

    def __init__(self, problem: str, *, file: str | Path | None = None, fix: str | None = None):
        self.file = str(file) if file is not None else None
        self.problem = problem
        self.fix = fix
        msg = problem
        if self.file:
            msg = f"{self.file}: {msg}"
        if fix:
            msg = f"{msg}. Fix: {fix}"
        super().__init__(msg)
