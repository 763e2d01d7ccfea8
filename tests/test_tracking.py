"""Cross-session tracking: simulator turnover/warp/brightness, registration, matching, union, store."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import ndimage

from calflow.errors import CalflowInputError
from calflow.simulate import SimParams, fov_footprints, render_frames, simulate
from calflow.tracking.match import assign, choose_threshold, match_union, pair_scores, warp_footprints
from calflow.tracking.params import TrackingParams
from calflow.tracking.register import map_points, register, warp_to
from calflow.tracking.stage import track_footprints
from calflow.tracking.store import read_tracking, write_tracking

BASE = SimParams(n_frames=60, height=64, width=64, n_cells=16, radius_min=3.5, radius_max=4.5, n_targets=0,
                 motion=False)


def _session(s: int, **kw):
    p = dataclasses.replace(BASE, **kw)
    t = simulate(p, 100 + s, anatomy_seed=7)
    img = render_frames(t, 0, p.n_frames).astype(np.float32).mean(0)
    fp = fov_footprints(t)
    ids = np.flatnonzero(t.present) if t.present is not None else np.arange(t.n_cells)
    return img, sp.csr_matrix(fp[ids].reshape(len(ids), -1)), ids, t


def test_across_day_knobs_default_off_and_change_only_their_part():
    a = simulate(BASE, 1, anatomy_seed=7)
    b = simulate(dataclasses.replace(BASE, turnover=0.25, warp_px=1.5, brightness_change_cv=0.3), 1, anatomy_seed=7)
    assert a.present is None and b.present is not None and (~b.present).sum() == 4
    assert np.array_equal(a.spikes, b.spikes)  # activity streams untouched
    assert (b.f0[~b.present] == 0).all() and (b.calcium[~b.present] == 0).all()
    moved = np.linalg.norm(b.centers - a.centers, axis=1)
    assert 0 < moved.max() < 8 and not np.allclose(b.f0[b.present] / a.f0[b.present], 1)
    assert set(np.unique(b.masks())) - {0} == set(np.flatnonzero(b.present) + 1)
    with pytest.raises(CalflowInputError, match="turnover"):
        dataclasses.replace(BASE, turnover=0.95).validate()


def test_registration_recovers_a_known_affine_warp():
    img, *_ = _session(0)
    ang = np.deg2rad(1.5)
    R = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    c = np.array([31.5, 31.5])
    yy, xx = np.mgrid[0:64, 0:64].astype(float)
    pts = np.stack([yy.ravel(), xx.ravel()], 1)
    # the session shows reference point p at F(p) = c + R (p - c) + (2.3, -1.7): session(q) = ref(F^-1(q))
    inv = (pts - c - np.array([2.3, -1.7])) @ R + c
    moved = ndimage.map_coordinates(img, inv.T.reshape(2, 64, 64), order=3, mode="nearest")
    reg = register(img, moved, TrackingParams(transform="affine", patch_size=32))
    assert reg.kind == "affine"
    inner = (yy > 8) & (yy < 55) & (xx > 8) & (xx < 55)
    true = (pts - c) @ R.T + c + np.array([2.3, -1.7])
    err = np.linalg.norm(map_points(reg.to_session, pts) - true, axis=1).reshape(64, 64)
    assert np.median(err[inner]) < 0.5
    back = warp_to(moved, reg.to_session)  # the session resampled onto the reference grid
    assert np.corrcoef(back[inner], img[inner])[0, 1] > 0.95


def test_threshold_sits_between_the_modes_and_falls_back():
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.normal(0.2, 0.08, 60), rng.normal(0.9, 0.04, 40)])
    t = choose_threshold(s, TrackingParams())
    assert t.method == "mixture" and 0.4 < t.value < 0.8
    assert choose_threshold(s[:5], TrackingParams()).method == "fixed (fallback)"
    assert choose_threshold(s, TrackingParams(threshold="fixed", fixed_threshold=0.3)).value == 0.3


def test_assignment_is_one_to_one_and_respects_threshold():
    score = np.array([[0.9, 0.8, np.nan], [0.85, np.nan, np.nan], [np.nan, np.nan, 0.3]])
    assert sorted(assign(score, 0.5)) == [(0, 1, 0.8), (1, 0, 0.85)]


def test_tracking_matches_simulated_sessions_with_turnover_and_keeps_unmatched_cells():
    knobs = {"turnover": 0.2, "warp_px": 1.0, "brightness_change_cv": 0.2}
    sessions = [_session(0, **knobs, fov_offset=(0.0, 0.0)),
                _session(1, **knobs, fov_offset=(2.0, -1.5), fov_rotation_deg=0.8)]
    res = track_footprints([s[0] for s in sessions], [s[1] for s in sessions], {"patch_size": 32}, seed=0)
    u = res["union"]
    ids = [s[2] for s in sessions]
    pred = {(int(ids[0][a]), int(ids[1][b])) for a, b in u.members if a >= 0 and b >= 0}
    true = set(ids[0]) & set(ids[1])
    assert pred == {(i, i) for i in true}
    # every detected cell is in the union exactly once; cells of one session only are kept
    for s in (0, 1):
        col = u.members[:, s]
        assert sorted(col[col >= 0]) == list(range(len(ids[s])))
    assert len(u.members) == len(set(ids[0]) | set(ids[1]))
    assert u.footprints.shape == (len(u.members), 64 * 64)


def test_warped_footprints_and_scores():
    A = np.zeros((2, 32, 32), np.float32)
    A[0, 5:10, 5:10] = 1
    A[1, 20:26, 20:26] = 1
    M = sp.csr_matrix(A.reshape(2, -1))
    g = np.mgrid[0:32, 0:32].astype(float)
    W = warp_footprints(M, (32, 32), g + np.array([1.0, 0.0])[:, None, None])  # content moves up 1 px
    score, iou, d = pair_scores(M, W, 32, TrackingParams())
    assert np.isclose(d[0, 0], 1.0) and np.isnan(score[0, 1]) and iou[0, 0] > 0.5
    u = match_union([M, W], 32, 0.5, TrackingParams())
    assert u.members.tolist() == [[0, 0], [1, 1]]


def test_store_round_trip_and_bad_store(tmp_path):
    u = sp.csr_matrix(np.eye(3, 16, dtype=np.float32))
    g = np.zeros((2, 2, 4, 4))
    write_tracking(tmp_path / "t.zarr", union=u, centroids=np.zeros((3, 2)), members=np.array([[0, -1], [1, 0], [-1, 1]]),
                   scores=np.full((3, 2), np.nan), to_session=g, to_reference=g, rigid_shift=np.zeros((2, 2)),
                   affine=np.stack([np.eye(3)] * 2), candidate_scores=np.zeros(0), reference_image=np.zeros((4, 4)),
                   attrs={"animal": "m1", "sessions": ["a", "b"], "reference": "a", "frame_shape": [4, 4],
                          "threshold": 0.5})
    t = read_tracking(tmp_path / "t.zarr")
    assert t.sessions == ("a", "b") and t.n_cells == 3 and (t.union != u).nnz == 0 and t.union_dense().shape == (3, 4, 4)
    with pytest.raises(CalflowInputError):
        read_tracking(tmp_path / "missing.zarr")


@pytest.mark.parametrize("damage", ["not a store", "array missing", "attribute missing", "array truncated"])
def test_a_damaged_tracking_store_is_one_line_naming_it_and_the_stage(tmp_path, damage):
    """What track_traces, track_crossday and the report read: a damaged tracking.zarr is one
    CalflowInputError naming the store (and, where calflow wrote it, the track stage), never a
    KeyError / ValueError from zarr or scipy."""
    import shutil

    import zarr

    test_store_round_trip_and_bad_store(tmp_path)  # writes a valid t.zarr
    store = tmp_path / "t.zarr"
    if damage == "not a store":
        shutil.rmtree(store)
        store.mkdir()
        (store / "zarr.json").write_text("{garbled")
    elif damage == "array missing":
        shutil.rmtree(store / "affine")
    elif damage == "attribute missing":
        g = zarr.open_group(store, mode="r+")
        attrs = dict(g.attrs)
        del attrs["A_shape"]
        g.attrs.clear()
        g.attrs.update(attrs)
    else:  # the CSR pointers no longer fit the data
        g = zarr.open_group(store, mode="r+")
        g.create_array("A_indptr", data=np.array([0, 5], np.int64), dimension_names=("cell_ptr",), overwrite=True)
    with pytest.raises(CalflowInputError) as err:
        read_tracking(store)
    msg = str(err.value)
    assert str(store) in msg and "\n" not in msg and "rerun" in msg
    if damage in ("attribute missing", "array truncated"):
        assert "track stage" in msg


def test_cell_statistics_response_and_target_correlation():
    from calflow.tracking.crossday import SessionTraces, cell_statistics

    rng = np.random.default_rng(0)
    T = 400
    stim = np.zeros(T, bool)
    stim[::10] = True
    target = rng.standard_normal(T)
    dff = np.stack([target,  # the target cell
                    target + 0.3 * rng.standard_normal(T),  # follows the target
                    rng.standard_normal(T) + 2.0 * stim,  # responds to stimulation
                    np.full(T, np.nan)])  # lost by the re-extraction
    cents = np.array([[10.0, 10.0], [30.0, 30.0], [50.0, 10.0], [5.0, 50.0]])
    st = cell_statistics(SessionTraces(dff, cents, stim, np.array([[11.0, 9.0]])), radius_px=4.0)
    assert st["is_target"].tolist() == [True, False, False, False]
    assert np.isnan(st["target_r"][0]) and st["target_r"][1] > 0.9 and abs(st["target_r"][2]) < 0.2
    assert 1.5 < st["response"][2] < 2.5 and abs(st["response"][1]) < 0.5 and np.isnan(st["response"][3])


def test_nested_test_weights_animals_not_cells():
    from calflow.tracking.crossday import animal_changes, nested_test

    changes = {"m1": np.full(50, 1.0), "m2": np.array([-1.0]), "m3": np.full(5, 0.5)}
    out = nested_test(changes, n_bootstrap=200)
    assert out["animals"] == ["m1", "m2", "m3"] and out["n_cells"] == [50, 1, 5]
    assert np.isclose(out["effect"], (1.0 - 1.0 + 0.5) / 3)  # not the pooled-cell mean (0.93)
    assert out["test"]["n"] == 3 and out["test"]["p"] == 1.0  # 3 animals: no sign pattern is rarer than 2/8
    lo, hi = out["ci"]
    assert lo <= out["effect"] <= hi
    a = {"response": np.array([1.0, 2.0, np.nan]), "target_r": np.array([0.1, 0.2, 0.3])}
    b = {"response": np.array([2.0, 2.0, 1.0]), "target_r": np.array([0.3, 0.2, 0.1])}
    ch = animal_changes(a, b, np.array([True, False, True]))
    assert ch["response"].tolist() == [1.0] and np.allclose(ch["target_r"], [0.2, -0.2])


def test_report_section_reads_the_tracking_outputs(tmp_path):
    import json

    from calflow.report.page import ReportContext
    from calflow.report.sections.tracking import tracking_section
    from calflow.tracking.plots import plot_tracking

    knobs = {"turnover": 0.2, "warp_px": 1.0}
    sessions = [_session(0, **knobs), _session(1, **knobs, fov_offset=(1.5, -1.0))]
    res = track_footprints([s[0] for s in sessions], [s[1] for s in sessions], {"patch_size": 32})
    u, thr, regs = res["union"], res["threshold"], res["registrations"]
    d = tmp_path / "tracking" / "m1"
    write_tracking(d / "tracking.zarr", union=u.footprints, centroids=np.zeros((len(u.members), 2)),
                   members=u.members, scores=u.scores, to_session=np.stack([r.to_session for r in regs]),
                   to_reference=np.stack([r.to_reference for r in regs]), rigid_shift=np.zeros((2, 2)),
                   affine=np.stack([r.affine for r in regs]), candidate_scores=res["candidate_scores"],
                   reference_image=sessions[0][0],
                   attrs={"animal": "m1", "sessions": ["m1_A", "m1_B"], "reference": "m1_A", "frame_shape": [64, 64],
                          "threshold": thr.value, "threshold_method": thr.method, "n_per_session": [13, 13],
                          "transforms": [r.kind for r in regs]})
    plot_tracking(read_tracking(d / "tracking.zarr"), [s[0] for s in sessions], d / "tracking.png")
    stat = {"animals": ["m1"], "animal_effect": [0.1], "n_cells": [9], "effect": 0.1, "ci": [0.0, 0.2],
            "test": {"p": 1.0, "n": 1, "smallest_possible_p": 1.0}}
    (tmp_path / "tracking" / "crossday_A_vs_B.json").write_text(json.dumps(
        {"a": "A", "b": "B", "statistics": {"response": stat, "target_r": stat}, "animals": {}}))
    out = tracking_section(ReportContext(results=tmp_path, sessions=[]))
    assert out is not None and len(out["figures"]) == 1 and len(out["facts"]) == 2
    assert out["tables"][0].rows[0][0] == "m1"
    assert tracking_section(ReportContext(results=tmp_path / "none", sessions=[])) is None


def test_sessions_of_different_frame_sizes_are_one_clear_error(tmp_path):
    from calflow.io import atomic_output
    from calflow.summary.store import SUMMARY_ARRAYS, write_summary
    from calflow.tracking.stage import track_animal

    stores = []
    for name, shape in (("a", (32, 32)), ("b", (40, 32))):
        path = tmp_path / f"{name}.zarr"
        with atomic_output(path) as tmp:
            write_summary(tmp, {k: np.zeros(shape, np.float32) for k in SUMMARY_ARRAYS}, n_frames=10, fps=10.0,
                          movie_store="m.zarr", source="m.tif")
        stores.append(path)
    with pytest.raises(CalflowInputError, match="b.zarr.*frames of \\[40, 32\\] px") as err:
        track_animal("m1", ["a", "b"], stores, [tmp_path / "x", tmp_path / "y"], tmp_path / "t.zarr")
    assert "Fix:" in str(err.value) and not (tmp_path / "t.zarr").exists()


def test_nested_test_holds_its_level_under_a_null_with_animal_level_day_effects():
    """Realistic null: no condition effect, but every animal's cells share a day-to-day change (expression,
    focus; SD 0.5) on top of cell noise (SD 1), with 5-60 cells per animal. Over 400 experiments of 6
    animals the animal-level test rejects at p <= 0.05 at most at its exact rate (2/2^6 = 0.031, binomial
    upper bound), while treating cells as replicates (a t-test on the pooled cells) rejects far more often."""
    from scipy import stats

    from calflow.tracking.crossday import nested_test

    rng = np.random.default_rng(7)
    n_exp, nested_hits, pooled_hits = 400, 0, 0
    for i in range(n_exp):
        changes = {f"m{k}": rng.normal(rng.normal(0, 0.5), 1.0, rng.integers(5, 61)) for k in range(6)}
        nested_hits += nested_test(changes, n_bootstrap=0, seed=i)["test"]["p"] <= 0.05
        pooled_hits += stats.ttest_1samp(np.concatenate(list(changes.values())), 0.0).pvalue <= 0.05
    assert nested_hits / n_exp <= stats.binom.ppf(0.999, n_exp, 2 / 64) / n_exp  # ~0.031 expected
    assert pooled_hits / n_exp >= 0.30  # cells as replicates: anti-conservative
