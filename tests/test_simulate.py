"""Tests of the ground-truth simulator (tiny movies: <= 200 frames of 48x48)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage, signal

from calflow import simulate as sim
from calflow.errors import CalflowInputError
from calflow.simulate import (
    SimParams,
    dense_displacement,
    load_ground_truth,
    render_frames,
    simulate,
    true_displacement,
    write_session,
)

SMALL = dict(
    n_frames=120,
    height=48,
    width=48,
    n_cells=8,
    radius_min=3.5,
    radius_max=4.5,
    n_targets=3,
    n_pairs=1,
    trial_frames=6,
    iti_frames=6,
    iti_jitter_frames=2,
    stim_start_frame=5,
    nonrigid_grid=(3, 3),
)


def small(**kw) -> SimParams:
    return SimParams(**{**SMALL, **kw})


STATIC = dict(motion=False)
CELLS_ONLY = dict(neuropil_level=0.0, neuropil_coupling=0.0, bg_rank=0, baseline=0.0)


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> tuple[Path, dict[str, Path], SimParams]:
    out = tmp_path_factory.mktemp("sim") / "session"
    params = small()
    return out, write_session(out, params, seed=3, block_frames=16), params


# ----------------------------------------------------------------------------- determinism


def test_deterministic_from_seed():
    p = small(n_frames=60)
    a, b, c = simulate(p, 5), simulate(p, 5), simulate(p, 6)
    for name in ("centers", "spikes", "calcium", "rigid_shifts", "nonrigid_grid", "W", "stim", "bg_traces"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.footprints, b.footprints)
    np.testing.assert_array_equal(render_frames(a, 0, 20), render_frames(b, 0, 20))
    assert not np.array_equal(a.centers, c.centers)
    assert not np.array_equal(render_frames(a, 0, 5), render_frames(c, 0, 5))


def test_render_independent_of_block_size_and_threads():
    truth = simulate(small(n_frames=100), 1)
    m7 = render_frames(truth, block_frames=7, threads=1)
    m100 = render_frames(truth, block_frames=100, threads=2)
    assert m7.dtype == np.uint16 and m7.shape == (100, 48, 48)
    np.testing.assert_array_equal(m7, m100)
    # a frame range renders the same frames as the full movie
    np.testing.assert_array_equal(render_frames(truth, 33, 41, block_frames=3), m100[33:41])
    n7 = render_frames(truth, 0, 30, noise=False, block_frames=7)
    n100 = render_frames(truth, 0, 30, noise=False, block_frames=100)
    assert n7.dtype == np.float32
    np.testing.assert_array_equal(n7, n100)


def test_changing_w_gain_or_motion_leaves_other_components_unchanged():
    p = small(n_frames=80)
    a = simulate(p, 2)
    b = simulate(dataclasses.replace(p, w_gain=2.0, motion=False), 2)
    for name in ("centers", "W", "stim", "target_cells", "g", "bg_traces", "neuropil_trace",
                 "neuropil_spatial", "background_spatial"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not np.any(b.rigid_shifts) and not np.any(b.nonrigid_grid)
    assert np.any(a.rigid_shifts) and np.any(a.nonrigid_grid)


def test_anatomy_seed_shares_cells_and_w_across_sessions():
    p = small(n_frames=150)
    pod0 = simulate(p, 10, anatomy_seed=1)
    pod3 = simulate(dataclasses.replace(p, w_gain=1.8), 20, anatomy_seed=1)
    for name in ("centers", "radii", "f0", "g", "spike_amplitude", "W", "target_cells", "patterns",
                 "neuropil_spatial", "background_spatial"):
        np.testing.assert_array_equal(getattr(pod0, name), getattr(pod3, name), err_msg=name)
    np.testing.assert_array_equal(pod0.footprints, pod3.footprints)
    for name in ("spikes", "rigid_shifts", "trial_pattern", "bg_traces"):
        assert not np.array_equal(getattr(pod0, name), getattr(pod3, name)), name
    # default anatomy_seed is the seed itself
    a, b = simulate(p, 10), simulate(p, 10, anatomy_seed=10)
    np.testing.assert_array_equal(a.centers, b.centers)
    np.testing.assert_array_equal(a.spikes, b.spikes)
    assert not np.array_equal(a.centers, pod0.centers)


# ----------------------------------------------------------------------------- session files


def test_session_files_shapes_and_dtypes(session):
    out, paths, p = session
    T, Y, X = p.n_frames, p.height, p.width
    assert set(paths) == set(sim.SESSION_FILES) and all(v.exists() for v in paths.values())
    assert sorted(e.name for e in out.iterdir()) == sorted(sim.SESSION_FILES.values())
    assert not list(out.parent.glob(".session.tmp-*"))
    movie = tifffile.imread(paths["movie"])
    assert movie.shape == (T, Y, X) and movie.dtype == np.uint16
    with tifffile.TiffFile(paths["movie"]) as tf:
        assert len(tf.pages) == T
    masks = tifffile.imread(paths["masks"])
    assert masks.shape == (Y, X) and masks.dtype == np.uint16
    with np.load(paths["ground_truth"]) as z:
        K = z["centers"].shape[0]
        gy, gx = p.nonrigid_grid
        expected = {
            "footprints": ((K, Y, X), np.float32),
            "centers": ((K, 2), np.float64),
            "radii": ((K,), np.float64),
            "calcium": ((K, T), np.float32),
            "spikes": ((K, T), np.float32),
            "g": ((K, 2), np.float64),
            "rigid_shifts": ((T, 2), np.float64),
            "nonrigid_grid": ((T, gy, gx, 2), np.float64),
            "control_points_yx": ((gy, gx, 2), np.float64),
            "W": ((K, K), np.float64),
            "target_cells": ((p.n_targets,), np.int64),
            "background_spatial": ((p.bg_rank, Y, X), np.float32),
            "background_temporal": ((p.bg_rank, T), np.float32),
            "neuropil_spatial": ((Y, X), np.float32),
            "neuropil_trace": ((T,), np.float32),
            "stim": ((T, p.n_targets), np.bool_),
        }
        for name, (shape, dtype) in expected.items():
            assert z[name].shape == shape, name
            assert z[name].dtype == dtype, name
        assert float(z["w_gain"]) == p.w_gain and float(z["fps"]) == p.fps
        np.testing.assert_allclose(z["footprints"].max(axis=(1, 2)), 1.0)
        np.testing.assert_array_equal(z["control_points_yx"][-1, -1], [Y - 1, X - 1])
    meta = json.loads(paths["params"].read_text())
    assert meta["seed"] == 3 and meta["calflow_version"] and meta["generator"] == "calflow.simulate"
    assert SimParams.from_dict(meta["params"]) == p


def test_movie_equals_rendering_of_reloaded_ground_truth(session):
    _, paths, _ = session
    truth = load_ground_truth(paths["ground_truth"])
    movie = tifffile.imread(paths["movie"])
    np.testing.assert_array_equal(render_frames(truth, block_frames=50), movie)
    np.testing.assert_array_equal(truth.masks(), tifffile.imread(paths["masks"]))


def test_stim_log_and_targets_csv(session):
    _, paths, p = session
    truth = load_ground_truth(paths["ground_truth"])
    lines = paths["stim_log"].read_text().splitlines()
    assert lines[0] == "frame,targets"
    rows = list(csv.DictReader(lines))
    assert [int(r["frame"]) for r in rows] == list(range(p.n_frames))
    stimulated = np.zeros((p.n_frames, p.n_targets), bool)
    for r in rows:
        if r["targets"]:
            ids = [int(i) for i in r["targets"].split(";")]
            assert all(0 <= i < p.n_targets for i in ids) and ids == sorted(set(ids))
            stimulated[int(r["frame"]), ids] = True
    np.testing.assert_array_equal(stimulated, truth.stim)
    assert 0 < stimulated.any(axis=1).sum() < p.n_frames  # stimulated and "none" frames both occur
    assert stimulated.sum(axis=1).max() == 2  # the pair pattern
    # each trial stimulates its pattern for trial_frames frames and nothing else runs then
    for s, e, pat in zip(truth.trial_start, truth.trial_stop, truth.trial_pattern, strict=True):
        ids = [j for j in truth.patterns[pat] if j >= 0]
        assert e - s == p.trial_frames
        assert stimulated[s:e].sum(axis=0).tolist() == [p.trial_frames if j in ids else 0 for j in range(3)]
    assert not stimulated[: p.stim_start_frame].any()

    # defaults: 8 single targets + 8 distinct pairs, every pattern once per block
    full = simulate(SimParams(n_frames=1000), 0)
    assert full.patterns.shape == (16, 2) and len({tuple(r) for r in full.patterns}) == 16
    assert np.all(full.patterns[:8, 1] == -1) and np.all(full.patterns[8:, 0] < full.patterns[8:, 1])
    first = full.trial_block == 0
    assert sorted(full.trial_pattern[first]) == list(range(16))
    assert np.all(np.diff(full.trial_block) >= 0)

    t_lines = paths["targets"].read_text().splitlines()
    assert t_lines[0] == "id,y,x,radius"
    tgt = list(csv.DictReader(t_lines))
    assert [int(r["id"]) for r in tgt] == list(range(p.n_targets))
    for r in tgt:
        k = truth.target_cells[int(r["id"])]
        np.testing.assert_allclose([float(r["y"]), float(r["x"])], truth.centers[k], atol=1e-3)
        assert float(r["radius"]) == pytest.approx(truth.radii[k], abs=1e-3)


def test_footprints_and_masks_consistent():
    truth = simulate(small(n_cells=10, overlap_fraction=0.3), 4)
    fp, masks = truth.footprints, truth.masks()
    assert fp.dtype == np.float32 and fp.min() >= 0
    np.testing.assert_allclose(fp.max(axis=(1, 2)), 1.0)
    assert (truth.overlap_partner >= 0).sum() >= 2  # some cells really overlap
    for k in range(truth.n_cells):
        core = ndimage.binary_fill_holes(fp[k] >= 0.5)
        # every labelled pixel belongs to the cell's thresholded (hole-filled) footprint
        assert core[masks == k + 1].all()
        # a non-overlapping cell gets its whole region; an overlapping one most of it
        share = (masks[core] == k + 1).mean()
        assert share == 1.0 if truth.overlap_partner[k] < 0 else share > 0.3
        # the footprint is centred on the recorded centre
        yy, xx = np.mgrid[: fp.shape[1], : fp.shape[2]]
        cy, cx = (fp[k] * yy).sum() / fp[k].sum(), (fp[k] * xx).sum() / fp[k].sum()
        np.testing.assert_allclose([cy, cx], truth.centers[k], atol=0.05)
    # where two footprints pass 0.5, the brighter (f0 * footprint) wins
    both = (fp >= 0.5).sum(axis=0) >= 2
    assert both.any()
    bright = np.argmax(fp * truth.f0[:, None, None] * (fp >= 0.5), axis=0) + 1
    np.testing.assert_array_equal(masks[both], bright[both])
    # overlap partners really overlap, others are at least 1 px apart (semi-major axes)
    for k, j in enumerate(truth.overlap_partner):
        if j >= 0:
            assert np.linalg.norm(truth.centers[k] - truth.centers[j]) < truth.radii[k] + truth.radii[j]


# ----------------------------------------------------------------------------- activity


def test_calcium_follows_ar2_from_spikes():
    truth = simulate(small(n_frames=200), 0)
    c = truth.calcium.astype(np.float64)
    for k in range(truth.n_cells):
        g1, g2 = truth.g[k]
        resid = c[k, 2:] - g1 * c[k, 1:-1] - g2 * c[k, :-2] - truth.spike_weight[k] * truth.spikes[k, 2:]
        assert np.abs(resid).max() < 1e-4
        # an isolated spike peaks at spike_amplitude[k]
        h = signal.lfilter([truth.spike_weight[k]], [1, -g1, -g2], np.eye(1, 60)[0])
        assert h.max() == pytest.approx(truth.spike_amplitude[k], rel=1e-9)
        # g from the time constants: roots exp(-dt/tau)
        roots = np.sort(np.roots([1, -g1, -g2]).real)
        dt = 1 / truth.fps
        np.testing.assert_allclose(roots, np.sort(np.exp(-dt / np.array([truth.tau_rise_s[k], truth.tau_decay_s[k]]))))
    assert truth.spikes.sum() > 0 and np.all(truth.spikes == np.round(truth.spikes))


def test_spikes_visible_at_footprint_pixels_without_motion():
    p = small(n_frames=200, spike_rate_hz=2.0, **STATIC)
    truth = simulate(p, 7)
    movie = render_frames(truth, noise=False)
    masks = truth.masks()
    checked = 0
    for k in range(truth.n_cells):
        if truth.overlap_partner[k] >= 0 or truth.calcium[k].std() < 0.05:
            continue
        trace = movie[:, masks == k + 1].mean(axis=1)
        assert np.corrcoef(trace, truth.calcium[k])[0, 1] > 0.95, k
        checked += 1
    assert checked >= 4
    # and without the cells' calcium the same pixels do not follow it
    flat = dataclasses.replace(truth, calcium=np.zeros_like(truth.calcium))
    still = render_frames(flat, 0, 200, noise=False)
    k = int(np.argmax(truth.calcium.std(axis=1) * (truth.overlap_partner < 0)))
    assert np.corrcoef(still[:, masks == k + 1].mean(axis=1), truth.calcium[k])[0, 1] < 0.9


def test_poisson_gaussian_noise_model():
    p = small(n_frames=60, gain=3.0, read_noise=5.0, **STATIC)
    truth = simulate(p, 8)
    noisy = render_frames(truth).astype(np.float64)
    mean = render_frames(truth, noise=False).astype(np.float64)
    resid = noisy - mean
    assert abs(resid.mean()) < 0.2
    # photon transfer: var = gain * (E - offset) + read_noise^2 (+ 1/12 rounding)
    e = (mean - p.offset).ravel()
    var_pred = p.gain * e + p.read_noise**2 + 1 / 12
    ratio = (resid.ravel() ** 2).mean() / var_pred.mean()
    assert ratio == pytest.approx(1.0, abs=0.05)
    slope = np.polyfit(e, resid.ravel() ** 2, 1)[0]
    assert slope == pytest.approx(p.gain, rel=0.15)


def _coupled_response(truth) -> float:
    """Mean extra spikes/frame of cells driven by a target, during that target's trials."""
    resp = []
    d = truth.delay_frames
    for j, i in enumerate(truth.target_cells):
        driven = np.flatnonzero(truth.W[i] > 0)
        on = np.zeros(truth.n_frames, bool)
        on[d:] = truth.stim[: truth.n_frames - d, j]
        off = ~truth.stim.any(axis=1)
        off[:d] = False
        off[d:] &= ~truth.stim[: truth.n_frames - d].any(axis=1)
        resp.append(truth.spikes[driven][:, on].mean() - truth.spikes[driven][:, off].mean())
    return float(np.mean(resp))


def test_w_gain_strengthens_evoked_coupling():
    p = SimParams(n_frames=3000, height=96, width=96, n_cells=30, n_targets=6, n_pairs=0, motion=False)
    r0, r1, r2 = (_coupled_response(simulate(dataclasses.replace(p, w_gain=w), 11)) for w in (0.0, 1.0, 2.0))
    assert abs(r0) < 0.02  # no coupling: driven cells fire as off-trial
    assert r1 > 0.05
    assert r2 > 1.5 * r1
    # the strengthening only adds spikes, and only where W drives a cell during a trial
    s1, s2 = simulate(dataclasses.replace(p, w_gain=1.0), 11), simulate(dataclasses.replace(p, w_gain=2.0), 11)
    assert np.all(s2.spikes >= s1.spikes)
    quiet = ~s1.stim.any(axis=1)
    quiet[s1.delay_frames :] &= ~s1.stim[: p.n_frames - s1.delay_frames].any(axis=1)
    np.testing.assert_array_equal(s1.spikes[:, quiet], s2.spikes[:, quiet])
    # stimulated targets themselves fire much more during their trials
    for j, i in enumerate(s1.target_cells):
        assert s1.spikes[i, s1.stim[:, j]].mean() > 5 * s1.spikes[i, quiet].mean()


def test_connectivity_and_evoked_rates_follow_w_with_delay():
    p = small(n_frames=200, n_cells=10, connection_prob=0.2, w_delay_s=0.1, **STATIC)
    t0, t1 = (simulate(dataclasses.replace(p, w_gain=w), 6) for w in (0.0, 1.0))
    W, K = t1.W, t1.n_cells
    assert W.shape == (K, K) and np.all(W >= 0) and not np.any(np.diag(W))
    nz = W[W > 0]
    assert np.all((nz >= p.w_min) & (nz <= p.w_max)) and nz.size < K * K / 2
    assert all(W[i].any() for i in t1.target_cells)  # every target drives someone
    assert t1.delay_frames == 3
    expected = np.zeros((K, p.n_frames))
    for s, e, pat in zip(t1.trial_start, t1.trial_stop, t1.trial_pattern, strict=True):
        for j in t1.patterns[pat][t1.patterns[pat] >= 0]:
            # W[source, target]: row of the stimulated cell, shifted by the delay
            expected[:, s + 3 : e + 3] += p.stim_gain * W[t1.target_cells[j]][:, None]
    np.testing.assert_allclose(t1.rate_hz - t0.rate_hz, expected, atol=1e-4)


@pytest.mark.parametrize("context", [0, 2])
def test_evoked_calcium_is_the_expected_response_of_the_simulated_rates(context):
    """evoked_calcium (the truth behind the Grad-CAM validation) equals the calcium that the
    simulator's extra rates produce in a trial, averaged over input windows: per cell, through its
    own kinetics and amplitude, delayed for the driven cells."""
    p = small(n_frames=60, n_cells=10, n_pairs=0, connection_prob=0.4, w_delay_s=0.1, tau_jitter=0.3,
              amplitude_cv=0.4, **STATIC)
    t, t0 = simulate(p, 6), simulate(dataclasses.replace(p, stim_gain=0.0), 6)
    extra = (t.rate_hz - t0.rate_hz).astype(np.float64) / p.fps  # expected extra spikes per frame
    a, b, j = int(t.trial_start[0]), int(t.trial_stop[0]), int(t.patterns[t.trial_pattern[0]][0])
    assert a >= context and t.trial_start[1] > b + context + t.delay_frames  # the first trial stands alone
    ca = np.stack([signal.lfilter([t.spike_weight[k]], [1.0, -t.g[k, 0], -t.g[k, 1]], extra[k])
                   for k in range(t.n_cells)])
    seen = np.mean([ca[:, f - context : f + context + 1].mean(axis=1) for f in range(a, b)], axis=0)
    resp = sim.evoked_calcium(t.g, t.spike_weight, p.fps, p.trial_frames, t.delay_frames, context)
    src = int(t.target_cells[j])
    expected = p.stim_gain * t.W[src] * resp[1]
    expected[src] = p.stim_gain * resp[0, src]
    np.testing.assert_allclose(seen, expected, rtol=1e-5, atol=1e-9)
    assert np.count_nonzero(t.W[src]) >= 2 and np.ptp(resp[1][t.W[src] > 0]) > 0  # cells differ


# ----------------------------------------------------------------------------- motion


def test_rigid_motion_matches_true_shift():
    p = small(n_frames=40, nonrigid=False, max_shift=3.0, rigid_std=2.0)
    truth = simulate(p, 5)
    assert not np.any(truth.nonrigid_grid)
    assert np.abs(truth.rigid_shifts).max() <= 3.0
    assert np.abs(truth.rigid_shifts).max() > 0.5
    moved = render_frames(truth, noise=False)
    world = render_frames(truth, noise=False, motion=False)
    Y, X = p.height, p.width
    grid = np.mgrid[0:Y, 0:X].astype(np.float64)
    inner = (slice(6, Y - 6), slice(6, X - 6))
    errs, wrong = [], []
    for t in range(0, 40, 3):
        s = truth.rigid_shifts[t]
        d = true_displacement(truth, t, [[10.0, 30.0], [40.0, 5.0]])
        np.testing.assert_allclose(d[0], np.tile(s, (2, 1)), atol=1e-12)  # rigid: same everywhere
        back = ndimage.map_coordinates(moved[t], grid + s[:, None, None], order=3, mode="nearest")
        bad = ndimage.map_coordinates(moved[t], grid - s[:, None, None], order=3, mode="nearest")
        scale = world[t][inner].std()
        errs.append(np.abs(back - world[t])[inner].mean() / scale)
        if np.abs(s).max() > 0.5:
            wrong.append(np.abs(bad - world[t])[inner].mean() / scale)
    assert max(errs) < 0.05
    assert wrong and min(wrong) > 3 * max(errs)


def test_nonrigid_displacement_matches_cell_positions():
    """Each isolated cell's centroid in a moved frame is where the world displacement puts it."""
    p = small(n_frames=30, height=96, width=96, nonrigid_grid=(4, 4), max_shift=2.0, nonrigid_amplitude=1.5,
              nonrigid_tau_s=0.2, rigid_tau_s=0.3, **CELLS_ONLY)
    truth = simulate(p, 9)
    assert np.abs(truth.nonrigid_grid).max() > 1.0
    np.testing.assert_allclose(truth.nonrigid_grid.mean(axis=(1, 2)), 0, atol=1e-12)  # per frame
    np.testing.assert_allclose(truth.nonrigid_grid.mean(axis=0), 0, atol=1e-12)  # per control point
    np.testing.assert_allclose(truth.rigid_shifts.mean(axis=0), 0, atol=1e-12)  # world = mean position
    frames = render_frames(truth, noise=False) - p.offset
    yy, xx = np.mgrid[0 : p.height, 0 : p.width]
    iso = []
    for k in range(truth.n_cells):
        dist = np.linalg.norm(np.delete(truth.centers, k, axis=0) - truth.centers[k], axis=1)
        if truth.overlap_partner[k] < 0 and dist.min() >= 20:  # no other cell in the window
            iso.append(k)
    assert len(iso) >= 2
    errs, rigid_errs = [], []
    for t in range(0, 30, 5):
        D = dense_displacement(truth, t)  # world coords: pixel q appears at q + D[q]
        # world area element -> frame area element (det of the Jacobian of q -> q + D(q))
        dy, dx = np.gradient(D, axis=0), np.gradient(D, axis=1)
        det = (1 + dy[..., 0]) * (1 + dx[..., 1]) - dx[..., 0] * dy[..., 1]
        for k in iso:
            w = truth.footprint(k) * det
            expect = np.array([((yy + D[..., 0]) * w).sum(), ((xx + D[..., 1]) * w).sum()]) / w.sum()
            win = (np.abs(yy - expect[0]) <= 9) & (np.abs(xx - expect[1]) <= 9)
            f = np.where(win, frames[t], 0)
            centroid = np.array([(f * yy).sum(), (f * xx).sum()]) / f.sum()
            errs.append(np.abs(centroid - expect).max())
            rigid_errs.append(np.abs(centroid - truth.centers[k] - truth.rigid_shifts[t]).max())
    assert max(errs) < 0.03
    assert max(rigid_errs) > 0.3  # the non-rigid part is visible beyond the rigid shift


def test_world_and_frame_displacements_are_inverse():
    truth = simulate(small(n_frames=10, nonrigid_amplitude=2.0, n_targets=0, n_pairs=None), 2)
    assert truth.stim.shape == (10, 0) and truth.trial_start.size == 0
    t = 7
    q = np.random.default_rng(0).uniform(0, 47, (50, 2))
    d_world = true_displacement(truth, [t], q)[0]
    p_frame = q + d_world
    d_frame = true_displacement(truth, t, p_frame, coords="frame")[0]
    np.testing.assert_allclose(p_frame - d_frame, q, atol=1e-8)  # frame(p) = world(p - D(p))
    assert np.abs(d_world - true_displacement(truth, t, q, coords="frame")[0]).max() > 1e-4
    dense = dense_displacement(truth, t)
    assert dense.shape == (48, 48, 2)
    np.testing.assert_allclose(dense[20, 31], true_displacement(truth, t, [[20, 31]])[0, 0], atol=1e-9)
    dense_f = dense_displacement(truth, t, coords="frame")
    np.testing.assert_allclose(dense_f[5, 40], true_displacement(truth, t, [[5, 40]], coords="frame")[0, 0])
    # control points carry exactly their stored displacement (interpolating spline)
    cp = np.stack(np.meshgrid(truth.control_y, truth.control_x, indexing="ij"), -1).reshape(-1, 2)
    np.testing.assert_allclose(
        true_displacement(truth, t, cp, coords="frame")[0],
        truth.nonrigid_grid[t].reshape(-1, 2) + truth.rigid_shifts[t],
        atol=1e-9,
    )
    assert true_displacement(truth, slice(0, 4), q).shape == (4, 50, 2)


def test_motion_off_renders_the_world():
    truth = simulate(small(n_frames=20, **STATIC), 1)
    assert not truth.has_motion
    np.testing.assert_array_equal(render_frames(truth, noise=False), render_frames(truth, noise=False, motion=False))
    np.testing.assert_array_equal(dense_displacement(truth, 3), 0)


# ----------------------------------------------------------------------------- validation, io, cli


@pytest.mark.parametrize(
    ("override", "name"),
    [
        ({"height": -5}, "height"),
        ({"n_frames": 0}, "n_frames"),
        ({"n_targets": 20}, "n_targets"),
        ({"n_pairs": 4}, "n_pairs"),
        ({"fps": 0.0}, "fps"),
        ({"radius_max": 3.0}, "radius_max"),
        ({"tau_rise_s": 1.0}, "tau_rise_s"),
        ({"nonrigid_amplitude": 10.0}, "nonrigid_amplitude"),
        ({"nonrigid_grid": (1, 3)}, "nonrigid_grid"),
        ({"n_blocks": 50}, "n_blocks"),
        ({"n_frames": 8}, "n_frames"),
        ({"spike_rate_hz": -1.0}, "spike_rate_hz"),
        ({"n_cells": 2.5}, "n_cells"),
        ({"motion": "yes"}, "motion"),
        ({"connection_prob": 1.5}, "connection_prob"),
    ],
)
def test_invalid_params_name_the_parameter(override, name):
    with pytest.raises(CalflowInputError, match=rf"demo\.sim\.{name} = .*Fix: "):
        simulate(small(**override), 0)


def test_other_input_errors(tmp_path):
    with pytest.raises(CalflowInputError, match="unknown simulation parameter.*'n_cels'"):
        SimParams.from_dict({"n_cels": 3})
    with pytest.raises(CalflowInputError, match="could not place.*cells of this size fit"):
        simulate(small(n_cells=60), 0)
    with pytest.raises(CalflowInputError, match="seed"):
        simulate(small(), -1)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(CalflowInputError, match="did not write"):
        write_session(foreign, small(n_frames=20), 0)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(CalflowInputError, match="not a readable"):
        load_ground_truth(foreign / "notes.txt")


def test_killed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sim.files, "save_ground_truth", boom)  # the name write_session calls
    with pytest.raises(KeyboardInterrupt):
        write_session(tmp_path / "s", small(n_frames=20), 0)
    assert list(tmp_path.iterdir()) == []


def test_cli_arguments(tmp_path):
    parser = argparse.ArgumentParser()
    sim.add_arguments(parser)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**SMALL, "n_frames": 50, "nonrigid_grid": [3, 3]}))
    args = parser.parse_args(
        [str(tmp_path / "s"), "--seed", "4", "--anatomy-seed", "2", "--config", str(cfg), "--no-motion",
         "--w-gain", "1.5",
         "--n-frames", "30", "--block-frames", "8"]
    )
    params = sim.params_from_args(args)
    assert params.motion is False and params.w_gain == 1.5 and params.n_frames == 30 and params.n_cells == 8
    out = sim.run_from_args(args)
    assert out == tmp_path / "s"
    meta = json.loads((out / "params.json").read_text())
    assert meta["seed"] == 4 and meta["anatomy_seed"] == 2
    assert meta["params"]["w_gain"] == 1.5 and meta["params"]["motion"] is False
    truth = load_ground_truth(out / "ground_truth.npz")
    np.testing.assert_array_equal(truth.centers, simulate(params, 99, anatomy_seed=2).centers)
    assert tifffile.imread(out / "movie.tif").shape == (30, 48, 48)
    # rerunning into the same session directory replaces it
    assert sim.main_simulate([str(out), "--config", str(cfg), "--n-frames", "20"]) == 0
    assert tifffile.imread(out / "movie.tif").shape == (20, 48, 48)
    assert sim.main_simulate([str(tmp_path / "t"), "--config", str(cfg), "--n-targets", "99"]) == 2
    assert sim.main_simulate(["--config", str(cfg)]) == 2  # no output directory
    assert sim.main_simulate(["--out", str(tmp_path / "u"), "--config", str(cfg), "--n-frames", "12"]) == 0
    assert tifffile.imread(tmp_path / "u" / "movie.tif").shape == (12, 48, 48)
    assert not (tmp_path / "t").exists()


# ----------------------------------------------------------------------------- per-session nuisance

TINY = dict(n_frames=100, height=32, width=32, n_cells=5, radius_min=3.0, radius_max=3.5, overlap_fraction=0.0,
            n_targets=2, n_pairs=1, trial_frames=6, iti_frames=6, iti_jitter_frames=2, stim_start_frame=5,
            nonrigid_grid=(3, 3), nonrigid_amplitude=0.5)


def tiny(**kw) -> SimParams:
    return SimParams(**{**TINY, **kw})


def _without_cells(truth):
    return dataclasses.replace(truth, f0=np.zeros_like(truth.f0), calcium=np.zeros_like(truth.calcium))


# Checksums of the outputs of commit 8fef87e (before the nuisance fields existed) for
# simulate(SimParams(**SMALL, n_frames=40), seed=3, anatomy_seed=1). They pin bit-identical
# defaults; a numpy/scipy upgrade that changes a random stream or a filter would change them too
# (then recompute at a commit whose outputs are known to be right).
_OLD_TRUTH_SHA = "c11cd6a503b2ef0f0d055a2bb07ab9c6056b3b33957e2a181479b14be350a79c"
_OLD_MOVIE_SHA = "3cea313e4cf763a5d8586f2ad719be91830331f0f6882c93b286d99791386077"
_OLD_CLEAN_SUMS = [671161.8738861084, 683369.4253234863, 712159.4454345703]  # frames 0, 13, 39


def test_nuisance_defaults_give_the_old_outputs():
    import hashlib

    p = small(n_frames=40)
    assert p == small(n_frames=40, expression_scale=1.0, fov_offset=(0.0, 0.0), fov_rotation_deg=0.0,
                      bleach_tau_s=0.0, stim_artifact=0.0, offtarget_radius_px=0.0, offtarget_gain=0.5)
    truth = simulate(p, 3, anatomy_seed=1)
    h = hashlib.sha256()
    for name in ("centers", "f0", "spikes", "rate_hz", "calcium", "neuropil_trace", "neuropil_map", "bg_maps",
                 "bg_traces", "rigid_shifts", "nonrigid_grid", "W", "stim", "trial_start"):
        h.update(np.ascontiguousarray(getattr(truth, name)).tobytes())
    assert h.hexdigest() == _OLD_TRUTH_SHA
    assert truth.pad == 5
    movie = render_frames(truth, block_frames=16)
    assert hashlib.sha256(movie.tobytes()).hexdigest() == _OLD_MOVIE_SHA
    clean = render_frames(truth, noise=False)
    np.testing.assert_allclose(clean.astype(np.float64).sum(axis=(1, 2))[[0, 13, 39]], _OLD_CLEAN_SUMS, rtol=1e-9)
    # the recorded nuisance is "none", and a ground truth without it (the pre-nuisance code path,
    # e.g. an old ground_truth.npz) renders the same movie
    assert not truth.has_static and np.all(truth.cell_scale == 1) and not np.any(truth.artifact)
    np.testing.assert_array_equal(truth.bleach, 1)
    expected = np.zeros((truth.n_cells, p.n_targets))
    expected[truth.target_cells, np.arange(p.n_targets)] = p.stim_gain
    np.testing.assert_array_equal(truth.stim_drive, expected)
    old = dataclasses.replace(truth, cell_scale=None, bleach=None, artifact=None, stim_drive=None, fov_offset=None)
    np.testing.assert_array_equal(render_frames(old, block_frames=16), movie)


def test_expression_scale_multiplies_the_cells_only():
    p = tiny(**STATIC)
    t1, t2 = simulate(p, 1), simulate(dataclasses.replace(p, expression_scale=2.0), 1)
    for name in ("f0", "calcium", "spikes", "neuropil_trace", "bg_traces"):
        np.testing.assert_array_equal(getattr(t1, name), getattr(t2, name), err_msg=name)
    np.testing.assert_array_equal(t2.cell_scale, 2.0)
    rest1, rest2 = (render_frames(_without_cells(t), noise=False).astype(np.float64) for t in (t1, t2))
    np.testing.assert_array_equal(rest1, rest2)  # neuropil, background, baseline unchanged
    cells1 = render_frames(t1, noise=False) - rest1
    cells2 = render_frames(t2, noise=False) - rest2
    assert cells1.max() > 50  # DU: the cells are really there
    np.testing.assert_allclose(cells2, 2 * cells1, rtol=1e-5, atol=1e-3)


def test_fov_offset_moves_the_image_content():
    p = tiny(**STATIC)
    a = render_frames(simulate(p, 2), noise=False)
    tb = simulate(dataclasses.replace(p, fov_offset=(2.0, 0.0)), 2)
    b = render_frames(tb, noise=False)
    assert tb.has_static and tb.has_motion and tb.pad >= 2 + 3
    np.testing.assert_allclose(b[:, 2:, :], a[:, :-2, :], rtol=0, atol=1e-3)  # +2 px in y, exactly
    assert np.abs(b[:, 2:, :] - a[:, 2:, :]).max() > 20  # it did move
    np.testing.assert_allclose(b[:, 2:, 1:], ndimage.shift(a, (0, 2, 0), order=1)[:, 2:, 1:], atol=1e-3)
    np.testing.assert_allclose(tb.fov_centers, tb.centers + [2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(true_displacement(tb, [0, 50], tb.centers), 2 * [[[2.0, 0.0]] * 5], atol=1e-12)
    # motion=False still renders the world (the reference FOV): the re-placement is not there
    np.testing.assert_array_equal(render_frames(tb, noise=False, motion=False), a)


def test_fov_rotation_rotates_the_cell_centroids():
    theta = 8.0
    p = small(n_frames=20, n_cells=5, overlap_fraction=0.0, fov_rotation_deg=theta, fov_offset=(0.5, -1.0),
              **STATIC, **CELLS_ONLY)
    truth = simulate(p, 2)
    frame = render_frames(truth, noise=False)[0] - p.offset
    R, c, o = truth.fov_transform()
    a = np.radians(theta)
    np.testing.assert_allclose(R, [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    yy, xx = np.mgrid[0 : p.height, 0 : p.width]
    checked = 0
    for k in range(truth.n_cells):
        dist = np.abs(np.delete(truth.centers, k, axis=0) - truth.centers[k]).max(axis=1)
        q = truth.centers[k]
        if dist.min() < 14 or np.linalg.norm(q - c) < 8:  # isolated, and off the centre
            continue
        expect = c + R @ (q - c) + o
        assert np.allclose(expect, truth.fov_centers[k])
        win = (np.abs(yy - expect[0]) <= 7) & (np.abs(xx - expect[1]) <= 7)
        f = np.where(win, frame, 0)
        centroid = np.array([(f * yy).sum(), (f * xx).sum()]) / f.sum()
        assert np.abs(centroid - expect).max() < 0.05, k
        # the angle about the FOV centre turned by theta (from +y towards +x)
        turn = np.degrees(np.arctan2(*(centroid - o - c)[::-1]) - np.arctan2(*(q - c)[::-1]))
        assert ((turn + 180) % 360 - 180) == pytest.approx(theta, abs=0.3), k
        checked += 1
    assert checked >= 2
    # world and frame displacements stay exact inverses with the static part (and motion) on
    moving = simulate(dataclasses.replace(p, motion=True), 2)
    q = np.random.default_rng(1).uniform(0, 47, (30, 2))
    d_world = true_displacement(moving, 9, q)[0]
    np.testing.assert_allclose(q + d_world - true_displacement(moving, 9, q + d_world, coords="frame")[0], q,
                               atol=1e-8)
    # static=False: the within-session motion only, as without the re-placement
    plain = simulate(dataclasses.replace(p, motion=True, fov_rotation_deg=0.0, fov_offset=(0.0, 0.0)), 2)
    np.testing.assert_allclose(true_displacement(moving, 9, q, static=False), true_displacement(plain, 9, q),
                               atol=1e-12)
    np.testing.assert_allclose(dense_displacement(moving, 9, static=False), dense_displacement(plain, 9), atol=1e-12)
    assert np.abs(true_displacement(moving, 9, q) - true_displacement(plain, 9, q)).max() > 1.0
    # the padding covers the whole field: |D| + 3 <= pad at every pixel of every frame
    worst = max(np.abs(dense_displacement(moving, t, coords="frame")).max() for t in range(20))
    assert worst > 4 and worst + 3 <= moving.pad


def test_bleaching_decays_cells_and_neuropil():
    tau = 2.0
    p = tiny(**STATIC, **CELLS_ONLY)
    t0, t1 = simulate(p, 3), simulate(dataclasses.replace(p, bleach_tau_s=tau), 3)
    f0 = render_frames(t0, noise=False).astype(np.float64) - p.offset
    f1 = render_frames(t1, noise=False).astype(np.float64) - p.offset
    expect = np.exp(-np.arange(p.n_frames) / (p.fps * tau))
    np.testing.assert_allclose(t1.bleach, expect, rtol=1e-6)
    cells = f0.min(axis=0) > 1.0
    ratio = f1[:, cells].sum(axis=1) / f0[:, cells].sum(axis=1)
    np.testing.assert_allclose(ratio, expect, rtol=1e-4)
    assert ratio[-1] == pytest.approx(np.exp(-(p.n_frames - 1) / p.fps / tau), rel=1e-4) and ratio[-1] < 0.25
    # the neuropil bleaches with the cells; background and baseline do not
    q = tiny(**STATIC)
    n0, n1 = simulate(q, 3), simulate(dataclasses.replace(q, bleach_tau_s=tau), 3)
    np.testing.assert_allclose(n1.neuropil_trace, n0.neuropil_trace * expect, rtol=1e-5)
    np.testing.assert_array_equal(n1.bg_traces, n0.bg_traces)
    np.testing.assert_array_equal(n1.calcium, n0.calcium)  # the truth calcium is before the session's scale


def test_stim_artifact_only_on_stimulated_frames():
    p = tiny()  # with motion: the artefact is in the detector, it does not move with the tissue
    t0, t1 = simulate(p, 5), simulate(dataclasses.replace(p, stim_artifact=0.05), 5)
    diff = render_frames(t1, noise=False).astype(np.float64) - render_frames(t0, noise=False)
    on = t1.stim.any(axis=1)
    assert 0 < on.sum() < p.n_frames
    np.testing.assert_allclose(diff[on], 0.05 * p.photons_per_unit * p.gain, atol=1e-3)
    np.testing.assert_array_equal(diff[~on], 0)
    np.testing.assert_array_equal(t1.artifact, np.where(on, np.float32(0.05), 0))
    np.testing.assert_array_equal(t1.spikes, t0.spikes)


def test_offtarget_excitation_drives_cells_near_a_stimulated_target():
    p = small(n_frames=200, n_pairs=0, connection_prob=0.0, stim_gain=30.0, offtarget_gain=1.0, **STATIC)
    t0 = simulate(p, 6)
    others = np.setdiff1d(np.arange(t0.n_cells), t0.target_cells)
    dist = np.linalg.norm(t0.centers[others][:, None] - t0.centers[t0.target_cells][None], axis=-1)
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    k, d = int(others[i]), float(dist[i, j])
    t1 = simulate(dataclasses.replace(p, offtarget_radius_px=d), 6)
    expected = np.zeros_like(t1.stim_drive)
    expected[t1.target_cells, np.arange(p.n_targets)] = p.stim_gain
    near = dist <= 3 * d
    expected[others[:, None], np.arange(p.n_targets)[None]] = np.where(
        near, p.offtarget_gain * p.stim_gain * np.exp(-dist**2 / (2 * d * d)), 0)
    np.testing.assert_allclose(t1.stim_drive, expected, rtol=1e-12)
    assert t1.stim_drive[k, j] == pytest.approx(p.stim_gain * np.exp(-0.5))
    assert not near.all()  # some cells are beyond 3r and get nothing
    np.testing.assert_allclose(t1.rate_hz - t0.rate_hz, (expected - t0.stim_drive) @ t1.stim.T, atol=1e-4)
    # the neighbour fires more during its target's trials; only during stimulated frames
    assert np.all(t1.spikes >= t0.spikes)
    on = t1.stim[:, j]
    assert t1.spikes[k, on].sum() > t0.spikes[k, on].sum() + 3
    quiet = ~t1.stim.any(axis=1)
    np.testing.assert_array_equal(t1.spikes[:, quiet], t0.spikes[:, quiet])
    np.testing.assert_array_equal(t1.spikes[t1.target_cells], t0.spikes[t0.target_cells])


def test_draw_nuisance_is_deterministic_and_in_its_ranges():
    base = tiny(photons_per_unit=10.0, neuropil_level=0.5)
    a = sim.draw_nuisance(3, base=base)
    assert a == sim.draw_nuisance(3, 1.0, base=base) and a != sim.draw_nuisance(4, base=base)
    assert set(a) == set(sim.NUISANCE)
    assert dataclasses.replace(base, **sim.draw_nuisance(3, 0.0, base=base)) == base  # scale 0: identity
    assert dataclasses.replace(SimParams(), **sim.draw_nuisance(9, scale=0)) == SimParams()
    draws = [sim.draw_nuisance(s, base=base) for s in range(400)]
    col = {k: np.array([d[k] for d in draws], np.float64) for k in a}
    expr = col["expression_scale"]
    assert expr.min() > 0 and abs(expr.mean() - 1) < 0.04 and abs(expr.std() / expr.mean() - 0.2) < 0.04
    for name, b in (("photons_per_unit", 10.0), ("neuropil_level", 0.5)):  # relative to the base
        assert 0.7 * b <= col[name].min() and col[name].max() <= 1.3 * b
        assert col[name].min() < 0.75 * b and col[name].max() > 1.25 * b
    assert np.abs(col["fov_offset"]).max() <= 1.5 and np.abs(col["fov_offset"]).max() > 1.4
    assert np.abs(col["fov_rotation_deg"]).max() <= 1.0
    assert 600 <= col["bleach_tau_s"].min() and col["bleach_tau_s"].max() <= 3000
    assert 0 <= col["stim_artifact"].min() and col["stim_artifact"].max() <= 0.05
    assert 0 <= col["offtarget_radius_px"].min() and col["offtarget_radius_px"].max() <= 5
    half = sim.draw_nuisance(3, 0.5, base=base)  # half the spread
    np.testing.assert_allclose(half["fov_offset"], np.array(a["fov_offset"]) / 2)
    assert half["bleach_tau_s"] == pytest.approx(2 * a["bleach_tau_s"])
    assert half["photons_per_unit"] - 10.0 == pytest.approx((a["photons_per_unit"] - 10.0) / 2)
    # every draw is a valid session of the same animal
    s1 = simulate(dataclasses.replace(base, n_frames=30, **a), 1, anatomy_seed=7)
    s2 = simulate(dataclasses.replace(base, n_frames=30), 2, anatomy_seed=7)
    np.testing.assert_array_equal(s1.centers, s2.centers)
    np.testing.assert_array_equal(s1.W, s2.W)
    assert render_frames(s1).shape == (30, 32, 32)
    with pytest.raises(CalflowInputError, match="scale"):
        sim.draw_nuisance(0, -1.0)


def test_study_params_present_every_pattern_n_blocks_times():
    p = sim.study_params()
    assert (p.n_targets, p.pairs_count, p.n_blocks, p.motion) == (8, 8, 10, True)
    assert p.n_frames == p.stim_start_frame + 10 * 16 * (p.trial_frames + p.iti_frames + p.iti_jitter_frames)
    q = sim.study_params(trials_per_pattern=3, **{k: v for k, v in TINY.items() if k != "n_frames"})
    assert q.n_blocks == 3 and q.n_frames == 5 + 3 * 3 * 14 <= 200
    truth = simulate(q, 0)
    assert truth.patterns.shape == (3, 2)
    np.testing.assert_array_equal(np.bincount(truth.trial_pattern, minlength=3), [3, 3, 3])
    np.testing.assert_array_equal(np.bincount(truth.trial_block), [3, 3, 3])
    with pytest.raises(CalflowInputError, match="n_blocks"):  # n_frames is the shortest that always fits
        dataclasses.replace(q, n_frames=q.n_frames - 1).validate()
    assert sim.study_params(n_blocks=4, n_targets=3, n_pairs=0).n_blocks == 4
    assert sim.study_params(n_frames=99999, trials_per_pattern=2).n_frames == 99999
    with pytest.raises(CalflowInputError, match="disagree"):
        sim.study_params(trials_per_pattern=3, n_blocks=4)
    with pytest.raises(CalflowInputError, match="unknown simulation parameter.*'n_tragets'"):
        sim.study_params(n_tragets=3)
    with pytest.raises(CalflowInputError, match="trials_per_pattern"):
        sim.study_params(trials_per_pattern=0)


def test_nuisance_round_trips_through_the_session_files(tmp_path):
    p = tiny(n_frames=40, expression_scale=1.3, fov_offset=(1.0, -0.5), fov_rotation_deg=0.7, bleach_tau_s=5.0,
             stim_artifact=0.03, offtarget_radius_px=4.0)
    paths = write_session(tmp_path / "s", p, seed=2, block_frames=16)
    truth = load_ground_truth(paths["ground_truth"])
    np.testing.assert_array_equal(render_frames(truth, block_frames=7), tifffile.imread(paths["movie"]))
    fresh = simulate(p, 2)
    with np.load(paths["ground_truth"]) as z:
        np.testing.assert_array_equal(z["fov_offset"], [1.0, -0.5])
        assert float(z["fov_rotation_deg"]) == 0.7 and float(z["expression_scale"]) == 1.3
        for name in ("cell_scale", "bleach", "artifact", "stim_drive", "fov_centers"):
            np.testing.assert_array_equal(z[name], getattr(fresh, name), err_msg=name)
        assert z["cell_scale"].shape == z["artifact"].shape == (40,) and z["stim_drive"].shape == (5, 2)
    assert SimParams.from_dict(json.loads(paths["params"].read_text())["params"]) == p
    parser = argparse.ArgumentParser()
    sim.add_arguments(parser)
    args = parser.parse_args(["x", "--fov-offset", "1", "-0.5", "--bleach-tau-s", "900"])
    got = sim.params_from_args(args)
    assert got.fov_offset == (1.0, -0.5) and got.bleach_tau_s == 900.0


@pytest.mark.parametrize(
    ("override", "name"),
    [
        ({"expression_scale": 0.0}, "expression_scale"),
        ({"fov_offset": (1.0,)}, "fov_offset"),
        ({"fov_offset": (float("nan"), 0.0)}, "fov_offset"),
        ({"fov_offset": (20.0, 0.0)}, "fov_offset"),
        ({"fov_rotation_deg": 45.0}, "fov_rotation_deg"),
        ({"bleach_tau_s": -1.0}, "bleach_tau_s"),
        ({"stim_artifact": -0.1}, "stim_artifact"),
        ({"offtarget_radius_px": -2.0}, "offtarget_radius_px"),
        ({"offtarget_gain": -0.5}, "offtarget_gain"),
    ],
)
def test_invalid_nuisance_params_name_the_parameter(override, name):
    with pytest.raises(CalflowInputError, match=rf"demo\.sim\.{name} = .*Fix: "):
        simulate(tiny(**override), 0)
