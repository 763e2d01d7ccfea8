"""Population decoding (calflow.decode): trials and spontaneous epochs from stim logs, the guard
that keeps response tails out of the spontaneous activity, cleaning of the responses, every
classifier against the dummy with a real signal, calibrated p-values (refit and fold tests)
without one, and the cnmf.zarr -> decode.json path on a store in the agreed contract layout."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from calflow.decode import (
    CLASSIFIERS,
    DecodeParams,
    Trials,
    decode,
    decode_session,
    fold_test,
    logistic_batch,
    make_classifier,
    read_decode,
    read_trials,
    response_matrix,
    spontaneous_cleaning,
    spontaneous_frames,
    trials_from_truth,
    write_decode,
)
from calflow.errors import CalflowInputError
from calflow.io import write_array
from calflow.simulate import SimParams, simulate

CHEAP = {"n_estimators": 30, "max_iter": 10, "adaboost_estimators": 20}


@pytest.fixture(autouse=True)
def _one_thread():
    with threadpool_limits(1):  # tiny fits: BLAS threads only add contention on the shared cores
        yield


@pytest.fixture(scope="module")
def truth():
    # 4 single targets, ~46 trials (11-12 per pattern): enough for 5-fold CV
    return simulate(SimParams(n_frames=1500, height=96, width=96, n_cells=20, n_targets=4, n_pairs=0), seed=1)


def write_cnmf(store, traces, fps, accepted=None, g=None):
    """A tiny cnmf.zarr in the contract layout (only what decode reads is filled with meaning)."""
    k, t = traces.shape
    store.mkdir(parents=True)
    import zarr

    zarr.open_group(store, mode="w", attributes={"fps": fps, "frame_shape": [8, 8], "n_components": k,
                                                 "format": "csr", "A_shape": [k, 64], "pixel_order": "C"})
    for name in ("C", "C_raw", "dff"):
        write_array(store, name, traces.astype(np.float32), ("component", "time"))
    write_array(store, "S", np.zeros((k, t), np.float32), ("component", "time"))
    acc = np.ones(k, bool) if accepted is None else accepted
    write_array(store, "accepted", acc, ("component",))
    write_array(store, "A_indptr", np.arange(k + 1, dtype=np.int64), ("indptr",))
    if g is not None:
        write_array(store, "g", np.asarray(g, np.float64), ("component", "lag"))


def stim_log(tmp_path, truth):
    log = tmp_path / "stim.csv"
    log.write_text("frame,targets\n" + "".join(f"{i},{t}\n" for i, t in enumerate(truth.stim_log())))
    return log


# --------------------------------------------------------------------------------------------
# trials and spontaneous frames
# --------------------------------------------------------------------------------------------


def test_stim_log_runs_become_trials_and_table_rows_trials_or_epochs(tmp_path):
    log = tmp_path / "stim.csv"
    rows = ["frame,targets"] + [f"{f},{'' if f < 3 else ('2;1' if f < 6 else ('' if f < 9 else '4'))}" for f in range(12)]
    log.write_text("\n".join(rows) + "\n")
    tr = read_trials(log)
    assert tr.onset.tolist() == [3, 9] and tr.stop.tolist() == [6, 12] and tr.label.tolist() == ["1;2", "4"]
    assert tr.spont.shape == (0, 2)
    table = tmp_path / "stimuli.csv"
    table.write_text("frame,stimulus\n40,grating_90\n10,grating_0\n")
    tr = read_trials(table)
    assert tr.onset.tolist() == [10, 40] and tr.stop.tolist() == [11, 41] and tr.label.tolist() == ["grating_0", "grating_90"]
    table.write_text("frame,stimulus,stop\n500,spontaneous,900\n40,grating_90,45\n10,grating_0,\n0,spontaneous,8\n")
    tr = read_trials(table)
    assert tr.onset.tolist() == [10, 40] and tr.stop.tolist() == [11, 45]
    assert tr.spont.tolist() == [[0, 8], [500, 900]]


def test_trials_match_simulated_stim_log(tmp_path, truth):
    a, b = read_trials(stim_log(tmp_path, truth)), trials_from_truth(truth)
    assert np.array_equal(a.onset, b.onset) and np.array_equal(a.stop, b.stop) and a.label.tolist() == b.label.tolist()


@pytest.mark.parametrize("content, field", [("frame,target\n0,1\n", "columns"), ("frame,targets\nx,1\n", "frame"),
                                            ("frame,stimulus\n3,\n", "stimulus"),
                                            ("frame,stimulus,stop\n3,spontaneous,\n", "stop"),
                                            ("frame,stimulus,stop\n3,a,2\n", "stop")])
def test_bad_stim_log_is_one_clear_error(tmp_path, content, field):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(CalflowInputError, match=field) as err:
        read_trials(path)
    assert str(path) in str(err.value)


def test_response_is_window_minus_baseline_for_any_float_dtype():
    fps = 10.0
    x = np.zeros((2, 100))
    x[0, 50:55] = 3.0          # neuron 0 responds for 0.5 s after the onset at frame 50
    x[1, 45:50] = 1.0          # neuron 1 is up in the baseline only
    tr = Trials(np.array([50, 98, 2]), np.array([52, 99, 3]), np.array(["a", "b", "c"]))
    p = DecodeParams(window_s=[0.0, 0.5], baseline_s=[-0.5, 0.0])
    for dtype in (np.float64, np.float32):
        r, inside = response_matrix(x.astype(dtype), tr, fps, p, block_frames=8)
        assert inside.tolist() == [True, False, False]  # window past the end / baseline before the start
        np.testing.assert_allclose(r, [[3.0, -1.0]])


def test_spontaneous_frames_skip_the_guard_after_every_trial_and_prefer_epochs():
    fps = 10.0
    tr = Trials(np.array([50]), np.array([52]), np.array(["a"]))
    free = spontaneous_frames(200, tr, fps, DecodeParams(spont_guard_s=2.0))
    # baseline starts at 45; the response window ends at 55, the stimulus at 52: + 2 s guard -> 75
    assert free[:45].all() and not free[45:75].any() and free[75:].all()
    free0 = spontaneous_frames(200, tr, fps, DecodeParams(spont_guard_s=0.0))
    assert not free0[45:55].any() and free0[55:].all()
    ep = Trials(tr.onset, tr.stop, tr.label, np.array([[60, 120]]))
    auto = spontaneous_frames(200, ep, fps, DecodeParams(spont_guard_s=2.0))
    assert np.flatnonzero(auto).tolist() == list(range(75, 120))  # the epoch, minus the trial's guard
    assert spontaneous_frames(200, ep, fps, DecodeParams(spontaneous="gaps")).sum() == free.sum()
    with pytest.raises(CalflowInputError, match="decode.spontaneous"):
        spontaneous_frames(200, tr, fps, DecodeParams(spontaneous="epochs"))


# --------------------------------------------------------------------------------------------
# spontaneous cleaning
# --------------------------------------------------------------------------------------------


def test_spontaneous_pcs_are_projected_out_of_the_responses():
    rng = np.random.default_rng(0)
    n = 40
    load = rng.uniform(1, 2, n)
    spont = np.outer(load, rng.standard_normal(400)) + 0.1 * rng.standard_normal((n, 400))
    c0 = spontaneous_cleaning(spont, DecodeParams(remove_spontaneous_pcs=0))
    c1 = spontaneous_cleaning(spont, DecodeParams(remove_spontaneous_pcs=1))
    assert c0.info["pcs_removed"] == 0 and c1.info["pcs_removed"] == 1
    assert c1.info["spontaneous_variance_removed"] > 0.9
    np.testing.assert_allclose(c1.scale, spont.std(axis=1))
    # responses: a stimulus pattern in half the trials plus 20x as much of the shared spontaneous fluctuation
    stim, on = rng.standard_normal(n), rng.choice([0.0, 1.0], 60)
    resp = np.outer(on, stim) + np.outer(rng.standard_normal(60) * 20, load)
    np.testing.assert_allclose(c1.apply(resp) @ c1.pcs, 0, atol=1e-9)

    def stimulus_corr(c):
        d = c.apply(stim[None, :])[0]
        return abs(np.corrcoef(c.apply(resp) @ d, on)[0, 1])

    assert stimulus_corr(c1) > 0.95 and stimulus_corr(c0) < 0.7  # the stimulus survives, the fluctuation does not
    k = spontaneous_cleaning(spont[:, :120], DecodeParams(remove_spontaneous_pcs=32))
    assert k.info["pcs_removed"] == 2 and "pcs_cap" in k.info  # one per 50 of the 120 frames


def test_cleaning_the_responses_equals_cleaning_the_traces_and_silent_neurons_stay_finite():
    """z-scoring and the projection are linear: applied to R they equal cleaning every frame first."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 600)).cumsum(axis=1) * 0.1 + rng.standard_normal((12, 600))
    x[5, :300] = 0.0                                        # silent in the spontaneous frames
    onset = np.arange(320, 580, 20)
    tr = Trials(onset, onset + 3, np.resize(["a", "b"], onset.size), np.array([[0, 300]]))
    p = DecodeParams(remove_spontaneous_pcs=1, spont_guard_s=0.0)
    mask = spontaneous_frames(600, tr, 10.0, p)
    c = spontaneous_cleaning(x[:, mask], p)
    assert c.scale[5] >= 0.1 * np.median(c.scale) > 0       # the sd floor
    frames = (x - x[:, mask].mean(axis=1, keepdims=True)) / c.scale[:, None]
    frames -= c.pcs @ (c.pcs.T @ frames)
    r_frames, _ = response_matrix(frames, tr, 10.0, p)
    r_resp, _ = response_matrix(x, tr, 10.0, p)
    np.testing.assert_allclose(c.apply(r_resp), r_frames, atol=1e-9)


def test_spontaneous_pcs_from_clean_frames_keep_the_signal_and_tails_remove_it():
    """The issue's simulation, smaller: 40 cells, ~60 trials, true calcium, 4 PCs removed."""
    lead = 600
    truth = simulate(SimParams(n_frames=lead + 2000, height=128, width=128, n_cells=40, n_targets=4, n_pairs=0,
                               stim_start_frame=lead), seed=0)
    tr = trials_from_truth(truth)
    base = {"classifiers": ["logistic"], "n_permutations": 0}

    def acc(x, trials, **kw):
        r = decode(x, trials, truth.fps, {**base, **kw})
        return r["classifiers"]["logistic"]["accuracy"], r

    ref, _ = acc(truth.calcium, tr, remove_spontaneous_pcs=0)
    epoch, r = acc(truth.calcium, Trials(tr.onset, tr.stop, tr.label, np.array([[0, lead]])), remove_spontaneous_pcs=4)
    assert r["spontaneous_source"] == "epochs" and r["pcs_removed"] == 4
    # without the spontaneous block: the gaps between trials only (the trial tails when unguarded)
    off = lead - 30
    crop = Trials(tr.onset - off, tr.stop - off, tr.label)
    tails, r0 = acc(truth.calcium[:, off:], crop, remove_spontaneous_pcs=4, spont_guard_s=0.0)
    guarded, r2 = acc(truth.calcium[:, off:], crop, remove_spontaneous_pcs=4)
    assert ref > 0.85 and r0["pcs_removed"] >= 3
    assert tails < ref - 0.2, (ref, tails)
    assert abs(epoch - ref) <= 0.03, (ref, epoch)
    # the guard leaves only the frames before the first and after the last trial: fewer PCs, no loss
    assert r2["spontaneous_frames"] < r0["spontaneous_frames"] and r2["pcs_removed"] < 4 and "pcs_cap" in r2
    assert abs(guarded - ref) <= 0.03, (ref, guarded)


# --------------------------------------------------------------------------------------------
# classifiers and p-values
# --------------------------------------------------------------------------------------------


def test_batched_logistic_regression_predicts_as_scikit_learns():
    rng = np.random.default_rng(0)
    y = np.resize(np.arange(4), 60)
    x = rng.standard_normal((4, 6))[y] * 0.8 + rng.standard_normal((60, 6))
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    test = rng.standard_normal((200, 6))
    rows = np.stack([y, rng.permutation(y), np.where(y == 3, 0, y)])  # the last row never shows class 3
    pred = logistic_batch(x, rows, 4, test, tol=1e-8)
    for row, pr in zip(rows, pred, strict=True):
        ref = make_classifier("logistic", DecodeParams()).set_params(tol=1e-8).fit(x, row).predict(test)
        assert (pr == ref).mean() >= 0.99
    assert 3 not in pred[2]


def test_fold_test_is_exact_for_fixed_predictions():
    rng = np.random.default_rng(0)
    y = [rng.integers(0, 3, 30) for _ in range(2)]
    res = fold_test({"perfect": y, "constant": [np.zeros(30, int)] * 2}, y, seed=0, draws=999)
    assert res["perfect"] == (2 / 1000, [1 / 1000, 1 / 1000])
    assert res["constant"] == (1.0, [1.0, 1.0])  # it matches every permutation equally often


def test_every_classifier_beats_the_dummy_with_a_real_signal(truth):
    p = {"folds": 5, "n_permutations": 149, "refit_test": ["logistic"], "remove_spontaneous_pcs": 2, **CHEAP}
    r = decode(truth.calcium, trials_from_truth(truth), truth.fps, p)
    assert r["status"] == "ok" and len(r["classes"]) == 4 and r["n_trials"] >= 40 and "best" not in r
    assert set(r["classifiers"]) == {"dummy", *CLASSIFIERS}
    dummy = r["classifiers"]["dummy"]["accuracy"]
    c = r["classifiers"]["logistic"]
    assert c["p_method"] == "refit" and c["n_permutations"] == 149 and c["p_value"] < 0.01, c
    assert np.asarray(c["confusion"]).sum() == r["n_trials"]
    for name in CLASSIFIERS:
        c = r["classifiers"][name]
        assert c["ci95"][0] > dummy, (name, c["ci95"], dummy)
        assert c["fold_p_value"] < 0.05, (name, c["fold_p_values"])  # ~9 test trials per fold: less power


def test_p_values_are_calibrated_without_signal():
    """No signal (labels independent of the traces): P(p <= 0.05) must be ~5% for the refit and the
    fold test (the full sweep over many seeds is benchmarks/decode_calibration.py); coarse here."""
    refit, folds = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((8, 600)).cumsum(axis=1) * 0.1 + rng.standard_normal((8, 600))
        onset = np.arange(20, 580, 20)
        tr = Trials(onset, onset + 5, rng.choice(["a", "b"], size=onset.size))
        r = decode(x, tr, 10.0, {"classifiers": ["logistic"], "refit_test": ["logistic"], "folds": 3,
                                 "n_permutations": 19, "seed": seed, "cv": "shuffled", "remove_spontaneous_pcs": 0})
        refit.append(r["classifiers"]["logistic"]["p_value"])
        folds.append(r["classifiers"]["logistic"]["fold_p_value"])
    refit, folds = np.array(refit), np.array(folds)
    assert (refit <= 0.05).sum() <= 7 and (folds <= 0.05).sum() <= 7  # expected <= 2 of 40; P(>= 8) < 0.001
    assert 0.3 < refit.mean() < 0.7            # roughly uniform (expected 0.525 with 19 permutations)


def test_nested_selection_chooses_per_fold_from_training_trials_only(truth):
    p = {"folds": 3, "nested_selection": True, "classifiers": ["logistic", "adaboost"], "remove_spontaneous_pcs": 0,
         **CHEAP}
    r = decode(truth.calcium, trials_from_truth(truth), truth.fps, p)
    sel = r["classifiers"]["selected"]
    assert len(sel["chosen"]) == 3 and set(sel["chosen"]) <= {"logistic", "adaboost"}
    assert sel["p_method"] == "folds" and "best" not in r
    if len(set(sel["chosen"])) == 1:  # one choice everywhere: exactly that classifier's predictions
        assert sel["confusion"] == r["classifiers"][sel["chosen"][0]]["confusion"]


def test_decode_is_deterministic_and_takes_a_separate_spontaneous_recording(truth):
    trials = trials_from_truth(truth)
    p = {"folds": 3, "refit_test": ["random_forest"], "n_permutations": 5, "remove_spontaneous_pcs": 2, **CHEAP}
    a, b = (decode(truth.calcium, trials, truth.fps, p) for _ in range(2))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    rec = simulate(SimParams(n_frames=600, height=96, width=96, n_cells=20, n_targets=0), seed=5).calcium
    r = decode(truth.calcium, trials, truth.fps, p, spontaneous=rec)
    assert r["spontaneous_source"] == "recording" and r["spontaneous_frames"] == 600 and r["pcs_removed"] == 2
    with pytest.raises(CalflowInputError, match="spontaneous recording"):
        decode(truth.calcium, trials, truth.fps, p, spontaneous=rec[:3])


def test_classes_with_too_few_trials_are_dropped_and_reported():
    rng = np.random.default_rng(0)
    onset = np.arange(10, 290, 20)
    labels = np.array(["a"] * 7 + ["b"] * 6 + ["c"])
    r = decode(rng.standard_normal((5, 300)), Trials(onset, onset + 3, labels), 10.0,
               {"classifiers": ["logistic"], "folds": 3})
    assert r["dropped_classes"] == {"c": 1} and r["classes"] == ["a", "b"] and r["n_trials"] == 13
    r = decode(rng.standard_normal((5, 300)), Trials(onset, onset + 3, labels), 10.0,
               {"classifiers": ["logistic"], "folds": 8})
    assert r["status"] == "too few trials" and r["classifiers"] == {}


# --------------------------------------------------------------------------------------------
# config and the cnmf.zarr path
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [("spont_guard_s", -1), ("cv", "random"), ("refit_test", ["svm"]),
                                        ("tree_neurons", -1), ("spontaneous", "baseline"), ("zscore", "yes"),
                                        ("folds", 1), ("classifiers", []), ("window_s", [0.5, 0.1])])
def test_bad_config_value_is_one_clear_error(key, value):
    with pytest.raises(CalflowInputError, match=rf"decode\.{key} = .*: .*\. Fix: "):
        DecodeParams(**{key: value})


def test_schema_decode_section_matches_the_parameters():
    from calflow.config import load_config

    cfg = load_config("c.yaml", data={})
    assert cfg["decode"] == dataclasses.asdict(DecodeParams())


def test_decode_session_from_cnmf_store(tmp_path, truth):
    store = tmp_path / "cnmf.zarr"
    acc = np.ones(truth.n_cells, bool)
    acc[:3] = False
    write_cnmf(store, truth.calcium, truth.fps, acc, g=np.tile([0.99, 0.0], (truth.n_cells, 1)))  # 3.3 s decay
    out, plots = tmp_path / "decode.json", tmp_path / "plots" / "decode"
    r = decode_session(store, stim_log(tmp_path, truth), out, plots,
                       {"classifiers": ["logistic", "adaboost"], "traces": "C", **CHEAP})
    saved = json.loads(out.read_text())
    assert saved["n_neurons"] == truth.n_cells - 3 and saved["components"][0] == 3
    assert saved["classifiers"]["logistic"]["accuracy"] == r["classifiers"]["logistic"]["accuracy"]
    assert saved["decay_s_median"] == pytest.approx(-1 / (truth.fps * np.log(0.99)))
    assert any("spont_guard_s" in n for n in saved["notes"])  # 2 s guard < 3 decay times
    assert (plots / "confusion.png").stat().st_size > 1000
    assert read_decode(out) == saved


def test_read_decode_returns_the_written_result_and_a_bad_file_is_one_error(tmp_path):
    result = {"status": "ok", "classes": ["1", "2"], "classifiers": {"logistic": {"accuracy": 0.75, "ci95": [0.5, 0.9]}}}
    write_decode(tmp_path / "decode.json", result)
    assert read_decode(tmp_path / "decode.json") == result
    for text, problem in [(None, "not found"), ("{", "cannot parse"), ("[1, 2]", "JSON object")]:
        path = tmp_path / "bad.json"
        path.unlink(missing_ok=True)
        if text is not None:
            path.write_text(text)
        with pytest.raises(CalflowInputError, match=problem):
            read_decode(path)


def test_a_session_without_accepted_components_is_recorded_not_failed(tmp_path, truth):
    store = tmp_path / "cnmf.zarr"
    write_cnmf(store, truth.calcium, truth.fps, accepted=np.zeros(truth.n_cells, bool))
    out, plots = tmp_path / "decode.json", tmp_path / "plots" / "decode"
    decode_session(store, stim_log(tmp_path, truth), out, plots, {"classifiers": ["logistic"]})
    saved = json.loads(out.read_text())
    assert saved["status"] == "no components" and saved["n_neurons"] == 0 and saved["components"] == []
    assert saved["classifiers"] == {} and plots.is_dir() and not list(plots.iterdir())


@pytest.mark.parametrize("problem", ["nan", "traces", "params", "epoch"])
def test_bad_input_is_one_error_and_no_output(tmp_path, truth, problem):
    store = tmp_path / "cnmf.zarr"
    x = truth.calcium.copy()
    if problem == "nan":
        x[2, 10] = np.nan
    write_cnmf(store, x, truth.fps)
    log = stim_log(tmp_path, truth)
    params = {"classifiers": ["logistic"]}
    if problem == "traces":
        params["traces"] = "F"
    if problem == "params":
        params["window_s"] = [0.5, 0.1]
    if problem == "epoch":
        log.write_text(f"frame,stimulus,stop\n0,spontaneous,{truth.n_frames + 5}\n100,a,101\n")
    with pytest.raises(CalflowInputError):
        decode_session(store, log, tmp_path / "decode.json", tmp_path / "plots", params)
    assert not (tmp_path / "decode.json").exists() and not (tmp_path / "plots").exists()


def test_sheet_check_accepts_a_stimulus_table(tmp_path):
    from calflow.config import check_stim_log

    table = tmp_path / "stimuli.csv"
    table.write_text("frame,stimulus,stop\n0,spontaneous,9\n10,grating_0,12\n40,grating_90,42\n")
    assert list(check_stim_log(table)["stimulus"]) == ["spontaneous", "grating_0", "grating_90"]
    table.write_text("frame,stimulus\n10,\n")
    with pytest.raises(CalflowInputError, match="row 2, field 'stimulus' is empty"):
        check_stim_log(table)
