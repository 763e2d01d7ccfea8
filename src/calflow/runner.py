"""Glue used by ``workflow/scripts/*.py``: logging, threads, seeds and clean error reporting.

A script calls :func:`run_script` with the ``snakemake`` object and its stage function. Bad input
(:class:`~calflow.errors.CalflowInputError`) is reported as one line on stderr and in the rule's
log, and the job fails without a traceback from deep inside numpy. The library itself never
imports Snakemake; the object is only read duck-typed here.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from calflow.errors import CalflowInputError


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``log_file`` (the rule's log)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s", handlers=handlers, force=True)


def set_threads(n: int) -> None:
    """Bound torch / BLAS threads to the cores the scheduler gave this job."""
    n = max(1, int(n))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    # torch reads OMP_NUM_THREADS when it is first imported; set it here only where the stage has
    # imported it already (importing torch costs a second of every short job that never uses it)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def run_script(smk: Any, stage: Callable[[Any], Any]) -> Any:
    """Run ``stage(smk)`` for a Snakemake ``script:`` job with logging and clean errors."""
    log_file = smk.log[0] if len(smk.log) else None
    setup_logging(log_file)
    set_threads(getattr(smk, "threads", 1))
    log = logging.getLogger(f"calflow.{smk.rule}")
    if os.environ.get("SLURM_JOB_ID"):  # where a cluster job ran and which GPU it was given
        log.info("SLURM job %s on %s, CUDA_VISIBLE_DEVICES=%s", os.environ["SLURM_JOB_ID"],
                 os.environ.get("SLURMD_NODENAME", "?"), os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
    t0 = time.perf_counter()
    try:
        result = stage(smk)
    except CalflowInputError as err:
        log.error("%s", err)
        print(f"calflow error: {err}", file=sys.stderr)
        sys.exit(1)
    use = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # forked workers (compare, report), waited for
    # CPU includes the job's start-up (interpreter, imports): what the scheduler's cores paid for it
    if kids.ru_utime + kids.ru_stime > 0:
        log.info("process CPU %.1f s (+ %.1f s in child processes), peak RSS %.0f MiB (largest child %.0f MiB)",
                 use.ru_utime + use.ru_stime, kids.ru_utime + kids.ru_stime, use.ru_maxrss / 1024,
                 kids.ru_maxrss / 1024)
    else:
        log.info("process CPU %.1f s, peak RSS %.0f MiB", use.ru_utime + use.ru_stime, use.ru_maxrss / 1024)
    log.info("rule %s finished in %.1f s", smk.rule, time.perf_counter() - t0)
    if type(smk).__module__.startswith("snakemake"):  # a Snakemake job's own process (not a test's)
        exit_job_process()
    return result


def exit_job_process() -> None:
    """End a finished job's process without the interpreter's module teardown.

    Freeing torch, zarr, pandas and matplotlib module by module costs a job ~0.3-0.45 CPU-s after its
    work is done (measured: a gradcam-sized process 2.05 s with normal exit, 1.6-1.7 s this way), ~55
    CPU-s over the demo's 180 jobs. Exit handlers still run (temporary directories, logging), the
    standard streams are flushed, and every output is closed before this point (stores are written
    synchronously, files through ``atomic_output``)."""
    import atexit

    logging.shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _die_with_parent(parent: int) -> None:
    """Pool-worker initializer (Linux): the kernel sends SIGKILL to this process when its parent
    dies, so a killed job (SIGKILL, OOM killer, a lost node's cleanup) leaves no worker behind. A
    worker whose parent is already gone exits at once."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: no parent-death signal
        return
    if os.getppid() != parent:
        os._exit(1)


def forked_pool(workers: int) -> Any:
    """A ``ProcessPoolExecutor`` of ``workers`` forked processes that die with this one.

    Without it, a job killed while its workers run left them behind, blocked for ever on the
    result pipe (measured: the report's two workers, 170 MB each, still there 17 minutes after a
    SIGKILL of the report job)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))
