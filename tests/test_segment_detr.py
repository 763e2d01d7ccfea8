"""calflow.segment.detr / matching: set-prediction segmenter, Hungarian matching, set and trace losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_segment import blobs

from calflow.metrics import match_iou
from calflow.segment.data import Sample
from calflow.segment.detr import DETRSegmenter, instances_from_sets, sine_position
from calflow.segment.infer import load_segmenter, segment_image
from calflow.segment.matching import (
    LossWeights,
    extract_traces,
    hungarian_match,
    set_loss,
    target_masks,
    trace_loss,
)
from calflow.segment.params import SegmentParams
from calflow.segment.train import TrainParams, _batch, train

DETR = {"network": "detr", "base_channels": 16, "queries": 12, "patch_size": 48, "batch_size": 1, "lr": 3e-3,
        "brightness": 0.0, "contrast": 0.0, "weight_decay": 0.0, "device": "cpu", "patience": 0,
        "post": {"prob_threshold": 0.5, "cue_threshold": 0.5, "min_size": 5}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def discs(n: int = 4, size: int = 32) -> np.ndarray:
    """(size, size) label image of ``n`` separate discs of radius 4."""
    lab = np.zeros((size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        cy, cx = 7 + 16 * (k // 2), 7 + 16 * (k % 2)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = k + 1
    return lab


def perfect(lab: np.ndarray, order: list[int], q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Objectness and mask logits whose query i predicts cell order[i] exactly (the rest: nothing)."""
    logits = torch.full((q,), -20.0)
    masks = torch.full((q, *lab.shape), -20.0)
    for i, k in enumerate(order):
        logits[i] = 20.0
        masks[i][torch.from_numpy(lab == k)] = 20.0
    return logits, masks


def test_hungarian_match_finds_the_planted_permutation():
    lab = discs(4)
    order = [3, 1, 4, 2]  # query i predicts cell order[i]; queries 4, 5 predict nothing
    logits, masks = perfect(lab, order, 6)
    tm, ids = target_masks(torch.from_numpy(lab))
    qi, ki = hungarian_match(logits, masks, tm)
    assert sorted(qi.tolist()) == [0, 1, 2, 3]
    assert {int(q): int(ids[k]) for q, k in zip(qi, ki, strict=True)} == {0: 3, 1: 1, 2: 4, 3: 2}
    # against brute force on a small random cost: the matching's total cost is the minimum
    from itertools import permutations

    from calflow.segment.matching import pairwise_costs

    rng = torch.Generator().manual_seed(0)
    ml = torch.randn(4, 32, 32, generator=rng)
    lg = torch.randn(4, generator=rng)
    bce, dice = pairwise_costs(ml.flatten(1), tm.flatten(1))
    w = LossWeights()
    cost = (w.w_class * -lg.sigmoid()[:, None] + w.w_bce * bce + w.w_dice * dice).numpy()
    qi, ki = hungarian_match(lg, ml, tm, w)
    best = min(sum(cost[p[j], j] for j in range(4)) for p in permutations(range(4)))
    assert cost[qi, ki].sum() == pytest.approx(best, rel=1e-6)


def test_set_loss_is_minimal_for_a_perfect_prediction():
    lab = torch.from_numpy(discs(4))
    logits, masks = perfect(lab.numpy(), [2, 4, 1, 3], 8)
    good = set_loss(logits, masks, lab)
    assert float(good["loss"]) < 1e-3
    # a query that misses its cell, or a spurious object, costs
    worse_mask = masks.clone()
    worse_mask[0] = torch.roll(worse_mask[0], 3, dims=0)
    worse_cls = logits.clone()
    worse_cls[6] = 20.0
    assert float(set_loss(logits, worse_mask, lab)["loss"]) > float(good["loss"]) + 0.1
    assert float(set_loss(worse_cls, masks, lab)["loss"]) > float(good["loss"]) + 0.1
    assert float(set_loss(logits, masks, torch.zeros_like(lab))["loss"]) > 1.0  # empty image: every object is false


def test_trace_loss_rewards_the_mask_that_extracts_the_true_trace():
    lab = discs(2)
    rng = np.random.default_rng(0)
    t = 40
    traces = rng.gamma(1.0, 1.0, (2, t)).astype(np.float32)
    frames = (sum((lab == k + 1)[None] * traces[k][:, None, None] for k in range(2))
              + rng.normal(0, 0.05, (t, *lab.shape))).astype(np.float32)
    fr, tr = torch.from_numpy(frames), torch.from_numpy(traces)
    _, masks = perfect(lab, [1, 2], 2)
    assert float(trace_loss(masks, fr, tr)) < 0.01
    assert float(trace_loss(masks.flip(0), fr, tr)) > 0.5  # masks swapped: the other cell's trace
    # through set_loss: the same term from given traces and from mask-averaged annotation traces
    lg = torch.tensor([20.0, 20.0])
    w = LossWeights(trace_weight=1.0)
    given = set_loss(lg, masks, torch.from_numpy(lab), w, fr, tr)["trace"]
    averaged = set_loss(lg, masks, torch.from_numpy(lab), w, fr, None)["trace"]
    assert float(given) < 0.01 and float(averaged) < 1e-4
    assert extract_traces(torch.from_numpy((lab == 1)[None].astype(np.float32)), fr).shape == (1, t)
    ml = torch.zeros(1, *lab.shape, requires_grad=True)  # the term has a gradient through the soft mask
    trace_loss(ml, fr, tr[:1]).backward()
    assert ml.grad is not None and float(ml.grad.abs().sum()) > 0


def test_network_shapes_and_position_embedding():
    m = DETRSegmenter(3, dim=16, queries=5, window=4)
    out = m(torch.zeros(2, 3, 24, 40))
    assert out["logits"].shape == (2, 5) and out["masks"].shape == (2, 5, 24, 40) and len(out["aux"]) == 1
    pe = sine_position(6, 7, 16)
    assert pe.shape == (16, 6, 7) and len({pe[:, i, j].numpy().tobytes() for i in range(6) for j in range(7)}) == 42
    with pytest.raises(ValueError, match="multiples of 8"):
        m(torch.zeros(1, 3, 20, 24))


def test_instances_resolve_overlaps_by_score():
    a = np.zeros((16, 16), np.float32)
    a[2:8, 2:8] = 0.9
    b = np.zeros_like(a)
    b[4:10, 4:10] = 0.9  # overlaps a by 16 of its 36 px
    c = a.copy()  # a duplicate of a, lower score
    labels, prob = instances_from_sets(np.array([0.6, 0.9, 0.55, 0.2]), [(0, 0, a), (0, 0, b), (0, 0, c), (0, 0, a)],
                                       (16, 16), prob_threshold=0.5, min_size=5)
    assert labels.max() == 2 and (labels == 1).sum() == 36 and (labels == 2).sum() == 20
    assert labels[5, 5] == 1 and prob[5, 5] == pytest.approx(0.9)


def test_params_accept_detr_and_reject_bad_patch():
    assert SegmentParams.from_config({"network": "detr", "queries": 16, "trace_weight": 0.5}).queries == 16
    with pytest.raises(Exception, match="multiple of 8"):
        SegmentParams.from_config({"network": "detr", "depth": 1, "patch_size": 20})
    with pytest.raises(Exception, match="trace_weight"):
        SegmentParams.from_config({"network": "detr", "trace_weight": -1})


def _sample(seed: int = 0) -> Sample:
    img, lab = blobs(seed, n=5, size=48)
    s = Sample.from_labels(img, lab)
    rng = np.random.default_rng(seed)
    tr = rng.gamma(1.0, 1.0, (int(lab.max()), 20)).astype(np.float32)
    s.frames = np.stack([sum((lab == k + 1) * tr[k, t] for k in range(len(tr))) for t in range(20)]).astype(np.float32)
    s.traces = tr
    return s


def test_batch_sets_line_up_with_the_crops():
    s = _sample()
    s.image[0] = s.fg
    p = TrainParams.from_config({**DETR, "batch_size": 4, "patch_size": 32})
    sets: dict = {}
    x, fg, _ = _batch([s], p, 5, sets)
    x2, _, _ = _batch([s], p, 5)
    assert torch.equal(x, x2)  # asking for the sets draws nothing more
    assert sets["labels"].shape == (4, 32, 32) and torch.equal((sets["labels"] > 0).float(), x[:, 0])
    for b in range(4):  # every crop's frames show each cell's own trace
        for k in torch.unique(sets["labels"][b])[1:]:
            pix = sets["frames"][b][:, sets["labels"][b] == k]
            assert torch.allclose(pix[:, 0], sets["traces"][b][int(k) - 1])


def test_detr_overfits_one_image():
    """Network + matching + loss can learn: 60 Adam steps on one 48 x 48 image give F1 > 0.9."""
    from calflow.segment.detr import predict_sets
    from calflow.segment.matching import batch_loss

    img, lab = blobs(0, n=5, size=48)
    torch.manual_seed(0)
    m = DETRSegmenter(2, dim=32, queries=16)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    x, labels = torch.from_numpy(img)[None], torch.from_numpy(lab.astype(np.int64))[None]
    for _ in range(60):
        m.train()
        loss = batch_loss(m(x), labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    scores, masks = predict_sets(m, img, tile=48)
    pred, _ = instances_from_sets(scores, masks, lab.shape, prob_threshold=0.5, min_size=5)
    assert match_iou(lab, pred)["f1"] > 0.9


def test_detr_trains_through_train_and_roundtrips(tmp_path):
    s = _sample()
    res = train([s], [s], {**DETR, "iterations": 20, "val_every": 10, "trace_weight": 0.5}, tmp_path / "ck",
                out_path=tmp_path / "m.pt")
    assert res["completed"] and res["arch"]["kind"] == "detr" and res["history"][-1]["loss"] < res["history"][0]["loss"]
    model, info = load_segmenter(tmp_path / "m.pt")
    out = segment_image(model, info["arch"], s.image, info["meta"]["post"])
    assert out["cue"] is None and out["labels"].shape == s.labels.shape
    # the saved file is weights only and reloads to the same outputs
    model2, _ = load_segmenter(tmp_path / "m.pt")
    x = torch.from_numpy(s.image[None])
    with torch.no_grad():
        assert torch.equal(model(x)["masks"], model2(x)["masks"])


def test_detr_training_is_seeded_and_resumes_exactly(tmp_path):
    s = _sample(1)
    p = {**DETR, "iterations": 6, "val_every": 3, "trace_weight": 0.5, "tune_post": False}
    train([s], [s], p, tmp_path / "a", out_path=tmp_path / "a.pt")
    train([s], [s], p, tmp_path / "b", stop_at=3)
    train([s], [s], p, tmp_path / "b", out_path=tmp_path / "b.pt")
    train([s], [s], {**p, "seed": 1}, tmp_path / "c", out_path=tmp_path / "c.pt")
    last = {k: torch.load(tmp_path / k / "last.pt", weights_only=True)["model"] for k in "abc"}
    for name, v in last["a"].items():
        assert torch.equal(v, last["b"][name]), name
    assert any(not torch.equal(v, last["c"][n]) for n, v in last["a"].items())
