"""Stimulation classifier, Grad-CAM (against captum), ZNCC, and the condition comparison's statistics."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from calflow import classify as cl
from calflow import compare as cmp
from calflow import gradcam as gc
from calflow.errors import CalflowInputError
from calflow.io import MovieWriter, open_group, write_array
from calflow.simulate import SimParams, write_session

TINY = SimParams(n_frames=420, height=40, width=40, n_cells=6, n_targets=3, n_pairs=1, radius_min=4.0,
                 radius_max=4.5, trial_frames=8, iti_frames=10, iti_jitter_frames=2, stim_start_frame=10,
                 motion=False, bg_rank=0, neuropil_level=0.1, stim_gain=25.0)
FAST = {"downsample": 1, "context": 1, "depth": 2, "width": 4, "iterations": 60, "batch_size": 16,
        "checkpoint_every": 20, "lr": 0.005, "device": "cpu",
        # 60 iterations on a tiny animal: the light regularisation of before the demo tuning
        "dropout": 0.25, "weight_decay": 1e-4, "brightness": 0.2, "contrast": 0.2, "shift": 1}


def _session(tmp, name, condition, w_gain=1.0, seed=1):
    d = tmp / "demo" / name
    files = write_session(d, dataclasses.replace(TINY, w_gain=w_gain), seed=seed, anatomy_seed=7, threads=1)
    import tifffile

    movie = tifffile.imread(files["movie"])
    store = tmp / name / "motion.zarr"
    with MovieWriter(store, movie.shape, movie.dtype, fps=30.0, chunk_frames=100) as w:
        w.write(movie)
    return {"session": name, "condition": condition, "motion": str(store), "stim_log": str(files["stim_log"]),
            "targets": str(files["targets"]), "truth": str(files["ground_truth"])}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("classify")
    entries = [_session(tmp, "a1_A", "A", 1.0, seed=1), _session(tmp, "a1_B", "B", 2.0, seed=2)]
    out = tmp / "classifier" / "a1"
    metrics = cl.train_group(entries, entries[0]["targets"], FAST, out, group="a1")
    return tmp, entries, out, metrics


def test_labels_trials_and_folds_follow_trial_blocks(trained):
    _, entries, _, _ = trained
    t = cl.read_targets(entries[0]["targets"])
    lab = cl.read_labels(entries[0]["stim_log"], t, TINY.n_frames)
    truth = np.load(entries[0]["truth"])
    np.testing.assert_array_equal(lab[:, :-1] > 0, truth["stim"])
    np.testing.assert_array_equal(lab[:, -1] > 0, ~truth["stim"].any(axis=1))
    tr = cl.find_trials(lab, 2)
    np.testing.assert_array_equal(tr.start, truth["trial_start"])
    ff = tr.frame_fold
    # contiguous blocks: the fold changes once, and never inside a trial or its inter-trial interval
    assert np.count_nonzero(np.diff(ff)) == 1
    assert ff[tr.start[tr.fold == 1][0]] == 1 and ff[tr.start[tr.fold == 1][0] - 1] == 0
    cut = int(np.flatnonzero(np.diff(ff))[0]) + 1
    assert cut in set(tr.start.tolist())
    # fold 1's model: no training frame whose 2 * 3 + 1 frame input window reaches into fold 1
    train1 = cl.training_frames(ff, 1, 3)
    assert train1.max() == cut - 4 and not np.isin(np.arange(cut, len(ff)), train1).any()
    train0 = cl.training_frames(ff, 0, 3)
    assert train0.min() == cut + 3 and len(train0) == len(ff) - cut - 3


def test_frames_are_normalised_globally_or_per_pixel(trained):
    _, entries, _, _ = trained
    g, info_g = cl.load_frames(entries[0]["motion"], 2)
    px, info_p = cl.load_frames(entries[0]["motion"], 2, normalise="pixel")
    assert g.shape == px.shape == (TINY.n_frames, 20, 20)
    assert np.allclose(g.mean(axis=0), 0, atol=1e-4) and np.isclose(g.std(), 1, atol=1e-4)
    assert np.allclose(px.std(axis=0), 1, atol=1e-3) and np.asarray(info_p["std"]).shape == (20, 20)
    with pytest.raises(CalflowInputError, match="normalise"):
        cl.ClassifyParams(normalise="dff")


def _in_ram_reference(store, d, normalise):
    """The normalised movie computed the way classify did before it streamed (all frames in RAM)."""
    from calflow.io import MovieReader

    movie = MovieReader(store)[:].astype(np.float32)
    T, H, W = movie.shape
    h, w = H // d, W // d
    out = movie[:, : h * d, : w * d].reshape(T, h, d, w, d).mean(axis=(2, 4))
    mean = out.mean(axis=0)
    out -= mean
    if normalise == "pixel":
        std = out.std(axis=0)
        out /= np.maximum(std, float(np.median(std)) * 1e-3 or 1.0)
    else:
        std = float(out.std()) or 1.0
        out /= std
    return out, mean, std


@pytest.mark.parametrize("normalise", ["global", "pixel"])
def test_streamed_frames_and_windows_equal_the_in_ram_version(trained, tmp_path, normalise):
    _, entries, _, _ = trained
    ref, mean, std = _in_ram_reference(entries[0]["motion"], 2, normalise)
    p = cl.ClassifyParams(downsample=2, context=3, normalise=normalise, scratch_dir=str(tmp_path))
    with cl.load_session(entries[0], cl.read_targets(entries[0]["targets"]), p) as s:
        assert isinstance(s.frames, cl.ScratchMovie) and s.frames.shape == ref.shape and len(s.frames) == len(ref)
        np.testing.assert_array_equal(s.info["mean_image"], mean)
        np.testing.assert_allclose(s.info["std"], std, rtol=1e-5)
        np.testing.assert_allclose(s.frames[:], ref, rtol=1e-5, atol=2e-5)  # float32 rounding of the old std
        idx = np.array([0, 1, 2, 200, 57, 200, len(ref) - 2, len(ref) - 1])  # both ends clamped, a repeat
        t = np.clip(idx[:, None] + np.arange(-3, 4)[None], 0, len(ref) - 1)
        win = cl.window(s, idx, 3)
        assert win.shape == (len(idx), 7, 20, 20) and win.dtype == np.float32
        np.testing.assert_allclose(win, ref[t], rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(s.frames[::50], ref[::50], rtol=1e-5, atol=2e-5)  # the checkpoint fingerprint
        np.testing.assert_allclose(s.frames[-1], ref[-1], rtol=1e-5, atol=2e-5)
        assert s.frames[np.array([], np.int64)].shape == (0, 20, 20)
    assert list(tmp_path.iterdir()) == []  # the scratch dir went with the session


def test_scratch_windows_equal_clamped_frame_indexing(trained, tmp_path):
    """ScratchMovie.windows (one read per window, the training batches' path) gives exactly the
    frames of clamped indexing, for windows inside, across either end and wholly outside the movie."""
    _, entries, _, _ = trained
    p = cl.ClassifyParams(downsample=2, context=3, scratch_dir=str(tmp_path))
    with cl.load_session(entries[0], cl.read_targets(entries[0]["targets"]), p) as s:
        T = len(s.frames)
        rng = np.random.default_rng(0)
        for n in (1, 7, 40):
            starts = np.r_[rng.integers(-60, T + 60, 100), [-n, -1, 0, T - 1, T - n, T]]
            ref = s.frames[np.clip(starts[:, None] + np.arange(n)[None], 0, T - 1)]
            np.testing.assert_array_equal(s.frames.windows(starts, n), ref)


def test_scratch_dir_is_deleted_on_close_and_collection(trained, tmp_path):
    import gc
    import socket
    import subprocess
    import sys

    from calflow.io import process_temp_prefix

    _, entries, _, _ = trained
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"calflow-classify-{socket.gethostname()}-{int(dead.stdout)}-abc"  # a killed job's scratch
    live = tmp_path / f"{process_temp_prefix('calflow-classify')}abc"  # a running job's (this process)
    remote = tmp_path / f"calflow-classify-other-host-{int(dead.stdout)}-abc"  # another node's
    for d in (stale, live, remote):
        d.mkdir()
    movie = cl.open_movie(entries[0]["motion"], 2, scratch_dir=str(tmp_path))
    assert not stale.exists()  # removed: its process is gone
    assert live.is_dir() and remote.is_dir()
    live.rmdir()
    remote.rmdir()
    scratch = movie.path.parent
    assert movie.path.stat().st_size == TINY.n_frames * 20 * 20 * 4
    movie.close()
    assert not scratch.exists() and movie.closed
    with pytest.raises(ValueError, match="closed"):
        movie[0]
    movie = cl.open_movie(entries[0]["motion"], 2, scratch_dir=str(tmp_path))
    scratch = movie.path.parent
    del movie
    gc.collect()
    assert not scratch.exists()
    with pytest.raises(CalflowInputError, match=r"classify\.scratch_dir = '/no/such/dir'.*Fix: create it"):
        cl.ClassifyParams.from_config({"scratch_dir": "/no/such/dir"})


def test_nan_block_names_the_file_and_leaves_no_scratch(tmp_path):
    movie = np.random.default_rng(0).normal(100, 5, size=(300, 16, 16)).astype(np.float32)
    movie[250, 3, 4] = np.nan  # in the second 200-frame block: the first block is already on disk
    store = tmp_path / "bad" / "motion.zarr"
    with MovieWriter(store, movie.shape, movie.dtype, fps=30.0, chunk_frames=100) as w:
        w.write(movie)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(CalflowInputError) as err:
        cl.open_movie(store, 2, scratch_dir=str(scratch))
    msg = str(err.value)
    assert msg.startswith(f"{store}: the movie has NaN or infinite pixels (frames 200-299)") and "\n" not in msg
    assert list(scratch.iterdir()) == []


def test_bad_stim_log_names_the_file_and_row(tmp_path):
    (tmp_path / "t.csv").write_text("id,y,x\n0,5,5\n1,9,9\n")
    (tmp_path / "s.csv").write_text("frame,targets\n0,\n1,0\n2,7\n")
    t = cl.read_targets(tmp_path / "t.csv")
    with pytest.raises(CalflowInputError, match=r"s\.csv: row 4, field 'targets': target id 7"):
        cl.read_labels(tmp_path / "s.csv", t, 10)
    with pytest.raises(CalflowInputError, match="past the movie"):
        cl.read_labels(tmp_path / "s.csv", t, 2)
    with pytest.raises(CalflowInputError, match="classify.mask"):
        cl.ClassifyParams.from_config({"mask": "everything"})


def test_frame_metrics_count_none_and_wrong_target_errors_apart():
    ids = ["a", "b"]
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1]], np.float32)
    prob = np.array([[0.9, 0.1, 0.2],   # a: right
                     [0.3, 0.1, 0.8],   # a: top is none (target-only top is a: right)
                     [0.7, 0.2, 0.1],   # b: wrong target
                     [0.1, 0.6, 0.3],   # pair a+b: b is among them
                     [0.1, 0.2, 0.9],   # none: right
                     [0.5, 0.2, 0.4]])  # none: wrong
    m = cl.frame_metrics(prob, labels, ids)
    assert m["accuracy"] == 0.5 and m["n_stimulated_frames"] == 4
    assert m["target_accuracy"] == 0.75 and m["missed_as_none"] == 0.25
    assert m["none_accuracy"] == 0.5 and m["per_target"]["a"] == {"accuracy": 2 / 3, "frames": 3}
    assert m["confusion"]["rows"] == ["a", "b", "a+b", "none"]
    assert m["confusion"]["counts"] == [[1, 0, 1], [1, 0, 0], [0, 1, 0], [1, 0, 1]]


def test_a_fold_that_did_not_learn_is_reported():
    ok = cl.untrained_folds(np.array([[97.0, 100.0], [60.0, 100.0], [0.0, 0.0]]), "m1")
    assert ok == []
    (msg,) = cl.untrained_folds(np.array([[97.0, 100.0], [45.0, 100.0]]), "m1")
    assert "'m1' fold 1 did not learn: accuracy 0.45" in msg and "classify.seed" in msg


def test_classifier_metrics_are_held_out_and_above_chance(trained):
    _, entries, out, m = trained
    assert set(m["sessions"]) == {"a1_A", "a1_B"} and set(m["conditions"]) == {"A", "B"}
    for s in m["sessions"].values():
        t = s["test"]
        assert set(t["per_target"]) == {"0", "1", "2"}
        conf = np.asarray(t["confusion"]["counts"])
        assert conf.sum() == TINY.n_frames and conf.shape[1] == 4
        # 3 targets + 1 pair: a random top output would be right on ~1/3 of stimulated frames
        assert t["accuracy"] > 0.6, t["accuracy"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["sessions"]["a1_A"]["test"]["accuracy"] == m["sessions"]["a1_A"]["test"]["accuracy"]
    assert saved["warnings"] == []  # both folds learned
    blob = torch.load(out / "model.pt", weights_only=True)
    assert len(blob["folds"]) == 2 and blob["meta"]["target_ids"] == ["0", "1", "2"]
    # the default seed ensemble: every member's held-out accuracy and their spread
    assert blob["arch"]["members"] == 5 and m["members"]["members"] == 5
    acc = m["members"]["test_accuracy"]
    assert len(acc) == 5 and all(0 <= a <= 1 for a in acc)
    assert m["members"]["test_accuracy_spread"]["min"] == min(acc) and m["members"]["test_accuracy_spread"]["max"] == max(acc)
    assert len(m["sessions"]["a1_A"]["members"]["test_target_accuracy"]) == 5 and m["control"] is None
    assert len(m["conditions"]["A"]["member_test_accuracy"]) == 5
    preds = np.load(out / "predictions.npz")
    assert preds["a1_A"].shape == (TINY.n_frames, 4)


def test_accuracy_per_condition_has_a_trial_clustered_ci(trained):
    """metrics.json: per condition the held-out accuracy's percentile CI from a bootstrap over trials
    (each trial's frames one cluster), seeded, and the number of trials; per session the counts."""
    tmp, entries, out, m = trained
    truth = np.load(entries[0]["truth"])
    for cond, session in (("A", "a1_A"), ("B", "a1_B")):
        c, s = m["conditions"][cond], m["sessions"][session]
        tt = s["test_trials"]
        assert c["n_trials"] == s["n_trials"] == len(tt["correct"]) == len(tt["stimulated_frames"])
        assert sum(tt["stimulated_frames"]) == s["test"]["n_stimulated_frames"]
        assert sum(tt["correct"]) / sum(tt["stimulated_frames"]) == pytest.approx(c["test_accuracy"])
        lo, hi = c["test_accuracy_ci"]
        assert lo <= c["test_accuracy"] <= hi and hi - lo > 0.02 and "trial" in c["test_accuracy_ci_method"]
    # a trial's stimulated frames: the simulator's trial length
    assert set(m["sessions"]["a1_A"]["test_trials"]["stimulated_frames"]) == {TINY.trial_frames}
    assert len(m["sessions"]["a1_A"]["test_trials"]["correct"]) == len(truth["trial_start"])
    again = cmp.clustered_accuracy([[(m["sessions"]["a1_A"]["test_trials"]["correct"],
                                      m["sessions"]["a1_A"]["test_trials"]["stimulated_frames"])]],
                                   n_bootstrap=cl.ACCURACY_BOOTSTRAP, seed=FAST.get("seed", 0))
    assert again["ci"] == m["conditions"]["A"]["test_accuracy_ci"]  # seeded by classify.seed


def test_training_resumes_to_the_same_weights(trained, tmp_path):
    tmp, entries, out, _ = trained
    cl.train_group(entries, entries[0]["targets"], FAST, tmp_path, group="a1", stop_at=20)
    assert (tmp_path / "checkpoints" / "fold0_last.pt").exists()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # another scratch_dir is not another model: the checkpoint's fingerprint ignores it
    cl.train_group(entries, entries[0]["targets"], {**FAST, "scratch_dir": str(scratch)}, tmp_path, group="a1")
    assert list(scratch.iterdir()) == []  # the sessions' scratch files are gone after training
    blob_a = torch.load(out / "model.pt", weights_only=True)
    a, b = blob_a["folds"], torch.load(tmp_path / "model.pt", weights_only=True)["folds"]
    assert blob_a["arch"]["members"] == 5 and a[0]["head_weight"].shape[0] == 5  # an ensemble, resumed as one
    for fa, fb in zip(a, b, strict=True):
        for k in fa:
            assert torch.equal(fa[k], fb[k]), k
    assert json.loads((tmp_path / "metrics.json").read_text())["training"][0]["resumed_from"] == 20


ARCH = {"n_out": 5, "frame_hw": [32, 32], "depth": 2, "width": 4, "dropout": 0.0, "in_channels": 3, "reduce": 4,
        "context": 1}


def test_ensemble_member_equals_the_extracted_single_network():
    """Member k of the grouped ensemble is a plain StimNet: the same logits (own or shared input)
    and the same Grad-CAM / HiResCAM as captum's LayerGradCam / LayerGradientXActivation of the
    extracted network (vs_none score), from one backward pass for all members."""
    from captum.attr import LayerGradCam, LayerGradientXActivation

    K = 3
    ens = cl.init_ensemble({**ARCH, "members": K}, seed=4, fold=1).eval()
    x = torch.randn(6, K, 3, 32, 32)
    shared = torch.randn(6, 3, 32, 32)
    out, out_shared = ens(x), ens(shared)
    assert out.shape == out_shared.shape == (6, K, 5)
    nets = [ens.member(k) for k in range(K)]
    for k, net in enumerate(nets):
        torch.testing.assert_close(net(x[:, k]), out[:, k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net(shared), out_shared[:, k], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out_shared[:, 0], out_shared[:, 1])  # own initialisations
    back = cl.StimEnsemble.from_members(nets, ARCH)
    for name, v in ens.state_dict().items():
        assert torch.equal(back.state_dict()[name], v), name
    contrast = torch.from_numpy(np.stack([gc.score_weights(5, [j], "vs_none") for j in range(4)]))
    for method, ref_cls in (("gradcam", LayerGradCam), ("hirescam", LayerGradientXActivation)):
        for layer_name in ("0", "last"):
            for j in (0, 2):
                w = torch.from_numpy(np.tile(gc.score_weights(5, [j]), (6, 1)))
                ours = gc.grad_cam(ens, gc.get_layer(ens, layer_name), shared, w, method)
                assert ours.shape == ((6, K, 32, 32) if layer_name == "0" else (6, K, 16, 16))
                for k, net in enumerate(nets):
                    ref = ref_cls(lambda inp, net=net: net(inp) @ contrast.T, gc.get_layer(net, layer_name))
                    if method == "gradcam":
                        theirs = ref.attribute(shared, target=j, relu_attributions=False).detach()[:, 0].numpy()
                    else:
                        theirs = ref.attribute(shared, target=j).detach().sum(dim=1).numpy()
                    np.testing.assert_allclose(ours[:, k], theirs, rtol=1e-4, atol=1e-6)
                    np.testing.assert_allclose(ours[:, k], gc.grad_cam(net, gc.get_layer(net, layer_name), shared, w,
                                                                       method), rtol=1e-4, atol=1e-6)
                assert not np.allclose(ours[:, 0], ours[:, 1])


def test_members_train_to_different_weights_from_different_seeds(trained):
    """Every member has its own initialisation and batches: the trained members differ, and member 0
    of the ensemble ends where a one-network run with the same seed ends (the members are independent:
    the summed loss gives each member the gradient of its own)."""
    _, entries, out, _ = trained
    models, info = cl.load_fold_models(out / "model.pt")
    assert info["arch"]["members"] == 5 and len({cl.member_seed(0, 0, k) for k in range(5)}) == 5
    for ens in models:
        nets = [ens.member(k) for k in range(5)]
        w = [torch.cat([p.detach().ravel() for p in n.parameters()]) for n in nets]
        for i in range(5):
            for j in range(i + 1, 5):
                assert (w[i] - w[j]).abs().max() > 1e-2, (i, j)
    targets = cl.read_targets(entries[0]["targets"])
    p1 = cl.ClassifyParams.from_config({**FAST, "dropout": 0.0, "members": 1, "iterations": 15})
    p3 = dataclasses.replace(p1, members=3)
    with cl.load_session(entries[0], targets, p1) as s:
        alone, _ = cl.train_fold([s], p1, 1, out.parent / "ck_alone")
        ens, _ = cl.train_fold([s], p3, 1, out.parent / "ck_ens")
        prob = cl.predict(ens, s, np.arange(0, 400, 7), members=True)
    assert prob.shape == (len(range(0, 400, 7)), 3, 4)
    for name, v in alone.member(0).state_dict().items():
        torch.testing.assert_close(ens.member(0).state_dict()[name], v, rtol=1e-3, atol=1e-4)
    a1 = torch.cat([p.detach().ravel() for p in ens.member(1).parameters()])
    a0 = torch.cat([p.detach().ravel() for p in ens.member(0).parameters()])
    assert (a1 - a0).abs().max() > 1e-2


def test_cache_sized_passes_train_like_the_whole_batch(trained, monkeypatch):
    """On the CPU a batch goes through the network in cache-sized passes whose gradients accumulate:
    the same training as one pass over the whole batch (to float rounding)."""
    _, entries, out, _ = trained
    p = cl.ClassifyParams.from_config({**FAST, "dropout": 0.0, "members": 2, "iterations": 6})
    with cl.load_session(entries[0], cl.read_targets(entries[0]["targets"]), p) as s:
        whole, _ = cl.train_fold([s], p, 0, out.parent / "ck_whole")
        monkeypatch.setattr("calflow.classify.train.CPU_PASS_BYTES", 1)  # one sample per pass (read by pass_rows)
        assert cl.pass_rows(whole, "cpu") == 1 and cl.pass_rows(whole, "cuda") is None
        passes, _ = cl.train_fold([s], p, 0, out.parent / "ck_passes")
        idx = np.arange(0, 400, 9)
        np.testing.assert_allclose(cl.predict(passes, s, idx, members=True), cl.predict(whole, s, idx, members=True),
                                   rtol=1e-4, atol=1e-5)
    for name, v in whole.state_dict().items():
        torch.testing.assert_close(passes.state_dict()[name], v, rtol=1e-3, atol=1e-5)


def _reference_batch(data, pools, p, fold, it, hw, member):
    """The training batch written plainly, sample by sample (np.roll, then crop and mask): what the
    in-place ``calflow.classify.train._batch`` must reproduce exactly."""
    rng = np.random.default_rng([p.seed, fold, it, member])
    sizes = np.array([len(x) for x in pools.all], float)
    which = rng.choice(len(pools.all), size=p.batch_size, p=sizes / sizes.sum())
    xs, ys = [], []
    for i, k in enumerate(which):
        s, pool = data[k], pools.all[k]
        if i % 2 == 0 and len(pools.stim[k]):
            pool = pools.stim[k]
        t = int(pool[rng.integers(0, len(pool))])
        gain = np.float32(rng.uniform(1 - p.contrast, 1 + p.contrast))
        offset = np.float32(rng.uniform(-p.brightness, p.brightness))
        x = cl.window(s, np.array([t]), p.context)[0]
        if p.mix and rng.random() < p.mix and len(pools.none[k]):
            w = np.float32(rng.uniform(0.5, 1.0))
            x = x + w * cl.window(s, np.array([int(pools.none[k][rng.integers(0, len(pools.none[k]))])]), p.context)[0]
        x = x * gain + offset
        if p.shift:
            x = np.roll(x, tuple(rng.integers(-p.shift, p.shift + 1, size=2)), axis=(1, 2))
        xs.append(x[:, : hw[0], : hw[1]] * s.mask[: hw[0], : hw[1]])
        ys.append(s.labels[t])
    return np.stack(xs), np.stack(ys)


@pytest.mark.parametrize("mix", [0.0, 0.5])
def test_training_batches_equal_the_plain_sample_by_sample_augmentation(trained, mix):
    """The ensemble's batches (every member's windows written in place into one (B, K, C, h, w)
    array) are exactly the plain per-sample computation: same frames, gain, offset, mix, roll, mask."""
    from calflow.classify.train import _ensemble_batch, _Pools

    _, entries, _, _ = trained
    p = cl.ClassifyParams.from_config({**FAST, "members": 3, "shift": 2, "mix": mix})
    targets = cl.read_targets(entries[0]["targets"])
    with cl.load_session(entries[0], targets, p) as s0, cl.load_session(entries[1], targets, p) as s1:
        data = [s0, s1]
        pools = _Pools.of(data, [cl.training_frames(s.trials.frame_fold, 1, p.context) for s in data])
        hw = cl.crop_hw(*s0.frames.shape[1:], p.depth)
        for it in (0, 7):
            x, y = _ensemble_batch(data, pools, p, 1, it, hw)
            assert x.shape == (p.batch_size, 3, 2 * p.context + 1, *hw) and x.dtype == torch.float32
            for k in range(3):
                rx, ry = _reference_batch(data, pools, p, 1, it, hw, k)
                np.testing.assert_array_equal(x[:, k].numpy(), rx)
                np.testing.assert_array_equal(y[:, k].numpy(), ry)
            assert not torch.equal(x[:, 0], x[:, 1])  # every member has its own batch


def test_old_single_network_model_file_loads_as_one_member(trained, tmp_path):
    """A model.pt from before the ensemble (plain StimNet states, no ``members`` in its arch) loads as
    a K = 1 ensemble; its gradcam.zarr has members 1 and equals the ensemble's member 0 maps."""
    tmp, entries, out, _ = trained
    blob = torch.load(out / "model.pt", weights_only=True)
    models, _ = cl.load_fold_models(out / "model.pt")
    arch = {k: v for k, v in blob["arch"].items() if k != "members"}
    old_file = tmp_path / "model.pt"
    torch.save({"folds": [m.member(0).state_dict() for m in models], "arch": arch, "meta": blob["meta"]}, old_file)
    assert "head.3.weight" in torch.load(old_file, weights_only=True)["folds"][0]  # the single network's keys
    old_models, info = cl.load_fold_models(old_file)
    assert info["arch"]["members"] == 1 and old_models[0].members == 1
    with cl.load_session(entries[0], cl.read_targets(entries[0]["targets"]),
                         cl.ClassifyParams.from_config(blob["meta"]["params"])) as s:
        idx = np.arange(0, 300, 11)
        np.testing.assert_allclose(cl.predict(old_models[1], s, idx), cl.predict(models[1], s, idx, members=True)[:, 0],
                                   rtol=1e-5, atol=1e-6)
    st = tmp_path / "gradcam.zarr"
    gc.session_gradcam(entries[0], old_file, {}, st)
    g = open_group(st)
    assert g.attrs["members"] == 1 and np.asarray(g["member_trial_maps"][:]).shape[0] == 1
    back = gc.read_gradcam(st)  # the typed reader gives what the store holds
    assert back.members == 1 and back.control is None and back.trace_corr is None and back.patterns == g.attrs["patterns"]
    np.testing.assert_array_equal(back.member_trial_maps, np.asarray(g["member_trial_maps"][:]))
    full = open_group(_gradcam_store(trained, entries[0]))
    np.testing.assert_allclose(np.asarray(g["trial_maps"][:]), np.asarray(full["member_trial_maps"][:])[0],
                               rtol=1e-4, atol=1e-6)


def test_shuffled_labels_keep_trial_structure(trained):
    _, entries, _, _ = trained
    t = cl.read_targets(entries[0]["targets"])
    lab = cl.read_labels(entries[0]["stim_log"], t, TINY.n_frames)
    tr = cl.find_trials(lab, 2)
    sh = cl.shuffle_trial_labels(lab, tr, 0, "a1_A")
    assert sh.shape == lab.shape and sh.dtype == np.float32
    none = lab[:, -1] > 0.5
    np.testing.assert_array_equal(sh[none], lab[none])  # unstimulated frames untouched
    np.testing.assert_array_equal(sh[:, -1], lab[:, -1])
    new = []
    for a, b in zip(tr.start, tr.stop, strict=True):
        rows = sh[a:b]
        assert (rows == rows[0]).all() and rows[0, :-1].sum() >= 1  # one label for the whole trial
        new.append(tuple(np.flatnonzero(rows[0, :-1]).tolist()))
    assert sorted(new) == sorted(tr.pattern)  # the same multiset of patterns
    assert sum(a != b for a, b in zip(new, tr.pattern, strict=True)) >= len(new) // 2
    np.testing.assert_array_equal(cl.shuffle_trial_labels(lab, tr, 0, "a1_A"), sh)  # seeded
    assert not np.array_equal(cl.shuffle_trial_labels(lab, tr, 1, "a1_A"), sh)
    assert not np.array_equal(cl.shuffle_trial_labels(lab, tr, 0, "a1_B"), sh)


@pytest.fixture(scope="module")
def shuffled(trained):
    tmp, entries, _, _ = trained
    out = tmp / "classifier" / "a1" / "shuffled"
    return out, cl.train_group(entries, entries[0]["targets"], FAST, out, group="a1", shuffle_labels=True)


def test_classifier_and_control_in_one_call_equal_two_separate_trainings(trained, shuffled, tmp_path):
    """train_group with control_dir (the workflow's one job) writes the real classifier and then the
    shuffled-label control from the same loaded sessions: the same weights, predictions and metrics
    as the two separate calls."""
    tmp, entries, out, metrics = trained
    ctrl_out, ctrl_metrics = shuffled
    both = tmp_path / "a1"
    m = cl.train_group(entries, entries[0]["targets"], FAST, both, group="a1", control_dir=both / "shuffled",
                       control_members=5)
    assert m["sessions"] == metrics["sessions"] and m["conditions"] == metrics["conditions"]
    for mine, ref in ((both, out), (both / "shuffled", ctrl_out)):
        a, b = torch.load(mine / "model.pt", weights_only=True), torch.load(ref / "model.pt", weights_only=True)
        for fa, fb in zip(a["folds"], b["folds"], strict=True):
            assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
        pa, pb = np.load(mine / "predictions.npz"), np.load(ref / "predictions.npz")
        assert all(np.array_equal(pa[k], pb[k]) for k in pb.files)
    mc = json.loads((both / "shuffled" / "metrics.json").read_text())
    assert mc["control"] == "shuffled_labels" and mc["sessions"] == ctrl_metrics["sessions"]
    with pytest.raises(ValueError, match="control_dir trains both"):
        cl.train_group(entries, entries[0]["targets"], FAST, tmp_path / "x", shuffle_labels=True, control_dir=tmp_path)


def test_shuffled_label_classifier_is_near_chance_and_the_real_one_is_not(trained, shuffled):
    """Held-out target accuracy against the stim log: the real classifier well above chance, the
    shuffled-label control near it (3 single targets and a pair: about 0.4 by chance)."""
    _, _, _, real = trained
    out, m = shuffled
    blob = torch.load(out / "model.pt", weights_only=True)
    assert blob["meta"]["control"] == "shuffled_labels" and m["control"] == "shuffled_labels"
    assert (out / "checkpoints" / "fold0_last.pt").is_file() and (out / "predictions.npz").is_file()
    chance = real["members"]["chance_target_accuracy"]  # 3 single targets and a pair: about 0.42
    assert m["members"]["chance_target_accuracy"] == chance and 0.35 < chance < 0.5
    r, c = real["members"]["ensemble_test_target_accuracy"], m["members"]["ensemble_test_target_accuracy"]
    # measured over training seeds 0-2: real 0.69-0.75, shuffled 0.47-0.50
    assert r > chance + 0.2 and c < chance + 0.15 and r - c > 0.15, (r, c, chance)
    assert m["warnings"] == [] and "test_vs_shuffled_labels" in m["sessions"]["a1_A"]


def _gradcam_store(trained, entry):
    tmp, _, out, _ = trained
    st = tmp / entry["session"] / "gradcam.zarr"
    if not st.is_dir():
        gc.session_gradcam(entry, out / "model.pt", {}, st, plots_dir=tmp / entry["session"] / "plots" / "gradcam")
    return st


def test_gradcam_shuffled_store_has_the_gradcam_layout_and_true_patterns(trained, shuffled, tmp_path):
    _, entries, _, _ = trained
    real = open_group(_gradcam_store(trained, entries[0]))
    st = tmp_path / "gradcam_shuffled.zarr"
    gc.session_gradcam(entries[0], shuffled[0] / "model.pt", {}, st)
    g = open_group(st)
    assert g.attrs["control"] == "shuffled_labels" and real.attrs["control"] is None
    for key in ("session", "condition", "group", "patterns", "method", "zncc_map", "members"):
        assert g.attrs[key] == real.attrs[key], key
    assert set(g.array_keys()) == set(real.array_keys())
    for key in ("trial_pattern", "trial_fold", "trial_start"):  # the stim log's trials and patterns
        np.testing.assert_array_equal(np.asarray(g[key][:]), np.asarray(real[key][:]))
    mt = np.asarray(g["member_trial_maps"][:])
    assert mt.shape == (5, *np.asarray(real["trial_maps"][:]).shape)
    np.testing.assert_allclose(mt.mean(axis=0), np.asarray(g["trial_maps"][:]), rtol=1e-5, atol=1e-7)
    assert not np.allclose(np.asarray(g["trial_maps"][:]), np.asarray(real["trial_maps"][:]))



def test_one_gradcam_call_with_the_control_writes_both_stores_as_separate_calls_do(trained, shuffled, tmp_path):
    """The gradcam rule's single job (the session streamed once) gives exactly the stores of two jobs."""
    _, entries, out, _ = trained
    alone = {"real": tmp_path / "alone.zarr", "control": tmp_path / "alone_shuffled.zarr"}
    gc.session_gradcam(entries[0], out / "model.pt", {}, alone["real"])
    gc.session_gradcam(entries[0], shuffled[0] / "model.pt", {}, alone["control"])
    both = {"real": tmp_path / "both.zarr", "control": tmp_path / "both_shuffled.zarr"}
    info = gc.session_gradcam(entries[0], out / "model.pt", {}, both["real"],
                              control_model=shuffled[0] / "model.pt", control_store=both["control"])
    assert set(info["control"]) == set(info) - {"control"}
    for kind in ("real", "control"):
        a, b = open_group(alone[kind]), open_group(both[kind])
        assert dict(a.attrs) == dict(b.attrs) and set(a.array_keys()) == set(b.array_keys())
        for key in a.array_keys():
            np.testing.assert_array_equal(np.asarray(a[key][:]), np.asarray(b[key][:]), err_msg=f"{kind}: {key}")

def test_gradcam_device_key_chooses_where_the_networks_run(trained, tmp_path, monkeypatch):
    """gradcam.device: the fold models are loaded onto the resolved device (auto = cpu here, the same
    maps as cpu); cuda without a GPU is one error naming the key, before any store is written."""
    import calflow.gradcam.stage as gstage

    _, entries, out, _ = trained
    seen = []
    real_load = gstage.load_fold_models
    monkeypatch.setattr(gstage, "load_fold_models", lambda path, device="cpu": seen.append(str(device)) or
                        real_load(path, device))
    gc.session_gradcam(entries[0], out / "model.pt", {"device": "cpu"}, tmp_path / "cpu.zarr")
    gc.session_gradcam(entries[0], out / "model.pt", {}, tmp_path / "auto.zarr")
    assert seen == ["cpu", "cuda" if torch.cuda.is_available() else "cpu"]
    if not torch.cuda.is_available():
        a, b = open_group(tmp_path / "cpu.zarr"), open_group(tmp_path / "auto.zarr")
        for key in a.array_keys():
            np.testing.assert_array_equal(np.asarray(a[key][:]), np.asarray(b[key][:]), err_msg=key)
        with pytest.raises(CalflowInputError, match=r"gradcam\.device"):
            gc.session_gradcam(entries[0], out / "model.pt", {"device": "cuda"}, tmp_path / "cuda.zarr")
        assert not (tmp_path / "cuda.zarr").exists()
    with pytest.raises(CalflowInputError, match="device"):
        gc.session_gradcam(entries[0], out / "model.pt", {"device": "tpu"}, tmp_path / "tpu.zarr")


def test_gradcam_matches_captum_layer_gradcam():
    from captum.attr import LayerAttribution, LayerGradCam

    torch.manual_seed(0)
    model = cl.StimNet(5, (32, 32), depth=3, width=4, dropout=0.0, in_channels=3).eval()
    x = torch.randn(4, 3, 32, 32)
    for layer_name in ("last", "1"):
        layer = gc.get_layer(model, layer_name)
        ref = LayerGradCam(model, layer)
        for target in (0, 3):
            w = torch.zeros(4, 5)
            w[:, target] = 1
            ours = gc.grad_cam(model, layer, x, w)
            theirs = ref.attribute(x, target=target, relu_attributions=False).detach()[:, 0].numpy()
            assert ours.shape == theirs.shape == ((4, 8, 8) if layer_name == "last" else (4, 16, 16))
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
            relu = ref.attribute(x, target=target, relu_attributions=True)
            up = LayerAttribution.interpolate(relu, (32, 32), interpolate_mode="bilinear").detach()[:, 0].numpy()
            np.testing.assert_allclose(gc.display_maps(ours, (32, 32)), up, rtol=1e-5, atol=1e-7)
            assert np.abs(ours).max() > 0


def test_production_gradcam_and_cnmf_do_not_import_the_simulator():
    """Only the evaluations against simulated truth (gradcam.true_response_maps,
    cnmf.accuracy.session_accuracy) import calflow.simulate, inside the function."""
    import subprocess
    import sys

    code = ("import sys, calflow.gradcam.stage, calflow.gradcam.expected, calflow.cnmf.accuracy, calflow.cnmf.stage, "
            "calflow.classify; "
            "print(sorted(m for m in sys.modules if m.startswith('calflow.simulate')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_gradcam_score_weights_and_config_errors():
    assert gc.score_weights(5, [1], "vs_none").tolist() == [0, 1, 0, 0, -1]
    assert gc.score_weights(5, [0, 2], "vs_none").tolist() == [1, 0, 1, 0, -2]
    assert gc.score_weights(5, [0, 2], "logit").tolist() == [1, 0, 1, 0, 0]
    with pytest.raises(CalflowInputError, match="gradcam.score"):
        gc.GradcamParams.from_config({"score": "softmax"})
    with pytest.raises(CalflowInputError, match="gradcam.method"):
        gc.GradcamParams.from_config({"method": "gradcam++"})


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_gradcam_methods_of_the_vs_none_score_match_captum(method):
    """The default score (target logit minus the none logit) is a linear read-out of the logits:
    captum on the model followed by that read-out gives the same maps. ``gradcam``: captum's
    LayerGradCam; ``hirescam``: the channel sum of captum's LayerGradientXActivation (gradient
    times activation, pixel by pixel). The none logit, and the method, change the map."""
    from captum.attr import LayerGradCam, LayerGradientXActivation

    torch.manual_seed(1)
    model = cl.StimNet(5, (32, 32), depth=2, width=4, dropout=0.0, in_channels=3).eval()
    x = torch.randn(3, 3, 32, 32)
    contrast = torch.from_numpy(np.stack([gc.score_weights(5, [k], "vs_none") for k in range(4)]))
    other = {"gradcam": "hirescam", "hirescam": "gradcam"}[method]
    for layer_name in ("0", "last"):
        layer = gc.get_layer(model, layer_name)
        reference = (LayerGradCam if method == "gradcam" else LayerGradientXActivation)(
            lambda inp: model(inp) @ contrast.T, layer)
        for k in (0, 2):
            w = torch.from_numpy(np.tile(gc.score_weights(5, [k]), (3, 1)))
            ours = gc.grad_cam(model, layer, x, w, method)
            if method == "gradcam":
                theirs = reference.attribute(x, target=k, relu_attributions=False).detach()[:, 0].numpy()
            else:
                theirs = reference.attribute(x, target=k).detach().sum(dim=1).numpy()
            assert ours.shape == theirs.shape == ((3, 32, 32) if layer_name == "0" else (3, 16, 16))
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
            plain = torch.from_numpy(np.tile(gc.score_weights(5, [k], "logit"), (3, 1)))
            assert not np.allclose(ours, gc.grad_cam(model, layer, x, plain, method))
            assert not np.allclose(ours, gc.grad_cam(model, layer, x, w, other))


def test_zncc():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    assert gc.zncc(a, a) == pytest.approx(1.0)
    assert gc.zncc(a, -2 * a + 3) == pytest.approx(-1.0)
    assert gc.zncc(a, 5 * b + 1) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    maps = rng.normal(size=(4, 6, 6))
    z = gc.zncc_matrix(maps)
    assert z[1, 3] == pytest.approx(gc.zncc(maps[1], maps[3])) and np.allclose(np.diag(z), 1)
    assert np.isnan(gc.zncc_matrix(np.stack([a, np.zeros_like(a)]))[0, 1])


def test_session_gradcam_store(trained):
    tmp, entries, out, _ = trained
    store = tmp / "a1_A" / "gradcam.zarr"
    info = gc.session_gradcam(entries[0], out / "model.pt", {}, store, plots_dir=tmp / "a1_A" / "plots" / "gradcam")
    g = open_group(store)
    assert list(g.attrs["patterns"]) == ["0", "1", "2", g.attrs["patterns"][3]] and "+" in g.attrs["patterns"][3]
    z = np.asarray(g["zncc"][:])
    assert z.shape == (4, 4) and np.allclose(np.diag(z), 1) and np.allclose(z, z.T)
    tm, tp = np.asarray(g["trial_maps"][:]), np.asarray(g["trial_pattern"][:])
    np.testing.assert_allclose(np.asarray(g["pattern_maps"][:])[2], tm[tp == 2].mean(axis=0), rtol=1e-5)
    assert np.asarray(g["display_maps"][:]).shape == (4, 40, 40)
    assert info["trials"] == len(tp) and (tmp / "a1_A" / "plots" / "gradcam" / "zncc.png").is_file()
    assert "trace_corr" not in g  # no cnmf store given
    # the seed ensemble: every member's trial maps, whose mean over members is trial_maps
    mt = np.asarray(g["member_trial_maps"][:])
    assert g.attrs["members"] == 5 and mt.shape == (5, *tm.shape) and mt.dtype == np.float32
    assert list(g["member_trial_maps"].metadata.dimension_names) == ["member", "trial", "ly", "lx"]
    np.testing.assert_allclose(mt.mean(axis=0), tm, rtol=1e-5, atol=1e-7)
    assert not np.allclose(mt[0], mt[1])  # the members' maps differ
    assert g.attrs["control"] is None and g.attrs["group"] == "a1"


def test_cnmf_trace_correlation_reads_the_contract(tmp_path):
    import zarr

    store = tmp_path / "cnmf.zarr"
    zarr.open_group(store, mode="w", zarr_format=3).attrs.update({"format": "csr", "n_components": 3})
    rng = np.random.default_rng(0)
    base = rng.normal(size=200)
    dff = np.stack([base + 0.1 * rng.normal(size=200), rng.normal(size=200), base + 0.1 * rng.normal(size=200)])
    write_array(store, "dff", dff.astype(np.float32), ("component", "time"))
    write_array(store, "centroids", np.array([[5.0, 5.0], [20.0, 20.0], [30.0, 8.0]]), ("component", "axis"))
    write_array(store, "accepted", np.array([True, True, False]), ("component",))
    res = gc.cnmf_target_correlation(store, np.array([[6.0, 5.0], [30.0, 8.0], [19.0, 21.0]]))
    np.testing.assert_array_equal(res["component"], [0, -1, 1])  # the rejected component is not used
    assert np.isnan(res["corr"][0, 1]) and abs(res["corr"][0, 2]) < 0.3 and res["corr"][0, 0] == pytest.approx(1)


def test_report_sections_show_classifier_gradcam_and_comparison(trained):
    from calflow import report as rp

    tmp, entries, out, _ = trained
    stores = []
    for e in entries:
        st = tmp / e["session"] / "gradcam.zarr"
        if not st.is_dir():
            gc.session_gradcam(e, out / "model.pt", {}, st, plots_dir=tmp / e["session"] / "plots" / "gradcam")
        stores.append(st)
    res = cmp.compare_conditions({"gradcam": stores}, "A", "B", {"n_bootstrap": 10, "diagnostic_permutations": 20},
                                 [out / "metrics.json"])
    cmp.write_comparison(res, tmp / "compare" / "A_vs_B.json", tmp / "compare" / "A_vs_B.png")
    sessions = rp.sessions_from_records([{"session": e["session"], "condition": e["condition"], "movie": "",
                                          "fps": 30.0} for e in entries], tmp)
    ctx = rp.ReportContext(results=tmp, sessions=sessions)
    cls = rp.classifier_section(ctx, "A", sessions[:1])
    assert cls["tables"][0].rows[0][4] == rp.fmt(json.loads((out / "metrics.json").read_text())
                                                 ["sessions"]["a1_A"]["test"]["accuracy"])
    assert len(cls["figures"]) == 1
    assert not [f for f in cls["facts"] if f[0] == "warning"]
    # a model's warnings are shown once, however many of its sessions the condition has
    ctx_warned = rp.ReportContext(results=tmp, sessions=sessions)
    ctx_warned.cached(("classifier_metrics",), lambda: [{**json.loads((out / "metrics.json").read_text()),
                                                          "warnings": ["fold 1 did not learn"]}])
    warned = rp.classifier_section(ctx_warned, "A", sessions)["facts"]
    assert warned.count(("warning", "fold 1 did not learn")) == 1
    assert len(rp.zncc_section(ctx, "B", sessions[1:])["figures"]) == 1
    maps_fig = rp.gradcam_section(ctx, sessions[0])["figures"]
    assert len(maps_fig) == 2
    assert "gradcam.method: gradcam" in maps_fig[0].caption and "layer 0" in maps_fig[0].caption  # read from gradcam.zarr
    comp = rp.compare_section(ctx)
    assert ("warning", res["warnings"][0]) in comp["facts"]  # the tiny animal has few trials per pattern
    assert any("too few animals" in w for w in res["warnings"])  # one animal: no p-value
    assert len(comp["tables"][0].rows) == 1 and comp["tables"][0].rows[0][7] == "too few animals"
    assert ("unit of replication", "the animal (n = 1); trials are resampled within animals for the CI only") in \
        comp["facts"]
    facts = dict(comp["facts"])
    assert facts["analysis profile"].startswith("default: the default analysis")
    seed = next(v for k, v in comp["facts"] if k.startswith("seed study's statistic"))
    assert "not the headline test" in next(k for k, _ in comp["facts"] if k.startswith("seed study's statistic"))
    assert seed.startswith(f"A {rp.fmt(res['conditions']['A']['seed_study_sum']['mean'])} (mean over animals; a1 ")
    acc = facts["classifier accuracy (not evidence about connectivity)"]
    lo, hi = res["classifier_accuracy"]["A"]["ci"]
    assert f"A {rp.fmt(res['classifier_accuracy']['A']['accuracy'])} (95% CI {lo:.3f} – {hi:.3f})" in acc
    assert "not evidence about connectivity" in acc and "animals, then trials" in acc
    m = json.loads((out / "metrics.json").read_text())
    assert any(k == "held-out accuracy, model a1" and "95% CI" in v and f"{m['conditions']['A']['n_trials']} trials" in v
               for k, v in cls["facts"])
    empty = rp.sessions_from_records([{"session": "none1", "condition": "C", "movie": "", "fps": 30.0}], tmp)
    assert rp.classifier_section(ctx, "C", empty) is None and rp.gradcam_section(ctx, empty[0]) is None
    assert rp.zncc_section(ctx, "C", empty) is None


def test_true_response_maps_include_off_target_drive(tmp_path):
    """The truth's stim_drive (K x N: the target and the off-target excitation of its neighbours)
    enters each target's expected response map; a file without it falls back to the target alone."""
    K = 3
    fp = np.zeros((K, 8, 8))
    fp[0, :4, :4] = fp[1, :4, 4:] = fp[2, 4:, :4] = 1.0  # three cells side by side
    W = np.zeros((K, K))
    W[0, 2] = 0.5  # target (cell 0) drives cell 2 through W
    truth = {"W": W, "footprints": fp, "w_gain": np.float64(1.0), "target_cells": np.array([0]),
             "stim_drive": np.array([[20.0], [8.0], [0.0]])}  # off-target: cell 1 at 0.4 x the target's rate
    maps = gc.true_response_maps(truth, [0], (8, 8), context=0, kinetics=False)[0]
    np.testing.assert_allclose(maps, fp[0] + 0.4 * fp[1] + 0.5 * fp[2])
    old = {k: v for k, v in truth.items() if k != "stim_drive"}  # a ground truth from before stim_drive
    np.testing.assert_allclose(gc.true_response_maps(old, [0], (8, 8), context=0, kinetics=False)[0],
                               fp[0] + 0.5 * fp[2])
    # a simulated session with off-target excitation: its truth file carries it, relative to the target's rate
    from calflow.simulate import _stim_drive, save_ground_truth, simulate

    params = dataclasses.replace(TINY, n_frames=60, offtarget_radius_px=8.0)
    t = simulate(params, seed=3)
    gt = np.load(save_ground_truth(t, tmp_path / "ground_truth.npz"))
    rel = gc.relative_stim_drive(gt, gt["target_cells"])
    expect = _stim_drive(params, t.centers, t.target_cells)[0].T / params.stim_gain
    np.testing.assert_allclose(rel, expect)
    assert (rel > 0).sum() > len(gt["target_cells"])  # some neighbour is excited off target
    with_drive = gc.true_response_maps(gt, gt["target_cells"], (20, 20), context=1)
    plain = gc.true_response_maps({k: gt[k] for k in gt.files if k != "stim_drive"} | {"footprints": gt["footprints"]},
                                  gt["target_cells"], (20, 20), context=1)
    assert not np.allclose(with_drive, plain)


def _footprints_from_truth(entry, store):
    """footprints.zarr (the segment stage's layout) from the simulated session's true masks."""
    import zarr

    from calflow.segment.infer import footprints_from_labels
    from calflow.simulate import load_ground_truth

    labels = load_ground_truth(entry["truth"]).masks().astype(np.int32)
    fp = footprints_from_labels(labels, np.ones(labels.shape, np.float32))
    zarr.open_group(store, mode="w", zarr_format=3).attrs.update(
        {"format": "csr", "shape": list(fp.shape), "frame_shape": list(labels.shape), "n_components": fp.shape[0]})
    for key, arr, dims in (("data", fp.data, ("nnz",)), ("indices", fp.indices.astype(np.int64), ("nnz",)),
                           ("indptr", fp.indptr.astype(np.int64), ("component_ptr",))):
        write_array(store, key, arr, dims)
    return str(store)


def test_seed000_profile_runs_through_classify_gradcam_and_compare(trained, tmp_path):
    """classify.profile seed000 as the workflow resolves it: the cells mask, a single input frame
    (context 0), Grad-CAM at the last conv block with ReLU maps for ZNCC, and the summed ZNCC over all
    pattern pairs as the comparison's statistic."""
    from calflow.config import load_config

    _, trained_entries, _, _ = trained
    cfg = load_config("c.yaml", data={"classify": {"profile": "seed000"}}, log_profile=lambda _: None)
    entries = [{**e, "footprints": _footprints_from_truth(e, tmp_path / e["session"] / "footprints.zarr")}
               for e in trained_entries]
    section = {**FAST, "members": 2, **{k: cfg["classify"][k] for k in ("mask", "context")}}
    assert (section["mask"], section["context"]) == ("cells", 0)
    out = tmp_path / "classifier"
    m = cl.train_group(entries, entries[0]["targets"], section, out, group="a1")
    blob = torch.load(out / "model.pt", weights_only=True)
    assert blob["arch"]["in_channels"] == 1 and blob["meta"]["params"]["mask"] == "cells"
    chance = m["members"]["chance_target_accuracy"]
    assert m["members"]["ensemble_test_target_accuracy"] > chance + 0.1, m["members"]  # it learned something
    p = cl.ClassifyParams.from_config(section)
    with cl.load_session(entries[0], cl.read_targets(entries[0]["targets"]), p) as s:
        assert 0.05 < s.mask.mean() < 0.95  # the inputs outside the (dilated) cells are hidden
        np.testing.assert_array_equal(s.mask, cl.downsample_mask(cl.cell_mask(entries[0]["footprints"], 2), 1))
    stores, flat = [], 0
    for e in entries:
        st = tmp_path / e["session"] / "gradcam.zarr"
        info = gc.session_gradcam(e, out / "model.pt", cfg["gradcam"], st)
        g = open_group(st)
        assert (g.attrs["layer"], g.attrs["zncc_map"], g.attrs["method"]) == ("last", "relu", "gradcam")
        assert list(g.attrs["layer_shape"]) == [20, 20]  # 40 px, downsample 1, two blocks: the last at 1/2
        pm = np.asarray(g["pattern_maps"][:], np.float64)
        assert np.isfinite(pm).all() and np.abs(pm).max() > 0
        z = np.asarray(g["zncc"][:])
        np.testing.assert_allclose(z, gc.zncc_matrix(np.maximum(pm, 0)), atol=1e-6)  # NaN where a ReLU map is 0
        assert info["flat_maps"] == int((pm.max(axis=(1, 2)) <= 0).sum())
        flat += info["flat_maps"]
        stores.append(st)
    res = cmp.compare_conditions({"gradcam": stores}, "A", "B", {**cfg["compare"], "n_bootstrap": 20,
                                                                  "diagnostic_permutations": 0},
                                 [out / "metrics.json"], profile=cfg["classify"]["profile"])
    assert res["profile"] == "seed000" and (res["statistic"], res["summary"]) == ("all", "sum")
    head = res["sources"]["gradcam"]
    assert head["zncc_map"] == "relu"  # compare.zncc_map "": the stores' own
    for c in "AB":  # under this profile the headline is the seed study's own number
        assert res["conditions"][c]["seed_study_sum"]["mean"] == pytest.approx(head["conditions"][c]["statistic"],
                                                                                nan_ok=True)
    # On this tiny animal the last block's Grad-CAM is negative nearly everywhere (measured: every pattern map
    # with context 0), so the ReLU maps are empty: the comparison must say so rather than report a number.
    assert (sum(sum(x["flat_maps"].values()) for x in head["animals"]) > 0) == (flat > 0)
    assert (flat > 0) == any("pattern maps of Grad-CAM" in w and "flat" in w for w in res["warnings"])


# The simulated animal of benchmarks/gradcam_validation.py (design "criteria"): targets share
# driven cells (connection_prob 0.4 over 32 cells) with weak weights (0.1-0.3), so that w_gain 1.8
# changes their true similarity (+0.09 in mean off-diagonal ZNCC of the expected response maps);
# 18,000 frames give ~70 trials per single-target pattern and session.
CRITERIA = SimParams(n_frames=18000, height=96, width=96, n_cells=32, n_targets=8, n_pairs=0, connection_prob=0.4,
                     w_min=0.1, w_max=0.3, motion=False)


def _motion_store(movie_tif, store):
    """Copy a simulated TIFF movie into a motion.zarr store page by page (no whole movie in RAM)."""
    import tifffile

    with tifffile.TiffFile(movie_tif) as tif:
        pages = tif.pages
        first = pages[0].asarray()
        with MovieWriter(store, (len(pages), *first.shape), first.dtype, fps=30.0, chunk_frames=500) as w:
            for a in range(0, len(pages), 500):
                w.write(np.stack([pages[i].asarray() for i in range(a, min(a + 500, len(pages)))]))


@pytest.mark.slow
def test_validation_strengthened_w_detected_and_maps_follow_connectivity(tmp_path):
    """Issue criteria on one simulated animal (benchmark seed 0), with the default settings:
    Spearman(single-target Grad-CAM ZNCC, true similarity) >= 0.7 in each condition, the true
    similarity being the ZNCC of the targets' expected response maps (own + W-weighted driven
    footprints, each cell weighted by its expected calcium response); condition B (w_gain 1.8)
    against A (w_gain 1): D > 0 and permutation p < 0.01. Each target's signed map is high where its
    true response is (ZNCC with its expected response map > 0.5: not inverted), so the ReLU-ed
    display maps show it."""
    from scipy.stats import spearmanr

    torch.set_num_threads(1)
    entries = []
    for name, cond, gain, seed in (("a0_A", "A", 1.0, 1000), ("a0_B", "B", 1.8, 2000)):
        files = write_session(tmp_path / "demo" / name, dataclasses.replace(CRITERIA, w_gain=gain), seed=seed,
                              anatomy_seed=5000, threads=1)
        store = tmp_path / name / "motion.zarr"
        _motion_store(files["movie"], store)
        entries.append({"session": name, "condition": cond, "motion": str(store), "stim_log": str(files["stim_log"]),
                        "targets": str(files["targets"]), "truth": str(files["ground_truth"])})
    out = tmp_path / "classifier"
    # one network, as validated (the seed ensemble averages such networks' maps; tests of the ensemble above)
    cl.train_group(entries, entries[0]["targets"], {"device": "cpu", "members": 1}, out, group="a0")
    stores = []
    for e in entries:
        st = tmp_path / e["session"] / "gradcam.zarr"
        gc.session_gradcam(e, out / "model.pt", {}, st)
        stores.append(st)
        g = open_group(st)
        names = list(g.attrs["patterns"])
        assert names == [str(j) for j in range(8)]
        gt = np.load(e["truth"])
        truth_maps = gc.true_response_maps(gt, gt["target_cells"], g.attrs["layer_shape"],
                                           context=cl.ClassifyParams().context)
        rho = spearmanr(gc.offdiag(np.asarray(g["zncc"][:])), gc.offdiag(gc.zncc_matrix(truth_maps))).statistic
        assert rho >= 0.7, (e["session"], rho)
        alike = [gc.zncc(m, t) for m, t in zip(np.asarray(g["pattern_maps"][:]), truth_maps, strict=True)]
        assert np.mean(alike) > 0.5, (e["session"], alike)
    res = cmp.compare_conditions({"gradcam": stores}, "A", "B", {"statistic": "all", "n_bootstrap": 0,
                                                                  "diagnostic_permutations": 200, "seed": 0},
                                 [out / "metrics.json"])
    (animal,) = res["sources"]["gradcam"]["animals"]  # one animal: the within-animal diagnostic
    assert animal["effect"] > 0 and animal["session_difference_p"] < 0.01, animal
