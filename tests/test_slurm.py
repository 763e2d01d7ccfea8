"""The workflow on a real SLURM cluster with ``--profile profiles/slurm``.

``../shared/tools/slurm-local.sh up --fake-gpu`` brings up a single-node SLURM (slurmctld, slurmd,
munge; installed with apt when missing) whose node declares one count-only GPU, so GPU requests are
validated and scheduled like on a real cluster (nothing runs on a GPU: CPU torch). The tiny demo
runs through sbatch with motion split into a template job, chunk jobs and a gather (``motion.split_frames``,
``SPLIT``); every job's SLURM record (id, state, exit code, GPU allocation) is checked and the outputs
are compared array by array with the local run's (tests/conftest.py ``tiny_run``, one motion job per
session), so the split motion.zarr must equal the one-job one bit for bit.

The profile's own checks (rule names, resources scaled to the input) need no cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from smkutil import ROOT, TINY_SESSIONS, assert_same_results, run_snakemake, tiny_config, write_workdir

TOOL = ROOT.parent / "shared" / "tools" / "slurm-local.sh"
PROFILE = ROOT / "profiles" / "slurm"
# GPU rules that land later; the profile may name them before they exist (Snakemake ignores them)
PLANNED_RULES = {"train_segmenter", "segment", "train_classifier", "gradcam"}
# the SLURM run splits motion (120 frames in 50-frame zarr chunks: 100 rounded to whole chunks -> parts of
# 100 and 20 frames, the last under one zarr chunk): rule motion's place is taken by these three
SPLIT = {"split_frames": 100}
SPLIT_RULES = {"motion_template", "motion_chunk", "motion_gather"}
# the profile settings the local cluster needs: no accounting (sacct) there, short polling
# (the plugin polls 1 s after a submission, then every 11, 21, ... s: a tiny job is seen done after ~12 s)
LOCAL_CLUSTER_ARGS = (
    # the local tiny run gives every rule 1 thread; torch's float sums depend on the thread count,
    # so the SLURM run must match it for results to be bit-identical. --set-threads takes a list:
    # it comes first so that a target after these arguments is not read as one more RULE=THREADS
    "--set-threads", *(f"{rule}=1" for rule in yaml.safe_load((PROFILE / "config.yaml").read_text())["set-threads"]),
    "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
    "--slurm-keep-successful-logs", "--slurm-no-account")


def profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def declared_localrules() -> set[str]:
    """Rules the workflow runs on the submit host (``localrules:``), plus the target rule ``all``."""
    names = {"all"}
    for f in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        for block in re.findall(r"^localrules:(.*?)(?=^\S|\Z)", f.read_text(), re.M | re.S):
            names |= set(re.findall(r"\w+", block))
    return names


def gpu_rules() -> set[str]:
    return {rule for rule, res in profile()["set-resources"].items() if res.get("gpu") or "gpu" in str(res.get("gres", ""))}


# ---------------------------------------------------------------- the profile (no cluster needed)
@pytest.mark.slow
def test_profile_names_only_rules_of_the_workflow_or_planned_gpu_rules(tmp_path):
    write_workdir(tmp_path, tiny_config(), TINY_SESSIONS)
    rules = set(run_snakemake(tmp_path, "--list-rules").stdout.split())
    assert {"ingest", "motion", "summary"} <= rules
    unknown = set(profile()["set-resources"]) - rules - PLANNED_RULES
    assert not unknown, f"profiles/slurm/config.yaml sets resources for unknown rules {unknown} (typo?)"
    unknown = set(profile()["set-threads"]) - rules
    assert not unknown, f"profiles/slurm/config.yaml sets threads for unknown rules {unknown} (typo?)"
    assert {"motion", *PLANNED_RULES} <= gpu_rules()


@pytest.mark.slow
def test_profile_requests_gpus_and_memory_and_runtime_scaled_to_the_movie(tmp_path):
    """Dry run with the profile on two sessions whose raw.zarr differ in size (only their metadata
    exists): motion asks for a GPU, and for more memory and time for the larger movie."""
    config = tiny_config()
    config["segment"].update(train_sessions=[], pretrained="none.pt")  # no training needed here
    write_workdir(tmp_path, config, [])
    (tmp_path / "config" / "sessions.tsv").write_text(
        "session\tmovie\tcondition\tfps\nsmall\tsmall.tif\tA\t30\nbig\tbig.tif\tA\t30\n")
    for name, shape in (("small", [120, 64, 64]), ("big", [40000, 512, 512])):
        (tmp_path / f"{name}.tif").write_bytes(b"not read in a dry run")
        time.sleep(0.01)  # raw.zarr newer than its movie: ingest is up to date
        meta = tmp_path / "results" / name / "raw.zarr" / "movie" / "zarr.json"
        meta.parent.mkdir(parents=True)
        meta.write_text(json.dumps({"shape": shape}))
    out = run_snakemake(tmp_path, "-n", "--profile", str(PROFILE), "results/small/motion.zarr",
                        "results/big/motion.zarr", cores=None).stdout
    res = {}
    for block in re.finditer(r"rule motion:\n((?:\s+.*\n)*)", out):
        session = re.search(r"wildcards: session=(\w+)", block[1])[1]
        res[session] = dict(kv.split("=", 1) for kv in re.search(r"resources: (.*)", block[1])[1].split(", "))
    assert set(res) == {"small", "big"}, out[-2000:]
    for r in res.values():
        assert r["gpu"] == "1"
    assert int(res["small"]["mem_mb"]) >= 1000 and int(res["big"]["mem_mb"]) > int(res["small"]["mem_mb"]) + 500
    assert int(res["small"]["runtime"]) == 10 and int(res["big"]["runtime"]) > 100  # minutes


# ---------------------------------------------------------------- a real cluster
def _daemons_running() -> bool:
    try:
        return os.path.exists(f"/proc/{int(Path('/run/slurmctld.pid').read_text())}")
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def slurm_cluster():
    """Up for this module; afterwards the machine is left as it was found. That matters: while
    SLURM is installed but its daemons are down, every Snakemake start spends ~10 s in the slurm
    plugin's import (``scontrol show config`` retrying an absent slurmctld). So SLURM packages this
    fixture installed are removed again, and daemons that were running are left running."""
    if os.geteuid() != 0:
        pytest.skip("needs root: slurm-local.sh installs SLURM with apt and starts its daemons")
    if not TOOL.exists():
        pytest.skip(f"{TOOL} not found (../shared/tools is not beside this checkout)")
    installed_before = shutil.which("sinfo") is not None
    running_before = _daemons_running()
    if not installed_before and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and apt-get is not available to install it")
    proc = subprocess.run(["timeout", "-k", "10", "600", "bash", str(TOOL), "up", "--fake-gpu"],
                          capture_output=True, text=True)
    try:
        if proc.returncode != 0:
            if shutil.which("slurmctld") is None:
                pytest.skip(f"SLURM could not be installed: {proc.stderr.strip()[-500:]}")
            pytest.fail(f"slurm-local.sh up failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        yield
    finally:
        if not running_before:
            subprocess.run(["timeout", "-k", "10", "120", "bash", str(TOOL), "down"], capture_output=True, text=True)
        if not installed_before:
            subprocess.run(["timeout", "-k", "10", "300", "apt-get", "remove", "-y", "-qq", "slurmctld", "slurmd",
                            "slurm-client"], capture_output=True, text=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


_SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.*)\)\.")
_BLOCK = re.compile(r"^(local)?(?:rule|checkpoint) (\S+):\n((?:[ \t]+.*\n?)*)", re.M)


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):
    """The tiny demo (sessions a1_A, a1_B) through SLURM, every stage; returns (workdir, output,
    jobs) with jobs = [{rule, session, local, slurm_id, log}] from Snakemake's own job records."""
    wd = tmp_path_factory.mktemp("slurm_run")
    # the same sheet as the local tiny run: the classifier pools an animal's sessions and compare
    # needs two conditions, so a smaller sheet would give different (not comparable) results
    config = tiny_config()
    config["motion"].update(SPLIT)
    write_workdir(wd, config, TINY_SESSIONS)
    out = _run_recording_jobs(wd, timeout=1200)
    return wd, out, slurm_jobs(out)


def slurm_jobs(out: str) -> list[dict]:
    """[{rule, session, chunk, local, slurm_id, log}] of every job in a SLURM run's output (Snakemake's
    job blocks and its submission lines; slurm_id and log are None for a job run on the submit host)."""
    submitted = {int(j): (s, Path(log)) for j, s, log in _SUBMITTED.findall(out)}
    jobs = []
    for m in _BLOCK.finditer(out):
        jobid = int(re.search(r"jobid: (\d+)", m[3])[1])
        wc = re.search(r"wildcards: session=([^,\s]+)", m[3])
        chunk = re.search(r"wildcards: .*chunk=(\d+)", m[3])
        slurm_id, log = submitted.get(jobid, (None, None))
        jobs.append({"rule": m[2], "session": wc[1] if wc else None, "local": bool(m[1]),
                     "slurm_id": slurm_id, "log": log, "chunk": chunk[1] if chunk else None})
    return jobs


def rule_log(wd: Path, job: dict) -> Path:
    """calflow's log of a job (results/logs/<rule>/<session>.log; a chunk job's <session>_chunk<k>.log)."""
    name = f"{job['session']}_chunk{job['chunk']}" if job.get("chunk") else job["session"] or job["rule"]
    return wd / "results" / "logs" / job["rule"] / f"{name}.log"


# slurmctld forgets a finished job after MinJobAge (300 s in slurm-local.sh) and this cluster has no
# accounting: a SLURM run longer than that (a loaded machine) would lose its first jobs' records, so the
# run is watched and every job's last record kept here (job id -> scontrol fields)
_RECORDS: dict[str, dict[str, str]] = {}


def _record_jobs() -> None:
    text = subprocess.run(["scontrol", "-o", "show", "job", "-d"], capture_output=True, text=True,
                          timeout=30).stdout
    for line in text.splitlines():
        rec = dict(re.findall(r"(\w+)=(\S*)", line))
        if rec.get("JobId"):
            _RECORDS[rec["JobId"]] = rec


def _run_recording_jobs(wd: Path, timeout: int, *targets: str) -> str:
    """The SLURM run of ``targets`` (default: the workflow's; as smkutil.run_snakemake, which must
    succeed), recording the jobs every 10 s."""
    import sys

    from smkutil import SNAKEFILE

    cmd = ["timeout", "-k", "15", str(timeout), sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d",
           str(wd), "--profile", str(PROFILE), *LOCAL_CLUSTER_ARGS, *targets]
    out_file = wd.parent / f"{wd.name}.snakemake.out"  # a file: a pipe nobody reads while polling would block
    with open(out_file, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            _record_jobs()
            time.sleep(10)
    _record_jobs()
    out = out_file.read_text()
    if proc.returncode != 0:
        raise AssertionError(f"the SLURM run failed ({proc.returncode}):\n{out[-8000:]}")
    return out


def scontrol(job_id: str) -> dict[str, str]:
    """The job's SLURM record: live if slurmctld still has it, else the last one recorded during the run."""
    proc = subprocess.run(["scontrol", "show", "job", "-d", job_id], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 and job_id in _RECORDS:
        return _RECORDS[job_id]
    proc.check_returncode()
    return dict(re.findall(r"(\w+)=(\S*)", proc.stdout))


def assert_ran_as_slurm_jobs(wd: Path, jobs: list[dict], out: str) -> list[dict]:
    """Every job of a SLURM run in ``wd`` but the workflow's local rules was submitted with sbatch (a
    SLURM job id of its own) and completed there: state COMPLETED with exit code 0, the rule in the
    job's comment, ``wd`` as its work dir, its SLURM log kept, and calflow's log of the job naming the
    SLURM job it ran in. Returns the SLURM jobs."""
    local_rules = {j["rule"] for j in jobs if j["local"]}
    assert local_rules <= declared_localrules(), f"ran on the submit host: {local_rules}"
    remote = [j for j in jobs if not j["local"]]
    assert remote and all(j["slurm_id"] for j in remote), out[-3000:]
    assert len({j["slurm_id"] for j in remote}) == len(remote)
    for j in remote:
        rec = scontrol(j["slurm_id"])
        assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", (j, rec.get("JobState"))
        assert rec["Comment"].startswith(f"rule_{j['rule']}"), rec["Comment"]
        assert Path(rec["WorkDir"]) == wd
        assert j["log"].exists(), f"no SLURM log for {j}"  # kept by --slurm-keep-successful-logs
        log = rule_log(wd, j)
        if log.exists():  # calflow's runner logs where it ran
            assert f"SLURM job {j['slurm_id']} on " in log.read_text(), log
    return remote


def assert_gpu_jobs_got_a_gpu(wd: Path, jobs: list[dict]) -> None:
    """The SLURM jobs of the rules the profile gives a GPU were granted one (and calflow's log shows
    CUDA_VISIBLE_DEVICES set); the others have no GPU."""
    wanted = gpu_rules()
    for j in jobs:
        if j["local"]:
            continue
        rec = scontrol(j["slurm_id"])
        if j["rule"] in wanted:
            assert rec.get("JOB_GRES") == "gpu:1" and "gres:gpu:1" in rec.get("TresPerJob", ""), (j["rule"], rec)
            log = rule_log(wd, j)
            if log.exists():
                assert re.search(r"CUDA_VISIBLE_DEVICES=(?!unset)\S+", log.read_text()), log
        else:
            assert rec.get("JOB_GRES") in (None, "(null)"), (j["rule"], rec.get("JOB_GRES"))


@pytest.mark.slow
@pytest.mark.slurm
# whichever of the slurm_run tests runs first pays for the fixtures: the local tiny run (unless an
# earlier test made it) and the SLURM run; 900 s was exceeded at load average 5-9 on 2 cores
@pytest.mark.timeout(1800)
def test_every_job_ran_as_a_slurm_job_and_completed(slurm_run, tiny_run):
    wd, out, jobs = slurm_run
    remote = assert_ran_as_slurm_jobs(wd, jobs, out)
    assert "all" in {j["rule"] for j in jobs if j["local"]} and len(remote) >= 8, out[-3000:]
    assert {j["rule"] for j in jobs} == {r for r, _ in _local_jobs(tiny_run)} - {"motion"} | SPLIT_RULES, \
        "not every stage ran"
    assert {j["session"] for j in jobs} == {s for s, _ in TINY_SESSIONS} | {None}
    assert sorted((j["session"], j["chunk"]) for j in jobs if j["rule"] == "motion_chunk") == [
        (s, c) for s, _ in sorted(TINY_SESSIONS) for c in "01"]


def _local_jobs(workdir: Path):
    from smkutil import planned_jobs

    log = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))[0]
    return planned_jobs(log.read_text())


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(1800)
def test_gpu_requests_are_granted_a_gpu(slurm_run):
    wd, _, jobs = slurm_run
    gpu_jobs = [j for j in jobs if j["rule"] in gpu_rules()]
    assert {j["rule"] for j in gpu_jobs} >= {"motion_template", "motion_chunk", "train_segmenter", "segment"}, \
        "GPU-requesting jobs missing"
    assert_gpu_jobs_got_a_gpu(wd, jobs)


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(1800)
def test_slurm_results_equal_the_local_run(slurm_run, tiny_run):
    wd, _, _ = slurm_run
    # motion_split/ holds the split run's template stores (its parts were temp()): the one-job run has none
    compared = assert_same_results(tiny_run / "results", wd / "results", subset=True, skip=("*/motion_split/*",))
    assert not list((wd / "results").glob("*/motion_split/part*.zarr")), "the parts were not removed"
    assert {"a1_A/raw.zarr", "a1_A/motion.zarr", "a1_A/summary.zarr", "a1_A/footprints.zarr", "a1_A/cnmf.zarr",
            "a1_B/gradcam.zarr", "models/segmenter.pt"} <= set(compared), compared


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(1800)
def test_second_slurm_run_submits_nothing(slurm_run):
    wd, _, _ = slurm_run
    proc = run_snakemake(wd, "--profile", str(PROFILE), *LOCAL_CLUSTER_ARGS, cores=None, timeout=300)
    out = proc.stdout + proc.stderr
    assert "Nothing to be done" in out and not _SUBMITTED.search(out), out[-2000:]


@pytest.mark.slow
@pytest.mark.slurm
def test_scancel_mid_run_then_rerun_completes_with_the_same_results(slurm_cluster, tiny_run, tmp_path):
    """On a copy of the local tiny run, motion is re-made through SLURM and its running job is
    cancelled with ``scancel``; Snakemake reports it failed and keeps no output; the rerun (same
    profile) completes and gives the local run's arrays."""
    import shutil as sh
    import subprocess as sp
    import sys

    from smkutil import SNAKEFILE, copy_run

    wd = copy_run(tiny_run, tmp_path / "wd")
    session = wd / "results" / "a1_A"
    sh.rmtree(session / "motion.zarr")
    sh.rmtree(session / "plots" / "motion")
    target = "results/a1_A/motion.zarr"
    cmd = ["timeout", "-k", "15", "600", sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(wd),
           "--profile", str(PROFILE), *LOCAL_CLUSTER_ARGS, "--retries", "0", target]
    out_file = tmp_path / "snakemake.out"  # a file: a pipe nobody reads while polling would block Snakemake
    with open(out_file, "w") as fh:
        proc = sp.Popen(cmd, stdout=fh, stderr=sp.STDOUT, text=True)
    cancelled = None
    end = time.monotonic() + 300
    while cancelled is None and proc.poll() is None and time.monotonic() < end:
        queue = sp.run(["squeue", "-h", "-o", "%i %T %k"], capture_output=True, text=True, timeout=30).stdout
        for line in queue.splitlines():
            job, state, comment = (line.split(" ", 2) + ["", ""])[:3]
            if state == "RUNNING" and comment.startswith("rule_motion"):
                sp.run(["scancel", job], check=True, timeout=30)
                cancelled = job
        time.sleep(0.2)
    proc.wait(timeout=600)
    out = out_file.read_text()
    assert cancelled, f"the motion job was never seen running:\n{out[-3000:]}"
    assert proc.returncode != 0 and "Error in rule motion" in out, out[-3000:]
    assert scontrol(cancelled)["JobState"] == "CANCELLED"
    assert not (session / "motion.zarr").exists()
    proc = run_snakemake(wd, "--profile", str(PROFILE), *LOCAL_CLUSTER_ARGS, target, cores=None, timeout=600)
    assert _SUBMITTED.search(proc.stdout + proc.stderr), "the rerun submitted nothing"
    assert_same_results(tiny_run / "results" / "a1_A", session, subset=True)


# segment.network: detr (issue 25), as tests/test_workflow_segment.py's detr test sets it
DETR = {"network": "detr", "init": "scratch", "queries": 8, "trace_weight": 0.5}


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(1800)
def test_detr_segmenter_trains_segments_and_evaluates_on_slurm_as_locally(slurm_cluster, tiny_run, tmp_path):
    """``segment.network: detr`` through SLURM (issue 25). Two copies of the local tiny run (motion,
    summary and keyframes made) switch the segmenter to detr and re-make the segmentation evaluation,
    one through the profile, one locally. On SLURM, training, both sessions' segmentation and
    evaluation and the summary ran as sbatch jobs that completed (training and segmentation with a
    GPU); the detr model, its checkpoints and footprints are there, the evaluation JSONs read back,
    and every weight, array and score equals the local run's."""
    from concurrent.futures import ThreadPoolExecutor

    from smkutil import copy_run

    from calflow.checkpoint import load_weights
    from calflow.io import read_json
    from calflow.segment.footprints import read_footprints
    from calflow.segment.store import read_segment_eval, read_segmenter_metrics

    config = tiny_config()
    config["segment"].update(DETR)
    target = "results/models/segment_evaluation.json"
    local, wd = copy_run(tiny_run, tmp_path / "local"), copy_run(tiny_run, tmp_path / "slurm")
    for d in (local, wd):
        write_workdir(d, config, TINY_SESSIONS)
    with ThreadPoolExecutor(1) as pool:  # the local run uses the cores the SLURM jobs leave idle between polls
        local_run = pool.submit(run_snakemake, local, target)
        out = _run_recording_jobs(wd, 900, target)
        local_run.result()
    jobs = slurm_jobs(out)
    assert sorted((j["rule"], j["session"]) for j in jobs) == [
        ("evaluate_segment", "a1_A"), ("evaluate_segment", "a1_B"), ("segment", "a1_A"), ("segment", "a1_B"),
        ("segment_evaluation", None), ("train_segmenter", None)], out[-3000:]
    assert_ran_as_slurm_jobs(wd, jobs, out)
    assert_gpu_jobs_got_a_gpu(wd, jobs)

    r = wd / "results"
    model = load_weights(r / "models" / "segmenter.pt")  # checks its SHA-256
    assert model["arch"]["kind"] == "detr" and model["arch"]["queries"] == 8
    metrics = read_segmenter_metrics(r / "models" / "segmenter_metrics.json")
    assert metrics["source"] == "trained" and metrics["arch"]["kind"] == "detr", metrics
    assert metrics["iterations"] == config["segment"]["iterations"] and metrics["completed"], metrics
    for s, heldout in (("a1_A", False), ("a1_B", True)):
        fp, attrs = read_footprints(r / s / "footprints.zarr")
        assert fp.shape[1] == 64 * 64 and attrs["arch"]["kind"] == "detr", attrs
        ev = read_segment_eval(r / s / "segment_eval.json")
        assert ev["session"] == s and ev["heldout"] is heldout and 0 <= ev["f1"] <= 1 and ev["n_true"] > 0, ev
    summary = read_json(r / "models" / "segment_evaluation.json", what="segment_evaluation.json", fix="rerun it",
                        required=("sessions", "heldout_n_sessions", "training_n_sessions"))
    assert set(summary["sessions"]) == {"a1_A", "a1_B"}
    assert summary["heldout_n_sessions"] == 1 and summary["training_n_sessions"] == 1, summary

    compared = assert_same_results(local / "results", r)
    assert {"models/segmenter.pt", "models/segmenter_checkpoints/best.pt", "models/segmenter_checkpoints/last.pt",
            "a1_A/footprints.zarr", "a1_B/footprints.zarr"} <= set(compared), compared
    for rel in ("a1_A/segment_eval.json", "a1_B/segment_eval.json", "models/segment_evaluation.json"):
        assert json.loads((local / "results" / rel).read_text()) == json.loads((r / rel).read_text()), rel
