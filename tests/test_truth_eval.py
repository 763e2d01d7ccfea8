"""Rule evaluate_truth's library (calflow.truth_eval): a tiny simulated session's results against its
ground truth, written to truth_eval.json / .npz with the numbers the report used to compute itself."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from test_report import _cnmf, _pipeline

from calflow.cnmf.accuracy import session_accuracy
from calflow.errors import CalflowInputError
from calflow.io import MovieWriter, open_group, write_array
from calflow.simulate import SimParams, load_ground_truth, save_ground_truth, true_displacement, write_session
from calflow.truth_eval import (
    MOTION_SERIES,
    evaluate_session,
    motion_against_truth,
    read_truth_eval,
    truth_labels,
)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """results/ with one simulated session run through ingest, motion, summary and CNMF (seeded by
    the true masks), evaluated into results/a1_A/truth_eval.json / .npz."""
    results = tmp_path_factory.mktemp("truth_eval") / "results"
    params = SimParams.from_dict({"n_frames": 80, "height": 64, "width": 64, "n_cells": 8, "n_targets": 2,
                                  "n_pairs": 1})
    write_session(results / "demo" / "a1_A", params, 5)
    _pipeline(results, "a1_A", results / "demo" / "a1_A" / "movie.tif")
    _cnmf(results, "a1_A")
    d = results / "a1_A"
    paths = {"truth": results / "demo" / "a1_A" / "ground_truth.npz", "motion": d / "motion.zarr",
             "cnmf": d / "cnmf.zarr", "footprints": d / "footprints.zarr", "json": d / "truth_eval.json",
             "npz": d / "truth_eval.npz"}
    returned = evaluate_session(paths["truth"], paths["motion"], paths["cnmf"], paths["footprints"], paths["json"],
                                paths["npz"], session="a1_A")
    return paths, returned


def test_written_numbers_are_those_of_the_report_s_former_computation(session):
    """truth_eval.json holds what the report computed while rendering: the motion comparison
    (formerly report.truth_motion, moved unchanged into motion_against_truth) and
    cnmf.accuracy.session_accuracy called with the same files; the .npz holds the series and labels."""
    paths, returned = session
    written = json.loads(paths["json"].read_text())
    assert written == json.loads(json.dumps(returned))
    assert written["session"] == "a1_A" and written["ground_truth"] == str(paths["truth"])
    assert (written["n_cells"], written["n_targets"], written["w_gain"]) == (8, 2, 1.0)

    g = open_group(paths["motion"], mode="r")
    motion = {k: np.asarray(g[k]) for k in ("rigid_shifts", "patch_shifts", "patch_centers_y", "patch_centers_x")}
    old = motion_against_truth(load_ground_truth(paths["truth"]), motion["rigid_shifts"], motion["patch_shifts"],
                               motion["patch_centers_y"], motion["patch_centers_x"])
    for key in ("rmse", "max_err", "rigid_rmse", "true_rms", "true_largest", "n_points"):
        assert written["motion"][key] == old[key], key
    assert written["motion"]["offset"] == old["offset"].tolist()
    assert written["motion"]["n_points"] == motion["patch_centers_y"].size * motion["patch_centers_x"].size > 1
    assert 0 < written["motion"]["rmse"] < 1.0  # px: calflow's shifts follow the simulated motion

    reference = session_accuracy(paths["cnmf"], paths["truth"], paths["motion"], paths["footprints"])
    assert written["cnmf"] == json.loads(json.dumps(reference))
    assert written["cnmf"]["n_true"] == 8 and written["cnmf"]["median_r_C"] > 0.5

    with np.load(paths["npz"]) as z:
        assert sorted(z.files) == sorted([*MOTION_SERIES, "labels"])
        for key in MOTION_SERIES:
            np.testing.assert_array_equal(z[key], old[key])
            assert z[key].shape == (80, 2) and z[key].dtype == np.float64
        np.testing.assert_array_equal(z["labels"], truth_labels(paths["truth"]))
    assert not list(paths["json"].parent.glob(".truth_eval*"))  # no temporaries left


def test_read_truth_eval_gives_the_report_one_dict(session, tmp_path):
    paths, returned = session
    te = read_truth_eval(paths["json"])
    assert te["motion"]["rmse"] == returned["motion"]["rmse"] and te["cnmf"] == json.loads(json.dumps(returned["cnmf"]))
    assert isinstance(te["motion"]["offset"], np.ndarray) and te["motion"]["offset"].shape == (2,)
    assert te["motion"]["true_mean"].shape == (80, 2) and te["labels"].shape == (64, 64)
    assert read_truth_eval(tmp_path / "truth_eval.json") is None


def test_a_frame_count_mismatch_is_a_sentence_not_numbers(session, tmp_path):
    paths, _ = session
    store = tmp_path / "motion.zarr"
    with MovieWriter(store, (50, 64, 64), "uint16", fps=30.0) as w:
        w.write(np.zeros((50, 64, 64), np.uint16))
    write_array(store, "rigid_shifts", np.zeros((50, 2)), ("time", "axis"))
    write_array(store, "patch_shifts", np.zeros((50, 1, 1, 2)), ("time", "patch_y", "patch_x", "axis"))
    res = evaluate_session(paths["truth"], store, None, None, tmp_path / "e.json", tmp_path / "e.npz")
    assert res["motion"] == {"mismatch": "the ground truth has 80 frames, motion.zarr 50"} and res["cnmf"] is None
    with np.load(tmp_path / "e.npz") as z:
        assert z.files == ["labels"]


def test_an_unreadable_truth_is_one_line_and_leaves_no_output(session, tmp_path):
    paths, _ = session
    bad = tmp_path / "demo" / "ground_truth.npz"
    bad.parent.mkdir()
    bad.write_bytes(paths["truth"].read_bytes()[:1000])
    with pytest.raises(CalflowInputError, match="not a readable calflow ground_truth.npz"):
        evaluate_session(bad, paths["motion"], None, None, tmp_path / "e.json", tmp_path / "e.npz")
    assert not list(tmp_path.glob("e.*")) and not list(tmp_path.glob(".e.*"))


def test_motion_comparison_is_zero_for_exact_shifts_and_catches_a_sign_error(session):
    """Shifts equal to the true displacement (+ a constant template offset) score ~0 px error."""
    paths, _ = session
    truth = load_ground_truth(paths["truth"])
    cy, cx = np.array([16.0, 32.0, 48.0]), np.array([16.0, 48.0])
    centres = np.stack(np.meshgrid(cy, cx, indexing="ij"), axis=-1).reshape(-1, 2)
    offset = np.array([0.4, -0.3])  # template = world frame moved by a constant
    true = true_displacement(truth, slice(None), centres + offset)
    n_t = true.shape[0]
    scores = {}
    for label, sign in (("exact", 1.0), ("flipped", -1.0)):
        scores[label] = motion_against_truth(truth, sign * truth.rigid_shifts + offset,
                                             (sign * true + offset).reshape(n_t, 3, 2, 2), cy, cx)
    exact, flipped = scores["exact"], scores["flipped"]
    assert exact["rmse"] < 0.02 and exact["max_err"] < 0.1
    np.testing.assert_allclose(exact["offset"], offset, atol=0.02)
    assert flipped["rmse"] > 1.5 * flipped["true_rms"]


def test_motion_comparison_leaves_the_static_fov_replacement_out(session, tmp_path):
    """A session whose field of view is re-placed (offset and rotation, static over the session): the
    corrector registers to the session's own template, so an estimate of the within-session motion
    (true_displacement(static=False)) scores ~0 px error; the rotation's static displacement is no motion."""
    paths, _ = session
    truth = dataclasses.replace(load_ground_truth(paths["truth"]), fov_offset=np.array([1.5, -2.0]),
                                fov_rotation_deg=4.0)
    truth = load_ground_truth(save_ground_truth(truth, tmp_path / "ground_truth.npz"))  # as the rule reads it
    cy, cx = np.array([16.0, 32.0, 48.0]), np.array([16.0, 48.0])
    centres = np.stack(np.meshgrid(cy, cx, indexing="ij"), axis=-1).reshape(-1, 2)
    offset = np.array([0.4, -0.3])
    within = true_displacement(truth, slice(None), centres + offset, static=False)
    with_static = true_displacement(truth, slice(None), centres + offset)
    spread = with_static - within - (with_static - within).mean(axis=(0, 1))
    assert np.sqrt(np.mean(spread**2)) > 0.5  # the rotation moves the patch centres apart by ~1 px
    n_t = within.shape[0]
    tm = motion_against_truth(truth, truth.rigid_shifts + offset, within.reshape(n_t, 3, 2, 2) + offset, cy, cx)
    assert tm["rmse"] < 0.02 and tm["max_err"] < 0.1, tm["rmse"]
    np.testing.assert_allclose(tm["offset"], offset, atol=0.02)


def test_truth_cells_from_masks_or_footprints(session, tmp_path):
    paths, _ = session
    from_masks = truth_labels(paths["truth"])
    shutil.copy(paths["truth"], tmp_path / "ground_truth.npz")  # no masks.tif beside it
    from_footprints = truth_labels(tmp_path / "ground_truth.npz")
    assert from_masks.shape == from_footprints.shape == (64, 64)
    assert set(np.unique(from_masks)) == set(np.unique(from_footprints)) == set(range(9))  # 8 cells + background
    assert (from_footprints > 0).sum() <= (from_masks > 0).sum()  # masks.tif fills dark nuclei
