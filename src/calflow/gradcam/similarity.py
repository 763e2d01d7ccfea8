"""How alike two maps are: :func:`zncc` of two maps, :func:`zncc_matrix` of all patterns (the one
definition, in :mod:`calflow.compare.zncc`, without torch), the maps ZNCC compares
(:func:`maps_for_zncc`) and :func:`offdiag`. No torch."""

from __future__ import annotations

import numpy as np

from calflow.compare.zncc import zncc_matrix  # noqa: F401 - the one definition (no torch there)


def zncc(a: np.ndarray, b: np.ndarray) -> float:
    """Zero-normalised cross-correlation of two maps (Pearson r of their pixels); NaN if one is flat."""
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def offdiag(z: np.ndarray) -> np.ndarray:
    """The upper-triangle (i < j) entries of a square matrix."""
    i, j = np.triu_indices(len(z), 1)
    return z[i, j]


def maps_for_zncc(maps: np.ndarray, how: str) -> np.ndarray:
    return np.maximum(maps, 0) if how == "relu" else maps
