"""End-to-end through keyframes -> train_segmenter -> segment -> evaluate on a tiny config (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from smkutil import dry_run
from test_workflow import TINY_CONFIG, demo_row, snakemake, write_workdir

from calflow.checkpoint import load_weights
from calflow.io import open_group
from calflow.segment.footprints import read_footprints

pytestmark = pytest.mark.slow

SEG_CONFIG = {
    **TINY_CONFIG,
    "keyframes": {"n_keyframes": 10, "batch_size": 50},
    "segment": {"train_sessions": ["a1_A"], "iterations": 20, "val_every": 10, "base_channels": 4, "depth": 2,
                "patch_size": 32, "batch_size": 4, "tta": False, "device": "cpu"},
}


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wfseg")
    write_workdir(tmp, SEG_CONFIG, [demo_row("a1_A", "A"), demo_row("a2_B", "B")])
    proc = snakemake(tmp)
    return tmp, proc


def test_every_session_gets_footprints_and_an_evaluation(seg_run):
    tmp, _ = seg_run
    r = tmp / "results"
    assert (r / "models" / "segmenter.pt").exists()
    blob = load_weights(r / "models" / "segmenter.pt")  # checks its SHA-256 and drops it
    assert set(blob) == {"state_dict", "arch", "meta"} and blob["meta"]["train_sessions"] == ["a1_A"]
    metrics = json.loads((r / "models" / "segmenter_metrics.json").read_text())
    assert metrics["iterations"] == 20 and metrics["best_iteration"] in (10, 20)
    for s, heldout in (("a1_A", False), ("a2_B", True)):
        fp, attrs = read_footprints(r / s / "footprints.zarr")
        assert fp.shape[1] == 64 * 64 and attrs["frame_shape"] == [64, 64]
        g = open_group(r / s / "footprints.zarr")
        labels = np.asarray(g["labels"][:])
        assert labels.max() == fp.shape[0] and g["centroids"].shape == (fp.shape[0], 2)
        kf = open_group(r / s / "keyframes.zarr")
        assert kf["frames"].shape == (10, 64, 64)
        ev = json.loads((r / s / "segment_eval.json").read_text())
        assert ev["heldout"] is heldout and 0 <= ev["f1"] <= 1 and ev["n_true"] > 0
    summary = json.loads((r / "models" / "segment_evaluation.json").read_text())
    assert summary["heldout_n_sessions"] == 1 and summary["training_n_sessions"] == 1


def test_changing_inference_settings_does_not_retrain(seg_run):
    tmp, _ = seg_run
    cfg = {**SEG_CONFIG, "segment": {**SEG_CONFIG["segment"], "min_size": 12}}
    write_workdir(tmp, cfg, [demo_row("a1_A", "A"), demo_row("a2_B", "B")])
    proc = snakemake(tmp, "-n")
    out = proc.stdout + proc.stderr
    assert "segment " in out or "segment\n" in out
    assert "train_segmenter" not in out.split("Job stats:")[-1].split("Reasons:")[0]
    write_workdir(tmp, SEG_CONFIG, [demo_row("a1_A", "A"), demo_row("a2_B", "B")])


def test_pretrained_model_replaces_training(seg_run, tmp_path):
    tmp, _ = seg_run
    model = tmp_path / "given.pt"
    model.write_bytes((tmp / "results" / "models" / "segmenter.pt").read_bytes())
    cfg = {**SEG_CONFIG, "segment": {**SEG_CONFIG["segment"], "pretrained": str(model)}}
    write_workdir(tmp, cfg, [demo_row("a1_A", "A"), demo_row("a2_B", "B")])
    try:
        snakemake(tmp, "results/models/segmenter_metrics.json")
        metrics = json.loads((tmp / "results" / "models" / "segmenter_metrics.json").read_text())
        assert metrics["pretrained"] == str(model)
    finally:
        write_workdir(tmp, SEG_CONFIG, [demo_row("a1_A", "A"), demo_row("a2_B", "B")])


def test_init_generalist_trains_nothing_and_scores_every_annotated_session(seg_run):
    """segment.init: generalist with annotated sessions: no training, the bundled file segments both
    sessions, both are scored as held out, and the report says why the generalist was used."""
    from calflow.report import ReportContext, segmenter_source
    from calflow.segment.stage import bundled_segmenter

    tmp, _ = seg_run
    cfg = {**SEG_CONFIG, "segment": {**SEG_CONFIG["segment"], "init": "generalist"}}
    write_workdir(tmp, cfg, [demo_row("a1_A", "A"), demo_row("a2_B", "B")])
    try:
        jobs = [rule for rule, _ in dry_run(tmp)]
        assert "train_segmenter" in jobs and jobs.count("segment") == 2
        snakemake(tmp, "results/models/segment_evaluation.json")
        r = tmp / "results"
        metrics = json.loads((r / "models" / "segmenter_metrics.json").read_text())
        assert metrics["source"] == "generalist" and metrics["reason"] == "segment.init"
        assert (r / "models" / "segmenter.pt").read_bytes() == bundled_segmenter().read_bytes()
        for s in ("a1_A", "a2_B"):
            assert json.loads((r / s / "segment_eval.json").read_text())["heldout"] is True
        summary = json.loads((r / "models" / "segment_evaluation.json").read_text())
        assert summary["heldout_n_sessions"] == 2 and summary["training_n_sessions"] == 0
        text = segmenter_source(ReportContext(results=r, sessions=[]))
        assert "without fine-tuning (segment.init: generalist)" in text and "no session of the sheet" not in text
    finally:
        write_workdir(tmp, SEG_CONFIG, [demo_row("a1_A", "A"), demo_row("a2_B", "B")])


def no_masks_row(name: str, condition: str) -> str:
    d = f"results/demo/{name}"
    return f"{name}\t{d}/movie.tif\t{condition}\t30\t{d}/stim_log.csv\t{d}/targets.csv\t"


def test_sheet_without_masks_runs_end_to_end_on_the_generalist(tmp_path):
    """No session has masks: the bundled generalist segments every session, CNMF and the report follow."""
    from calflow.segment.stage import bundled_segmenter

    if not bundled_segmenter().exists():
        pytest.skip("resources/segmenter_pretrained.pt not in this checkout")
    cfg = {**TINY_CONFIG, "keyframes": {"n_keyframes": 10, "batch_size": 50}, "segment": {"tta": False, "device": "cpu"}}
    write_workdir(tmp_path, cfg, [no_masks_row("a1_A", "A"), no_masks_row("a1_B", "B")])
    proc = snakemake(tmp_path)
    assert "calflow: done" in proc.stdout + proc.stderr
    r = tmp_path / "results"
    metrics = json.loads((r / "models" / "segmenter_metrics.json").read_text())
    assert metrics["source"] == "generalist" and metrics["pretrained"] == str(bundled_segmenter())
    assert (r / "models" / "segmenter.pt").read_bytes() == bundled_segmenter().read_bytes()
    assert not (r / "models" / "segmenter_checkpoints").exists()  # nothing trained
    for s in ("a1_A", "a1_B"):
        fp, attrs = read_footprints(r / s / "footprints.zarr")
        assert attrs["method"] == "network" and fp.shape[1] == 64 * 64
        assert (r / s / "cnmf.zarr").is_dir() and not (r / s / "segment_eval.json").exists()
    html = (r / "report" / "index.html").read_text()
    assert "bundled generalist segmenter" in html and "no session of the sheet has masks" in html


def test_corr_pnr_method_needs_no_segmenter(tmp_path):
    cfg = {**SEG_CONFIG, "segment": {**SEG_CONFIG["segment"], "method": "corr_pnr"}}
    write_workdir(tmp_path, cfg, [demo_row("a1_A", "A"), no_masks_row("a2_B", "B")])
    jobs = [rule for rule, _ in dry_run(tmp_path)]
    assert "segment" in jobs and "cnmf" in jobs and "train_segmenter" not in jobs


def test_detr_network_trains_and_segments_through_the_same_rules(seg_run):
    """segment.network: detr (with the trace term on the keyframes) through train_segmenter and segment:
    the same footprints.zarr contract as the U-Net's, instances from the query sets (no cue)."""
    tmp, _ = seg_run
    cfg = {**SEG_CONFIG, "segment": {**SEG_CONFIG["segment"], "network": "detr", "init": "scratch", "queries": 8,
                                     "trace_weight": 0.5}}
    write_workdir(tmp, cfg, [demo_row("a1_A", "A"), demo_row("a2_B", "B")])
    try:
        snakemake(tmp, "results/models/segment_evaluation.json")
        r = tmp / "results"
        blob = load_weights(r / "models" / "segmenter.pt")
        assert blob["arch"]["kind"] == "detr" and blob["arch"]["queries"] == 8
        metrics = json.loads((r / "models" / "segmenter_metrics.json").read_text())
        assert metrics["iterations"] == 20 and metrics["arch"]["kind"] == "detr"
        for s in ("a1_A", "a2_B"):
            fp, attrs = read_footprints(r / s / "footprints.zarr")
            assert fp.shape[1] == 64 * 64 and attrs["arch"]["kind"] == "detr"
            g = open_group(r / s / "footprints.zarr")
            labels = np.asarray(g["labels"][:])
            assert labels.max() == fp.shape[0] and g["centroids"].shape == (fp.shape[0], 2) and "cue" not in g
            assert 0 <= json.loads((r / s / "segment_eval.json").read_text())["f1"] <= 1
    finally:
        write_workdir(tmp, SEG_CONFIG, [demo_row("a1_A", "A"), demo_row("a2_B", "B")])
