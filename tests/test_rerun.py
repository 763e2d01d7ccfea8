"""Re-run only what changed: a second run does nothing, a changed config section re-runs its stage
and what follows it (nothing upstream), a new session runs only its own jobs plus aggregating ones.

Jobs are read from Snakemake's records (dry-run job blocks, ``--summary``, ``--list-changes``, the
job blocks of a real run), never from timing. Each test works on a copy of the session's tiny run.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
from smkutil import (
    TINY_SESSIONS,
    copy_run,
    dry_run,
    planned_jobs,
    run_snakemake,
    summary_rows,
    tiny_config,
    write_workdir,
)

pytestmark = pytest.mark.slow
SESSIONS = {name for name, _ in TINY_SESSIONS}


@pytest.fixture
def workdir(tiny_run, tmp_path) -> Path:
    return copy_run(tiny_run, tmp_path / "wd")


def jobs_of_first_run(workdir: Path) -> list[tuple[str, dict[str, str]]]:
    """The jobs the session's tiny run executed, from Snakemake's own log of that run."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    assert logs, "no Snakemake log of the first run"
    return planned_jobs(logs[0].read_text())


def rulegraph_descendants(workdir: Path) -> dict[str, set[str]]:
    """rule -> every rule downstream of it in ``snakemake --rulegraph``."""
    dot = run_snakemake(workdir, "--rulegraph").stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, re.M))
    children = defaultdict(set)
    for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M):
        children[names[a]].add(names[b])

    def below(rule, seen):
        for child in children[rule] - seen:
            seen.add(child)
            below(child, seen)
        return seen

    return {rule: below(rule, set()) for rule in names.values()}


def file_state(results: Path) -> dict[str, int]:
    return {str(p.relative_to(results)): p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}


def test_second_run_does_nothing(workdir):
    before = file_state(workdir / "results")
    proc = run_snakemake(workdir)
    out = proc.stdout + proc.stderr
    assert "Nothing to be done" in out and planned_jobs(out) == [], out[-2000:]
    rows = summary_rows(workdir)
    assert rows and {r["plan"] for r in rows} == {"no update"}, [r for r in rows if r["plan"] != "no update"]
    assert file_state(workdir / "results") == before


# one change per config section that has its own stage (new stages add a line here)
SECTION_CHANGES = {
    "simulate_demo": lambda c: c["demo"]["sim"].update(n_frames=c["demo"]["sim"]["n_frames"] - 10),
    "ingest": lambda c: c["ingest"].update(clevel=4),
    "motion": lambda c: c["motion"].update(max_shift=c["motion"]["max_shift"] - 1),
    "summary": lambda c: c.setdefault("summary", {}).update(batch_size=100),
    "cnmf": lambda c: c.setdefault("cnmf", {}).update(min_snr=2.5),
    "simulate_virtual_stain_demo": lambda c: c["virtual_stain"]["demo"].update(n_cells=c["virtual_stain"]["demo"]["n_cells"] + 1),
    "virtual_stain": lambda c: c["virtual_stain"].update(epochs=c["virtual_stain"]["epochs"] + 1),
    "decode": lambda c: c.setdefault("decode", {}).update(n_permutations=20),
    "train_classifier": lambda c: c["classify"].update(iterations=c["classify"]["iterations"] + 1),
    "gradcam": lambda c: c.setdefault("gradcam", {}).update(zncc_map="relu"),
    "stim_maps": lambda c: c.setdefault("stim_maps", {}).update(tail_frames=3),
    "compare": lambda c: c["compare"].update(n_permutations=c["compare"]["n_permutations"] + 1),
    "nwb": lambda c: c.setdefault("nwb", {}).update(keywords=["changed keyword"]),
}
# stages a section change re-runs besides the named one (train_classifier trains the classifier and its
# shuffled-label control, gradcam makes both their maps). The report shows the run's whole config (its params), so a change to a leaf stage's section (nwb,
# whose files the report does not read) re-runs it too
ALSO_RERUN = {"nwb": {"report"}}


@pytest.mark.parametrize("stage", list(SECTION_CHANGES))
def test_changed_section_reruns_its_stage_and_what_follows_only(workdir, stage):
    descendants = rulegraph_descendants(workdir)
    assert stage in descendants, f"rule {stage} is not in the tiny run's rule graph"
    expected = {stage} | descendants[stage]
    for other in ALSO_RERUN.get(stage, ()):
        expected |= {other} | descendants[other]
    config = tiny_config()
    SECTION_CHANGES[stage](config)
    write_workdir(workdir, config, TINY_SESSIONS)
    jobs = dry_run(workdir)
    assert {rule for rule, _ in jobs} == expected
    for rule in expected:  # per-session stages re-run for every session
        sessions = {wc["session"] for r, wc in jobs if r == rule and "session" in wc}
        assert sessions in (set(), SESSIONS), (rule, sessions)


def test_changed_motion_section_in_snakemakes_summary(workdir):
    """``--summary``: motion's outputs have changed params, everything downstream is pending, nothing
    upstream is. (``--list-changes params`` cannot be used: Snakemake 9.27 lists one output of every
    job there, changed or not; ParamsChange.__or__ keeps the files of an empty change.)"""
    descendants = rulegraph_descendants(workdir)
    config = tiny_config()
    config["motion"]["max_shift"] -= 1
    write_workdir(workdir, config, TINY_SESSIONS)
    rows = summary_rows(workdir)
    params_changed = {r["output_file"] for r in rows if r["status"] == "params changed"}
    assert {f"results/{s}/{o}" for s in SESSIONS for o in ("motion.zarr", "plots/motion")} <= params_changed
    assert {r["rule"] for r in rows if r["status"] == "params changed"} <= {"motion"} | descendants["motion"]
    rerun = {"motion"} | descendants["motion"]
    wrong = [(r["output_file"], r["plan"]) for r in rows if (r["plan"] == "update pending") != (r["rule"] in rerun)]
    assert wrong == [] and {"simulate_demo", "ingest"} <= {r["rule"] for r in rows if r["plan"] == "no update"}


def test_new_session_runs_only_its_jobs_and_the_aggregating_ones(workdir):
    first = jobs_of_first_run(workdir)
    per_session = defaultdict(set)
    aggregating = set()
    for rule, wc in first:
        if "session" in wc:
            per_session[wc["session"]].add(rule)
        else:
            aggregating.add(rule)
    assert per_session["a1_A"] >= {"simulate_demo", "ingest", "motion", "summary"} and "all" in aggregating

    write_workdir(workdir, tiny_config(), [*TINY_SESSIONS, ("a2_A", "A")])
    jobs = dry_run(workdir)
    new_session_rules = {r for r, wc in jobs if wc.get("session") == "a2_A"}
    others = [(r, wc) for r, wc in jobs if "session" in wc and wc["session"] != "a2_A"]
    assert others == [], f"jobs of existing sessions re-run: {others}"
    # a2 is an animal with one session: every per-session rule of a1_A but the tracking ones (an animal
    # is tracked from its second session on; docs/tracking.md)
    assert new_session_rules == per_session["a1_A"] - {"track_traces"}
    assert {r for r, wc in jobs if "session" not in wc} <= aggregating
    assert {"all", "evaluate_truth"} <= {r for r, _ in jobs}  # one evaluation job for every simulated session


def test_moving_a_project_that_holds_the_checkout_reruns_nothing(tmp_path):
    """The demo's layout: the working directory is the checkout itself, so the bundled generalist is
    a file of the project. Moving the project (``mv``) must not change any job's params or input
    paths (they name the generalist relative to the working directory), so nothing re-runs."""
    import shutil
    import subprocess
    import sys

    from smkutil import ROOT

    first = tmp_path / "lab" / "calflow"
    first.mkdir(parents=True)
    for part in ("Snakefile", "workflow", "envs", "src", "resources"):
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy2)(ROOT / part, first / part)
    config = tiny_config()
    config["segment"].update(init="generalist", train_sessions=[])
    write_workdir(first, config, TINY_SESSIONS)

    def snakemake(project: Path, *args: str) -> str:
        proc = subprocess.run(["timeout", "-k", "15", "300", sys.executable, "-m", "snakemake", "-s",
                               str(project / "Snakefile"), "-d", str(project), "--cores", "1", *args,
                               "results/models/segmenter.pt"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    assert [rule for rule, _ in planned_jobs(snakemake(first))] == ["train_segmenter"]
    moved = tmp_path / "elsewhere" / "calflow"
    moved.parent.mkdir()
    first.rename(moved)
    out = snakemake(moved, "-n")
    assert "Nothing to be done" in out and planned_jobs(out) == [], out[-2000:]
