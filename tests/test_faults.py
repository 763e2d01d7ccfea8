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
    target = "results/models/segmenter.pt"

    proc = _start(wd, target)
    assert _wait_for(proc, lambda: (models / "segmenter_checkpoints" / "last.pt").exists()), proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (models / "segmenter.pt").exists(), "a killed training left a model behind"
    run_snakemake(wd, "--unlock")
    run_snakemake(wd, "--rerun-incomplete", target)
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
