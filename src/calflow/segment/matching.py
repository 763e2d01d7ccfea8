"""Hungarian matching and the set-prediction losses of the ``detr`` segmenter, with the trace term.

For one image with Q predicted queries (objectness logits (Q,), mask logits (Q, H, W)) and K
ground-truth cells (binary masks (K, H, W)):

* cost (Q, K) = ``w_class`` * (-p_object) + ``w_bce`` * mean pixel BCE + ``w_dice`` * Dice loss,
  minimised by :func:`scipy.optimize.linear_sum_assignment` (:func:`hungarian_match`);
* loss = ``w_class`` * objectness BCE (matched queries -> 1, the rest -> 0, weighted
  ``no_object_weight``) + ``w_bce`` * mask BCE + ``w_dice`` * Dice over the matched pairs
  + ``trace_weight`` * (1 - Pearson r) between the trace each matched query's soft mask extracts
  from the frame stack and its cell's target trace (:func:`trace_loss`).

Traces: ``frames`` (T, H, W); a soft mask m (H, W) in [0, 1] extracts sum_p m_p F_tp / sum_p m_p.
Targets: given traces (K, T) (simulated sessions: the true calcium) or, without them, the
annotation's mask-averaged trace from the same frames (real data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class LossWeights:
    """Weights of the set loss's terms (dimensionless)."""

    w_class: float = 2.0
    w_bce: float = 5.0
    w_dice: float = 5.0
    no_object_weight: float = 0.1
    trace_weight: float = 0.0


def pairwise_costs(mask_logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, K) mean pixel BCE and Dice loss between every query's mask (Q, P logits) and target (K, P in {0, 1})."""
    p = mask_logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(mask_logits, torch.ones_like(mask_logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(mask_logits, torch.zeros_like(mask_logits), reduction="none")
    bce = (pos @ targets.T + neg @ (1 - targets).T) / p
    prob = mask_logits.sigmoid()
    dice = 1 - (2 * prob @ targets.T + 1) / (prob.sum(1)[:, None] + targets.sum(1)[None, :] + 1)
    return bce, dice


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, mask_logits: torch.Tensor, targets: torch.Tensor,
                    w: LossWeights = LossWeights()) -> tuple[np.ndarray, np.ndarray]:
    """Query and target indices of the lowest-cost one-to-one matching (min(Q, K) pairs).

    ``logits`` (Q,), ``mask_logits`` (Q, H, W), ``targets`` (K, H, W) binary."""
    if targets.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bce, dice = pairwise_costs(mask_logits.flatten(1).float(), targets.flatten(1).float())
    cost = w.w_class * -logits.float().sigmoid()[:, None] + w.w_bce * bce + w.w_dice * dice
    qi, ki = linear_sum_assignment(cost.cpu().numpy())
    return qi.astype(np.int64), ki.astype(np.int64)


def extract_traces(masks: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """(N, T) traces of soft masks (N, H, W) >= 0 from frames (T, H, W): mask-weighted means."""
    m = masks.flatten(1)
    return (m @ frames.flatten(1).T) / (m.sum(1, keepdim=True) + 1e-6)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson r of (N, T) and (N, T) -> (N,); a constant row gives 0."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)


def trace_loss(mask_logits: torch.Tensor, frames: torch.Tensor, target_traces: torch.Tensor) -> torch.Tensor:
    """Mean (1 - r) between the traces the soft masks (N, H, W logits) extract from ``frames`` (T, H, W)
    and ``target_traces`` (N, T); 0 for N = 0."""
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    return (1 - pearson(extract_traces(mask_logits.sigmoid(), frames), target_traces)).mean()


def target_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary masks (K, H, W) float and their label values (K,) of a (H, W) label image (0 = background)."""
    ids = torch.unique(labels)
    ids = ids[ids > 0]
    return (labels[None] == ids[:, None, None]).float(), ids


def set_loss(logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor, w: LossWeights = LossWeights(),
             frames: torch.Tensor | None = None, traces: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Loss terms of one image: ``logits`` (Q,), ``mask_logits`` (Q, H, W), ``labels`` (H, W) int.

    ``frames`` (T, H, W) and optional ``traces`` (max label, T) (row id - 1 = label id) feed the
    trace term when ``w.trace_weight`` > 0. Returns {"loss", "class", "bce", "dice", "trace"}.
    """
    tm, ids = target_masks(labels)
    qi, ki = hungarian_match(logits, mask_logits, tm, w)
    qi_t, ki_t = torch.as_tensor(qi, device=logits.device), torch.as_tensor(ki, device=logits.device)
    target_obj = torch.zeros_like(logits)
    target_obj[qi_t] = 1.0
    weight = torch.full_like(logits, w.no_object_weight)
    weight[qi_t] = 1.0
    cls = (F.binary_cross_entropy_with_logits(logits, target_obj, reduction="none") * weight).sum() / weight.sum()
    zero = logits.sum() * 0.0
    if len(qi):
        pm, tg = mask_logits[qi_t].flatten(1), tm[ki_t].flatten(1)
        bce = F.binary_cross_entropy_with_logits(pm, tg)
        prob = pm.sigmoid()
        dice = (1 - (2 * (prob * tg).sum(1) + 1) / (prob.sum(1) + tg.sum(1) + 1)).mean()
    else:
        bce = dice = mask_logits.sum() * 0.0
    tr = zero
    if w.trace_weight > 0 and frames is not None and len(qi):
        if traces is not None:
            target = traces[(ids[ki_t] - 1).long()]
        else:  # real data: the annotation's mask-averaged trace from the same frames
            target = extract_traces(tm[ki_t], frames)
        tr = trace_loss(mask_logits[qi_t], frames, target)
    loss = w.w_class * cls + w.w_bce * bce + w.w_dice * dice + w.trace_weight * tr
    return {"loss": loss, "class": cls.detach(), "bce": bce.detach(), "dice": dice.detach(), "trace": tr.detach()}


def batch_loss(out: dict, labels: torch.Tensor, w: LossWeights = LossWeights(), frames: list | None = None,
               traces: list | None = None) -> dict[str, torch.Tensor]:
    """Mean over the batch and over the decoder layers (deep supervision) of :func:`set_loss`.

    ``out``: the network's {"logits" (B, Q), "masks" (B, Q, H, W), "aux": [...]}; ``labels`` (B, H, W);
    ``frames``/``traces``: per image (T, H, W) / (K, T) tensors or None."""
    layers = [*out.get("aux", []), out]
    total: dict[str, torch.Tensor] = {}
    n = 0
    for o in layers:
        for b in range(labels.shape[0]):
            r = set_loss(o["logits"][b], o["masks"][b], labels[b], w,
                         None if frames is None else frames[b], None if traces is None else traces[b])
            for k, v in r.items():
                total[k] = total.get(k, 0.0) + v
            n += 1
    return {k: v / n for k, v in total.items()}
