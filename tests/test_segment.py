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


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
