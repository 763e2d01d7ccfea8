"""Training loop: random crops, 8-fold dihedral + brightness/contrast augmentation, validation by
F1 (instances) or foreground IoU (semantic), best-by-score checkpoint, resumable, deterministic.

Length: ``iterations`` is the most iterations; with ``patience`` > 0 training stops at the
first validation that is ``patience`` or more iterations after the best one (a validation plateau).
The cosine learning-rate decay runs over ``iterations`` either way.

Initialisation: from ``torch.manual_seed(seed)``, or from a segmenter file (``init_weights``, e.g.
the bundled generalist of :mod:`calflow.segment.pretrain`) with the same architecture: fine-tuning.

Determinism: the model is initialised from ``torch.manual_seed(seed)``; every iteration draws its
crops and augmentations from its own generator ``numpy.random.default_rng([seed, iteration])``, so
an interrupted run resumed from ``last.pt`` (model + optimiser state + iteration + history)
continues exactly as the uninterrupted run would (bit-for-bit on CPU with the same thread count).

Checkpoint directory (``checkpoint_dir``):

* ``last.pt``: {"model", "optimizer", "iteration", "best_score", "best_iteration", "history",
  "fingerprint"}, written after every validation; resumed from when its fingerprint (a hash of the
  training parameters and the training/validation data) matches.
* ``best.pt``: the segmenter file of the best validation score so far.

The segmenter file (:func:`save_segmenter`) is ``{"state_dict", "arch", "meta"}``: tensors plus
plain dicts/lists/str/numbers only. It and ``last.pt`` are saved with
:func:`calflow.checkpoint.save_weights` (with a SHA-256 of their content) and loaded with
:func:`calflow.checkpoint.load_weights` (``weights_only=True``; a file without the SHA-256, from
before, still loads; :func:`calflow.segment.infer.read_segmenter`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from calflow.checkpoint import load_weights, save_weights
from calflow.device import resolve_device
from calflow.errors import CalflowInputError
from calflow.io import atomic_output
from calflow.metrics import match_iou, pixel_iou
from calflow.params import from_section, param, runtime_keys
from calflow.segment.data import Sample, dihedral
from calflow.segment.infer import instances_from_maps, predict, read_segmenter
from calflow.segment.matching import LossWeights, batch_loss
from calflow.segment.model import build_model
from calflow.segment.params import TrainKeys

log = logging.getLogger("calflow.segment")


@dataclass(frozen=True)
class TrainParams(TrainKeys):
    """Network and training settings: the ``segment`` section's training keys
    (:class:`calflow.segment.params.TrainKeys`, declared there), the seed, and the post-processing
    used for the validation score."""

    seed: int = param(0, ge=0)
    post: dict = field(default_factory=lambda: {"prob_threshold": 0.5, "cue_threshold": 0.5, "min_size": 10})
    tune_post: bool = True  # choose prob/cue thresholds on the validation images at every validation

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | TrainParams | None) -> TrainParams:
        if isinstance(config, TrainParams):
            return config
        config = dict(config or {})
        if "deconv_kernels" in config:
            config["deconv_kernels"] = tuple(config["deconv_kernels"] or ())
        return from_section(cls, "segment", config)

    def arch(self, in_channels: int) -> dict:
        if self.network == "detr":  # embedding width 2 x base_channels; tiles of patch_size at inference
            return {"kind": "detr", "in_channels": int(in_channels), "dim": 2 * self.base_channels,
                    "queries": self.queries, "window": 8, "tile": self.patch_size}
        a = {"kind": self.network, "in_channels": int(in_channels), "out_channels": 2 if self.task == "instance" else 1,
             "base": self.base_channels, "depth": self.depth}
        if self.network == "dcn":
            a["deconv_kernels"] = list(self.deconv_kernels) or [2 * 2**s for s in range(1, self.depth + 1)]
        return a


def save_segmenter(path: str | Path, model: nn.Module, arch: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Write a weights-only segmenter file with its SHA-256 (:func:`calflow.checkpoint.save_weights`) atomically."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_output(path) as tmp:
        save_weights({"state_dict": state, "arch": dict(arch), "meta": json.loads(json.dumps(meta))}, tmp)


def _fingerprint(p: TrainParams, train: Sequence[Sample], val: Sequence[Sample], init: bytes = b"") -> str:
    keep = {k: v for k, v in dataclasses.asdict(p).items() if k not in runtime_keys(TrainParams)}  # not the device
    h = hashlib.sha256(json.dumps(keep, sort_keys=True, default=list).encode())
    h.update(init)
    for s in [*train, *val]:
        for a in (s.image, s.fg, s.cue, s.frames, s.traces):
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _batch(samples: Sequence[Sample], p: TrainParams, it: int, sets: dict | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Inputs (B, C, P, P), fg and cue (B, 1, P, P) of iteration ``it``'s crops. ``sets`` (a dict, for
    the detr network) receives "labels" (B, P, P) int64, "frames" and "traces" (per crop or None)
    of the same crops; it draws nothing from the generator, so the crops are the same either way."""
    rng = np.random.default_rng([p.seed, it])
    sizes = np.array([s.fg.size for s in samples], dtype=float)
    xs, fgs, cues = [], [], []
    labs, frames, traces = [], [], []
    for _ in range(p.batch_size):
        s = samples[int(rng.choice(len(samples), p=sizes / sizes.sum()))]
        _, h, w = s.image.shape
        ps = p.patch_size
        y0 = int(rng.integers(0, max(h - ps, 0) + 1))
        x0 = int(rng.integers(0, max(w - ps, 0) + 1))
        sl = (slice(y0, y0 + ps), slice(x0, x0 + ps))
        img, fg = s.image[:, sl[0], sl[1]], s.fg[sl]
        cue = s.cue[sl] if s.cue is not None else None
        lab = s.labels[sl] if sets is not None and s.labels is not None else None
        fr = s.frames[:, sl[0], sl[1]] if sets is not None and s.frames is not None else None
        if img.shape[1] < ps or img.shape[2] < ps:  # image smaller than a patch: reflect-pad
            pad = ((0, ps - img.shape[1]), (0, ps - img.shape[2]))
            img = np.pad(img, ((0, 0), *pad), mode="reflect")
            fg = np.pad(fg, pad, mode="reflect")
            cue = np.pad(cue, pad, mode="reflect") if cue is not None else None
            lab = np.pad(lab, pad, mode="constant") if lab is not None else None  # a mirrored cell is not a cell
            fr = np.pad(fr, ((0, 0), *pad), mode="reflect") if fr is not None else None
        k = int(rng.integers(0, 8))
        gain = rng.uniform(1 - p.contrast, 1 + p.contrast, size=(img.shape[0], 1, 1))
        offset = rng.uniform(-p.brightness, p.brightness, size=(img.shape[0], 1, 1))
        x = dihedral(img, k) * gain.astype(np.float32) + offset.astype(np.float32)
        if p.texture > 0:  # neuropil-like texture of cell size that is not a cell (drawn only when on)
            from scipy import ndimage

            tex = ndimage.gaussian_filter(rng.normal(size=x.shape[1:]), rng.uniform(1.0, 3.0))
            tex = tex / (tex.std() + 1e-9) * rng.uniform(0, p.texture)
            x = x + (tex[None] * rng.uniform(0.5, 1.0, size=(x.shape[0], 1, 1))).astype(np.float32)
        xs.append(x)
        fgs.append(dihedral(fg, k))
        if cue is not None:
            cues.append(dihedral(cue, k))
        if sets is not None:
            labs.append(dihedral(lab, k) if lab is not None else np.zeros((ps, ps), np.int64))
            frames.append(None if fr is None else torch.from_numpy(dihedral(fr, k).astype(np.float32)))
            traces.append(None if s.traces is None else torch.from_numpy(np.asarray(s.traces, np.float32)))
    if sets is not None:
        sets.update(labels=torch.from_numpy(np.stack(labs).astype(np.int64)), frames=frames, traces=traces)
    x = torch.from_numpy(np.stack(xs).astype(np.float32))
    fg_t = torch.from_numpy(np.stack(fgs)[:, None].astype(np.float32))
    cue_t = torch.from_numpy(np.stack(cues)[:, None].astype(np.float32)) if cues else None
    return x, fg_t, cue_t


PROB_GRID = (0.3, 0.4, 0.5, 0.6)
CUE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)


def evaluate(model: nn.Module, samples: Sequence[Sample], p: TrainParams, device: torch.device, tta: bool = False) -> dict:
    """Validation score: mean F1 at IoU >= 0.5 (instance task) or mean foreground IoU (semantic).

    With ``tune_post`` (instance task) the probability and cue thresholds are chosen from a small
    grid to maximise the mean F1 on these images; the chosen ones are returned as ``post``.
    """
    if p.network == "detr":
        return _evaluate_detr(model, samples, p, device)
    outs = [predict(model, s.image, depth=p.depth, device=device, tta=tta) for s in samples]
    model.train()
    if p.task != "instance":
        scores = [pixel_iou(s.fg, o[0] > 0.5) for s, o in zip(samples, outs, strict=True)]
        return {"score": float(np.mean(scores)) if scores else 0.0, "per_image": [float(v) for v in scores]}
    grid = [dict(p.post)]
    if p.tune_post:
        grid += [{**p.post, "prob_threshold": a, "cue_threshold": b} for a in PROB_GRID for b in CUE_GRID]
    best = None
    for post in grid:
        scores = [match_iou(s.labels, instances_from_maps(o[0], o[1], **post))["f1"]
                  for s, o in zip(samples, outs, strict=True)]
        score = float(np.mean(scores)) if scores else 0.0
        if best is None or score > best["score"]:
            best = {"score": score, "per_image": [float(v) for v in scores], "post": post}
    return best


DETR_SCORE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)


def _evaluate_detr(model: nn.Module, samples: Sequence[Sample], p: TrainParams, device: torch.device) -> dict:
    """:func:`evaluate` for the detr network: objectness thresholds (``prob_threshold``) from a grid."""
    from calflow.segment.detr import instances_from_sets, predict_sets

    sets = [predict_sets(model, s.image, tile=p.patch_size, device=device) for s in samples]
    model.train()
    grid = [dict(p.post)] + ([{**p.post, "prob_threshold": a} for a in DETR_SCORE_GRID] if p.tune_post else [])
    best = None
    for post in grid:
        scores = [match_iou(s.labels, instances_from_sets(sc, mk, s.labels.shape, **post)[0])["f1"]
                  for s, (sc, mk) in zip(samples, sets, strict=True)]
        score = float(np.mean(scores)) if scores else 0.0
        if best is None or score > best["score"]:
            best = {"score": score, "per_image": [float(v) for v in scores], "post": post}
    return best


def train(train_samples: Sequence[Sample], val_samples: Sequence[Sample], params: Mapping[str, Any] | TrainParams,
          checkpoint_dir: str | Path, *, out_path: str | Path | None = None, meta: Mapping[str, Any] | None = None,
          stop_at: int | None = None, resume: bool = True, init_weights: str | Path | None = None) -> dict:
    """Train a segmenter; return a metrics dict. ``stop_at`` stops early (to test resuming).

    ``init_weights``: a segmenter file to start from (its architecture must equal this run's).
    Writes ``checkpoint_dir/last.pt`` and ``best.pt``; copies ``best.pt`` to ``out_path`` when the
    run completes (all ``iterations``, or a plateau of ``patience`` iterations).
    """
    p = TrainParams.from_config(params)
    if not train_samples:
        raise CalflowInputError("no training images", fix="give at least one session with masks for training")
    ckdir = Path(checkpoint_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(p.device)
    in_ch = train_samples[0].image.shape[0]
    arch = p.arch(in_ch)
    torch.manual_seed(p.seed)
    model = build_model(arch).to(device)
    init_bytes = b""
    if init_weights is not None:
        init_bytes = Path(init_weights).read_bytes()
        blob = read_segmenter(init_weights, device)
        if dict(blob["arch"]) != arch:
            raise CalflowInputError(f"the initial weights' architecture {dict(blob['arch'])} differs from this run's {arch}",
                                    file=str(init_weights), fix="use the same network, channels, base_channels and "
                                    "depth as the initial weights, or train from scratch (segment.init: scratch)")
        model.load_state_dict(blob["state_dict"])
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    sched_lr = lambda it: p.lr * 0.5 * (1 + np.cos(np.pi * min(it, p.iterations) / p.iterations))  # noqa: E731
    fp = _fingerprint(p, train_samples, val_samples, init_bytes)
    meta = {**dict(meta or {}), "init": str(init_weights) if init_weights is not None else "scratch", "post": p.post, "task": p.task, "train_params": dataclasses.asdict(p), "fingerprint": fp}
    state = {"iteration": 0, "best_score": -1.0, "best_iteration": -1, "history": []}
    last = ckdir / "last.pt"
    resumed_from = None
    if resume and last.exists():
        ck = load_weights(last, device, keys=("model", "optimizer", "fingerprint", *state),
                          fix="delete it to restart the segmenter's training (or rerun: a killed write leaves none)")
        if ck.get("fingerprint") == fp:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            state = {k: ck[k] for k in state}
            resumed_from = int(state["iteration"])
            log.info("resuming from %s at iteration %d", last, resumed_from)
        else:
            log.info("ignoring %s: it belongs to other data or settings", last)
    bce = nn.BCEWithLogitsLoss()
    weights = LossWeights(trace_weight=p.trace_weight)
    if p.network == "detr" and p.task != "instance":
        raise CalflowInputError("network: detr predicts cell instances", fix="use task: instance with network: detr")
    model.train()
    t0 = time.perf_counter()
    it = int(state["iteration"])
    end = p.iterations if stop_at is None else min(stop_at, p.iterations)

    def plateau() -> bool:
        # checked right after a validation only (state["iteration"] is the last validated iteration)
        return (p.patience > 0 and state["best_iteration"] >= 0 and it == state["iteration"]
                and it - state["best_iteration"] >= p.patience)

    while it < end and not plateau():
        for g in opt.param_groups:
            g["lr"] = float(sched_lr(it))
        sets: dict | None = {} if p.network == "detr" else None
        x, fg, cue = _batch(train_samples, p, it, sets)
        x, fg = x.to(device), fg.to(device)
        out = model(x)
        if sets is not None:
            loss = batch_loss(out, sets["labels"].to(device), weights,
                              [None if f is None else f.to(device) for f in sets["frames"]],
                              [None if t is None else t.to(device) for t in sets["traces"]])["loss"]
        else:
            loss = bce(out[:, :1], fg)
            if cue is not None and p.task == "instance":
                loss = loss + p.cue_weight * bce(out[:, 1:2], cue.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        if it % p.val_every == 0 or it == p.iterations:
            ev = evaluate(model, val_samples, p, device) if val_samples else {"score": -float(loss.item())}
            state["history"].append({"iteration": it, "loss": float(loss.item()), "val_score": ev["score"],
                                     "post": ev.get("post", p.post)})
            log.info("iteration %d loss %.4f validation %.4f", it, loss.item(), ev["score"])
            if ev["score"] > state["best_score"]:
                state["best_score"], state["best_iteration"] = float(ev["score"]), it
                save_segmenter(ckdir / "best.pt", model, arch, {**meta, "iteration": it, "val_score": ev["score"],
                                                                 "post": ev.get("post", p.post)})
            state["iteration"] = it
            with atomic_output(last) as tmp:
                save_weights({"model": model.state_dict(), "optimizer": opt.state_dict(), "fingerprint": fp, **state},
                             tmp)
    seconds = time.perf_counter() - t0
    stopped = plateau()
    result = {"iterations": it, "completed": it >= p.iterations or stopped, "stopped_on_plateau": stopped,
              "max_iterations": p.iterations, "patience": p.patience,
              "init": str(init_weights) if init_weights is not None else "scratch", "best_score": state["best_score"],
              "best_iteration": state["best_iteration"], "history": state["history"], "resumed_from": resumed_from,
              "seconds": seconds, "device": str(device), "arch": arch,
              "score_name": "f1_iou0.5" if p.task == "instance" else "foreground_iou"}
    if out_path is not None and result["completed"]:
        with atomic_output(out_path) as tmp:
            shutil.copyfile(ckdir / "best.pt", tmp)
    return result
