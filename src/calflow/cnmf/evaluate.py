"""Merging, component quality and dF/F for CNMF (all numpy; K components, T frames, P pixels).

* :func:`merge_groups`: components whose footprints overlap (a_i . a_j > 0) and whose traces
  correlate above a threshold are joined (connected components of that graph).
* :func:`transient_snr`: peak of the denoised transient over the noise of the raw trace.
* :func:`accept`: a component is accepted when its SNR and its spatial correlation with the data
  (``r_spatial``, from :mod:`calflow.cnmf.model`) both pass their thresholds.
* :func:`running_percentile`: baseline F0 (K, T) as a running low percentile, computed on a
  coarse grid of window centres and interpolated (cost independent of the window length).
* :func:`dff`: (F - F0) / F0 with F = C_raw + the background under each footprint.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


def merge_groups(A: np.ndarray, C: np.ndarray, threshold: float) -> list[list[int]]:
    """Groups (lists of row indices, ascending) of overlapping components with trace r > ``threshold``."""
    K = A.shape[0]
    if K < 2 or threshold >= 1:
        return [[k] for k in range(K)]
    Asp = sp.csr_matrix(A > 0, dtype=np.float32)
    overlap = (Asp @ Asp.T).toarray() > 0
    Cc = C - C.mean(axis=1, keepdims=True)
    nrm = np.linalg.norm(Cc, axis=1)
    nrm[nrm == 0] = 1
    corr = (Cc @ Cc.T) / np.outer(nrm, nrm)
    graph = overlap & (corr > threshold)
    np.fill_diagonal(graph, False)
    n, lab = connected_components(sp.csr_matrix(graph), directed=False)
    return [sorted(np.flatnonzero(lab == g).tolist()) for g in range(n)]


def noise_sd(x: np.ndarray) -> np.ndarray:
    """Robust white-noise sd of each row: MAD of first differences / (0.6745 sqrt 2)."""
    x = np.atleast_2d(x)
    if x.shape[1] < 2:
        return np.zeros(x.shape[0])
    d = np.diff(x, axis=1)
    return np.median(np.abs(d - np.median(d, axis=1, keepdims=True)), axis=1) / (0.6745 * np.sqrt(2))


def transient_snr(C: np.ndarray, baseline: np.ndarray, C_raw: np.ndarray) -> np.ndarray:
    """(K,) peak of the denoised trace above its baseline divided by the noise sd of the raw trace."""
    peak = (C - baseline[:, None]).max(axis=1) if C.shape[1] else np.zeros(C.shape[0])
    sn = noise_sd(C_raw)
    return np.where(sn > 0, peak / np.where(sn > 0, sn, 1), 0.0).astype(np.float32)


def accept(snr: np.ndarray, r_spatial: np.ndarray, min_snr: float, min_r: float) -> np.ndarray:
    """(K,) bool: SNR >= ``min_snr`` and spatial correlation >= ``min_r``."""
    return (np.asarray(snr) >= min_snr) & (np.asarray(r_spatial) >= min_r)


def running_percentile(x: np.ndarray, window: int, q: float) -> np.ndarray:
    """(K, T) running ``q``-th percentile of the rows of ``x`` over ``window`` frames.

    Evaluated every ``window // 4`` frames on the centred window and linearly interpolated between.
    """
    x = np.atleast_2d(x)
    K, T = x.shape
    if T == 0:
        return x.copy()
    window = int(min(max(window, 3), T))
    step = max(1, window // 4)
    centres = np.unique(np.r_[np.arange(0, T, step), T - 1])
    half = window // 2
    vals = np.empty((K, centres.size), np.float64)
    for i, c in enumerate(centres):
        a = max(0, min(c - half, T - window))
        vals[:, i] = np.percentile(x[:, a: a + window], q, axis=1)
    t = np.arange(T)
    return np.stack([np.interp(t, centres, v) for v in vals]) if K else np.zeros((0, T))


def background_under(A: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(K, T) background in component units: the least-squares fit of b f on each footprint."""
    nrm = np.maximum((A * A).sum(axis=1), 1e-12)
    return ((A @ b.T) @ f) / nrm[:, None]


def dff(C_raw: np.ndarray, bg: np.ndarray, window: int, q: float) -> tuple[np.ndarray, np.ndarray]:
    """dF/F (K, T) and F0 (K, T): F = C_raw + bg, F0 = running percentile of F (floored at 1e-6 of its max)."""
    F_ = C_raw + bg
    F0 = running_percentile(F_, window, q)
    floor = 1e-6 * max(float(np.abs(F_).max()) if F_.size else 1.0, 1e-12)
    F0 = np.maximum(F0, floor)
    return ((F_ - F0) / F0).astype(np.float32), F0.astype(np.float32)
