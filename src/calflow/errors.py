"""One exception type for bad user input: it names the file and the fix."""

from __future__ import annotations

import errno
import re
from pathlib import Path


class CalflowInputError(ValueError):
    """Bad input (file, config value, sessions row) with a message a user can act on.

    ``str(err)`` reads ``<file>: <problem>. Fix: <fix>`` so that the command line, Snakemake
    logs and tests all show the same single line.
    """

    def __init__(self, problem: str, *, file: str | Path | None = None, fix: str | None = None):
        self.file = str(file) if file is not None else None
        problem = re.sub(r"\s*\n\s*", " ", problem.strip())  # one line, also for a library's multi-line text
        self.problem = problem
        self.fix = fix
        msg = problem
        if self.file:
            msg = f"{self.file}: {msg}"
        if fix:
            msg = f"{msg}. Fix: {fix}"
        super().__init__(msg)


_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err: BaseException) -> bool:
    """True for an error of a write that found the disk (or the user's quota) full, also when a
    library (zarr, h5py) wrapped the OSError or kept only its text."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _FULL:
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def disk_full(path: str | Path) -> CalflowInputError:
    """The one-line error for an output that did not fit on its filesystem (nothing of it is kept)."""
    import shutil

    where = Path(path).parent
    try:
        free = f"{shutil.disk_usage(where).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return CalflowInputError(f"no space left on the device while writing it ({free} on {where}); nothing was kept",
                             file=path, fix="free disk space (or move results/ to a larger filesystem) and rerun")
