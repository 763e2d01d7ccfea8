"""Spontaneous-activity cleaning: each neuron z-scored by its spontaneous sd and the top
spontaneous principal components projected out of the responses (:class:`Cleaning`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from calflow.decode.params import DecodeParams

PC_NEURONS = 10               # at most one spontaneous PC removed per 10 neurons ...
PC_FRAMES = 50                # ... and per 50 spontaneous frames
SD_FLOOR = 0.1                # z-scoring: spontaneous sd below this fraction of the neurons' median sd is raised to it


@dataclass
class Cleaning:
    """Spontaneous-activity noise removal: R -> (R / scale) (I - V Vᵀ).

    ``scale`` (N,) spontaneous standard deviation (1 without z-scoring); ``pcs`` (N, k) orthonormal
    neuron-space directions of the top-k spontaneous PCs; ``info`` what was done (for the JSON).
    """

    scale: np.ndarray
    pcs: np.ndarray
    info: dict[str, Any]

    def apply(self, resp: np.ndarray) -> np.ndarray:
        """(trials, N) responses -> cleaned responses (float64)."""
        r = resp / self.scale
        if self.pcs.shape[1]:
            r -= (r @ self.pcs) @ self.pcs.T
        return r


def spontaneous_cleaning(spont: np.ndarray, p: DecodeParams) -> Cleaning:
    """z-scoring and top-k PCs from spontaneous activity ``spont`` (N neurons, Ts frames).

    k = min(``remove_spontaneous_pcs``, N // 10, Ts // 50): in a few dozen neurons the top PCs are
    single cells, and from a few dozen frames they are the cells that happened to fire.
    """
    n, ts = spont.shape
    k = min(p.remove_spontaneous_pcs, n // PC_NEURONS, ts // PC_FRAMES)
    info: dict[str, Any] = {"spontaneous_frames": int(ts), "pcs_requested": p.remove_spontaneous_pcs,
                            "pcs_removed": int(k), "spontaneous_variance_removed": 0.0}
    if k < p.remove_spontaneous_pcs:
        info["pcs_cap"] = f"at most one per {PC_NEURONS} neurons ({n}) and per {PC_FRAMES} spontaneous frames ({ts})"
    scale = np.ones(n)
    if ts >= 2 and (p.zscore or k):
        mu = spont.mean(axis=1, dtype=np.float64)
        sd = spont.std(axis=1, dtype=np.float64)
        if p.zscore:  # floor: a neuron silent in the spontaneous frames would be scaled up ~1e7 (and leak into all)
            scale = np.maximum(sd, SD_FLOOR * np.median(sd)) if np.median(sd) > 1e-12 else np.where(sd > 1e-12, sd, 1.0)
    elif p.zscore:
        info["note_zscore"] = "fewer than 2 spontaneous frames: not z-scored (the classifiers standardise anyway)"
    pcs = np.zeros((n, 0))
    if k > 0:
        work = np.float64 if spont.dtype == np.float64 else np.float32
        s = np.array(spont, dtype=work)                    # (N, Ts) copy, centred and scaled in place
        s -= mu[:, None].astype(work)
        s /= scale[:, None].astype(work)
        total = float(np.einsum("ij,ij->", s, s, dtype=np.float64))
        small = min(n, ts)
        if small <= 4000:  # exact: top eigenvectors of the smaller Gram matrix (ARPACK when it is large)
            gram = ((s @ s.T) if n <= ts else (s.T @ s)).astype(np.float64)
            if small <= 500:
                lam, vec = np.linalg.eigh(gram)
            else:
                from scipy.sparse.linalg import eigsh

                lam, vec = eigsh(gram, k=k, which="LA", v0=np.ones(small))
            top = np.argsort(lam)[::-1][:k]
            lam, vec = lam[top], vec[:, top]
            if n <= ts:
                pcs = vec
            else:  # frame-space eigenvectors -> neuron-space directions
                pcs, _ = np.linalg.qr((s @ vec.astype(work)).astype(np.float64))
        else:
            from sklearn.utils.extmath import randomized_svd

            pcs, sv, _ = randomized_svd(s, k, n_oversamples=20, n_iter=7, random_state=p.seed)
            pcs, lam = pcs.astype(np.float64), sv.astype(np.float64) ** 2
        info["spontaneous_variance_removed"] = float(np.clip(lam.sum() / max(total, 1e-300), 0, 1))
    return Cleaning(scale, pcs, info)
