"""Helpers for the tests that run Snakemake on tiny workdirs (rerun, faults, SLURM).

Jobs are read from Snakemake's own records (dry-run job blocks, ``--summary`` rows, SLURM
submission lines), never from timing. Results are compared array by array.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import zarr

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"


def run_snakemake(workdir: Path, *args: str, timeout: int = 600, cores: int | None = 2,
                  check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """``snakemake -s Snakefile -d workdir ...`` under ``timeout -k`` (a hung run cannot hang CI)."""
    cmd = ["timeout", "-k", "15", str(timeout), sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE),
           "-d", str(workdir), *(["--cores", str(cores)] if cores else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


_JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):\n((?:[ \t]+.*\n?)*)", re.M)


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job block in Snakemake's (dry-run) output."""
    jobs = []
    for m in _JOB.finditer(output):
        wc = re.search(r"^\s+wildcards: (.*)$", m.group(2), re.M)
        wildcards = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        jobs.append((m.group(1), wildcards))
    return jobs


def dry_run(workdir: Path, *args: str) -> list[tuple[str, dict[str, str]]]:
    proc = run_snakemake(workdir, "-n", *args)
    out = proc.stdout + proc.stderr
    jobs = planned_jobs(out)
    assert jobs or "Nothing to be done" in out, out[-3000:]
    return jobs


def summary_rows(workdir: Path) -> list[dict[str, str]]:
    """``snakemake --summary``: one row per output with its rule, status and plan."""
    out = run_snakemake(workdir, "--summary").stdout
    lines = [ln for ln in out.splitlines() if "\t" in ln]
    header = lines[0].split("\t")
    assert header[:3] == ["output_file", "date", "rule"], lines[:2]
    return [dict(zip(header, ln.split("\t"), strict=False)) for ln in lines[1:]]


def store_arrays(store: Path) -> dict[str, np.ndarray]:
    """Every array of a zarr store (nested groups included), read fully."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Snakemake's timestamp file inside directory outputs
        group = zarr.open_group(store, mode="r")
        return {name: np.asarray(a[...]) for name, a in group.members(max_depth=None)
                if isinstance(a, zarr.Array)}


def result_files(results: Path) -> dict[str, Path]:
    """The comparable outputs under results/: zarr stores, .npz and .tif files (relative names)."""
    found = {}
    for p in sorted(results.rglob("*")):
        rel = str(p.relative_to(results))
        if any(part.startswith(".") for part in p.relative_to(results).parts):
            continue  # hidden temporaries
        if p.is_dir() and p.suffix == ".zarr":
            found[rel] = p
        elif p.is_file() and p.suffix in (".npz", ".tif", ".pt") and ".zarr" not in rel:
            found[rel] = p
    return found


def _arrays(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".zarr":
        return store_arrays(path)
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if path.suffix == ".pt":  # models and checkpoints: every tensor (weights, optimiser state)
        import torch

        flat: dict[str, np.ndarray] = {}

        def walk(obj, name):
            if isinstance(obj, torch.Tensor):
                flat[name] = obj.numpy()
            elif isinstance(obj, dict):
                for k, v in obj.items():
                    walk(v, f"{name}/{k}")
            elif isinstance(obj, list | tuple):
                for i, v in enumerate(obj):
                    walk(v, f"{name}/{i}")

        walk(torch.load(path, weights_only=True, map_location="cpu"), "")
        return flat
    return {"pixels": tifffile.imread(path)}


def assert_same_results(a: Path, b: Path, *, subset: bool = False, skip: tuple[str, ...] = ()) -> list[str]:
    """Both results/ trees hold the same stores/files with bit-identical arrays (``subset``: every
    one of b's is in a and equal; ``skip``: glob patterns of names left out); returns the names compared."""
    from fnmatch import fnmatch

    fa, fb = ({k: v for k, v in result_files(x).items() if not any(fnmatch(k, g) for g in skip)} for x in (a, b))
    if subset:
        assert set(fb) <= set(fa), f"not in {a}: {sorted(set(fb) - set(fa))}"
    else:
        assert sorted(fa) == sorted(fb), f"different outputs: {sorted(set(fa) ^ set(fb))}"
    for rel in fb:
        xa, xb = _arrays(fa[rel]), _arrays(fb[rel])
        assert sorted(xa) == sorted(xb), f"{rel}: arrays {sorted(xa)} vs {sorted(xb)}"
        for name in xa:
            assert xa[name].dtype == xb[name].dtype and xa[name].shape == xb[name].shape, f"{rel}/{name}"
            assert np.array_equal(xa[name], xb[name], equal_nan=xa[name].dtype.kind in "fc"), \
                f"{rel}/{name} differs between {a} and {b}"
    return sorted(fb)


def tiny_config() -> dict:
    """The end-to-end tests' tiny config (tests/test_workflow.py) with a few-second segmenter training
    on a1_A only (a new session is then not training data: it must not retrain the segmenter),
    checkpointed every 10 of its 40 iterations (tests/test_faults.py kills it in between)."""
    import copy

    from test_workflow import TINY_CONFIG

    config = copy.deepcopy(TINY_CONFIG)
    config.setdefault("keyframes", {}).update(n_keyframes=10, batch_size=50)
    config["segment"] = {**config.get("segment", {}), "train_sessions": ["a1_A"], "iterations": 40, "val_every": 10,
                         "base_channels": 4, "depth": 2, "patch_size": 32, "batch_size": 4, "tta": False,
                         "device": "cpu"}
    return config


def write_workdir(tmp: Path, config: dict, sessions: list[tuple[str, str]]) -> None:
    """config/config.yaml + config/sessions.tsv with demo sessions ``(name, condition)``."""
    from test_workflow import demo_row
    from test_workflow import write_workdir as _write

    _write(tmp, config, [demo_row(name, cond) for name, cond in sessions])


TINY_SESSIONS = [("a1_A", "A"), ("a1_B", "B")]


def copy_run(src: Path, dst: Path) -> Path:
    """Copy a finished workdir keeping mtimes and Snakemake's metadata (a rerun sees the same state)."""
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst
