"""The HTML report: sections from a tiny results tree, self-containedness, and a headless-Chromium check."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from calflow import report as rp
from calflow.ingest import ingest
from calflow.io import write_array
from calflow.motion import correct_motion
from calflow.motion.plots import plot_motion
from calflow.simulate import SimParams, load_ground_truth, write_session
from calflow.summary import compute_summary, plot_summary

ROOT = Path(__file__).resolve().parents[1]
MOTION = {"patch_size": 32, "overlap": 16, "max_shift": 8, "template_frames": 40, "batch_size": 40}


class _Page(HTMLParser):
    """Ids, URL attributes, images and inline scripts of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.img_src: list[str] = []
        self.classes: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if "class" in a:
            self.classes.extend((a["class"] or "").split())
        for key in ("src", "href", "action", "data", "poster", "srcset"):
            if key in a:
                self.urls.append((tag, key, a[key] or ""))
        if tag == "img":
            self.img_src.append(a.get("src", ""))


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _pipeline(results: Path, name: str, movie: Path | str, fps: float = 30.0) -> None:
    d = results / name
    ingest(str(movie), d / "raw.zarr", fps=fps, params={"chunk_frames": 40}, session=name)
    correct_motion(d / "raw.zarr", d / "motion.zarr", params=MOTION, progress=False)
    plot_motion(d / "motion.zarr", d / "plots" / "motion")
    compute_summary(d / "motion.zarr", d / "summary.zarr")
    plot_summary(d / "summary.zarr", d / "plots" / "summary")


def _cnmf(results: Path, name: str) -> None:
    """footprints.zarr from the true masks (as rule segment lays it out), then calflow's CNMF."""
    import zarr

    from calflow.cnmf.stage import run_cnmf
    from calflow.segment.infer import footprints_from_labels

    d = results / name
    labels = load_ground_truth(results / "demo" / name / "ground_truth.npz").masks().astype(np.int32)
    fp = footprints_from_labels(labels, np.ones(labels.shape, np.float32))
    g = zarr.open_group(d / "footprints.zarr", mode="w", zarr_format=3)
    g.attrs.update({"format": "csr", "shape": list(fp.shape), "frame_shape": list(labels.shape),
                    "n_components": int(fp.shape[0])})
    for key, arr, dims in (("data", fp.data, ("nnz",)), ("indices", fp.indices.astype(np.int64), ("nnz",)),
                           ("indptr", fp.indptr.astype(np.int64), ("component_ptr",)), ("labels", labels, ("y", "x"))):
        write_array(d / "footprints.zarr", key, arr, dims)
    run_cnmf(d / "motion.zarr", d / "footprints.zarr", d / "cnmf.zarr", summary_store=d / "summary.zarr")


def _evaluate_truth(results: Path, name: str) -> None:
    """truth_eval.json / .npz as rule evaluate_truth writes them."""
    from calflow.truth_eval import evaluate_session

    d = results / name
    evaluate_session(results / "demo" / name / "ground_truth.npz", d / "motion.zarr", d / "cnmf.zarr",
                     d / "footprints.zarr", d / "truth_eval.json", d / "truth_eval.npz", session=name)


SESSIONS = [
    # simulated (ground truth next to the movie), condition A
    {"session": "a1_A", "movie": "results/demo/a1_A/movie.tif", "condition": "A", "fps": 30.0,
     "stim_log": "results/demo/a1_A/stim_log.csv", "targets": "", "masks": ""},
    # a user's movie without ground truth, condition B
    {"session": "user1", "movie": "user.npy", "condition": "B", "fps": 15.0, "stim_log": "", "targets": "",
     "masks": ""},
    # listed in the sheet, nothing computed yet
    {"session": "later1", "movie": "later.tif", "condition": "B", "fps": 20.0, "stim_log": "", "targets": "",
     "masks": ""},
]


def _decode_and_virtual_stain(root: Path, results: Path) -> None:
    """decode.json + confusion figure for a1_A (random traces, labels with a signal in neuron 0) and a
    tiny virtual_stain run (4 simulated 64 x 64 pairs, one 1-epoch trial)."""
    import json

    from calflow.decode import Trials, confusion_figure, decode
    from calflow.virtual_stain.simulate import write_pair
    from calflow.virtual_stain.stage import run_dataset

    rng = np.random.default_rng(1)
    onset = np.arange(10, 590, 20)
    labels = np.resize(["1", "2"], onset.size)
    x = rng.standard_normal((6, 600))
    for on, lab in zip(onset, labels, strict=True):
        x[0, on:on + 5] += 3.0 if lab == "1" else 0.0
    r = decode(x, Trials(onset, onset + 5, labels), 10.0, {"classifiers": ["logistic"], "n_permutations": 9,
                                                           "folds": 3})
    (results / "a1_A" / "decode.json").write_text(json.dumps(r))
    confusion_figure(r, results / "a1_A" / "plots" / "decode" / "confusion.png")
    rows = []
    for i in range(4):
        lf, fl = root / f"v{i}_lf.tif", root / f"v{i}_fl.tif"
        write_pair(str(lf), str(fl), {"height": 64, "width": 64, "n_cells": 8, "positive_fraction": [0.4, 0.8]}, seed=i)
        rows.append({"image": f"v{i}", "label_free": str(lf), "fluorescence": str(fl),
                     "split": "train" if i < 2 else "test"})
    run_dataset(rows, results / "virtual_stain" / "tiny", {"n_trials": 1, "epochs": 1, "device": "cpu"}, dataset="tiny")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """results/ with two processed sessions (one simulated), one unprocessed, and job logs."""
    root = tmp_path_factory.mktemp("report")
    results = root / "results"
    params = SimParams.from_dict({"n_frames": 80, "height": 64, "width": 64, "n_cells": 8, "n_targets": 2,
                                  "n_pairs": 1})
    write_session(results / "demo" / "a1_A", params, 5)
    rng = np.random.default_rng(0)
    np.save(root / "user.npy", rng.poisson(200, size=(60, 48, 40)).astype(np.uint16))
    _pipeline(results, "a1_A", results / "demo" / "a1_A" / "movie.tif")
    _pipeline(results, "user1", root / "user.npy", fps=15.0)
    _cnmf(results, "a1_A")
    _evaluate_truth(results, "a1_A")
    logs = results / "logs"
    for rule, secs in (("ingest", 0.3), ("motion", 2.5), ("summary", 1.0)):
        for s in ("a1_A", "user1"):
            (logs / rule).mkdir(parents=True, exist_ok=True)
            (logs / rule / f"{s}.log").write_text(
                f"2026-01-02 03:04:05,678 calflow.{rule} INFO: started\n"
                f"2026-01-02 03:04:09,000 calflow.{rule} INFO: rule {rule} finished in {secs} s\n")
    (logs / "ingest" / "later1.log").write_text(
        "2026-01-02 03:05:00,000 calflow.ingest ERROR: later.tif: does not exist. Fix: check the path\n")
    _decode_and_virtual_stain(root, results)
    out = rp.build_report(results, results / "report" / "index.html", sessions=SESSIONS,
                          config={"seed": 3, "motion": MOTION}, workflow_dir=ROOT)
    return results, out


@pytest.fixture(scope="module")
def html(tree):
    return tree[1].read_text(encoding="utf-8")


EXPECTED_IDS = [
    "overview", "provenance", "conditions", "sessions", "c-A", "c-B", "c-A-condition_overview",
    "s-a1_A", "s-a1_A-motion", "s-a1_A-summary", "s-a1_A-truth", "s-a1_A-segment", "s-a1_A-cnmf",
    "s-a1_A-decode", "virtual_stain",
    "s-user1", "s-user1-motion", "s-user1-summary", "s-later1",
]


def test_every_section_with_outputs_is_present(html):
    page = parse(html)
    missing = [i for i in EXPECTED_IDS if i not in page.ids]
    assert not missing, missing
    assert len(page.ids) == len(set(page.ids)), "duplicate ids"
    # 3 motion figures + 1 summary figure per processed session, 2 ground-truth figures, 1 overview,
    # 1 segmentation figure, 2 CNMF figures (footprints, example traces) and 1 decoding confusion
    # figure for a1_A, 3 virtual-staining figures
    assert len(page.img_src) == 4 + 4 + 2 + 1 + 1 + 2 + 1 + 3
    assert "Traces (CNMF)" in html and "median r with the true calcium" in html
    assert "Against the simulation" in html and "Run provenance" in html
    assert "Decoding" in html and "Virtual staining" in html and "permutation p" in html
    assert "(p-value: fold test)" in html  # decode.json's p_method (refit_test off by default), in the cross-validation fact


def test_absent_outputs_leave_no_empty_section(html):
    page = parse(html)
    assert "s-user1-truth" not in page.ids  # no ground truth for a user's movie
    assert "s-user1-cnmf" not in page.ids  # no cnmf.zarr
    assert "s-user1-decode" not in page.ids  # no decode.json
    assert not [i for i in page.ids if i.startswith("s-later1-")]  # nothing computed: no sections at all
    assert "No stage has written results for this session yet." in html
    assert "could not be drawn" not in html


def test_page_is_self_contained(html):
    page = parse(html)
    for tag, key, url in page.urls:
        assert url.startswith(("#", "data:")), f"<{tag} {key}={url[:80]!r}> points outside the page"
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", html, re.I)
    assert "<link rel=\"stylesheet\"" not in html and "<script src" not in html
    assert "@import" not in html and "url(" not in html  # CSS pulls nothing in either
    for src in page.img_src:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_overview_and_provenance_content(html, tree):
    assert "a1_A" in html and "user1" in html and "later1" in html
    # timings parsed from the job logs: 2 jobs per rule, the failed ingest of later1 is named
    assert "later1 (failed)" in html
    versions = rp.package_versions()
    assert versions["numpy"] != "not installed" and "python" in versions
    assert "max_shift: 8" in html  # the config dump
    commit = rp.git_commit(ROOT)
    if (ROOT / ".git").exists() and shutil.which("git"):
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit) and commit in html


def test_sessions_built_in_forked_workers_give_the_same_page(tree, html, tmp_path):
    """The rule's two threads build the sessions' sections in forked workers: the same page."""
    import re

    results, _ = tree
    out = rp.build_report(results, tmp_path / "index.html", sessions=SESSIONS, config={"seed": 3, "motion": MOTION},
                          workflow_dir=ROOT, workers=2)
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z+0-9-]+")  # when the page was generated
    assert stamp.sub("T", out.read_text(encoding="utf-8")) == stamp.sub("T", html)
    assert rp.render._FORKED is None


def test_git_commit_outside_a_repository(tmp_path):
    assert rp.git_commit(tmp_path) == "unknown"
    assert rp.git_commit(None) == "unknown"


def test_rule_timings_statuses(tree):
    rows = rp.rule_timings(tree[0] / "logs")
    by = {(r["rule"], r["job"]): r for r in rows}
    assert by[("motion", "a1_A")]["seconds"] == 2.5 and by[("motion", "a1_A")]["status"] == "ok"
    assert by[("ingest", "later1")]["status"] == "failed" and by[("ingest", "later1")]["seconds"] is None
    assert by[("ingest", "a1_A")]["started"] == "2026-01-02 03:04:05"


def test_report_imports_neither_the_simulator_nor_the_evaluations(tree, tmp_path):
    """The report reads truth_eval.json / .npz (rule evaluate_truth): importing it, and building the
    tree's page with its ground-truth sections, loads neither the simulator, the CNMF accuracy check
    (which streams the movie), torch nor scikit-learn (decode.json is read by calflow.decode.store)."""
    import json
    import sys

    code = ("import json, sys; import calflow.report as rp; "
            "loaded = lambda: sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn') or "
            "m.startswith(('calflow.simulate', 'calflow.cnmf.accuracy'))); "
            "after_import = loaded(); "
            "rp.build_report(sys.argv[1], sys.argv[2], sessions=json.loads(sys.argv[3])); "
            "print(json.dumps([after_import, loaded()]))")
    out = tmp_path / "index.html"
    proc = subprocess.run([sys.executable, "-c", code, str(tree[0]), str(out), json.dumps(SESSIONS)],
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == [[], []], proc.stdout
    assert 'id="s-a1_A-truth"' in out.read_text() and "median r with the true calcium" in out.read_text()


def test_a_new_stage_plugs_in_with_one_function(tree, tmp_path):
    """A later stage registers a section; it appears where its output exists and nowhere else."""
    results = tree[0]
    (results / "a1_A" / "cnmf_test.txt").write_text("12 components")

    @rp.section("test_stage", "Test stage", scope="session", order=50)
    def _test_stage(ctx, s):
        f = s.dir / "cnmf_test.txt"
        if not f.exists():
            return None
        rows = [[str(i), rp.fmt(i / 7)] for i in range(60)]
        return {"facts": [("components", f.read_text().split()[0])],
                "tables": [rp.Table(columns=["component", "snr"], rows=rows, title="Per component")]}

    try:
        out = rp.build_report(results, tmp_path / "index.html", sessions=SESSIONS, workflow_dir=None)
    finally:
        rp.SECTIONS.pop("test_stage")
        (results / "a1_A" / "cnmf_test.txt").unlink()
    page = parse(out.read_text())
    assert "s-a1_A-test_stage" in page.ids
    assert "s-user1-test_stage" not in page.ids
    assert "paged" in page.classes  # 60 rows > 25: paginated in the browser


def test_report_template_is_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]' in text and '"templates/*"' in text
    assert (Path(rp.__file__).parent / "templates" / "report.html.j2").is_file()


# ---------------------------------------------------------------------------------------------
# The page in a real browser
# ---------------------------------------------------------------------------------------------

CHROMIUM = os.environ.get("CALFLOW_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium; "
                                             ".ci/run installs it)")
def test_page_renders_in_headless_chromium(tree, tmp_path):
    from playwright.sync_api import sync_playwright

    index = tree[1]
    console, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning")
                    else None)
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(index.as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert len(widths) == 18 and all(w > 0 for w in widths), widths  # as counted above
            ids = set(page.eval_on_selector_all("[id]", "els => els.map(e => e.id)"))
            assert not [i for i in EXPECTED_IDS if i not in ids]
            # the condition filter hides the other condition's sessions
            page.click("button[data-filter='B']")
            assert page.is_hidden("#s-a1_A") and page.is_visible("#s-user1")
            page.click("button[data-filter='all']")
            assert page.is_visible("#s-a1_A")
            # a screenshot a person could look at (kept in pytest's tmp dir)
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert not console, console
    outside = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert not outside, outside
    assert (tmp_path / "report.png").stat().st_size > 10_000



# ---------------------------------------------------------------------------------------------
# The rule in the workflow, and Snakemake's own report
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rule_report_and_snakemake_report(tmp_path):
    """`snakemake results/report/index.html` on one tiny simulated session, then `snakemake --report`."""
    import sys

    import yaml

    (tmp_path / "config").mkdir()
    config = {"sessions": "config/sessions.tsv", "seed": 1,
              "demo": {"sim": {"n_frames": 60, "height": 48, "width": 48, "n_cells": 6, "n_targets": 2,
                               "n_pairs": 1}, "w_gain": {"A": 1.0}},
              "motion": {"patch_size": 24, "overlap": 12, "max_shift": 6, "template_frames": 30, "batch_size": 30},
              # a few seconds of fine-tuning: the default training (for real 512 x 512 sessions; here it
              # stopped on its plateau after 450 iterations) took ~85 s of this test's ~120, and nothing
              # the test checks depends on it
              "segment": {"iterations": 20, "val_every": 10}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    d = "results/demo/a1_A"
    (tmp_path / "config" / "sessions.tsv").write_text(
        "session\tmovie\tcondition\tfps\tmasks\n" f"a1_A\t{d}/movie.tif\tA\t30\t{d}/masks.tif\n")

    def smk(*args):
        cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--cores", "2",
               *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        return proc.stdout + proc.stderr

    out = smk("results/report/index.html")
    index = tmp_path / "results" / "report" / "index.html"
    assert f"calflow: report: {index.resolve()}" in out
    assert (tmp_path / "results" / "DONE").read_text().splitlines()[-1] == f"calflow: report: {index.resolve()}"
    page = parse(index.read_text())
    assert {"overview", "provenance", "s-a1_A-motion", "s-a1_A-summary", "s-a1_A-truth"} <= set(page.ids)
    assert "report finished in" in (tmp_path / "results" / "logs" / "report" / "report.log").read_text()
    assert "Nothing to be done" in smk("-n", "results/report/index.html")
    smk("--report", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size > 100_000
