"""The optional CNMF input of the stage: the trace correlation between the targets' components
(nearest accepted centroid), stored beside the ZNCC matrix (``trace_corr``, ``trace_component``;
the contract is in docs/classify.md). No torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calflow.cnmf.store import read_cnmf_arrays


def cnmf_target_correlation(store: str | Path, target_yx: np.ndarray, max_distance: float = 6.0,
                            trace: str = "dff") -> dict[str, np.ndarray]:
    """Trace correlation between the targets' CNMF components (accepted, nearest centroid).

    Returns ``component`` (N,) int64 (-1 where no accepted component lies within
    ``max_distance`` px) and ``corr`` (N, N) Pearson r of their ``trace`` rows (NaN where missing).
    """
    _, g = read_cnmf_arrays(store, ("centroids", trace), optional=("accepted",))
    cents = np.asarray(g["centroids"], np.float64)
    accepted = np.asarray(g["accepted"], bool) if "accepted" in g else np.ones(len(cents), bool)
    traces = np.asarray(g[trace], np.float64)
    comp = np.full(len(target_yx), -1, np.int64)
    for j, yx in enumerate(np.asarray(target_yx, np.float64)):
        d = np.hypot(*(cents - yx).T)
        d[~accepted] = np.inf
        if len(d) and d.min() <= max_distance:
            comp[j] = int(d.argmin())
    n = len(comp)
    corr = np.full((n, n), np.nan)
    ok = np.flatnonzero(comp >= 0)
    if len(ok):
        corr[np.ix_(ok, ok)] = np.corrcoef(traces[comp[ok]]) if len(ok) > 1 else 1.0
    return {"component": comp, "corr": corr}
