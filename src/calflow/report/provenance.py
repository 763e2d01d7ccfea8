"""Provenance of a run: the git commit of the workflow, the package versions of the environment
that renders the report, and per-job timings read from the job logs (:func:`rule_timings`)."""

from __future__ import annotations

import platform
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from calflow import __version__

#: Packages whose versions the provenance section lists (those of the environment that renders
#: the report; with ``--sdm conda`` every rule family has its own env).
VERSION_PACKAGES = (
    "calflow", "numpy", "scipy", "torch", "zarr", "xarray", "dask", "numcodecs", "tifffile", "h5py",
    "pynwb", "pandas", "scikit-image", "scikit-learn", "matplotlib", "jinja2", "pyyaml", "snakemake",
)


def git_commit(path: str | Path | None) -> str:
    """``<sha>`` (``-dirty`` with uncommitted changes to tracked files) or ``'unknown'``."""
    if path is None:
        return "unknown"
    try:
        sha = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else (sha or "unknown")


def package_versions(names: Iterable[str] = VERSION_PACKAGES, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    if out.get("calflow") == "not installed":  # a source checkout on PYTHONPATH (the conda envs)
        out["calflow"] = __version__
    out.update(extra or {})
    return out


_FINISHED = re.compile(r"^(\S+ \S+) \S+ INFO: rule (\S+) finished in ([\d.]+) s\s*$")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


def rule_timings(logs_dir: str | Path, skip_rules: Sequence[str] = ("report",)) -> list[dict[str, Any]]:
    """One row per job log ``logs_dir/{rule}/{name}.log``.

    ``calflow.runner.run_script`` ends every successful job's log with ``rule X finished in N s``
    (the time spent in the stage function, without interpreter start-up). A log without that
    line belongs to a job that failed (an ``ERROR`` line) or has not finished.
    """
    rows = []
    logs_dir = Path(logs_dir)
    if not logs_dir.is_dir():
        return rows
    for path in sorted(logs_dir.glob("*/*.log")):
        rule = path.parent.name
        if rule in skip_rules:
            continue
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        seconds, finished, status = None, None, "unfinished"
        for line in reversed(lines):
            m = _FINISHED.match(line)
            if m:
                finished, seconds, status = m.group(1).split(",")[0], float(m.group(3)), "ok"
                break
        if status != "ok" and any(" ERROR: " in ln or ln.startswith("calflow error") for ln in lines):
            status = "failed"
        started = next((m.group(1) for ln in lines if (m := _STAMP.match(ln))), None)
        rows.append({"rule": rule, "job": path.stem, "seconds": seconds, "status": status,
                     "started": started, "finished": finished})
    return rows
