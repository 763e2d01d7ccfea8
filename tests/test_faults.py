"""Faults: killed jobs leave nothing a rerun trusts, training resumes from its last checkpoint,
corrupt or truncated inputs are reported in one clear line, identical seeds give identical results.

Kills are real SIGKILLs of the job process, or of Snakemake with its job (a lost login node).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tifffile
from smkutil import (
    SNAKEFILE,
    TINY_SESSIONS,
    assert_same_results,
    copy_run,
    dry_run,
    run_snakemake,
    store_arrays,
    tiny_config,
    write_workdir,
)

from calflow.errors import CalflowInputError
from calflow.io import MovieReader, MovieWriter, atomic_output


# ---------------------------------------------------------------- corrupt stores (fast, no Snakemake)
def _store(tmp_path: Path, name: str = "raw.zarr") -> tuple[Path, np.ndarray]:
    movie = np.random.default_rng(0).poisson(200, (60, 32, 32)).astype(np.uint16)
    with MovieWriter(tmp_path / name, movie.shape, movie.dtype, fps=10, chunk_frames=20) as w:
        w.write(movie)
    return tmp_path / name, movie


def _damage(chunk: Path, how: str) -> None:
    data = bytearray(chunk.read_bytes())
    if how == "one_bit":
        data[len(data) // 2] ^= 0x01  # Blosc/zstd alone decode this to wrong numbers without a word
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "zeroed":
        data = bytearray(len(data))
    chunk.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["one_bit", "truncated", "zeroed"])
def test_corrupt_chunk_is_named_instead_of_read_as_wrong_numbers(tmp_path, how):
    store, movie = _store(tmp_path)
    _damage(store / "movie" / "c" / "1" / "0" / "0", how)
    reader = MovieReader(store)
    np.testing.assert_array_equal(reader[0:20], movie[0:20])  # intact chunks still read
    with pytest.raises(CalflowInputError) as err:
        reader[:]
    msg = str(err.value)
    assert msg.startswith(f"{store}: chunk movie/c/1/0/0 (frames 20-39) is corrupt (checksum mismatch)"), msg
    assert "\n" not in msg and msg.endswith("Fix: delete the store and rerun the stage that writes it")


def test_missing_chunk_is_named_instead_of_read_as_zeros(tmp_path):
    store, _ = _store(tmp_path)
    (store / "movie" / "c" / "2" / "0" / "0").unlink()
    with pytest.raises(CalflowInputError, match=r"raw\.zarr: chunk movie/c/2/0/0 \(frames 40-59\) is missing"):
        MovieReader(store)


def test_blank_chunk_is_written_and_read_back_not_taken_for_damage(tmp_path):
    """Frames all equal to the fill value (a closed shutter) are data: the chunk is written, the
    store passes the integrity check through motion, and deleting that chunk is still damage."""
    from calflow.ingest import ingest
    from calflow.motion import correct_motion

    movie = np.random.default_rng(2).poisson(200, (60, 32, 32)).astype(np.uint16)
    movie[:20] = 0  # the whole first chunk
    tifffile.imwrite(tmp_path / "blank.tif", movie)
    store = tmp_path / "raw.zarr"
    ingest(tmp_path / "blank.tif", store, fps=10, params={"chunk_frames": 20})
    assert sorted(p.name for p in (store / "movie" / "c").iterdir()) == ["0", "1", "2"]
    np.testing.assert_array_equal(MovieReader(store)[:], movie)
    correct_motion(store, tmp_path / "motion.zarr", params={"patch_size": 16, "overlap": 8, "max_shift": 4,
                                                            "template_frames": 20, "batch_size": 20})
    assert MovieReader(tmp_path / "motion.zarr").shape == movie.shape
    (store / "movie" / "c" / "0" / "0" / "0").unlink()
    with pytest.raises(CalflowInputError, match=r"chunk movie/c/0/0/0 \(frames 0-19\) is missing"):
        MovieReader(store)


def test_corrupt_raw_store_stops_motion_before_it_writes(tmp_path):
    from calflow.motion import correct_motion

    store, _ = _store(tmp_path)
    _damage(store / "movie" / "c" / "2" / "0" / "0", "one_bit")
    with pytest.raises(CalflowInputError, match=r"raw\.zarr: chunk movie/c/2/0/0 \(frames 40-59\) is corrupt"):
        correct_motion(store, tmp_path / "motion.zarr", params={"patch_size": 16, "overlap": 8, "max_shift": 4,
                                                                 "template_frames": 20, "batch_size": 20})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.zarr"]  # no motion.zarr, no temporary


def test_temporary_of_a_killed_writer_is_removed_by_the_next_writer(tmp_path):
    out = tmp_path / "motion.zarr"
    code = ("import os, signal, sys\nfrom calflow.io import atomic_output\n"
            f"with atomic_output({str(out)!r}) as tmp:\n"
            "    tmp.mkdir(); (tmp / 'half').write_bytes(b'x' * 1000)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = list(tmp_path.glob(".motion.zarr.tmp-*"))
    assert len(left) == 1 and not out.exists()
    with atomic_output(out) as tmp:
        tmp.mkdir()
    assert out.is_dir() and list(tmp_path.glob(".motion.zarr.tmp-*")) == []


# ---------------------------------------------------------------- killed jobs (Snakemake)
LONG_FRAMES = 3000  # ~2 s of motion correction + ~1 s of figures: wide windows to kill in


def _long_config() -> dict:
    config = tiny_config()
    config["demo"]["sim"]["n_frames"] = LONG_FRAMES
    return config


@pytest.fixture(scope="module")
def long_run(tmp_path_factory) -> Path:
    """One 3000-frame session run up to motion (the uninterrupted reference)."""
    tmp = tmp_path_factory.mktemp("long")
    write_workdir(tmp, _long_config(), [("a1_A", "A")])
    run_snakemake(tmp, "results/a1_A/motion.zarr")
    return tmp


def _start(workdir: Path, *targets: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), "--cores", "2", *targets]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 180) -> bool:
    """Poll every 2 ms until ready() is true; False if Snakemake exited first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError("timed out waiting for the job")


def _kill_at_checkpoint_then_rerun(wd: Path, target: str, checkpoint: Path, model: Path) -> None:
    """Run ``target``, SIGKILL Snakemake and its job once ``checkpoint`` exists, check that no
    ``model`` was left, then unlock and rerun with --rerun-incomplete."""
    proc = _start(wd, target)
    assert _wait_for(proc, checkpoint.exists), proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not model.exists(), "a killed training left a model behind"
    run_snakemake(wd, "--unlock")
    run_snakemake(wd, "--rerun-incomplete", target)


def _job_process(proc: subprocess.Popen, script: str) -> psutil.Process | None:
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if any(script in part for part in child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            pass
    return None


@pytest.mark.slow
def test_killed_jobs_leave_nothing_a_rerun_trusts(long_run, tmp_path):
    wd = copy_run(long_run, tmp_path / "wd")
    session = wd / "results" / "a1_A"
    shutil.rmtree(session / "motion.zarr")
    shutil.rmtree(session / "plots" / "motion")
    target = "results/a1_A/motion.zarr"

    # 1. A cluster-style kill: the job's process dies (OOM killer, time limit) while it writes the
    #    store; Snakemake survives, reports the failure and keeps no output.
    proc = _start(wd, target)
    assert _wait_for(proc, lambda: any(session.glob(".motion.zarr.tmp-*/movie/c/*/0/0"))), proc.communicate()[0]
    job = _job_process(proc, "motion.py")
    assert job is not None, "motion job process not found"
    job.send_signal(signal.SIGKILL)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "Error in rule motion" in out, out[-3000:]
    assert not (session / "motion.zarr").exists()
    assert len(list(session.glob(".motion.zarr.tmp-*"))) == 1  # the killed writer's temporary, never trusted

    # 2. Snakemake and the job die together (lost login node) after the store was renamed into
    #    place but before the job finished (figures): the store looks complete, the job is not.
    for _attempt in range(3):
        proc = _start(wd, target)
        landed = _wait_for(proc, lambda: (session / "motion.zarr").exists())
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log = (wd / "results" / "logs" / "motion" / "a1_A.log").read_text()
        if landed and "rule motion finished" not in log:
            break
        shutil.rmtree(session / "motion.zarr", ignore_errors=True)  # the job won the race: try again
        shutil.rmtree(session / "plots" / "motion", ignore_errors=True)
        run_snakemake(wd, "--unlock")
    else:
        pytest.fail("could not kill the motion job between its store rename and its end in 3 tries")
    assert list(session.glob(".motion.zarr.tmp-*")) == [], "the killed writer's temporary of step 1 was not removed"
    proc = run_snakemake(wd, "-n", target, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "IncompleteFilesException" in out and target in out, out[-3000:]

    run_snakemake(wd, "--unlock")
    assert [(r, wc.get("session")) for r, wc in dry_run(wd, "--rerun-incomplete", target)] == [("motion", "a1_A")]
    run_snakemake(wd, "--rerun-incomplete", target)
    assert dry_run(wd, target) == []
    assert_same_results(long_run / "results" / "a1_A", wd / "results" / "a1_A")  # = the uninterrupted run


@pytest.mark.slow
def test_training_resumes_from_its_last_checkpoint_after_a_kill(tiny_run, tmp_path):
    """Kill Snakemake and the training between two checkpoints; the rerun resumes there and ends
    with the weights of the uninterrupted training (tiny_run's), bit for bit (CPU, same threads)."""
    wd = copy_run(tiny_run, tmp_path / "wd")
    models = wd / "results" / "models"
    iterations = tiny_config()["segment"]["iterations"]
    for p in (models / "segmenter.pt", models / "segmenter_metrics.json"):
        p.unlink()
    shutil.rmtree(models / "segmenter_checkpoints")
    _kill_at_checkpoint_then_rerun(wd, "results/models/segmenter.pt",
                                   models / "segmenter_checkpoints" / "last.pt", models / "segmenter.pt")
    metrics = json.loads((models / "segmenter_metrics.json").read_text())
    assert metrics["completed"] and 0 < metrics["resumed_from"] < iterations, metrics
    reference = json.loads((tiny_run / "results" / "models" / "segmenter_metrics.json").read_text())
    assert reference["resumed_from"] is None and reference["history"] == metrics["history"]
    assert_same_results(tiny_run / "results" / "models", models)  # model + last/best checkpoints


# ---------------------------------------------------------------- bad input through the workflow
@pytest.mark.slow
def test_truncated_tiff_stops_ingest_with_one_clear_line(tmp_path):
    movie = np.random.default_rng(1).poisson(200, (80, 48, 40)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "user.tif", movie)
    data = (tmp_path / "user.tif").read_bytes()
    (tmp_path / "user.tif").write_bytes(data[: int(len(data) * 0.6)])
    write_workdir(tmp_path, tiny_config(), [("a1_A", "A")])
    sheet = tmp_path / "config" / "sessions.tsv"
    sheet.write_text(sheet.read_text() + "user1\tuser.tif\tA\t15\t\t\t\n")
    proc = run_snakemake(tmp_path, "results/user1/raw.zarr", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = [ln for ln in out.splitlines() if ln.startswith("calflow error:")]
    assert len(lines) == 1 and lines[0].startswith("calflow error: user.tif: TIFF is truncated or corrupt"), out[-3000:]
    assert "Traceback" not in out
    assert lines[0].removeprefix("calflow error: ") in (tmp_path / "results/logs/ingest/user1.log").read_text()
    assert not (tmp_path / "results" / "user1").exists() or not any((tmp_path / "results" / "user1").iterdir())


# ---------------------------------------------------------------- determinism
@pytest.mark.slow
def test_identical_seeds_give_identical_results(tiny_run, tmp_path):
    """A second run in another directory with the same seeds: the demo movie, its ground truth and
    every preprocessing store are bit-identical. (The segmenter: test_training_resumes... above
    compares one trained elsewhere; tests/test_slurm.py compares a whole run through SLURM.)"""
    write_workdir(tmp_path, tiny_config(), TINY_SESSIONS[:1])
    run_snakemake(tmp_path, "results/a1_A/summary.zarr", "results/a1_A/keyframes.zarr")
    compared = assert_same_results(tiny_run / "results", tmp_path / "results", subset=True)
    assert {"demo/a1_A/movie.tif", "demo/a1_A/ground_truth.npz", "a1_A/raw.zarr", "a1_A/motion.zarr",
            "a1_A/summary.zarr", "a1_A/keyframes.zarr"} <= set(compared), compared


def test_store_arrays_sees_every_array(tmp_path):  # the comparison above is not vacuous
    store, movie = _store(tmp_path)
    arrays = store_arrays(store)
    assert set(arrays) == {"movie", "time"}
    np.testing.assert_array_equal(arrays["movie"], movie)


# ---------------------------------------------------------------- training resumes (library, real SIGKILLs)
_VS_RUN = """
import json, sys, torch
torch.set_num_threads(1)
from calflow.virtual_stain.stage import run_dataset
rows, out = json.loads(sys.argv[1]), sys.argv[2]
run_dataset(rows, out, {"n_trials": 3, "epochs": 4, "block_size": 16, "device": "cpu"}, dataset="t")
"""


def _run_killed_when(code: str, args: list[str], ready, env=None) -> bool:
    """Run ``python -c code args`` and SIGKILL it once ``ready()``; True if it was killed."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    while proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    return False


@pytest.mark.slow
def test_virtual_stain_training_resumes_after_kills_with_the_same_model(tmp_path):
    """Killed once in the search and once in the final training; the rerun takes the finished
    trials' scores and the last epoch, and ends with the uninterrupted run's weights and metrics."""
    from calflow.virtual_stain.simulate import write_pair

    rows = []
    for i in range(5):
        lf, fl = tmp_path / f"p{i}_lf.tif", tmp_path / f"p{i}_fl.tif"
        write_pair(str(lf), str(fl), {"height": 64, "width": 64, "n_cells": 8}, seed=30 + i)
        rows.append({"image": f"p{i}", "label_free": str(lf), "fluorescence": str(fl),
                     "split": "train" if i < 3 else "test"})
    arg = json.dumps(rows)
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run([sys.executable, "-c", _VS_RUN, arg, str(ref)], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    record, last = out / "checkpoints" / "search.json", out / "checkpoints" / "final_last.pt"
    assert _run_killed_when(_VS_RUN, [arg, str(out)], record.exists), "finished before the first trial's record"
    assert len(json.loads(record.read_text())["trials"]) < 3 and not last.exists()
    assert _run_killed_when(_VS_RUN, [arg, str(out)], last.exists), "finished before the first epoch's checkpoint"
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()
    log = subprocess.run([sys.executable, "-c", "import logging; logging.basicConfig(level=logging.INFO)\n" + _VS_RUN,
                          arg, str(out)], check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stderr
    assert "3 trials (3 taken from" in log and "resuming" in log and "at epoch " in log, log[-2000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (ref, out))
    assert a["search"] == b["search"] and a["test"] == b["test"]
    assert_same_results(ref, out)  # model.pt, the final checkpoint, maps.zarr: bit-identical


@pytest.mark.slow
def test_classifier_training_resumes_after_a_kill_with_the_same_model(tiny_run, tmp_path):
    """Kill Snakemake and train_classifier at its first checkpoint; the rerun resumes there and
    ends with the uninterrupted training's model, predictions and checkpoints, bit for bit."""
    wd = copy_run(tiny_run, tmp_path / "wd")
    out = wd / "results" / "classifier" / "a1"
    for name in ("model.pt", "metrics.json", "predictions.npz"):
        (out / name).unlink()
    shutil.rmtree(out / "checkpoints")
    _kill_at_checkpoint_then_rerun(wd, "results/classifier/a1/metrics.json",
                                   out / "checkpoints" / "fold0_last.pt", out / "model.pt")
    runs = json.loads((out / "metrics.json").read_text())["training"]
    ref = json.loads((tiny_run / "results" / "classifier" / "a1" / "metrics.json").read_text())["training"]
    assert runs[0]["resumed_from"] and all(r["resumed_from"] is None for r in ref), runs
    assert [r["history"] for r in runs] == [r["history"] for r in ref]
    compared = assert_same_results(tiny_run / "results" / "classifier" / "a1", out, subset=True)
    assert {"model.pt", "predictions.npz", "checkpoints/fold0_last.pt"} <= set(compared), compared


# ---------------------------------------------------------------- SIGKILL at every rule
def _first_outputs(workdir: Path) -> dict[str, str]:
    """rule -> the first output of its first job (session a1_A where the rule has sessions), from
    Snakemake's log of the tiny run."""
    import re

    log = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))[0].read_text()
    found: dict[str, str] = {}
    for m in re.finditer(r"^(?:local)?rule (\S+):\n((?:[ \t]+.*\n?)*)", log, re.M):
        out = re.search(r"^\s+output: ([^,\n]+)", m[2], re.M)
        if m[1] == "all" or not out:
            continue
        if m[1] not in found or ("a1_B" in found[m[1]] and "a1_A" in out[1]):
            found[m[1]] = out[1].strip()
    return found


def _stage_seconds(workdir: Path) -> dict[str, float]:
    """rule -> the shortest stage time calflow's runner logged for it in the tiny run."""
    import re

    times: dict[str, float] = {}
    for log in (workdir / "results" / "logs").glob("*/*.log"):
        m = re.search(r"rule (\S+) finished in ([0-9.]+) s", log.read_text())
        if m:
            times[m[1]] = min(times.get(m[1], np.inf), float(m[2]))
    return times


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 20 jobs run twice: ~3 min on 2 idle cores, 5-15 min on a shared machine
def test_sigkill_at_every_rule_then_rerun_gives_identical_outputs(tiny_run, tmp_path):
    """One job of every rule of the tiny run is re-made (``--force``) and SIGKILLed while it runs,
    part-way into its stage (0.4 x the stage time the tiny run logged, at most 0.5 s, after the job
    opened its log: a forced training resumes from its final checkpoint and is short); Snakemake deletes what the job left and runs it again (``--retries 1``). Every output is
    then bit-identical to the uninterrupted run's, and no killed writer's temporary is left."""
    wd = copy_run(tiny_run, tmp_path / "wd")
    outputs, seconds = _first_outputs(tiny_run), _stage_seconds(tiny_run)
    assert len(outputs) >= 20, outputs
    killed: dict[str, int] = {}  # rule -> the pid killed
    restarts = 0
    todo = dict(outputs)
    for attempt in range(4):  # a job that ends in milliseconds can finish between two polls: force it again
        out = _force_and_kill_each_rule(wd, todo, seconds, killed, tmp_path / f"snakemake{attempt}.out",
                                        at_start=attempt > 0)
        restarts += out.count("Trying to restart job")
        todo = {r: o for r, o in outputs.items() if r not in killed}
        if not todo:
            break
    assert set(killed) == set(outputs), f"rules never killed: {sorted(set(outputs) - set(killed))}"
    assert restarts >= len(outputs), out[-4000:]
    assert [p for p in (wd / "results").rglob(".*.tmp-*")] == []
    assert_same_results(tiny_run / "results", wd / "results")


def _force_and_kill_each_rule(wd: Path, outputs: dict[str, str], seconds: dict[str, float], killed: dict[str, int],
                              log_file: Path, at_start: bool = False) -> str:
    """Re-make ``outputs`` (``--force``, ``--retries 1``) and SIGKILL the first job of every rule not in
    ``killed`` part-way into its stage; returns Snakemake's output (it must succeed). ``at_start``: also
    recognise a job by its script (``.snakemake/scripts/tmp*.{rule}.py``) and kill it as soon as it is
    seen, for jobs that open their log and finish within one poll."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(wd), "--cores", "2", "--retries", "1",
           "--force", *outputs.values()]
    with open(log_file, "w") as fh:  # a file, not a pipe: Snakemake's output outgrows a pipe's buffer
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    logs = wd / "results" / "logs"
    started: dict[int, tuple[str, float]] = {}  # job pid -> (rule, when its log was opened)
    while proc.poll() is None:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        now = time.monotonic()
        for child in children:
            try:
                if child.pid not in started:
                    rule = next((Path(f.path).parent.name for f in child.open_files()
                                 if Path(f.path).is_relative_to(logs)), None)
                    if rule is None and at_start:
                        rule = next((r for r in outputs for a in child.cmdline() if a.endswith(f".{r}.py")
                                     and "/.snakemake/scripts/" in a), None)
                    if rule is None:
                        continue
                    started[child.pid] = (rule, now)
                rule, t0 = started[child.pid]
                wait = 0.0 if at_start else min(0.4 * seconds.get(rule, 0.0), 0.5)
                if rule in outputs and rule not in killed and now - t0 >= wait:
                    killed[rule] = child.pid  # first: the retry of this job must not be killed too
                    try:
                        child.send_signal(signal.SIGKILL)
                    except psutil.NoSuchProcess:
                        del killed[rule]  # it ended first: kill the rule's next job
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.005)
    proc.wait()
    out = log_file.read_text()
    assert proc.returncode == 0, out[-4000:]
    return out


# ---------------------------------------------------------------- disk full (a small tmpfs, as root)
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs at tmp_path/disk, unmounted afterwards; skipped where mount is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root / CAP_SYS_ADMIN): {proc.stderr.strip()[:200]}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(disk: Path, leave_bytes: int) -> Path:
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * (shutil.disk_usage(disk).free - leave_bytes))
    return ballast


def _assert_disk_full_error(err: CalflowInputError, out: Path) -> None:
    msg = str(err)
    assert msg.startswith(f"{out}: no space left on the device while writing it") and "\n" not in msg, msg
    assert msg.endswith("Fix: free disk space (or move results/ to a larger filesystem) and rerun")
    assert sorted(p.name for p in out.parent.iterdir()) == ["ballast"], "a partial output or temporary was kept"


def test_disk_full_during_a_store_write_is_one_line_and_leaves_nothing(small_disk, tmp_path):
    from calflow.ingest import ingest

    movie = np.random.default_rng(3).integers(0, 65535, (40, 64, 64), dtype=np.uint16)  # 330 kB, incompressible
    tifffile.imwrite(tmp_path / "m.tif", movie)
    out = small_disk / "raw.zarr"
    ballast = _fill(small_disk, 150_000)
    with pytest.raises(CalflowInputError) as err:
        ingest(tmp_path / "m.tif", out, fps=10, params={"chunk_frames": 10})
    _assert_disk_full_error(err.value, out)
    ballast.unlink()  # space freed: the rerun succeeds
    ingest(tmp_path / "m.tif", out, fps=10, params={"chunk_frames": 10})
    np.testing.assert_array_equal(MovieReader(out)[:], movie)


@pytest.mark.slow
def test_disk_full_during_an_nwb_write_is_one_line_and_leaves_nothing(small_disk, tiny_run):
    from calflow.cnmf.nwb import export_nwb

    cnmf, out = tiny_run / "results" / "a1_A" / "cnmf.zarr", small_disk / "a1_A.nwb"
    ballast = _fill(small_disk, 60_000)  # the NWB file is ~250 kB
    with pytest.raises(CalflowInputError) as err:
        export_nwb(cnmf, out, session="a1_A", condition="A", fps=30.0)
    _assert_disk_full_error(err.value, out)
    ballast.unlink()
    export_nwb(cnmf, out, session="a1_A", condition="A", fps=30.0)
    assert out.stat().st_size > 60_000


# ---------------------------------------------------------------- truncated or tampered checkpoints
class _Payload:  # a pickle that would run code when loaded without weights_only
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("how", ["truncated", "flipped_weight", "code_payload", "foreign"])
def test_damaged_or_tampered_model_file_is_one_clear_line(tmp_path, how):
    import torch

    from calflow.checkpoint import load_weights, save_weights
    from calflow.classify.model import load_fold_models

    path, marker = tmp_path / "model.pt", tmp_path / "payload_ran"
    blob = {"folds": [{"w": torch.arange(1000, dtype=torch.float32)}], "arch": {"members": 1}, "meta": {}}
    save_weights(blob, path)
    assert load_weights(path, keys=("folds",))["folds"][0]["w"].equal(blob["folds"][0]["w"])  # intact: loads
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) * 2 // 3]
    elif how == "flipped_weight":  # torch's zip reader loads this silently; the digest does not
        data[data.find(np.arange(1000, dtype=np.float32).tobytes()[400:432]) + 8] ^= 0x01
    elif how == "code_payload":
        torch.save({"folds": _Payload(marker), "arch": {}, "meta": {}}, path)
        data = bytearray(path.read_bytes())
    else:
        torch.save({"weights": torch.zeros(3)}, path)
        data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data))
    with pytest.raises(CalflowInputError) as err:
        load_fold_models(path)
    msg = str(err.value)
    expected = {"truncated": "not a readable checkpoint, truncated or damaged",
                "flipped_weight": "checksum mismatch: the file was altered after calflow wrote it",
                "code_payload": "refused to load: it holds objects other than weights",
                "foreign": "not a calflow checkpoint of this kind (no 'folds', 'arch', 'meta')"}[how]
    assert msg.startswith(f"{path}: {expected}") and "\n" not in msg, msg
    assert msg.endswith("Fix: delete it and rerun train_classifier")
    assert not marker.exists(), "the pickled code ran"


def test_truncated_segmenter_and_resume_checkpoint_are_one_clear_line(tmp_path):
    import torch

    from calflow.classify.train import train_fold  # noqa: F401 - the resume path loads through load_weights
    from calflow.segment.infer import load_segmenter
    from calflow.virtual_stain.model import TrainConfig, train_model

    torch.save({"state_dict": {"w": torch.zeros(100)}, "arch": {}}, tmp_path / "seg.pt")
    (tmp_path / "seg.pt").write_bytes((tmp_path / "seg.pt").read_bytes()[:300])
    with pytest.raises(CalflowInputError, match=r"seg\.pt: not a readable checkpoint, truncated or damaged"):
        load_segmenter(tmp_path / "seg.pt")
    last = tmp_path / "final_last.pt"
    last.write_bytes(b"PK\x03\x04 half a zip")
    x, y = np.zeros((8, 8, 8), np.float32), np.array([0, 1] * 4, np.float32)
    with pytest.raises(CalflowInputError, match=r"final_last\.pt: not a readable checkpoint.*Fix: delete it to restart"):
        train_model(x, y, TrainConfig(epochs=1), "cpu", checkpoint=last)


# ---------------------------------------------------------------- two runs in one directory
@pytest.mark.slow
def test_a_second_snakemake_in_the_same_directory_is_refused_clearly(tiny_run, tmp_path):
    """While one run holds the directory's lock, a second is refused with Snakemake's message
    (the directory, the reason, what to do), touches nothing, and the first run ends intact.

    The first run is frozen (SIGSTOP) the moment its output lock lists motion.zarr (Snakemake
    writes the input lock first: frozen between the two, the second run's outputs conflict with
    nothing locked and it runs), so it cannot finish and release the lock while the second starts.
    Snakemake refuses in one of two ways, depending on whether the first run's job had already
    marked its output incomplete when it froze: LockException, or IncompleteFilesException naming
    that output. The markers at the moment of the freeze say which one to expect."""
    wd = copy_run(tiny_run, tmp_path / "wd")
    session = wd / "results" / "a1_A"
    shutil.rmtree(session / "motion.zarr")
    shutil.rmtree(session / "plots" / "motion")
    first = _start(wd, "results/a1_A/motion.zarr")
    locks, incomplete = wd / ".snakemake" / "locks", wd / ".snakemake" / "incomplete"

    def output_locked() -> bool:
        for f in locks.glob("*.output.lock"):
            try:
                if "results/a1_A/motion.zarr" in f.read_text().split():
                    return True
            except OSError:  # released (deleted) between glob and read
                pass
        return False

    assert _wait_for(first, output_locked), first.communicate()[0]
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        job_started = incomplete.is_dir() and any(incomplete.iterdir())
        second = run_snakemake(wd, "results/a1_A/summary.zarr", "--forcerun", "summary", check=False)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    out = second.stdout + second.stderr
    assert second.returncode != 0, out[-3000:]
    if job_started:
        assert "IncompleteFilesException" in out and "results/a1_A/motion.zarr" in out, out[-3000:]
    else:
        assert "LockException" in out and "Directory cannot be locked" in out and str(wd) in out, out[-3000:]
        assert "no other Snakemake process is trying to create the same files" in out and "--unlock" in out
    assert "rule summary" not in out  # nothing ran
    first_out = first.communicate(timeout=600)[0]
    assert first.returncode == 0, first_out[-3000:]
    assert_same_results(tiny_run / "results" / "a1_A", session)
