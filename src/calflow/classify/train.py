"""Training and evaluation of one fold's ensemble: batches, the training loop, predictions, metrics.

Training is multi-label: sigmoid + binary cross-entropy of the (B, N + 1) logits against the
multi-hot labels of the stim log, every other sample a stimulated frame, with random
brightness/contrast, translation and (``mix``) background augmentation, inputs masked by the
session's mask (:func:`calflow.classify.data.load_session`). The loss is the sum over the K members
of each member's mean BCE; the learning rate decays on a cosine over ``iterations``.

Determinism: at every iteration member m draws its batch and augmentation from
``numpy.random.default_rng([seed, fold, iteration, m])`` and torch (dropout) is re-seeded from
``[seed, fold, iteration, 0, 1]``, so a run resumed from ``fold{f}_last.pt`` (model + optimiser
state + iteration + history, tensors and plain values only, ``torch.load(weights_only=True)``)
ends with the same weights as an uninterrupted one. A checkpoint is used only when its fingerprint
(the model's settings, the fold and a sample of the data) matches.

Metrics (:func:`frame_metrics`): accuracy under "correct when the top prediction is among the
stimulated targets" (frames with a stimulation), per-target accuracy, a confusion matrix (true
pattern x top output).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from calflow.checkpoint import load_weights, save_weights
from calflow.classify.data import SessionData, _net_input, training_frames, window
from calflow.classify.model import StimEnsemble, StimNet, crop_hw, init_ensemble
from calflow.classify.params import ClassifyParams
from calflow.device import resolve_device
from calflow.errors import CalflowInputError
from calflow.io import atomic_output
from calflow.params import runtime_keys
from calflow.stimulation import NONE

log = logging.getLogger("calflow.classify")


# settings of the machine a job runs on (and shuffle_control, a workflow switch), not of the model: they leave
# the checkpoint fingerprint alone (declared runtime=True in ClassifyParams)
_RUNTIME_KEYS = runtime_keys(ClassifyParams)


def _fingerprint(p: ClassifyParams, data: Sequence[SessionData], fold: int) -> str:
    keep = {k: v for k, v in dataclasses.asdict(p).items() if k not in _RUNTIME_KEYS}
    h = hashlib.sha256(json.dumps({**keep, "fold": fold}, sort_keys=True).encode())
    for s in data:
        h.update(s.frames[:: max(1, len(s.frames) // 50)].tobytes())
        h.update(s.labels.tobytes())
        h.update(s.mask.tobytes())
    return h.hexdigest()[:16]


@dataclass
class _Pools:
    """A fold's training frames per session: all of them, the stimulated ones and the ``none`` ones
    (computed once per fold, not per batch)."""

    all: list[np.ndarray]
    stim: list[np.ndarray]
    none: list[np.ndarray]

    @classmethod
    def of(cls, data: Sequence[SessionData], pools: list[np.ndarray]) -> _Pools:
        none = [s.labels[pool, -1] > 0.5 for s, pool in zip(data, pools, strict=True)]
        return cls(pools, [pool[~m] for pool, m in zip(pools, none, strict=True)],
                   [pool[m] for pool, m in zip(pools, none, strict=True)])


def _batch(data: Sequence[SessionData], pools: _Pools, p: ClassifyParams, fold: int, it: int,
           hw: tuple[int, int], member: int, out: np.ndarray, out_labels: np.ndarray) -> None:
    """Member ``member``'s batch of iteration ``it``, drawn from ``default_rng([seed, fold, it, member])``
    (member 0: the single network's ``[seed, fold, it]``), written into ``out`` (B, C, h, w) inputs and
    ``out_labels`` (B, N + 1) (views of the ensemble's arrays, no copy).

    Every random number is drawn first, sample by sample; then the windows are built one at a
    time, each read once and normalised, mixed, jittered, shifted, cropped and masked while it is
    in cache (a window of 11 frames of 64 x 64 px is 180 KB; a member's whole batch, 5.8 MB, is not:
    whole-batch passes made the batch cost 0.6 x the network's forward and backward)."""
    rng = np.random.default_rng([p.seed, fold, it, member])
    sizes = np.array([len(x) for x in pools.all], float)
    which = rng.choice(len(pools.all), size=p.batch_size, p=sizes / sizes.sum())
    t = np.zeros(p.batch_size, np.int64)
    quiet_t = np.full(p.batch_size, -1, np.int64)
    gain, offset, quiet_w = (np.zeros(p.batch_size, np.float32) for _ in range(3))
    roll = np.zeros((p.batch_size, 2), np.int64)
    for i, k in enumerate(which):
        pool = pools.all[k]
        stim = pools.stim[k]
        if i % 2 == 0 and len(stim):  # every other frame a stimulated one: balanced against "none"
            pool = stim
        t[i] = int(pool[rng.integers(0, len(pool))])
        gain[i] = rng.uniform(1 - p.contrast, 1 + p.contrast)
        offset[i] = rng.uniform(-p.brightness, p.brightness)
        if p.mix and rng.random() < p.mix:  # background mixing: the label stays, the spontaneous activity changes
            quiet = pools.none[k]
            if len(quiet):
                quiet_w[i] = rng.uniform(0.5, 1.0)
                quiet_t[i] = int(quiet[rng.integers(0, len(quiet))])
        if p.shift:
            roll[i] = rng.integers(-p.shift, p.shift + 1, size=2)
    n_in = 2 * p.context + 1
    H, W = data[0].frames.shape[1:]
    h, w = hw
    buf, extra = np.empty((2, 1, n_in, H, W), np.float32)  # one window; the mixed-in window, then the shifted one
    # each session's mask repeated over the window's frames (one flat multiply, not a broadcast of
    # short rows), or None where it is all ones (mask: none; the copy gives the same values)
    masks = [None if (s.mask[:h, :w] == 1).all() else np.repeat(s.mask[None, :h, :w], n_in, axis=0).astype(np.float32)
             for s in data]
    for i, (k, dy, dx) in enumerate(zip(which.tolist(), *roll.T.tolist(), strict=True)):
        s = data[k]
        window(s, t[i : i + 1], p.context, out=buf)
        x = buf[0]
        if quiet_t[i] >= 0:
            q = window(s, quiet_t[i : i + 1], p.context, out=extra)[0]
            q *= quiet_w[i]
            x += q
        x *= gain[i]  # the same float32 values as x * gain + offset
        x += offset[i]
        if dy or dx:
            x = _roll_into(x, dy, dx, extra[0])
        if masks[k] is None:  # crop to the network's size (and mask)
            out[i] = x[:, :h, :w]
        else:
            np.multiply(x[:, :h, :w], masks[k], out=out[i])
        out_labels[i] = s.labels[t[i]]


def _roll_into(x: np.ndarray, dy: int, dx: int, out: np.ndarray) -> np.ndarray:
    """(C, H, W) ``x`` rolled by (dy, dx) px over (H, W) into ``out`` (np.roll's convention, values
    wrap around): four block copies."""
    H, W = x.shape[1:]
    dy, dx = dy % H, dx % W
    out[:, dy:, dx:] = x[:, : H - dy, : W - dx]
    out[:, dy:, :dx] = x[:, : H - dy, W - dx :]
    out[:, :dy, dx:] = x[:, H - dy :, : W - dx]
    out[:, :dy, :dx] = x[:, H - dy :, W - dx :]
    return out


CPU_PASS_BYTES = 4 << 20  # CPU: first-block activations per forward/backward pass, about a cache's worth


def pass_rows(model: StimEnsemble | StimNet, device: torch.device | str) -> int | None:
    """Samples per forward (and backward) pass: on the CPU as many as keep the first block's
    activations (K x width channels at the input resolution, float32) within :data:`CPU_PASS_BYTES`
    (a batch of 32 windows of 64 x 64 px trained 5 members 1.4 x faster in 4-6 passes than in one:
    the grouped layers' activations stay in cache); on a GPU None (the whole batch)."""
    if torch.device(device).type != "cpu":
        return None
    h, w = model.input_hw
    chans = model.chans[0] if isinstance(model, StimEnsemble) else model.features[0][0].out_channels
    return max(1, CPU_PASS_BYTES // (getattr(model, "members", 1) * chans * h * w * 4))


def _ensemble_batch(data: Sequence[SessionData], pools: _Pools, p: ClassifyParams, fold: int, it: int,
                    hw: tuple[int, int], out: tuple[np.ndarray, np.ndarray] | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member's own batch of iteration ``it``: inputs (B, K, C, h, w), labels (B, K, N + 1),
    written into ``out`` (:func:`batch_arrays`) when given (the training loop reuses one pair: a
    fresh 7 MB array per iteration costs a page fault per 4 KB)."""
    xs, ys = batch_arrays(p, hw, data[0].labels.shape[1]) if out is None else out
    for k in range(p.members):
        _batch(data, pools, p, fold, it, hw, k, out=xs[:, k], out_labels=ys[:, k])
    return torch.from_numpy(xs), torch.from_numpy(ys)


def batch_arrays(p: ClassifyParams, hw: tuple[int, int], n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """One ensemble batch's arrays: inputs (B, K, C, h, w) and labels (B, K, n_out), float32."""
    return (np.empty((p.batch_size, p.members, 2 * p.context + 1, *hw), np.float32),
            np.empty((p.batch_size, p.members, n_out), np.float32))


def train_fold(data: Sequence[SessionData], p: ClassifyParams, fold: int, checkpoint_dir: str | Path,
               stop_at: int | None = None) -> tuple[StimEnsemble, dict]:
    """Train the ensemble of ``fold`` on every other fold's frames; resumable from ``fold{f}_last.pt``.

    One forward/backward pass per iteration trains all ``p.members`` members (:class:`StimEnsemble`),
    each on its own batch; the loss is the sum over members of each member's mean BCE."""
    device = resolve_device(p.device, key="classify.device")
    h, w = data[0].frames.shape[1:]
    hw = crop_hw(h, w, p.depth)
    n_out = data[0].labels.shape[1]
    arch = {"n_out": n_out, "in_channels": 2 * p.context + 1, "frame_hw": list(hw), "depth": p.depth,
            "width": p.width, "dropout": p.dropout, "context": p.context, "reduce": p.head_channels,
            "members": p.members}
    model = init_ensemble(arch, p.seed, fold).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    pools = [training_frames(s.trials.frame_fold, fold, p.context) for s in data]
    if not any(len(x) for x in pools):
        raise CalflowInputError(f"fold {fold} leaves no training frames", fix="use fewer classify.n_folds")
    batch_pools = _Pools.of(data, pools)
    ckdir = Path(checkpoint_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    last = ckdir / f"fold{fold}_last.pt"
    fp = _fingerprint(p, data, fold)
    it, history, resumed = 0, [], None
    if last.exists():
        ck = load_weights(last, device, keys=("model", "optimizer", "iteration", "history"),
                          fix="delete it to restart this fold's training (or rerun: a killed write leaves none)")
        if ck.get("fingerprint") == fp:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            it, history, resumed = int(ck["iteration"]), list(ck["history"]), int(ck["iteration"])
            log.info("fold %d: resuming from %s at iteration %d", fold, last, it)
        else:
            log.info("fold %d: ignoring %s (other data or settings)", fold, last)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    rows = pass_rows(model, device) or p.batch_size
    n_pass = -(-p.batch_size // rows)
    end = p.iterations if stop_at is None else min(stop_at, p.iterations)
    model.train()
    # one batch's arrays, refilled every iteration (the previous batch's graph is gone by then)
    arrays = batch_arrays(p, hw, n_out)
    t0 = time.perf_counter()
    while it < end:
        for g in opt.param_groups:  # cosine decay
            g["lr"] = float(p.lr * 0.5 * (1 + np.cos(np.pi * it / p.iterations)))
        x, y = _ensemble_batch(data, batch_pools, p, fold, it, hw, out=arrays)
        # dropout: per iteration ([seed, fold, it, 0, 1]: no member's batch seed)
        torch.manual_seed(int(np.random.default_rng([p.seed, fold, it, 0, 1]).integers(2**62)))
        opt.zero_grad(set_to_none=True)
        per_member = torch.zeros(p.members, device=device)  # (K,) each member's mean BCE over its batch
        for xc, yc in zip(x.tensor_split(n_pass), y.tensor_split(n_pass), strict=True):  # gradients accumulate
            part = bce(model(xc.to(device)), yc.to(device)).mean(dim=2).sum(dim=0) / len(x)
            part.sum().backward()  # the loss: the sum over members of each member's mean BCE
            per_member += part.detach()
        opt.step()
        it += 1
        if it % p.checkpoint_every == 0 or it == end:
            history.append({"iteration": it, "loss": float(per_member.mean().item()),
                            "member_loss": [float(v) for v in per_member.detach().cpu()]})
            log.info("fold %d iteration %d loss %.4f (mean over %d members)", fold, it, history[-1]["loss"],
                     p.members)
            with atomic_output(last) as tmp:
                save_weights({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it,
                              "history": history, "fingerprint": fp}, tmp)
    model.eval()
    return model, {"fold": fold, "iterations": it, "history": history, "resumed_from": resumed,
                   "seconds": time.perf_counter() - t0, "arch": arch, "fingerprint": fp}


@torch.no_grad()
def predict(model: StimEnsemble | StimNet, s: SessionData, frames: np.ndarray | None = None, batch: int = 256,
            members: bool = False) -> np.ndarray:
    """Sigmoid outputs of ``model`` on the session's frames (or the given indices): the ensemble's
    (mean over members of the sigmoid), (T, N + 1), or with ``members`` every member's, (T, K, N + 1)."""
    device = next(model.parameters()).device
    idx = np.arange(len(s.frames)) if frames is None else np.asarray(frames)
    K = getattr(model, "members", 1)
    out = np.empty((len(idx), K, model.n_out), np.float32)
    model.eval()
    ctx = (model.in_channels if isinstance(model, StimEnsemble) else model.features[0][0].in_channels) // 2
    batch = min(batch, pass_rows(model, device) or batch)
    for a in range(0, len(idx), batch):
        x = torch.from_numpy(_net_input(s, window(s, idx[a : a + batch], ctx), model.input_hw)).to(device)
        out[a : a + batch] = torch.sigmoid(model(x)).reshape(len(x), K, model.n_out).cpu().numpy()
    return out if members else out.mean(axis=1)


def stimulated_correct(prob: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The accuracy rule frame by frame: (T,) bool "has a stimulation" and (T,) bool "correct" (a
    stimulated frame whose top output, over all N + 1, is one of its stimulated targets)."""
    n = labels.shape[1] - 1
    stim = labels[:, :n] > 0.5
    is_stim = stim.any(axis=1)
    top = prob.argmax(axis=1)
    correct = np.zeros(len(labels), bool)
    correct[is_stim] = stim[is_stim, np.minimum(top[is_stim], n - 1)] & (top[is_stim] < n)
    return is_stim, correct


def trial_counts(prob: np.ndarray, labels: np.ndarray, unit: np.ndarray, n_trials: int) -> dict[str, list[int]]:
    """Per trial (``unit``: the trial of every frame, :class:`calflow.stimulation.TrialFolds`) the
    correctly classified and all stimulated frames: the clusters of the accuracy's bootstrap."""
    is_stim, correct = stimulated_correct(prob, labels)
    u = np.asarray(unit)[is_stim]
    return {"correct": np.bincount(u, weights=correct[is_stim], minlength=n_trials).astype(np.int64).tolist(),
            "stimulated_frames": np.bincount(u, minlength=n_trials).astype(np.int64).tolist()}


ACCURACY_BOOTSTRAP = 2000  # trial-clustered bootstrap resamples of the held-out accuracy (metrics.json)


def frame_metrics(prob: np.ndarray, labels: np.ndarray, target_ids: Sequence[str]) -> dict:
    """Accuracy ("top prediction among the stimulated targets", stimulated frames), per target,
    none-frame accuracy, and the confusion matrix (true pattern x top output).

    ``target_accuracy``: the same on stimulated frames with the top taken over the target outputs
    only (which cell, given that one was stimulated); ``missed_as_none``: the fraction of
    stimulated frames whose top output is ``none`` (on the demo nearly all errors, at the first and
    last frames of a trial, docs/classify.md)."""
    n = len(target_ids)
    stim = labels[:, :n] > 0.5
    is_stim, correct = stimulated_correct(prob, labels)
    top = prob.argmax(axis=1)
    none_ok = top[~is_stim] == n
    top_target = prob[:, :n].argmax(axis=1)
    target_ok = stim[is_stim, top_target[is_stim]]
    per_target = {}
    for j, tid in enumerate(target_ids):
        sel = stim[:, j]
        per_target[tid] = {"accuracy": float(correct[sel].mean()) if sel.any() else None, "frames": int(sel.sum())}
    patterns = sorted({tuple(np.flatnonzero(r)) for r in stim[is_stim]}, key=lambda t: (len(t), t))
    names = ["+".join(target_ids[j] for j in pat) for pat in patterns] + [NONE]
    rows = {pat: i for i, pat in enumerate(patterns)}
    conf = np.zeros((len(names), n + 1), np.int64)
    for t in range(len(labels)):
        r = rows[tuple(np.flatnonzero(stim[t]))] if is_stim[t] else len(names) - 1
        conf[r, top[t]] += 1
    return {
        "accuracy": float(correct[is_stim].mean()) if is_stim.any() else None,
        "n_stimulated_frames": int(is_stim.sum()),
        "target_accuracy": float(target_ok.mean()) if is_stim.any() else None,
        # a top target drawn at random: on average the stimulated targets' share of the N
        "chance_target_accuracy": float((stim[is_stim].sum(axis=1) / n).mean()) if is_stim.any() else None,
        "missed_as_none": float((top[is_stim] == n).mean()) if is_stim.any() else None,
        "none_accuracy": float(none_ok.mean()) if none_ok.size else None,
        "n_none_frames": int((~is_stim).sum()),
        "per_target": per_target,
        "confusion": {"rows": names, "columns": [*target_ids, NONE], "counts": conf.tolist()},
    }


UNTRAINED_ACCURACY = 0.6  # a fold whose accuracy on its own training frames is below this did not learn


def untrained_folds(fold_train: np.ndarray, group: str = "") -> list[str]:
    """One message per fold whose accuracy on its own stimulated training frames, ``fold_train``
    (n_folds, 2) = (correct, frames), is below :data:`UNTRAINED_ACCURACY` (trained folds reach
    0.97-0.99 on the demo; a stuck one about 0.45 in 1 of 25 simulated animals)."""
    out = []
    for f, (correct, n) in enumerate(np.asarray(fold_train, np.float64)):
        if n and correct / n < UNTRAINED_ACCURACY:
            out.append(f"classifier {group!r} fold {f} did not learn: accuracy {correct / n:.2f} on its own "
                       f"training frames; its held-out predictions and Grad-CAM maps are unreliable. Fix: "
                       f"re-train with another classify.seed or more classify.iterations")
    return out

