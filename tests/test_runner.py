"""calflow.runner: a finished Snakemake job's process ends fast, with its output and clean-up intact."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

from calflow.runner import run_script

JOB = """
import logging, sys, tempfile
from calflow.runner import exit_job_process
logging.basicConfig(filename=sys.argv[1], level=logging.INFO, force=True)
scratch = tempfile.TemporaryDirectory()   # removed by its finalizer, which runs as an exit handler
print(scratch.name)                       # block-buffered into a pipe: lost unless flushed
logging.getLogger("job").info("last line of the job's log")
exit_job_process()
print("never reached")
"""


def test_exit_job_process_flushes_output_and_runs_exit_handlers(tmp_path):
    log = tmp_path / "job.log"
    r = subprocess.run([sys.executable, "-c", JOB, str(log)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert len(lines) == 1 and "never reached" not in r.stdout
    assert not os.path.exists(lines[0])  # the temporary directory was cleaned up
    assert "last line of the job's log" in log.read_text()


def test_run_script_returns_outside_a_snakemake_job(tmp_path):
    """A caller that is not Snakemake's script object (a test, a notebook) gets the result back."""
    smk = SimpleNamespace(log=[str(tmp_path / "x.log")], threads=1, rule="demo")
    assert run_script(smk, lambda s: 42) == 42
    assert "rule demo finished" in (tmp_path / "x.log").read_text()
