"""Grad-CAM of the stimulation classifier (Selvaraju et al. 2017): the signed layer-resolution map of a
pattern's score (:func:`grad_cam`, :func:`score_weights`), every trial's map from the fold model that
did not train on it (:func:`trial_maps`), the mean per pattern (:func:`pattern_means`) and the
ReLU-ed, upsampled maps for display (:func:`display_maps`). Maps are in logit units per activation
unit (only their shape matters for ZNCC, which is scale-free)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from calflow.classify.data import _net_input, window
from calflow.classify.train import pass_rows
from calflow.gradcam.params import METHODS, SCORES, GradcamParams
from calflow.params import invalid


def get_layer(model: nn.Module, layer: str | int) -> nn.Module:
    """The conv block ``layer`` of a :class:`calflow.classify.StimNet` ("last" or an index)."""
    blocks = model.features  # type: ignore[attr-defined]
    if str(layer) == "last":
        return blocks[len(blocks) - 1]
    i = int(layer)
    if not 0 <= i < len(blocks):
        raise invalid("gradcam", "layer", layer, f"the classifier has {len(blocks)} blocks",
                      f"use 'last' or 0..{len(blocks) - 1}")
    return blocks[i]


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, weights: torch.Tensor,
             method: str = "gradcam") -> np.ndarray:
    """Signed Grad-CAM at ``layer`` of the score ``sum_k weights[b, k] * logits[b, k]``.

    Grad-CAM of a score y at a layer with activations A (C, h, w): ``alpha_c = mean_xy dy/dA_c``,
    ``cam = sum_c alpha_c A_c`` (signed, layer resolution). Hand-written rather than taken from
    pytorch-grad-cam or captum: the maps are the product of this stage (kept signed and at layer
    resolution, averaged per held-out trial and per pattern, compared between conditions), and the
    computation is a few lines; ``tests/test_classify.py`` checks it against captum's ``LayerGradCam``
    on the same model and input.

    ``x`` (B, C, H, W); ``weights`` (B, n_out), e.g. one-hot of a target output, or ones on every
    target of a pattern. Samples are independent (the network has no batch statistics).
    ``method``: ``gradcam`` weighs each channel's activations by the spatial mean of its gradient;
    ``hirescam`` (Draelos & Carin 2020) multiplies them by the gradient pixel by pixel,
    ``sum_c dy/dA_c * A_c``: its sign holds on the demo, but the similarity between targets' maps is
    weaker, so Grad-CAM is the default.

    A plain :class:`calflow.classify.StimNet` gives (B, h, w). A
    :class:`calflow.classify.StimEnsemble` of K members gives every member's map, (B, K, h, w), from
    one backward pass: the score is the sum over members of each member's score (``weights``
    (B, n_out) for all, or (B, K, n_out)), and as member k's channels (``k * c .. (k + 1) * c - 1``
    of the layer) reach only member k's logits, the gradient there is that of member k's own
    score; its channel weights and channel sum run over its own channels.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {METHODS}")
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        store["a"] = out

    handle = layer.register_forward_hook(hook)
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(x)
            w = weights.to(logits.dtype)
            if logits.dim() == 3 and w.dim() == 2:  # the same score for every member
                w = w[:, None, :]
            score = (logits * w).sum()
            (grad,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    a = store["a"].detach()
    if logits.dim() == 3:  # ensemble: (B, K * c, h, w) -> (B, K, c, h, w), member by member
        K = logits.shape[1]
        a = a.reshape(a.shape[0], K, -1, *a.shape[2:])
        grad = grad.reshape(a.shape)
    cdim = a.dim() - 3
    if method == "hirescam":
        return (grad * a).sum(dim=cdim).cpu().numpy()
    alpha = grad.mean(dim=(-2, -1), keepdim=True)
    return (alpha * a).sum(dim=cdim).cpu().numpy()


def score_weights(n_out: int, targets: Sequence[int], score: str = "vs_none") -> np.ndarray:
    """(n_out,) float32 weights w of the Grad-CAM score ``sum_k w_k * logit_k`` of a pattern whose target
    outputs are ``targets`` (the last output is ``none``): ones on the targets, and for ``vs_none``
    minus their number on ``none`` (``sum over targets of logit_k - logit_none``).

    Why ``vs_none`` is the default: the classifier's head is position-aware (a dense layer over the
    map), so ``dy_k/dA`` is positive near target k and negative at most other positions, and its
    spatial mean ``alpha_c`` is negative for the channels that detect activity: the plain logit's map
    (``score: logit``) is inverted (negative where the activity is). Subtracting the ``none`` logit,
    for which activity anywhere is evidence against, cancels that shared part on the simulated
    animals of the validation (10-min sessions); on the demo (1-2 trials per pattern) the sign
    changes with the classifier's training seed, so it is not guaranteed (docs/classify.md has the
    measurements)."""
    if score not in SCORES:
        raise ValueError(f"score {score!r} is not one of {SCORES}")
    w = np.zeros(int(n_out), np.float32)
    w[list(targets)] = 1.0
    if score == "vs_none":
        w[-1] -= len(targets)
    return w


def upsample(cam: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear upsampling (align_corners=False) of (B, h, w) maps to (B, *size)."""
    t = torch.from_numpy(np.asarray(cam, np.float32))[:, None]
    return F.interpolate(t, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[:, 0].numpy()


def display_maps(cam: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """ReLU then bilinear upsampling (align_corners=False) of (B, h, w) maps to (B, *size)."""
    return upsample(np.maximum(np.asarray(cam, np.float32), 0), size)


def pattern_name(pattern: Sequence[int], ids: Sequence[str]) -> str:
    return "+".join(ids[j] for j in pattern)


def _mean_cam(model: nn.Module, layer: nn.Module, data: Any, frames: np.ndarray, targets: Sequence[int],
              context: int, p: GradcamParams) -> np.ndarray:
    """Mean signed Grad-CAM over ``frames`` of the pattern score of the ``targets`` outputs: (K, h, w),
    one map per member of a :class:`calflow.classify.StimEnsemble` (all from one backward pass per batch)."""
    dev = next(model.parameters()).device
    w = np.tile(score_weights(data.labels.shape[1], targets, p.score), (len(frames), 1))
    step = min(p.batch_size, pass_rows(model, dev) or p.batch_size)  # CPU: cache-sized passes
    acc = []
    for a in range(0, len(frames), step):
        idx = frames[a : a + step]
        x = _net_input(data, window(data, idx, context), model.input_hw)
        cam = grad_cam(model, layer, torch.from_numpy(x).to(dev), torch.from_numpy(w[a : a + step]).to(dev),
                       p.method)
        acc.append(cam if cam.ndim == 4 else cam[:, None])
    return np.concatenate(acc).mean(axis=0)


def trial_maps(models: Sequence[nn.Module], data: Any, p: GradcamParams, context: int) -> dict[str, np.ndarray]:
    """Signed layer-resolution Grad-CAM of every trial (mean over its stimulated frames, for the score
    of the trial's pattern in the stim log), each from the fold model that did not train on it.
    Returns member_trial_maps (K, n, h, w) (every ensemble member's), trial_maps (n, h, w) (their
    mean over members), trial_pattern (n,) index into ``patterns`` and ``patterns`` (list of
    target-index tuples)."""
    tr = data.trials
    patterns = sorted(set(tr.pattern), key=lambda t: (len(t), t))
    index = {pat: i for i, pat in enumerate(patterns)}
    maps = []
    for i in range(len(tr.start)):
        model = models[int(tr.fold[i])]
        maps.append(_mean_cam(model, get_layer(model, p.layer), data, np.arange(tr.start[i], tr.stop[i]),
                              tr.pattern[i], context, p))
    member_maps = np.stack(maps, axis=1).astype(np.float32)  # (K, n, h, w)
    return {"member_trial_maps": member_maps, "trial_maps": member_maps.mean(axis=0, dtype=np.float64).astype(np.float32),
            "trial_pattern": np.array([index[t] for t in tr.pattern], np.int64), "patterns": patterns}


def pattern_means(trial_maps: np.ndarray, trial_pattern: np.ndarray, n_patterns: int) -> np.ndarray:
    """(P, h, w) mean of the trial maps of each pattern (NaN for a pattern without trials)."""
    out = np.full((n_patterns, *trial_maps.shape[1:]), np.nan, np.float64)
    for k in range(n_patterns):
        sel = trial_pattern == k
        if sel.any():
            out[k] = trial_maps[sel].mean(axis=0)
    return out
