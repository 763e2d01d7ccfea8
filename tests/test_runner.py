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


def _burn_in_child() -> None:
    """0.3 s of CPU in a pool worker."""
    import time

    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass


def test_job_log_counts_the_cpu_of_its_worker_processes(tmp_path):
    """A stage that forks workers (compare, report) logs their CPU beside its own: the job's cost."""
    r = subprocess.run([sys.executable, "-c", f"""
import multiprocessing, sys, time
from types import SimpleNamespace
sys.path.insert(0, {str(os.path.dirname(__file__))!r})
from test_runner import _burn_in_child
from calflow.runner import run_script
def stage(_smk):
    with multiprocessing.get_context("fork").Pool(1) as pool:
        pool.apply(_burn_in_child)
run_script(SimpleNamespace(log=[{str(tmp_path / 'job.log')!r}], threads=1, rule="demo"), stage)
"""], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = [ln for ln in (tmp_path / "job.log").read_text().splitlines() if "process CPU" in ln][0]
    child = float(line.split("(+ ")[1].split(" s in child processes")[0])
    assert child >= 0.25, line


def test_forked_pool_workers_die_when_their_job_is_killed(tmp_path):
    """A job killed (SIGKILL) while its forked workers run leaves none behind (the report's workers
    used to stay, blocked on the result pipe); the pool itself works as a ProcessPoolExecutor."""
    import signal
    import time

    pids = tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, "-c", f"""
import os, time
from calflow.runner import forked_pool
def work(i):
    open({str(pids)!r} + str(i), "w").write(str(os.getpid()))
    time.sleep(600)
pool = forked_pool(2)
assert list(pool.map(abs, [-1, -2])) == [1, 2]
pool.map(work, range(2))
time.sleep(600)
"""])
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("pids*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [int(p.read_text() or 0) for p in tmp_path.glob("pids*")]
    assert len(workers) == 2 and all(workers), "the workers did not start"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in workers if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers {left} outlived their killed job"
