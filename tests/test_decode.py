"""Population decoding (calflow.decode): trials from stim logs, spontaneous-PC removal, classifiers
against the dummy with a real signal (simulated photostimulation), calibrated p-values without one,
and the cnmf.zarr -> decode.json path on a store written in the agreed contract layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from calflow.decode import (
    DecodeParams,
    Trials,
    clean_traces,
    decode,
    decode_session,
    read_trials,
    response_matrix,
    score_classifier,
    spontaneous_frames,
    trials_from_truth,
)
from calflow.errors import CalflowInputError
from calflow.io import write_array
from calflow.simulate import SimParams, simulate


@pytest.fixture(autouse=True)
def _one_thread():
    with threadpool_limits(1):  # tiny fits: BLAS threads only add contention on the shared cores
        yield


@pytest.fixture(scope="module")
def truth():
    # 4 single targets, ~46 trials (11-12 per pattern): enough for 5-fold CV
    return simulate(SimParams(n_frames=1500, height=96, width=96, n_cells=20, n_targets=4, n_pairs=0), seed=1)


def write_cnmf(store, traces, fps, accepted=None):
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


def test_stim_log_runs_become_trials(tmp_path):
    log = tmp_path / "stim.csv"
    rows = ["frame,targets"] + [f"{f},{'' if f < 3 else ('2;1' if f < 6 else ('' if f < 9 else '4'))}" for f in range(12)]
    log.write_text("\n".join(rows) + "\n")
    tr = read_trials(log)
    assert tr.onset.tolist() == [3, 9] and tr.stop.tolist() == [6, 12] and tr.label.tolist() == ["1;2", "4"]
    table = tmp_path / "stimuli.csv"
    table.write_text("frame,stimulus\n40,grating_90\n10,grating_0\n")
    tr = read_trials(table)
    assert tr.onset.tolist() == [10, 40] and tr.label.tolist() == ["grating_0", "grating_90"]


def test_trials_match_simulated_stim_log(tmp_path, truth):
    log = tmp_path / "stim.csv"
    log.write_text("frame,targets\n" + "".join(f"{i},{t}\n" for i, t in enumerate(truth.stim_log())))
    a, b = read_trials(log), trials_from_truth(truth)
    assert np.array_equal(a.onset, b.onset) and np.array_equal(a.stop, b.stop) and a.label.tolist() == b.label.tolist()


@pytest.mark.parametrize("content, field", [("frame,target\n0,1\n", "columns"), ("frame,targets\nx,1\n", "frame"),
                                            ("frame,stimulus\n3,\n", "stimulus")])
def test_bad_stim_log_is_one_clear_error(tmp_path, content, field):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(CalflowInputError, match=field) as err:
        read_trials(path)
    assert str(path) in str(err.value)


def test_response_is_window_minus_baseline():
    fps = 10.0
    x = np.zeros((2, 100))
    x[0, 50:55] = 3.0          # neuron 0 responds for 0.5 s after the onset at frame 50
    x[1, 45:50] = 1.0          # neuron 1 is up in the baseline only
    tr = Trials(np.array([50]), np.array([52]), np.array(["a"]))
    p = DecodeParams(window_s=[0.0, 0.5], baseline_s=[-0.5, 0.0])
    r, ok = response_matrix(x, tr, fps, p)
    np.testing.assert_allclose(r, [[3.0, -1.0]])
    free = spontaneous_frames(100, tr, fps, p)
    assert not free[45:55].any() and free[:45].all() and free[55:].all()


def test_spontaneous_pcs_are_projected_out():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(400)
    x = np.outer(rng.uniform(1, 2, 12), shared) + 0.1 * rng.standard_normal((12, 400))
    spont = np.ones(400, bool)
    spont[::7] = False
    clean0, _ = clean_traces(x, spont, DecodeParams(remove_spontaneous_pcs=0))
    clean1, info = clean_traces(x, spont, DecodeParams(remove_spontaneous_pcs=1))
    assert info["pcs_removed"] == 1 and info["spontaneous_variance_removed"] > 0.9
    np.testing.assert_allclose(clean0[:, spont].mean(axis=1), 0, atol=1e-9)  # z-scored by spontaneous frames
    np.testing.assert_allclose(clean0[:, spont].std(axis=1), 1, atol=1e-9)
    corr = lambda a: np.abs(np.corrcoef(a)[np.triu_indices(12, 1)]).mean()  # noqa: E731
    assert corr(clean0) > 0.9 and corr(clean1) < 0.3


def test_real_signal_beats_the_dummy(truth):
    p = {"classifiers": ["logistic"], "folds": 5, "n_permutations": 149, "remove_spontaneous_pcs": 2}
    r = decode(truth.calcium, trials_from_truth(truth), truth.fps, p)
    assert r["status"] == "ok" and len(r["classes"]) == 4 and r["n_trials"] >= 40
    dummy = r["classifiers"]["dummy"]["accuracy"]
    c = r["classifiers"]["logistic"]
    assert c["p_value"] < 0.01, c
    assert c["ci95"][0] > dummy, (c["ci95"], dummy)
    assert np.asarray(c["confusion"]).sum() == r["n_trials"]
    # the tree ensembles too (no permutations here: their cost is in benchmarks/decode_calibration.py)
    trials, dp = trials_from_truth(truth), DecodeParams()
    clean, _ = clean_traces(truth.calcium, spontaneous_frames(truth.n_frames, trials, truth.fps, dp), dp)
    X, inside = response_matrix(clean, trials, truth.fps, dp)
    for name in ("random_forest", "hist_gradient_boosting"):
        s = score_classifier(name, X, trials.label[inside], DecodeParams(n_estimators=30, max_iter=30),
                             permutations=False)
        assert s["ci95"][0] > dummy, (name, s["ci95"], dummy)


def test_p_values_are_calibrated_without_signal():
    """No signal (labels independent of the traces): P(p <= 0.05) must be ~5% (the full sweep over
    many seeds is benchmarks/decode_calibration.py); coarse here: 40 seeds, 19 permutations."""
    pvals = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((8, 600)).cumsum(axis=1) * 0.1 + rng.standard_normal((8, 600))
        onset = np.arange(20, 580, 20)
        tr = Trials(onset, onset + 5, rng.choice(["a", "b"], size=onset.size))
        r = decode(x, tr, 10.0, {"classifiers": ["logistic"], "folds": 3, "n_permutations": 19, "seed": seed,
                                 "zscore": False})
        pvals.append(r["classifiers"]["logistic"]["p_value"])
    pvals = np.array(pvals)
    assert (pvals <= 0.05).sum() <= 7          # expected 2 of 40; P(>= 8) < 0.001 under calibration
    assert 0.3 < pvals.mean() < 0.7            # roughly uniform (expected 0.525 with 19 permutations)


def test_classes_with_too_few_trials_are_dropped_and_reported():
    rng = np.random.default_rng(0)
    onset = np.arange(10, 290, 20)
    labels = np.array(["a"] * 7 + ["b"] * 6 + ["c"])
    r = decode(rng.standard_normal((5, 300)), Trials(onset, onset + 3, labels), 10.0,
               {"classifiers": ["logistic"], "folds": 3, "n_permutations": 5})
    assert r["dropped_classes"] == {"c": 1} and r["classes"] == ["a", "b"] and r["n_trials"] == 13
    r = decode(rng.standard_normal((5, 300)), Trials(onset, onset + 3, labels), 10.0,
               {"classifiers": ["logistic"], "folds": 8, "n_permutations": 5})
    assert r["status"] == "too few trials" and r["classifiers"] == {}


def test_decode_session_from_cnmf_store(tmp_path, truth):
    store = tmp_path / "cnmf.zarr"
    acc = np.ones(truth.n_cells, bool)
    acc[:3] = False
    write_cnmf(store, truth.calcium, truth.fps, acc)
    log = tmp_path / "stim.csv"
    log.write_text("frame,targets\n" + "".join(f"{i},{t}\n" for i, t in enumerate(truth.stim_log())))
    out, plots = tmp_path / "decode.json", tmp_path / "plots" / "decode"
    r = decode_session(store, log, out, plots, {"classifiers": ["logistic"], "n_permutations": 19, "traces": "C"})
    saved = json.loads(out.read_text())
    assert saved["n_neurons"] == truth.n_cells - 3 and saved["components"][0] == 3
    assert saved["classifiers"]["logistic"]["accuracy"] == r["classifiers"]["logistic"]["accuracy"]
    assert (plots / "confusion.png").stat().st_size > 1000


def test_a_session_without_accepted_components_is_recorded_not_failed(tmp_path, truth):
    store = tmp_path / "cnmf.zarr"
    write_cnmf(store, truth.calcium, truth.fps, accepted=np.zeros(truth.n_cells, bool))
    log = tmp_path / "stim.csv"
    log.write_text("frame,targets\n" + "".join(f"{i},{t}\n" for i, t in enumerate(truth.stim_log())))
    out, plots = tmp_path / "decode.json", tmp_path / "plots" / "decode"
    decode_session(store, log, out, plots, {"classifiers": ["logistic"], "n_permutations": 5})
    saved = json.loads(out.read_text())
    assert saved["status"] == "no components" and saved["n_neurons"] == 0 and saved["components"] == []
    assert saved["classifiers"] == {} and plots.is_dir() and not list(plots.iterdir())


@pytest.mark.parametrize("problem", ["nan", "traces", "params"])
def test_bad_input_is_one_error_and_no_output(tmp_path, truth, problem):
    store = tmp_path / "cnmf.zarr"
    x = truth.calcium.copy()
    if problem == "nan":
        x[2, 10] = np.nan
    write_cnmf(store, x, truth.fps)
    log = tmp_path / "stim.csv"
    log.write_text("frame,targets\n" + "".join(f"{i},{t}\n" for i, t in enumerate(truth.stim_log())))
    params = {"classifiers": ["logistic"], "n_permutations": 5}
    if problem == "traces":
        params["traces"] = "F"
    if problem == "params":
        params["window_s"] = [0.5, 0.1]
    with pytest.raises(CalflowInputError):
        decode_session(store, log, tmp_path / "decode.json", tmp_path / "plots", params)
    assert not (tmp_path / "decode.json").exists() and not (tmp_path / "plots").exists()


def test_sheet_check_accepts_a_stimulus_table(tmp_path):
    from calflow.config import check_stim_log

    table = tmp_path / "stimuli.csv"
    table.write_text("frame,stimulus\n10,grating_0\n40,grating_90\n")
    assert list(check_stim_log(table)["stimulus"]) == ["grating_0", "grating_90"]
    table.write_text("frame,stimulus\n10,\n")
    with pytest.raises(CalflowInputError, match="row 2, field 'stimulus' is empty"):
        check_stim_log(table)
