"""Accuracy of CNMF against a simulated session's ground truth (tests, report, benchmarks).

Components are matched one-to-one to the true cells by Hungarian matching on IoU
(:func:`calflow.metrics.match_iou`, IoU >= 0.5 between the true masks and the CNMF footprints
thresholded at ``mask_threshold`` (0.3) of their maximum; the seeds' masks are their support). On the matched accepted components it reports
the median Pearson correlation of C with the true calcium, the same for the raw traces
(the movie averaged over the *seed* masks of the same cells: what one gets without CNMF), and the
spike-time F1 (:func:`calflow.cnmf.deconv.spike_f1`). Component detection F1 (accepted components
against the true masks) is reported next to the seeds' F1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment

from calflow.io import MovieReader
from calflow.metrics import as_masks, match_iou


def spike_events(S: np.ndarray, rel_threshold: float = 0.25) -> np.ndarray:
    """Frames of inferred events: S above ``rel_threshold`` x the 95th percentile of its non-zero values."""
    S = np.asarray(S, np.float64)
    pos = S[S > 0]
    if pos.size == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(S > rel_threshold * np.percentile(pos, 95))


def spike_f1(true_spikes: np.ndarray, inferred: np.ndarray, tolerance: int = 2) -> dict[str, float]:
    """Precision / recall / F1 of inferred event frames against true spike frames (counts > 0).

    A true spike frame and an inferred frame match when at most ``tolerance`` frames apart (one-to-one,
    Hungarian on the time difference).
    """
    t_true = np.flatnonzero(np.asarray(true_spikes) > 0)
    t_inf = np.asarray(inferred, np.int64)
    if t_true.size == 0 or t_inf.size == 0:
        tp = 0
    else:
        d = np.abs(t_true[:, None] - t_inf[None, :]).astype(np.float64)
        cost = np.where(d <= tolerance, d, 1e6)
        r, c = linear_sum_assignment(cost)
        tp = int((cost[r, c] <= tolerance).sum())
    prec = tp / t_inf.size if t_inf.size else 0.0
    rec = tp / t_true.size if t_true.size else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "n_true": int(t_true.size), "n_inferred": int(t_inf.size)}


def mask_traces(reader: MovieReader, masks: sp.csr_matrix, chunk: int = 200) -> np.ndarray:
    """(K, T) mean of the movie over each boolean mask (streamed)."""
    m = sp.csr_matrix(masks, dtype=np.float64)
    n = np.maximum(np.asarray(m.sum(axis=1)).ravel(), 1)
    out = np.zeros((m.shape[0], reader.shape[0]), np.float32)
    for a, block in reader.iter_blocks(chunk):
        out[:, a: a + block.shape[0]] = (m @ block.reshape(block.shape[0], -1).T.astype(np.float64)) / n[:, None]
    return out


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    d = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / d) if d > 0 else 0.0


def against_truth(cnmf: dict[str, Any], true_masks: Any, calcium: np.ndarray, spikes: np.ndarray,
                  seeds: sp.csr_matrix, reader: MovieReader, *, mask_threshold: float = 0.3,
                  iou_threshold: float = 0.5) -> dict[str, Any]:
    """Scores of a read cnmf.zarr (:func:`calflow.cnmf.store.read_cnmf`) against the truth; see module doc."""
    A = cnmf["A"]
    shape = tuple(cnmf["attrs"]["frame_shape"])
    truth = as_masks(true_masks, shape)
    Amax = np.maximum(A.max(axis=1).toarray().ravel(), 1e-12)
    binA = sp.csr_matrix(sp.diags(1 / Amax) @ A >= mask_threshold)
    acc = np.asarray(cnmf["accepted"], bool)
    all_match = match_iou(truth, binA, iou_threshold)
    acc_idx = np.flatnonzero(acc)
    acc_match = match_iou(truth, binA[acc_idx], iou_threshold)
    seed_match = match_iou(truth, seeds > 0, iou_threshold)
    pairs = [(int(i), int(acc_idx[j])) for i, j in acc_match["pairs"]]
    # raw traces over the seed masks of the same true cells (seed matched to that cell)
    seed_of = {int(i): int(j) for i, j in seed_match["pairs"]}
    common = [(i, j) for i, j in pairs if i in seed_of]
    raw = mask_traces(reader, (seeds > 0)[[seed_of[i] for i, _ in common]]) if common else np.zeros((0, 0))
    r_cnmf = [_corr(cnmf["C"][j], calcium[i]) for i, j in common]
    r_raw_cnmf = [_corr(cnmf["C_raw"][j], calcium[i]) for i, j in common]
    r_raw = [_corr(raw[n], calcium[i]) for n, (i, _) in enumerate(common)]
    f1 = [spike_f1(spikes[i], spike_events(cnmf["S"][j]))["f1"] for i, j in pairs]

    def med(x: list[float]) -> float | None:
        return float(np.median(x)) if x else None

    return {"n_true": int(truth.shape[0]), "n_components": int(A.shape[0]), "n_accepted": int(acc.sum()),
            "n_matched": len(pairs), "n_compared": len(common),
            "median_r_C": med(r_cnmf), "median_r_C_raw": med(r_raw_cnmf), "median_r_raw_masks": med(r_raw),
            "median_spike_f1": med(f1), "f1_accepted": acc_match["f1"], "f1_all": all_match["f1"],
            "f1_seeds": seed_match["f1"], "per_cell": [
                {"cell": i, "component": j, "r_C": a, "r_raw": b} for (i, j), a, b in zip(common, r_cnmf, r_raw,
                                                                                          strict=True)]}


def session_accuracy(cnmf_store: str | Path, truth_file: str | Path | Any, movie_store: str | Path,
                     footprints_store: str | Path, **kw: Any) -> dict[str, Any]:
    """:func:`against_truth` from files: cnmf.zarr, ground_truth.npz, motion.zarr and footprints.zarr.

    ``truth_file`` may also be the truth already loaded (a :class:`calflow.simulate.GroundTruth`).

    The true masks are the true footprints >= 0.5 of their maximum, overlaps kept (CNMF models
    overlapping cells; the simulator's winner-take-all label image would cut the overlaps away from
    one cell of each pair). The corrected movie is in the template's frame while the truth is in
    world coordinates; the demo's motion is small (a few px), so no shift is applied.
    """
    from calflow.cnmf.store import read_cnmf
    from calflow.segment.footprints import read_footprints
    from calflow.simulate import GroundTruth, load_ground_truth

    gt = truth_file if isinstance(truth_file, GroundTruth) else load_ground_truth(truth_file)
    seeds, _ = read_footprints(footprints_store)
    return against_truth(read_cnmf(cnmf_store), gt.footprints >= 0.5, gt.calcium, gt.spikes, seeds, MovieReader(movie_store),
                         **kw)
