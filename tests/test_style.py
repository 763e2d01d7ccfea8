"""The code base stays lint-clean (ruff) and the workflow snakefmt-formatted (both configured in pyproject.toml)."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the test extra: pip install -e '.[test]')")
    proc = subprocess.run([ruff, "check", "src", "tests", "benchmarks", "workflow/scripts"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_clean():
    """The Snakefile and every workflow/rules/*.smk are as snakefmt ([tool.snakefmt]) formats them."""
    if importlib.util.find_spec("snakefmt") is None:
        pytest.skip("snakefmt is not installed (it comes with the test extra: pip install -e '.[test]')")
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/rules"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, "run `snakefmt .` from the repository root:\n" + proc.stdout + proc.stderr
