"""Condition comparison of pattern-map similarity, with the animal as the unit of replication.

Inputs are map stores with one map per held-out stimulation trial: ``gradcam.zarr`` (the
classifier's Grad-CAM, averaged over its seed ensemble), and the controls ``stim_maps.zarr``
(model-free stimulus-triggered averages, calflow.stim_maps) and ``gradcam_shuffled.zarr``
(Grad-CAM of a classifier trained on shuffled pattern labels). Every source goes through the
same analysis:

1. Per animal and condition: the mean map of every pattern over its trials (patterns both
   conditions of the animal share), optionally minus the across-pattern mean map
   (``subtract_mean``), and the pattern x pattern ZNCC matrix of those maps.
2. The statistic of a matrix: the mean (or, ``summary: sum``, the sum) of its off-diagonal
   entries over a set of pattern pairs: ``singles`` (two single-target patterns), ``pairs`` (two
   paired patterns with no target in common), ``disjoint`` (any two patterns with no target in
   common: the default headline) or ``all`` (every pair, the seed study's summed statistic).
   Pairs of patterns that share a target are left out of every set but ``all``: their maps
   share that target's own response, whatever the connectivity.
3. The per-animal effect ``d = statistic(b) - statistic(a)``.
4. The test: an exact sign-flip permutation over animals (under "the condition does not change
   the statistic" each animal's d is symmetric about 0): all ``2**n`` sign patterns up to
   :data:`MAX_EXACT_ANIMALS` animals, Monte Carlo beyond; two-sided
   ``p = #{|mean(s * d)| >= |mean(d)|} / #patterns``. Its smallest possible value is ``2 / 2**n``;
   when that is above ``alpha`` no p-value is given ("too few animals for a test").
5. A hierarchical bootstrap CI of the mean effect: animals resampled with replacement, then
   trials within each (condition, pattern) of every drawn animal; bias-corrected percentile
   interval (resampling trials adds noise to the pattern means, which lowers ZNCC; the
   bias-corrected interval removes that median bias instead of reporting an interval that misses
   its own estimate).
6. With an experimental ``group`` per animal (e.g. CFA vs vehicle), the group x condition
   interaction (difference of the groups' mean effects), tested by permuting group labels over
   animals (exact up to :data:`MAX_EXACT_ASSIGNMENTS` assignments).
7. Diagnostics that are not the test: the seed-ensemble spread of the effect (from the members'
   own maps), and the within-animal "session difference": a permutation of condition labels over
   held-out trials of one animal, which asks "do these two recordings differ", not "does the
   condition change connectivity" (two recordings always differ a little; docs/classify.md shows
   its false-positive rate).

Reported beside the test, and not part of it: per condition the seed study's own number (the
summed off-diagonal ZNCC over all pattern pairs, per animal and its mean; ``seed_study_sum``), the
analysis profile the config was resolved with (``classify.profile``, calflow.config), and the
classifier's held-out accuracy per condition with a CI that resamples animals, then trials
(:func:`clustered_accuracy`); the accuracy is not evidence about connectivity.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# the normal cdf / quantile (scipy.stats.norm's own), without scipy.stats' import cost
from scipy.special import ndtr, ndtri

from calflow.errors import CalflowInputError
from calflow.io import atomic_output, open_group
from calflow.params import check_fields, from_section, invalid, param

log = logging.getLogger("calflow.compare")

PRIMARY = "gradcam"
SOURCE_LABELS = {
    "gradcam": "Grad-CAM (classifier ensemble)",
    "stim_maps": "stimulus-triggered average (model-free control)",
    "gradcam_shuffled": "Grad-CAM of a shuffled-label classifier (baseline)",
}
SETS = ("disjoint", "singles", "pairs", "all")
MAX_EXACT_ANIMALS = 16  # 2**16 sign patterns
SEED_STUDY_LABEL = ("the seed study's statistic: summed off-diagonal ZNCC over all pattern pairs (set all, summary "
                    "sum) of this run's maps; reported for reference, not the headline test")
MAX_EXACT_ASSIGNMENTS = 20000


@dataclass(frozen=True)
class CompareParams:
    """The ``compare`` config section (docs/classify.md)."""

    pairs: tuple = ()  # [[a, b], ...] condition pairs; empty = every pair of conditions in sheet order
    statistic: str = param("disjoint", choices=SETS)  # headline set of pattern pairs
    summary: str = param("mean", choices=("mean", "sum"))  # of the set's ZNCC entries
    subtract_mean: bool = False  # subtract the across-pattern mean map before ZNCC
    zncc_map: str = param("", choices=("", "signed", "relu"))  # "" = the stores' own (gradcam.zncc_map)
    alpha: float = param(0.05, gt=0, lt=1, fix="use a level in (0, 1), e.g. 0.05")
    n_permutations: int = param(20000, ge=1)  # Monte Carlo sign flips / group assignments beyond the exact limits
    n_bootstrap: int = param(1000, ge=0)
    diagnostic_permutations: int = param(200, ge=0)  # within-animal trial-level permutations (the diagnostic)
    ci: float = param(0.95, gt=0, lt=1)
    seed: int = param(0, ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "compare")
        for pair in self.pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise invalid("compare", "pairs", [list(p) for p in self.pairs], f"entry {list(pair)} is not two "
                              "different conditions", "give pairs of two different conditions, e.g. [[POD0, POD3]]")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | CompareParams | None) -> CompareParams:
        cfg = dict(config) if isinstance(config, Mapping) else config
        if isinstance(cfg, dict) and "pairs" in cfg:
            cfg["pairs"] = tuple(tuple(x) for x in cfg["pairs"] or ())
        return from_section(cls, "compare", cfg)


# --------------------------------------------------------------------------------------------
# ZNCC (the same definition as calflow.gradcam.zncc_matrix, kept here so that the comparison
# does not load torch)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# reading the map stores
# --------------------------------------------------------------------------------------------


@dataclass
class Stratum:
    """The held-out trial maps of one (animal, condition) of one source.

    ``maps`` (n, h, w); ``members`` (K, n, h, w) the ensemble members' own maps, or None;
    ``patterns`` the pattern name of every trial; ``folds`` (n,); ``sessions`` the stores' sessions.
    """

    maps: np.ndarray
    patterns: list[str]
    folds: np.ndarray
    sessions: list[str]
    members: np.ndarray | None = None


@dataclass
class Source:
    """One kind of map store read into strata keyed by (animal, condition)."""

    name: str
    strata: dict[tuple[str, str], Stratum]
    zncc_map: str
    method: str
    n_members: int


def load_source(name: str, stores: Sequence[str | Path]) -> Source:
    """Read map stores (gradcam.zarr layout: attrs session, condition, group, patterns, zncc_map,
    method, [members]; arrays trial_maps, trial_pattern, trial_fold, [member_trial_maps]) into
    (animal = ``group`` attr, condition) strata. Stores of one animal and condition are pooled."""
    acc: dict[tuple[str, str], list] = {}
    how, method, members = None, None, set()
    for st in stores:
        try:
            g = open_group(st)
            a = dict(g.attrs)
            names = list(a["patterns"])
            tp = np.asarray(g["trial_pattern"][:], np.int64)
            maps = np.asarray(g["trial_maps"][:], np.float64)
            folds = np.asarray(g["trial_fold"][:], np.int64) if "trial_fold" in g else np.zeros(len(tp), np.int64)
            mem = np.asarray(g["member_trial_maps"][:], np.float64) if "member_trial_maps" in g else None
            key = (str(a["group"]), str(a["condition"]))
        except (KeyError, FileNotFoundError) as err:
            raise CalflowInputError(f"not a map store with trial maps ({err})", file=st,
                                    fix="delete it and re-run the stage that writes it") from err
        if len(tp) != len(maps) or (len(tp) and (tp.min() < 0 or tp.max() >= len(names))):
            raise CalflowInputError("trial_pattern does not match trial_maps / patterns", file=st,
                                    fix="delete it and re-run the stage that writes it")
        how = how or str(a.get("zncc_map", "signed"))
        method = method or str(a.get("method", name))
        members.add(1 if mem is None else len(mem))
        acc.setdefault(key, []).append((maps, [names[k] for k in tp], folds, str(a.get("session", st)), mem))
    strata = {}
    for key, items in acc.items():
        mems = [i[4] for i in items]
        member_maps = (np.concatenate(mems, axis=1) if all(m is not None for m in mems)
                       and len({len(m) for m in mems}) == 1 else None)
        strata[key] = Stratum(np.concatenate([i[0] for i in items]), [n for i in items for n in i[1]],
                              np.concatenate([i[2] for i in items]), [i[3] for i in items], member_maps)
    return Source(name, strata, how or "signed", method or name, max(members) if members else 1)


# --------------------------------------------------------------------------------------------
# one animal: matrices and effects
# --------------------------------------------------------------------------------------------


@dataclass
class AnimalPair:
    """One animal's trials of conditions a and b on the patterns both share."""

    animal: str
    patterns: list[str]
    maps: np.ndarray  # (n_a + n_b, h, w)
    members: np.ndarray | None  # (K, n_a + n_b, h, w)
    pat: np.ndarray  # (n,) pattern index
    cond: np.ndarray  # (n,) 0 = a, 1 = b
    folds: np.ndarray  # (n,)
    sets: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # trial indices of every (condition, pattern) cell, for resampling
    cells: list[np.ndarray] = field(default_factory=list)

    @property
    def trials_per_pattern(self) -> list[int]:
        return [len(c) for c in self.cells]


def pair_animal(animal: str, sa: Stratum, sb: Stratum) -> AnimalPair | None:
    """The trials of both conditions on their common patterns (None with fewer than 2 in common)."""
    common = sorted(set(sa.patterns) & set(sb.patterns), key=lambda n: (n.count("+"), n))
    if len(common) < 2:
        return None
    if sa.maps.shape[1:] != sb.maps.shape[1:]:
        raise CalflowInputError(f"animal {animal}: the conditions' maps have different shapes "
                                f"{sa.maps.shape[1:]} and {sb.maps.shape[1:]}", file=sa.sessions[0],
                                fix="image an animal's sessions with one field of view and the same settings")
    idx = {n: i for i, n in enumerate(common)}
    ka = [i for i, n in enumerate(sa.patterns) if n in idx]
    kb = [i for i, n in enumerate(sb.patterns) if n in idx]
    maps = np.concatenate([sa.maps[ka], sb.maps[kb]])
    members = None
    if sa.members is not None and sb.members is not None and len(sa.members) == len(sb.members):
        members = np.concatenate([sa.members[:, ka], sb.members[:, kb]], axis=1)
    pat = np.array([idx[sa.patterns[i]] for i in ka] + [idx[sb.patterns[i]] for i in kb], np.int64)
    cond = np.r_[np.zeros(len(ka), np.int64), np.ones(len(kb), np.int64)]
    folds = np.r_[sa.folds[ka], sb.folds[kb]]
    ap = AnimalPair(animal, common, maps, members, pat, cond, folds, pair_sets(common))
    ap.cells = [np.flatnonzero((cond == c) & (pat == k)) for c in (0, 1) for k in range(len(common))]
    return ap


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


def animal_stats(ap: AnimalPair, p: CompareParams, how: str, sel: np.ndarray | None = None,
                 cond: np.ndarray | None = None, maps: np.ndarray | None = None) -> np.ndarray:
    """(2 conditions, len(SETS)) statistics of one animal; ``sel`` a trial subset (with repeats),
    ``cond`` another condition labelling, ``maps`` other trial maps (an ensemble member's)."""
    cond = ap.cond if cond is None else cond
    maps = ap.maps if maps is None else maps
    idx = np.arange(len(cond)) if sel is None else sel
    flat = maps.reshape(len(maps), -1)
    pm = np.stack([pattern_maps(flat[ii], ap.pat[ii], len(ap.patterns)) for c in (0, 1) for ii in [idx[cond[idx] == c]]])
    return stats_of_pattern_maps(pm, ap.sets, p, how)


# --------------------------------------------------------------------------------------------
# tests and intervals over animals
# --------------------------------------------------------------------------------------------


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


def clustered_accuracy(units: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], *, n_bootstrap: int = 2000,
                       level: float = 0.95, seed: int = 0) -> dict:
    """Accuracy pooled over units (animals) with a percentile CI that resamples units, then trials.

    ``units``: per unit its strata (sessions), each ``(correct, frames)``: per trial the number of
    correctly classified and of all stimulated frames (a trial's frames are one cluster). The
    estimate is the pooled ``sum(correct) / sum(frames)``; a bootstrap replicate draws the units
    with replacement and, for every drawn unit, independently, the trials of each stratum with
    replacement. With one unit this is the trial-clustered bootstrap of one animal. Returns
    ``accuracy``, ``ci`` ([lo, hi], None without replicates), ``n_units``, ``n_trials``,
    ``n_frames``, ``n_bootstrap``, ``level``.
    """
    units = [[(np.asarray(c, np.float64), np.asarray(f, np.float64)) for c, f in u if len(f)] for u in units]
    units = [u for u in units if u]
    correct = sum(float(c.sum()) for u in units for c, _ in u)
    frames = sum(float(f.sum()) for u in units for _, f in u)
    out = {"accuracy": correct / frames if frames else None, "ci": None, "n_units": len(units),
           "n_trials": int(sum(len(f) for u in units for _, f in u)), "n_frames": int(frames),
           "n_bootstrap": int(n_bootstrap), "level": float(level)}
    if not frames or n_bootstrap < 1:
        return out
    rng = np.random.default_rng([int(seed), 21])
    sums = np.zeros((len(units), n_bootstrap, 2))  # per unit and replicate: resampled (correct, frames)
    for i, u in enumerate(units):
        for c, f in u:
            pick = rng.integers(0, len(f), (n_bootstrap, len(f)))
            sums[i, :, 0] += c[pick].sum(axis=1)
            sums[i, :, 1] += f[pick].sum(axis=1)
    n = len(units)
    tot = sums[rng.integers(0, n, (n_bootstrap, n)), rng.integers(0, n_bootstrap, (n_bootstrap, n))].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = tot[:, 0] / tot[:, 1]
    out["ci"] = [float(x) for x in np.nanquantile(acc, [(1 - level) / 2, (1 + level) / 2])]
    return out


# --------------------------------------------------------------------------------------------
# one source, all animals
# --------------------------------------------------------------------------------------------


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


def analyse_source(src: Source, a: str, b: str, p: CompareParams,
                   animal_groups: Mapping[str, str] | None = None) -> dict | None:
    """The animal-level comparison of conditions ``a`` vs ``b`` for one map source (None when no
    animal has both conditions with >= 2 common patterns)."""
    how = p.zncc_map or src.zncc_map
    animals = sorted({an for an, _ in src.strata})
    paired = [ap for an in animals if (an, a) in src.strata and (an, b) in src.strata
              for ap in [pair_animal(an, src.strata[(an, a)], src.strata[(an, b)])] if ap is not None]
    if not paired:
        return None
    k = SETS.index(p.statistic)
    obs = np.stack([animal_stats(ap, p, how) for ap in paired])  # (n, 2, S)
    d = obs[:, 1, :] - obs[:, 0, :]  # (n, S)
    n = len(paired)
    test = sign_flip_test(d[:, k], n_permutations=p.n_permutations, seed=p.seed)
    testable = test["n"] > 0 and test["smallest_possible_p"] <= p.alpha
    boot_mean = hierarchical_bootstrap(paired, p, how)  # (B, 2, S)
    effect = {s: float(_nanmean(d[:, i])) for i, s in enumerate(SETS)}
    effect_ci = {s: bc_interval(boot_mean[:, 1, i] - boot_mean[:, 0, i], effect[s], p.ci) for i, s in enumerate(SETS)}
    # the seed study's own number: summed off-diagonal ZNCC over every pattern pair, whatever the headline
    seed_sum = (obs if p.summary == "sum" else np.stack([animal_stats(ap, dataclasses.replace(p, summary="sum"), how)
                                                         for ap in paired]))[:, :, SETS.index("all")]
    per_cond = {}
    for c, name in enumerate((a, b)):
        per_cond[name] = {
            "statistic": float(_nanmean(obs[:, c, k])),
            "statistic_ci": bc_interval(boot_mean[:, c, k], float(_nanmean(obs[:, c, k])), p.ci),
            "by_set": {s: float(_nanmean(obs[:, c, i])) for i, s in enumerate(SETS)},
            "n_trials": int(sum(int((ap.cond == c).sum()) for ap in paired)),
            "seed_study_sum": {"label": SEED_STUDY_LABEL, "mean": float(_nanmean(seed_sum[:, c])),
                               "per_animal": {ap.animal: float(seed_sum[i, c]) for i, ap in enumerate(paired)},
                               "n_animals": n},
        }
    mats = {ap.animal: {c: condition_matrix(ap.maps[ap.cond == i], ap.pat[ap.cond == i], len(ap.patterns), how,
                                            p.subtract_mean) for i, c in enumerate((a, b))} for ap in paired}
    rng_diag = np.random.default_rng([p.seed, 3])
    per_animal = []
    for ap, o in zip(paired, obs, strict=True):
        row = {"animal": ap.animal, "group": (animal_groups or {}).get(ap.animal), "patterns": ap.patterns,
               "n_patterns": len(ap.patterns), "n_pairs_in_statistic": int(len(ap.sets[p.statistic][0])),
               a: float(o[0, k]), b: float(o[1, k]), "effect": float(o[1, k] - o[0, k]),
               "effect_by_set": {s: float(o[1, i] - o[0, i]) for i, s in enumerate(SETS)},
               "trials_per_pattern_median": float(np.median(ap.trials_per_pattern)),
               # pattern maps that are flat (e.g. zero everywhere after ReLU): their ZNCC is undefined
               "flat_maps": {c: int(np.isnan(np.diag(mats[ap.animal][c])).sum()) for c in (a, b)}}
        if p.diagnostic_permutations:
            row["session_difference_p"] = _session_difference(ap, p, how, k, o[1, k] - o[0, k], rng_diag)
        per_animal.append(row)
    out = {
        "source": src.name, "label": SOURCE_LABELS.get(src.name, src.name), "method": src.method, "zncc_map": how,
        "statistic": p.statistic, "summary": p.summary, "subtract_mean": p.subtract_mean,
        "n_animals": n, "effect": effect[p.statistic], "effect_ci": effect_ci[p.statistic],
        "effect_by_set": effect, "effect_ci_by_set": effect_ci, "conditions": per_cond,
        "test": {**test, "p": test["p"] if testable else None, "p_unreported": test["p"],
                 "testable": bool(testable), "name": "exact sign-flip permutation over animals" if test["exact"]
                 else "Monte Carlo sign-flip permutation over animals"},
        "animals": per_animal,
        "trials_per_pattern_median": float(np.median([x for ap in paired for x in ap.trials_per_pattern])),
        "_matrices": mats,
    }
    if not testable:
        out["test"]["message"] = (f"too few animals for a test (n = {n}; smallest possible p = "
                                  f"2/2^{n} = {test['smallest_possible_p']:.3g} > alpha = {p.alpha:g})")
    out["ensemble"] = _ensemble_spread(paired, p, how, k)
    if animal_groups:
        out["groups"] = _group_analysis(paired, d[:, k], animal_groups, p)
    return out


def _ensemble_spread(paired: Sequence[AnimalPair], p: CompareParams, how: str, k: int) -> dict | None:
    """The effect recomputed from every ensemble member's own maps: per member the mean effect
    over animals, their SD, and the SD expected of the K-member average (SD / sqrt(K))."""
    if any(ap.members is None for ap in paired):
        return None
    K = min(len(ap.members) for ap in paired)  # type: ignore[arg-type]
    if K < 2:
        return {"members": K}
    per = np.empty((K, len(paired)))
    for m in range(K):
        for i, ap in enumerate(paired):
            st = animal_stats(ap, p, how, maps=ap.members[m])  # type: ignore[index]
            per[m, i] = st[1, k] - st[0, k]
    mean_effects = _nanmean(per, axis=1)
    sd = float(np.std(mean_effects, ddof=1))
    return {"members": K, "member_effects": [float(x) for x in mean_effects], "member_sd": sd,
            "ensemble_sd": sd / math.sqrt(K),
            "per_animal_member_sd": [float(x) for x in np.std(per, axis=0, ddof=1)],
            "members_agreeing_in_sign": int(np.sum(np.sign(mean_effects) == np.sign(_nanmean(per))))}


def _group_analysis(paired: Sequence[AnimalPair], d: np.ndarray, animal_groups: Mapping[str, str],
                    p: CompareParams) -> dict:
    """Per experimental group: the mean effect and its sign-flip test; with two or more groups,
    the group x condition interaction of every pair of groups (label permutation over animals)."""
    names = [animal_groups.get(ap.animal) for ap in paired]
    groups = [g for g in dict.fromkeys(names) if g]
    out: dict[str, Any] = {"per_group": {}, "interactions": []}
    for g in groups:
        dg = d[[n == g for n in names]]
        t = sign_flip_test(dg, n_permutations=p.n_permutations, seed=p.seed)
        ok = t["n"] > 0 and t["smallest_possible_p"] <= p.alpha
        out["per_group"][g] = {"n_animals": int(len(dg)), "effect": float(_nanmean(dg)),
                               "p": t["p"] if ok else None, "smallest_possible_p": t["smallest_possible_p"]}
    for g0, g1 in itertools.combinations(groups, 2):
        sel = np.array([n in (g0, g1) for n in names])
        lab = np.array([n == g1 for n in names])[sel].astype(np.int64)
        t = group_permutation_test(d[sel], lab, n_permutations=p.n_permutations, seed=p.seed)
        ok = t["p"] is not None and t["smallest_possible_p"] <= p.alpha
        diff = float(_nanmean(d[sel][lab == 1]) - _nanmean(d[sel][lab == 0]))
        out["interactions"].append({
            "groups": [g0, g1], "interaction": diff, "p": t["p"] if ok else None, "exact": t["exact"],
            "smallest_possible_p": t["smallest_possible_p"],
            "definition": f"mean effect of {g1} minus mean effect of {g0} (difference of per-animal differences)",
            **({} if ok else {"message": "too few animals for a test of the interaction"})})
    return out


# --------------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------------

# Held-out trials per pattern and condition below which a comparison is flagged: with 1-2 (the old
# demo) the maps' mutual ZNCC and the sign of the difference changed with the classifier's seed.
FEW_TRIALS_PER_PATTERN = 10


def few_trials_warning(trials_per_pattern: float, a: str, b: str) -> list[str]:
    """One message when the median held-out trials per (animal, pattern, condition) is below
    :data:`FEW_TRIALS_PER_PATTERN`, else none."""
    if trials_per_pattern >= FEW_TRIALS_PER_PATTERN:
        return []
    return [f"{a} vs {b}: a median of {trials_per_pattern:g} held-out trial(s) per pattern and condition, under "
            f"{FEW_TRIALS_PER_PATTERN}: the pattern maps are noisy and the per-animal effects uncertain. "
            "Fix: record more trials per pattern"]


def _analyse_stores(name: str, stores: Sequence[str | Path], a: str, b: str, p: CompareParams,
                    animal_groups: Mapping[str, str] | None) -> dict | None:
    """One source's analysis with one BLAS thread (the same sums whether or not sources run in parallel)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return analyse_source(load_source(name, stores), a, b, p, animal_groups)


def compare_conditions(sources: Mapping[str, Sequence[str | Path]], a: str, b: str,
                       params: Mapping[str, Any] | CompareParams, metrics_files: Sequence[str | Path] = (),
                       animal_groups: Mapping[str, str] | None = None, profile: str = "default",
                       workers: int = 1) -> dict:
    """Conditions ``a`` vs ``b`` from map stores per source (``{"gradcam": [...], "stim_maps":
    [...], "gradcam_shuffled": [...]}``; the primary source is gradcam when given, else the first).

    ``animal_groups``: animal -> experimental group (the sheet's ``group`` column) for the
    interaction. ``profile``: the analysis profile the config was resolved with
    (``classify.profile``, calflow.config.PROFILES), recorded in the result. ``workers`` > 1: the
    sources are analysed in that many processes (each source seeds its own generators, so the
    result is the same). Returns the result dict (its ``_matrices`` are for the figure, not the JSON).
    """
    p = CompareParams.from_config(params)
    if not sources or not any(sources.values()):
        raise CalflowInputError("no map stores to compare", file="config",
                                fix="give sessions with a stim log and a targets table in both conditions")
    todo = [(name, list(stores)) for name, stores in sources.items() if stores]
    if workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_analyse_stores, n, st, a, b, p, animal_groups) for n, st in todo]
            done = [f.result() for f in futures]
    else:
        done = [_analyse_stores(n, st, a, b, p, animal_groups) for n, st in todo]
    results = {name: r for (name, _), r in zip(todo, done, strict=True) if r is not None}
    primary = PRIMARY if PRIMARY in results else next(iter(results), None)
    if primary is None:
        raise CalflowInputError(f"no animal has held-out trials of both {a} and {b} with >= 2 common patterns",
                                file="config", fix="compare conditions recorded in the same animals (the sheet's "
                                                   "'animal' column) with the same targets table")
    head = results[primary]
    warnings = few_trials_warning(head["trials_per_pattern_median"], a, b)
    if not head["test"]["testable"]:
        warnings.append(f"{a} vs {b}: {head['test']['message']}; the effect and its CI are reported, no p-value")
    controls = {}
    for name, r in results.items():
        if name == primary:
            continue
        agree = bool(np.sign(r["effect"]) == np.sign(head["effect"]))
        controls[name] = {"effect": r["effect"], "effect_ci": r["effect_ci"], "p": r["test"]["p"],
                          "same_sign_as_primary": agree}
        if name == "stim_maps" and not agree:
            warnings.append(f"{a} vs {b}: the model-free stimulus-triggered maps give an effect of the opposite sign "
                            f"({r['effect']:+.3f}) to {SOURCE_LABELS.get(primary, primary)} ({head['effect']:+.3f}): "
                            "the network's maps do not follow the raw responses")
        if name == "gradcam_shuffled" and abs(r["effect"]) >= 0.5 * abs(head["effect"]) > 0:
            warnings.append(f"{a} vs {b}: a classifier trained on shuffled pattern labels shows an effect "
                            f"({r['effect']:+.3f}) at least half the size of the real one ({head['effect']:+.3f}): "
                            "the difference does not need the pattern identities the classifier learned (Grad-CAM "
                            "of any stimulation-aware network follows each trial's own responses); read the effect "
                            "with the model-free stimulus-triggered maps, which measure those responses directly")
    flat = sum(sum(x["flat_maps"].values()) for x in head["animals"])
    if flat:
        total = sum(2 * x["n_patterns"] for x in head["animals"])
        why = ("zero everywhere after ReLU: Grad-CAM is negative there, and its sign is not guaranteed, "
               "docs/classify.md" if head["zncc_map"] == "relu" else "constant")
        warnings.append(f"{a} vs {b}: {flat} of {total} pattern maps of {SOURCE_LABELS.get(primary, primary)} are flat "
                        f"({why}); their ZNCC is undefined and left out of the statistic, so a sum covers fewer "
                        "pattern pairs")
    ens = head.get("ensemble") or {}
    if ens.get("member_sd") is not None and abs(head["effect"]) > 0 and ens["ensemble_sd"] > 0.5 * abs(head["effect"]):
        warnings.append(f"{a} vs {b}: the classifier ensemble's seed-to-seed spread (SD {ens['ensemble_sd']:.3f} of "
                        f"the {ens['members']}-member mean) is over half the effect ({head['effect']:+.3f})")
    for w in warnings:
        log.warning(w)
    acc = accuracy_by_condition(metrics_files, n_bootstrap=p.n_bootstrap, level=p.ci, seed=p.seed)
    return {
        "a": a, "b": b, "unit": "animal", "primary": primary, "n_animals": head["n_animals"], "profile": profile,
        "statistic": p.statistic, "summary": p.summary,
        "conditions": {c: {"seed_study_sum": head["conditions"][c]["seed_study_sum"]} for c in (a, b)},
        "effect": head["effect"], "effect_ci": head["effect_ci"], "p": head["test"]["p"],
        "test": {k: v for k, v in head["test"].items() if k != "p_unreported"},
        "sources": results, "controls": controls, "warnings": warnings,
        "classifier_accuracy": {c: acc.get(c) for c in (a, b)},
        "classifier_accuracy_note": ACCURACY_NOTE,
        "ci": p.ci, "alpha": p.alpha, "n_bootstrap": p.n_bootstrap,
        "resampling": "hierarchical bootstrap: animals with replacement, then trials within each (condition, "
                      "pattern); bias-corrected percentile intervals",
    }


ACCURACY_NOTE = ("held-out accuracy of the stimulation classifier on stimulated frames, pooled over animals; CI: "
                 "percentile bootstrap resampling animals, then trials within each session (a trial's frames are "
                 "one cluster). It says how well the network tells the stimulated targets apart, not how "
                 "connected they are: it is not evidence about connectivity")


def accuracy_by_condition(metrics_files: Sequence[str | Path], *, n_bootstrap: int = 2000, level: float = 0.95,
                          seed: int = 0) -> dict[str, dict]:
    """Held-out accuracy (stimulated frames) per condition over every model's metrics.json, with
    animals as the unit: the pooled accuracy and :func:`clustered_accuracy`'s CI (animals, i.e. the
    models' groups, then trials within each session). Per animal, the model's own trial-clustered
    CI (``conditions[c].test_accuracy_ci``). Sessions of metrics without per-trial counts (files from
    before them) count in the pooled accuracy only; the CI is then None."""
    units: dict[str, dict[str, list]] = {}  # condition -> group -> [(correct, frames) per session]
    num: dict[str, float] = {}
    den: dict[str, int] = {}
    complete: dict[str, bool] = {}
    per_animal: dict[str, dict] = {}
    for f in metrics_files:
        m = json.loads(Path(f).read_text())
        group = str(m.get("group", f))
        for s in m["sessions"].values():
            t, c = s["test"], s["condition"]
            if t["accuracy"] is None:
                continue
            num[c] = num.get(c, 0.0) + t["accuracy"] * t["n_stimulated_frames"]
            den[c] = den.get(c, 0) + t["n_stimulated_frames"]
            tt = s.get("test_trials")
            complete[c] = complete.get(c, True) and tt is not None
            if tt is not None:
                units.setdefault(c, {}).setdefault(group, []).append((tt["correct"], tt["stimulated_frames"]))
        for c, v in m.get("conditions", {}).items():
            per_animal.setdefault(c, {})[group] = {"accuracy": v.get("test_accuracy"),
                                                   "ci": v.get("test_accuracy_ci"), "n_trials": v.get("n_trials")}
    out = {}
    for c in num:
        if not den[c]:
            continue
        row = {"accuracy": num[c] / den[c], "n_frames": den[c], "ci": None, "level": level,
               "n_animals": len(per_animal.get(c, {})), "per_animal": per_animal.get(c, {})}
        if complete.get(c) and units.get(c):
            cl = clustered_accuracy(list(units[c].values()), n_bootstrap=n_bootstrap, level=level, seed=seed)
            row.update(ci=cl["ci"], n_trials=cl["n_trials"], n_animals=cl["n_units"],
                       ci_method="percentile bootstrap: animals with replacement, then trials within each session")
        out[c] = row
    return out


def write_comparison(result: dict, out_json: str | Path, out_png: str | Path | None = None) -> None:
    """The JSON (without the matrices) and a figure: per-animal effects of every source, and the
    primary source's matrices of the first animals."""
    mats = {name: r.pop("_matrices", {}) for name, r in result["sources"].items()}
    with atomic_output(out_json) as tmp:
        tmp.write_text(json.dumps(result, indent=2, allow_nan=True))
    if out_png is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = result["a"], result["b"]
    names = list(result["sources"])
    prim = result["primary"]
    show = list(mats.get(prim, {}))[:3]
    fig, axes = plt.subplots(1 + len(show), max(2, len(names)), figsize=(4.6 * max(2, len(names)),
                                                                           4.0 * (1 + len(show))), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for c, name in enumerate(names):
        r = result["sources"][name]
        ax = axes[0, c]
        ax.set_axis_on()
        eff = [x["effect"] for x in r["animals"]]
        ax.axhline(0, c="grey", lw=0.8)
        ax.scatter(np.zeros(len(eff)) + np.linspace(-0.15, 0.15, len(eff)), eff, c="k", s=18, zorder=3)
        lo, hi = r["effect_ci"]
        ax.errorbar([0.5], [r["effect"]], yerr=[[r["effect"] - (lo if lo is not None else r["effect"])],
                                                [(hi if hi is not None else r["effect"]) - r["effect"]]],
                    fmt="o", c="#d62728", capsize=4)
        ax.set_xticks([0, 0.5], ["animals", "mean, CI"])
        ax.set_xlim(-0.5, 1.0)
        ax.set_ylabel(f"{b} - {a}, {r['summary']} ZNCC ({r['statistic']})")
        ptxt = f"p = {r['test']['p']:.4f}" if r["test"]["p"] is not None else "no test (too few animals)"
        ax.set_title(f"{SOURCE_LABELS.get(name, name)}\n{ptxt}, n = {r['n_animals']} animals", fontsize=8)
    for row, an in enumerate(show, 1):
        pats = next(x["patterns"] for x in result["sources"][prim]["animals"] if x["animal"] == an)
        for c, cond in enumerate((a, b)):
            ax = axes[row, c]
            ax.set_axis_on()
            ax.imshow(mats[prim][an][cond], cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_xticks(range(len(pats)), pats, rotation=90, fontsize=6)
            ax.set_yticks(range(len(pats)), pats, fontsize=6)
            ax.set_title(f"{an} {cond} ({prim})", fontsize=9)
    fig.tight_layout()
    with atomic_output(out_png) as tmp_png:
        fig.savefig(tmp_png, dpi=80, format="png")
    plt.close(fig)
