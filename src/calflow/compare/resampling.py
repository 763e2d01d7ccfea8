"""Tests and intervals by resampling: the sign-flip test over animals, the permutation test of a
group x condition interaction, the bias-corrected bootstrap interval and the hierarchical
bootstrap (animals, then trials within each (condition, pattern)); the within-animal trial-level
permutation (the "session difference" diagnostic, not the test)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

# the normal cdf / quantile (scipy.stats.norm's own), without scipy.stats' import cost
from scipy.special import ndtr, ndtri

from calflow.compare.animal import AnimalPair, animal_stats
from calflow.compare.params import SETS, CompareParams
from calflow.compare.zncc import _nanmean, stats_of_pattern_maps

MAX_EXACT_ANIMALS = 16  # 2**16 sign patterns
MAX_EXACT_ASSIGNMENTS = 20000


def sign_flip_test(d: Sequence[float], *, n_permutations: int = 20000, seed: int = 0) -> dict:
    """Two-sided sign-flip permutation test of mean(d) = 0 over units (animals).

    Exact (all ``2**n`` sign patterns) up to :data:`MAX_EXACT_ANIMALS` units, else
    ``n_permutations`` random sign patterns plus the observed one. Returns p, whether it is exact,
    the number of patterns and the smallest p the test can give (``2 / 2**n`` exact).
    """
    d = np.asarray([x for x in d if np.isfinite(x)], np.float64)
    n = len(d)
    if n == 0:
        return {"p": None, "exact": True, "n_sign_patterns": 0, "smallest_possible_p": 1.0, "n": 0}
    obs = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= MAX_EXACT_ANIMALS:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)[None]) & 1
        means = np.abs(((1 - 2 * bits) * d).mean(axis=1))
        p = float(np.mean(means >= obs - tol))
        return {"p": p, "exact": True, "n_sign_patterns": int(2**n), "smallest_possible_p": 2.0 / 2**n, "n": n}
    rng = np.random.default_rng([seed, 11])
    means = np.abs((rng.choice([-1.0, 1.0], size=(n_permutations, n)) * d).mean(axis=1))
    p = float((1 + np.sum(means >= obs - tol)) / (1 + n_permutations))
    return {"p": p, "exact": False, "n_sign_patterns": int(n_permutations), "n": n,
            "smallest_possible_p": 1.0 / (1 + n_permutations)}


def group_permutation_test(d: Sequence[float], labels: Sequence[int], *, n_permutations: int = 20000,
                           seed: int = 0) -> dict:
    """Two-sided permutation test of mean(d | label 1) - mean(d | label 0) = 0 over units, by
    re-assigning the labels (exact up to :data:`MAX_EXACT_ASSIGNMENTS` assignments)."""
    d = np.asarray(d, np.float64)
    lab = np.asarray(labels, np.int64)
    n, n1 = len(d), int(lab.sum())
    if n1 == 0 or n1 == n:
        return {"p": None, "exact": True, "n_assignments": 0, "smallest_possible_p": 1.0}

    def stat(mask: np.ndarray) -> np.ndarray:  # (R, n) bool label-1 masks
        return (mask * d).sum(axis=1) / n1 - (~mask * d).sum(axis=1) / (n - n1)

    obs = abs(float(stat(lab[None] == 1)[0]))
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    total = math.comb(n, n1)
    if total <= MAX_EXACT_ASSIGNMENTS:
        masks = np.zeros((total, n), bool)
        for r, comb in enumerate(itertools.combinations(range(n), n1)):
            masks[r, list(comb)] = True
        vals = np.abs(stat(masks))
        p = float(np.mean(vals >= obs - tol))
        smallest = (2.0 if 2 * n1 == n else 1.0) / total
        return {"p": p, "exact": True, "n_assignments": total, "smallest_possible_p": smallest}
    rng = np.random.default_rng([seed, 12])
    masks = np.stack([rng.permutation(lab) == 1 for _ in range(n_permutations)])
    p = float((1 + np.sum(np.abs(stat(masks)) >= obs - tol)) / (1 + n_permutations))
    return {"p": p, "exact": False, "n_assignments": n_permutations, "smallest_possible_p": 1 / (1 + n_permutations)}


def bc_interval(boot: np.ndarray, est: float, level: float) -> list[float | None]:
    """Bias-corrected percentile interval (Efron) of ``est`` from bootstrap replicates ``boot``."""
    b = np.asarray(boot, np.float64)
    b = b[np.isfinite(b)]
    if not b.size or not np.isfinite(est):
        return [None, None]
    frac = (np.sum(b < est) + 0.5 * np.sum(b == est)) / b.size
    z0 = ndtri(np.clip(frac, 1.0 / (2 * b.size), 1 - 1.0 / (2 * b.size)))
    za = ndtri([(1 - level) / 2, (1 + level) / 2])
    q = ndtr(2 * z0 + za)
    lo, hi = np.quantile(b, q)
    return [float(lo), float(hi)]


_BOOT_BYTES = 32 << 20  # pattern maps of the replicates evaluated at once (float64)


def _inner_bootstrap(ap: AnimalPair, p: CompareParams, how: str, rng: np.random.Generator) -> np.ndarray:
    """(n_bootstrap, 2, len(SETS)) statistics of one animal with its trials resampled within
    every (condition, pattern) cell.

    The draws are made replicate by replicate, cell by cell (the order of a loop over
    replicates); each replicate's pattern mean map is then (times drawn of each trial) @ maps / n,
    and the ZNCC matrices of a block of replicates are one batched product (a loop of
    :func:`animal_stats` calls took ~1 s per animal and source for 1,000 replicates)."""
    B, n_pat = p.n_bootstrap, len(ap.patterns)
    draws = [[rng.integers(0, len(c), len(c)) for c in ap.cells] for _ in range(B)]
    maps = ap.maps.reshape(len(ap.maps), -1).astype(np.float64)
    out = np.empty((B, 2, len(SETS)))
    step = max(1, _BOOT_BYTES // (2 * n_pat * maps.shape[1] * 8))
    for a in range(0, B, step):
        b = min(B, a + step)
        pm = np.zeros((b - a, 2, n_pat, maps.shape[1]))
        for ci, cell in enumerate(ap.cells):  # cells are (condition, pattern) in condition-major order
            if len(cell):
                times = np.stack([np.bincount(draws[r][ci], minlength=len(cell)) for r in range(a, b)])
                pm[:, ci // n_pat, ci % n_pat] = times @ maps[cell] / len(cell)
        out[a:b] = stats_of_pattern_maps(pm, ap.sets, p, how)
    return out


def hierarchical_bootstrap(paired: Sequence[AnimalPair], p: CompareParams, how: str) -> np.ndarray:
    """(n_bootstrap, 2, len(SETS)) mean statistics over animals drawn with replacement, each with
    one of its own trial-resampled replicates (animals, then trials within (condition, pattern))."""
    n = len(paired)
    if p.n_bootstrap == 0:
        return np.full((0, 2, len(SETS)), np.nan)
    rng = np.random.default_rng([p.seed, 2])
    inner = np.stack([_inner_bootstrap(ap, p, how, rng) for ap in paired])  # (n, B, 2, S)
    pick_animals = rng.integers(0, n, (p.n_bootstrap, n))
    pick_rep = rng.integers(0, p.n_bootstrap, (p.n_bootstrap, n))
    return _nanmean(inner[pick_animals, pick_rep], axis=1)


def _session_difference(ap: AnimalPair, p: CompareParams, how: str, k: int, obs: float,
                        rng: np.random.Generator) -> float:
    """Diagnostic p-value: condition labels permuted over the animal's trials within every
    (pattern, fold) stratum (tests "do these two recordings differ")."""
    keys = ap.pat * (int(ap.folds.max(initial=0)) + 1) + ap.folds
    strata = [np.flatnonzero(keys == v) for v in np.unique(keys)]
    hits = 0
    for _ in range(p.diagnostic_permutations):
        cond = ap.cond.copy()
        for s in strata:
            cond[s] = cond[s][rng.permutation(len(s))]
        st = animal_stats(ap, p, how, cond=cond)
        hits += abs(st[1, k] - st[0, k]) >= abs(obs) - 1e-12
    return float((1 + hits) / (1 + p.diagnostic_permutations))
