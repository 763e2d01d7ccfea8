"""Deconvolution of CNMF traces with OASIS (the ``oasis-deconv`` package, Friedrich et al. 2017).

:func:`deconvolve_traces` runs OASIS on each raw trace with an AR(1) or AR(2) calcium model whose
coefficients OASIS estimates from the trace's autocovariance, an L1 sparsity penalty under the noise
constraint ``|c - y|^2 = sn^2 T`` (noise ``sn`` from the power spectral density) and a non-negative
baseline. Returns the denoised traces ``C`` (baseline included, movie units), spikes ``S`` >= 0, the
baselines, the AR coefficients (K, 2) (zero-padded for AR(1)) and the noise levels.

:func:`spike_f1` scores inferred spike times against known spikes (tests and benchmarks).
"""

from __future__ import annotations

import warnings

import numpy as np
from oasis.functions import deconvolve
from scipy.optimize import linear_sum_assignment


def deconvolve_traces(C_raw: np.ndarray, p: int = 2, *, penalty: int = 1) -> dict[str, np.ndarray]:
    """OASIS on every row of ``C_raw`` (K, T); ``p`` = 1 or 2 (AR order). See the module doc."""
    if p not in (1, 2):
        raise ValueError(f"AR order p must be 1 or 2, got {p}")
    K, T = C_raw.shape
    C = np.zeros((K, T), np.float32)
    S = np.zeros((K, T), np.float32)
    base = np.zeros(K, np.float32)
    g = np.zeros((K, 2), np.float32)
    sn = np.zeros(K, np.float32)
    for k in range(K):
        y = np.asarray(C_raw[k], np.float64)
        scale = float(np.abs(y).max()) if T else 0.0
        if T < 10 or scale == 0 or not np.isfinite(y).all() or np.ptp(y) == 0:
            C[k] = y
            base[k] = float(np.median(y)) if T else 0.0
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # OASIS warns about ill-conditioned AR estimates
            res = deconvolve(y / scale, tau_r=0 if p == 1 else None, penalty=penalty)
        gk = np.atleast_1d(np.asarray(res.g, np.float64))
        C[k] = (np.asarray(res.c) + res.b) * scale
        S[k] = np.clip(np.asarray(res.s), 0, None) * scale
        base[k] = float(res.b) * scale
        g[k, : min(2, gk.size)] = gk[:2]
        sn[k] = float(np.std(y / scale - res.c - res.b)) * scale
    return {"C": C, "S": S, "baseline": base, "g": g, "sn": sn}


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
