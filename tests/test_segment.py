"""calflow.segment: networks, targets, dihedral augmentation, training (resume, best-by-F1), inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calflow.segment.data import Sample, dihedral, dihedral_inverse, targets_from_labels
from calflow.segment.infer import footprints_from_labels, instances_from_maps, load_segmenter, segment_image
from calflow.segment.model import DCN, UNet, build_model
from calflow.segment.train import TrainParams, _batch, train


def blobs(seed: int, n: int = 6, size: int = 48):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.int32)
    img = rng.normal(0, 0.05, (size, size))
    k = 0
    for _ in range(50):
        cy, cx = rng.uniform(6, size - 6, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
        if (lab[disc] > 0).any() or k >= n:
            continue
        k += 1
        lab[disc] = k
        img += disc * 1.0
    return np.stack([img, img ** 2]).astype(np.float32), lab


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_dihedral_group_is_complete_and_invertible():
    x = np.arange(12.0).reshape(3, 4)
    outs = [dihedral(x, k) for k in range(8)]
    assert len({o.tobytes() + bytes(o.shape) for o in outs}) == 8
    for k in range(8):
        np.testing.assert_array_equal(dihedral_inverse(dihedral(x, k), k), x)
    sq = np.arange(16.0).reshape(4, 4)
    expected = {np.rot90(f, r).tobytes() for f in (sq, sq.T) for r in range(4)}
    assert {dihedral(sq, k).tobytes() for k in range(8)} == expected
    with pytest.raises(ValueError):
        dihedral(x, 8)


def test_augmentation_is_consistent_between_image_and_targets():
    img, lab = blobs(1)
    # the first input channel equals (fg + noise): after augmentation it must still line up with fg
    img[0] = (lab > 0).astype(np.float32)
    s = Sample.from_labels(img, lab)
    p = TrainParams.from_config({"batch_size": 16, "patch_size": 32, "brightness": 0.1, "contrast": 0.1, "depth": 2})
    x, fg, cue = _batch([s], p, it=3)
    assert x.shape == (16, 2, 32, 32) and fg.shape == cue.shape == (16, 1, 32, 32)
    for i in range(16):
        xi = x[i, 0].numpy()
        # affine brightness/contrast of a binary image: two levels, high exactly where fg = 1
        hi, lo = xi[fg[i, 0].numpy() > 0], xi[fg[i, 0].numpy() == 0]
        if hi.size and lo.size:
            assert np.ptp(hi) < 1e-5 and np.ptp(lo) < 1e-5 and hi[0] > lo[0]
        assert ((cue[i, 0] > 0) <= (fg[i, 0] > 0)).all()
    ks = {int(np.random.default_rng([p.seed, it]).integers(0, 8, size=1)[0]) for it in range(50)}
    assert len(ks) >= 6  # draws cover the group


def test_targets_distance_cue():
    lab = np.zeros((20, 20), int)
    lab[2:9, 2:9] = 1
    lab[2:9, 9:16] = 2  # touching
    fg, cue = targets_from_labels(lab)
    assert fg.sum() == 98 and cue.max() == pytest.approx(1.0)
    assert cue[5, 5] == pytest.approx(1.0) and cue[5, 12] == pytest.approx(1.0)
    assert cue[5, 8] < 0.5 and cue[5, 9] < 0.5  # the shared edge is low: the two peaks separate


@pytest.mark.parametrize("kind", ["unet", "dcn"])
def test_networks_shapes(kind):
    m = build_model({"kind": kind, "in_channels": 3, "out_channels": 2, "base": 4, "depth": 3,
                     "deconv_kernels": [3, 8, 12] if kind == "dcn" else None})
    assert m(torch.zeros(2, 3, 32, 48)).shape == (2, 2, 32, 48)
    assert isinstance(m, UNet if kind == "unet" else DCN)


def test_dcn_kernel_validation():
    with pytest.raises(ValueError):
        DCN(1, 1, base=4, depth=2, deconv_kernels=[4])
    with pytest.raises(ValueError):
        DCN(1, 1, base=4, depth=2, deconv_kernels=[4, 2])


def test_watershed_splits_touching_cells():
    _, cue = targets_from_labels(np.pad(np.ones((7, 14), int) * np.r_[[1] * 7, [2] * 7], 3))
    prob = (cue > 0).astype(np.float32)
    labels = instances_from_maps(prob, cue, min_size=5)
    assert labels.max() == 2
    fp = footprints_from_labels(labels, prob)
    assert fp.shape == (2, prob.size) and fp.nnz == (labels > 0).sum()


PARAMS = {"base_channels": 4, "depth": 2, "iterations": 12, "batch_size": 2, "patch_size": 32, "val_every": 4,
          "device": "cpu", "seed": 5, "post": {"prob_threshold": 0.5, "cue_threshold": 0.5, "min_size": 5}}


def data():
    tr = [Sample.from_labels(*blobs(s)) for s in (1, 2)]
    va = [Sample.from_labels(*blobs(3))]
    return tr, va


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    tr, va = data()
    full = train(tr, va, PARAMS, tmp_path / "a", out_path=tmp_path / "a.pt")
    part = train(tr, va, PARAMS, tmp_path / "b", stop_at=8)
    assert not part["completed"] and part["iterations"] == 8
    rest = train(tr, va, PARAMS, tmp_path / "b", out_path=tmp_path / "b.pt")
    assert rest["resumed_from"] == 8 and rest["completed"]
    assert rest["history"] == full["history"]
    la = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    lb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for k, v in la["model"].items():
        assert torch.equal(v, lb["model"][k]), k
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def test_same_seed_same_model_other_seed_differs(tmp_path):
    tr, va = data()
    p = {**PARAMS, "iterations": 4}
    r1 = train(tr, va, p, tmp_path / "1", resume=False)
    r2 = train(tr, va, p, tmp_path / "2", resume=False)
    r3 = train(tr, va, {**p, "seed": 6}, tmp_path / "3", resume=False)
    m = [torch.load(tmp_path / d / "last.pt", weights_only=True)["model"] for d in "123"]
    assert all(torch.equal(m[0][k], m[1][k]) for k in m[0])
    assert not all(torch.equal(m[0][k], m[2][k]) for k in m[0])
    assert r1["history"] == r2["history"] and r3["iterations"] == 4


def test_best_checkpoint_is_the_best_validation_score(tmp_path):
    tr, va = data()
    r = train(tr, va, PARAMS, tmp_path / "c", out_path=tmp_path / "best.pt")
    scores = [h["val_score"] for h in r["history"]]
    assert r["best_score"] == max(scores)
    assert r["best_iteration"] == r["history"][int(np.argmax(scores))]["iteration"]
    model, info = load_segmenter(tmp_path / "best.pt")  # weights_only=True inside
    assert info["meta"]["iteration"] == r["best_iteration"]
    assert info["meta"]["val_score"] == pytest.approx(r["best_score"])
    res = segment_image(model, info["arch"], va[0].image, info["meta"]["post"])
    assert res["labels"].shape == (48, 48) and res["probability"].shape == (48, 48)


def test_segmenter_files_carry_a_digest_and_old_files_without_one_still_load(tmp_path):
    from calflow.checkpoint import DIGEST
    from calflow.errors import CalflowInputError

    tr, va = data()
    train(tr, va, {**PARAMS, "iterations": 4}, tmp_path / "c", out_path=tmp_path / "seg.pt")
    for f in (tmp_path / "seg.pt", tmp_path / "c" / "last.pt"):  # the segmenter file and the resume checkpoint
        assert DIGEST in torch.load(f, weights_only=True), f
    model, info = load_segmenter(tmp_path / "seg.pt")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # a file from before the digest (like the bundled generalist) loads, with the same weights
    torch.save({"state_dict": state, "arch": info["arch"], "meta": info["meta"]}, tmp_path / "old.pt")
    old, _ = load_segmenter(tmp_path / "old.pt")
    assert all(torch.equal(v, state[k]) for k, v in old.state_dict().items())
    # one flipped weight: torch loads it silently, the digest does not
    w = next(v for k, v in state.items() if v.numel() >= 16 and v.dtype == torch.float32)
    data_ = bytearray((tmp_path / "seg.pt").read_bytes())
    at = data_.find(w.numpy().tobytes()[:32])
    assert at > 0
    data_[at + 5] ^= 0x01
    (tmp_path / "seg.pt").write_bytes(bytes(data_))
    with pytest.raises(CalflowInputError, match=r"seg\.pt: checksum mismatch") as err:
        load_segmenter(tmp_path / "seg.pt")
    assert "\n" not in str(err.value)
    (tmp_path / "c" / "last.pt").write_bytes(b"PK\x03\x04 half a zip")  # a damaged resume checkpoint: one line
    with pytest.raises(CalflowInputError, match=r"last\.pt: not a readable checkpoint.*Fix: delete it to restart"):
        train(tr, va, {**PARAMS, "iterations": 4}, tmp_path / "c")


def test_changed_settings_do_not_resume(tmp_path):
    tr, va = data()
    train(tr, va, {**PARAMS, "iterations": 4}, tmp_path / "d")
    r = train(tr, va, {**PARAMS, "iterations": 4, "lr": 1e-3}, tmp_path / "d")
    assert r["resumed_from"] is None


def test_semantic_task_dcn(tmp_path):
    tr, va = data()
    r = train(tr, va, {**PARAMS, "task": "semantic", "network": "dcn", "deconv_kernels": [4, 8], "iterations": 4},
              tmp_path / "e", out_path=tmp_path / "e.pt")
    assert r["score_name"] == "foreground_iou" and r["arch"]["out_channels"] == 1
    assert 0 <= r["best_score"] <= 1


def test_patience_stops_on_a_validation_plateau_and_resumes_the_same(tmp_path):
    tr, va = data()
    p = {**PARAMS, "iterations": 40, "patience": 8, "lr": 0.0}  # lr 0: the score never improves after the first
    r = train(tr, va, p, tmp_path / "p", out_path=tmp_path / "p.pt")
    assert r["stopped_on_plateau"] and r["completed"] and r["best_iteration"] == 4
    assert r["iterations"] == 12 and (tmp_path / "p.pt").exists()  # validations at 4, 8, 12: 12 - 4 >= 8
    part = train(tr, va, p, tmp_path / "q", stop_at=8)
    rest = train(tr, va, p, tmp_path / "q", out_path=tmp_path / "q.pt")
    assert rest["resumed_from"] == 8 and rest["iterations"] == 12 and rest["history"] == r["history"]
    assert not part["stopped_on_plateau"]


def test_training_starts_from_given_weights(tmp_path):
    tr, va = data()
    train(tr, va, {**PARAMS, "iterations": 8}, tmp_path / "a", out_path=tmp_path / "a.pt")
    start = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    r = train(tr, va, {**PARAMS, "iterations": 4, "lr": 0.0, "seed": 9}, tmp_path / "b", init_weights=tmp_path / "a.pt")
    assert r["init"] == str(tmp_path / "a.pt")
    after = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    for k, v in start.items():  # lr 0: the weights stay the given ones (BatchNorm statistics still move)
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, after[k]), k
    from calflow.errors import CalflowInputError

    with pytest.raises(CalflowInputError, match="architecture"):
        train(tr, va, {**PARAMS, "iterations": 4, "base_channels": 8}, tmp_path / "c", init_weights=tmp_path / "a.pt")


def test_init_compatible_names_the_mismatch(tmp_path):
    from calflow.segment.stage import init_compatible

    tr, va = data()
    train(tr, va, {**PARAMS, "iterations": 4}, tmp_path / "a", out_path=tmp_path / "a.pt",
          meta={"channels": ["mean", "max"]})
    section = {"base_channels": 4, "depth": 2, "channels": ["mean", "max"]}
    assert init_compatible(tmp_path / "a.pt", section) is None
    assert "architecture" in init_compatible(tmp_path / "a.pt", {**section, "depth": 3})
    assert "channels" in init_compatible(tmp_path / "a.pt", {**section, "channels": ["std", "max"]})


def test_bundled_generalist_loads_weights_only_and_fits_the_default_config():
    from calflow.segment.data import DEFAULT_CHANNELS
    from calflow.segment.stage import bundled_segmenter, init_compatible

    path = bundled_segmenter()
    if not path.exists():
        pytest.skip(f"{path} not in this checkout")
    assert path.stat().st_size < 5 * 2**20
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"state_dict", "arch", "meta"} and blob["meta"]["generalist"] is True
    assert init_compatible(path, {}) is None  # the config defaults fine-tune it
    model, info = load_segmenter(path)
    img = np.random.default_rng(0).normal(size=(len(DEFAULT_CHANNELS), 40, 56)).astype(np.float32)
    res = segment_image(model, info["arch"], img, info["meta"]["post"])
    assert res["labels"].shape == (40, 56)


def test_random_sim_params_are_deterministic_and_broad():
    from calflow.segment.pretrain import random_sim_params

    a, b = random_sim_params(3), random_sim_params(3)
    assert a == b and random_sim_params(4) != a
    ps = [random_sim_params(s) for s in range(60)]
    radii = np.array([(p.radius_min + p.radius_max) / 2 for p in ps])
    assert radii.min() < 4 and radii.max() > 8  # diameters ~6-20 px
    assert min(p.tau_decay_s for p in ps) < 0.5 < 1.2 < max(p.tau_decay_s for p in ps)
    assert all(p.n_targets == 0 and p.motion for p in ps)


def test_corr_pnr_seeds_find_simulated_cells(tmp_path):
    from calflow.io import MovieWriter
    from calflow.metrics import evaluate_instances
    from calflow.segment.corr_pnr import seed_session
    from calflow.segment.footprints import read_footprints
    from calflow.simulate import SimParams, render_frames, simulate

    p = SimParams(n_frames=300, height=64, width=64, n_cells=10, n_targets=0, motion=False, spike_rate_hz=1.0,
                  radius_min=4.0, radius_max=5.0)
    truth = simulate(p, seed=2)
    movie = render_frames(truth, threads=1)
    with MovieWriter(tmp_path / "m.zarr", movie.shape, movie.dtype, fps=p.fps) as w:
        w.write(movie)
    info = seed_session(tmp_path / "m.zarr", None, tmp_path / "fp.zarr", params={"radius": 5.0})
    fp, attrs = read_footprints(tmp_path / "fp.zarr")
    assert attrs["method"] == "corr_pnr" and fp.shape == (info["n_components"], 64 * 64)
    ev = evaluate_instances(truth.masks(), fp > 0, (64, 64))
    assert ev["centroid"]["f1"] >= 0.6, ev


def test_boundary_instances_tile_the_image_and_split_at_membranes():
    from calflow.segment.infer import instances_from_boundaries

    prob = np.ones((40, 40), np.float32)
    prob[:, 19:21] = 0.0  # a membrane between two cells
    prob[10, 5] = 0.0  # a speck inside a cell does not split it
    labels = instances_from_boundaries(prob, marker_threshold=0.8, min_marker=20, smooth=0.5)
    assert labels.min() >= 1 and len(np.unique(labels)) == 2
    assert len(np.unique(labels[:, :19])) == 1 and labels[0, 0] != labels[0, 39]


def test_corr_pnr_schema_defaults_match_the_parameter_class():
    import dataclasses

    from calflow.config import load_config
    from calflow.segment.corr_pnr import CorrPnrParams

    cfg = load_config("c.yaml", data={})
    assert cfg["segment"]["corr_pnr"] == dataclasses.asdict(CorrPnrParams())
    assert cfg["segment"]["method"] == "network" and cfg["segment"]["init"] == "pretrained"


def test_texture_augmentation_is_off_by_default_and_leaves_targets_alone():
    img, lab = blobs(1)
    s = Sample.from_labels(img, lab)
    base = {"batch_size": 4, "patch_size": 32, "depth": 2}
    x0, fg0, cue0 = _batch([s], TrainParams.from_config(base), it=2)
    x1, fg1, cue1 = _batch([s], TrainParams.from_config({**base, "texture": 0.0}), it=2)
    xt, fgt, cuet = _batch([s], TrainParams.from_config({**base, "texture": 0.5}), it=2)
    assert torch.equal(x0, x1) and torch.equal(fg0, fg1) and torch.equal(cue0, cue1)
    # the first patch is cropped before any texture draw: same targets, textured inputs
    assert torch.equal(fg0[0], fgt[0]) and torch.equal(cue0[0], cuet[0]) and not torch.equal(x0[0], xt[0])
