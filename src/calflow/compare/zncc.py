"""From pattern maps to the comparison's statistic: the ZNCC (the same definition as
calflow.gradcam.zncc_matrix, kept here so that the comparison does not load torch), the
pattern-pair sets, each pattern's mean map and a condition's statistic (the summary of its ZNCC
matrix over every set); NaN where a map is flat."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from calflow.compare.params import SETS, CompareParams


def zncc_matrix(maps: np.ndarray) -> np.ndarray:
    """(P, P) ZNCC (Pearson r of the pixels) between every pair of (P, ...) maps; NaN for a flat map."""
    return _zncc(np.asarray(maps, np.float64).reshape(len(maps), -1))


def _zncc(m: np.ndarray) -> np.ndarray:
    """(..., P, P) ZNCC matrices of (..., P, pixels) float64 maps, batched over the leading axes
    (:func:`zncc_matrix`); NaN rows and columns for flat maps."""
    m = m - m.mean(axis=-1, keepdims=True)
    norm = np.sqrt((m * m).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (m @ np.swapaxes(m, -1, -2)) / (norm[..., :, None] * norm[..., None, :])
    flat = norm == 0
    return np.where(flat[..., :, None] | flat[..., None, :], np.nan, z)


def pattern_targets(name: str) -> frozenset[str]:
    """Target ids of a pattern name such as ``"3"`` or ``"3+5"``."""
    return frozenset(name.split("+"))


def pair_sets(names: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Index arrays (i, j), i < j, of the pattern pairs of every set in :data:`SETS`."""
    tg = [pattern_targets(n) for n in names]
    i, j = np.triu_indices(len(names), 1)
    disjoint = np.array([not (tg[a] & tg[b]) for a, b in zip(i, j, strict=True)], bool)
    single = np.array([len(t) == 1 for t in tg], bool)
    multi = ~single
    sel = {"all": np.ones(len(i), bool), "disjoint": disjoint, "singles": single[i] & single[j],
           "pairs": multi[i] & multi[j] & disjoint}
    return {k: (i[m], j[m]) for k, m in sel.items()}


def _nanmean(x: np.ndarray, axis: int | None = None) -> Any:
    """np.nanmean without the all-NaN warning (all NaN -> NaN)."""
    x = np.asarray(x, np.float64)
    ok = np.isfinite(x)
    n = ok.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, x, 0.0).sum(axis=axis) / np.where(n > 0, n, np.nan)


def pattern_maps(maps: np.ndarray, pat: np.ndarray, n_pat: int) -> np.ndarray:
    """(P, h, w) mean map of each pattern's trials (zeros for a pattern without trials)."""
    onehot = np.zeros((n_pat, len(pat)))
    onehot[pat, np.arange(len(pat))] = 1.0
    onehot /= np.maximum(onehot.sum(axis=1, keepdims=True), 1.0)
    return (onehot @ maps.reshape(len(maps), -1)).reshape(n_pat, *maps.shape[1:])


def condition_matrix(maps: np.ndarray, pat: np.ndarray, n_pat: int, how: str, subtract_mean: bool) -> np.ndarray:
    """The ZNCC matrix of one condition's pattern mean maps (``how``: signed | relu)."""
    return zncc_matrix(_maps_compared(pattern_maps(maps, pat, n_pat), how, subtract_mean, axis=0))


def _maps_compared(pm: np.ndarray, how: str, subtract_mean: bool, axis: int) -> np.ndarray:
    """Pattern mean maps (patterns along ``axis``) as the ZNCC compares them: minus the
    across-pattern mean map (``subtract_mean``), rectified (``how``: relu) or not (signed)."""
    if subtract_mean:
        pm = pm - pm.mean(axis=axis, keepdims=True)
    if how == "relu":
        pm = np.maximum(pm, 0)
    return pm


def stats_of_pattern_maps(pm: np.ndarray, sets: Mapping[str, tuple[np.ndarray, np.ndarray]], p: CompareParams,
                          how: str) -> np.ndarray:
    """(..., 2, len(SETS)) statistics from (..., 2 conditions, P patterns, pixels) pattern mean maps:
    every condition's ZNCC matrix (:func:`condition_matrix`, batched over the leading axes) summarised
    over each set of pattern pairs: the mean (or with ``summary: sum`` the sum) of its finite entries,
    NaN when it has none."""
    z = _zncc(_maps_compared(pm, how, p.subtract_mean, axis=-2))
    out = np.empty((*pm.shape[:-2], len(SETS)))
    for k, name in enumerate(SETS):
        i, j = sets[name]
        v = z[..., i, j]  # (..., 2, pairs)
        ok = np.isfinite(v)
        total, count = np.where(ok, v, 0.0).sum(axis=-1), ok.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[..., k] = np.where(count > 0, total if p.summary == "sum" else total / count, np.nan)
    return out
