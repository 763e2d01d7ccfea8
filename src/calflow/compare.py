"""Condition comparison of Grad-CAM ZNCC matrices (e.g. before vs 3 days after a pain model).

For conditions a and b, per model group g (an animal: the sessions that share one classifier and
its targets) that has trials of both: the ZNCC matrix of each condition is computed from the
mean maps of that condition's held-out trials per pattern (patterns present in both conditions
of g). Per condition: the *summed* and the *mean* off-diagonal ZNCC (upper triangle), averaged
over the groups. The contrast is ``D = mean_g [mean_offdiag(b) - mean_offdiag(a)]``.

Statistics (unit of resampling: the trial, within its group, pattern and fold; see
docs/classify.md for the argument):

* permutation p-value: condition labels of the trials are shuffled within every (group, pattern,
  fold) stratum, the per-condition pattern means and matrices recomputed; two-sided
  ``p = (1 + #{|D*| >= |D|}) / (1 + n_permutations)``. Under "W is the same in both conditions"
  the trials of a stratum are exchangeable (one network, the same fold model), so the test is
  exact for any statistic.
* bootstrap confidence intervals: trials resampled with replacement within every
  (group, condition, pattern) stratum; basic (reverse-percentile) intervals of each condition's
  summed and mean off-diagonal ZNCC and of D (resampling biases ZNCC down; the basic interval
  removes that additive bias, the plain percentile interval would not even contain the estimate).

Classifier accuracy per condition (held-out frames, from every group's metrics.json) is added.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calflow.errors import CalflowInputError
from calflow.gradcam import maps_for_zncc, offdiag, zncc_figure, zncc_matrix
from calflow.io import atomic_output, open_group
from calflow.params import from_section

log = logging.getLogger("calflow.compare")


@dataclass(frozen=True)
class CompareParams:
    """The ``compare`` config section (docs/classify.md)."""

    pairs: tuple = ()  # [[a, b], ...] condition pairs; empty = every pair of conditions in sheet order
    n_permutations: int = 2000
    n_bootstrap: int = 1000
    ci: float = 0.95
    seed: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | CompareParams | None) -> CompareParams:
        cfg = dict(config) if isinstance(config, Mapping) else config
        if isinstance(cfg, dict) and "pairs" in cfg:
            cfg["pairs"] = tuple(tuple(x) for x in cfg["pairs"] or ())
        p = from_section(cls, "compare", cfg)
        for pair in p.pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise CalflowInputError(f"compare.pairs entry {list(pair)}", file="config",
                                        fix="give pairs of two different conditions, e.g. [[POD0, POD3]]")
        return p


@dataclass
class Stratum:
    """The held-out trial maps of one (group, condition): maps (n, h, w), pattern names, folds."""

    maps: np.ndarray
    patterns: list[str]  # per trial
    folds: np.ndarray
    sessions: list[str]


def load_strata(stores: Sequence[str | Path],
                zncc_map: str | None = None) -> tuple[dict[tuple[str, str], Stratum], str, str]:
    """Read gradcam.zarr stores into (group, condition) strata of trial maps; also the maps' ``zncc_map``
    and Grad-CAM ``method`` (from the first store's attrs)."""
    acc: dict[tuple[str, str], list] = {}
    how = zncc_map
    method = None
    for st in stores:
        g = open_group(st)
        a = g.attrs
        how = how or a.get("zncc_map", "relu")
        method = method or str(a.get("method", "gradcam"))
        names = list(a["patterns"])
        tp = np.asarray(g["trial_pattern"][:])
        key = (str(a["group"]), str(a["condition"]))
        acc.setdefault(key, []).append((np.asarray(g["trial_maps"][:], np.float64), [names[k] for k in tp],
                                        np.asarray(g["trial_fold"][:]), str(a["session"])))
    strata = {}
    for key, items in acc.items():
        strata[key] = Stratum(np.concatenate([i[0] for i in items]), [n for i in items for n in i[1]],
                              np.concatenate([i[2] for i in items]), [i[3] for i in items])
    return strata, how or "relu", method or "gradcam"


def _matrix(maps: np.ndarray, pat_idx: np.ndarray, n_pat: int, how: str) -> np.ndarray:
    sums = np.zeros((n_pat, maps.shape[1] * maps.shape[2]))
    np.add.at(sums, pat_idx, maps.reshape(len(maps), -1))
    counts = np.bincount(pat_idx, minlength=n_pat)[:, None]
    return zncc_matrix(maps_for_zncc(sums / np.maximum(counts, 1), how))


def _stats(z: np.ndarray) -> tuple[float, float]:
    off = offdiag(z)
    return float(np.nansum(off)), float(np.nanmean(off)) if np.isfinite(off).any() else float("nan")


@dataclass
class _Paired:
    group: str
    patterns: list[str]
    maps: np.ndarray  # (n_a + n_b, h, w)
    pat: np.ndarray  # (n,) pattern index
    cond: np.ndarray  # (n,) 0 = a, 1 = b
    strata: list[np.ndarray]  # trial indices of every (pattern, fold) stratum


def _paired(sa: Stratum, sb: Stratum, group: str) -> _Paired | None:
    common = sorted(set(sa.patterns) & set(sb.patterns), key=lambda n: (n.count("+"), n))
    if len(common) < 2:
        return None
    idx = {n: i for i, n in enumerate(common)}
    keep_a = [i for i, n in enumerate(sa.patterns) if n in idx]
    keep_b = [i for i, n in enumerate(sb.patterns) if n in idx]
    maps = np.concatenate([sa.maps[keep_a], sb.maps[keep_b]])
    pat = np.array([idx[sa.patterns[i]] for i in keep_a] + [idx[sb.patterns[i]] for i in keep_b], np.int64)
    cond = np.r_[np.zeros(len(keep_a), np.int64), np.ones(len(keep_b), np.int64)]
    folds = np.r_[sa.folds[keep_a], sb.folds[keep_b]]
    keys = pat * (int(folds.max()) + 1) + folds
    strata = [np.flatnonzero(keys == k) for k in np.unique(keys)]
    return _Paired(group, common, maps, pat, cond, strata)


def _group_stats(pg: _Paired, cond: np.ndarray, how: str, sel: np.ndarray | None = None) -> np.ndarray:
    """(2 conditions, 2 stats [sum, mean]) for one group under a condition labelling."""
    n = len(pg.patterns)
    idx = np.arange(len(cond)) if sel is None else sel
    out = np.empty((2, 2))
    for c in (0, 1):
        ii = idx[cond[idx] == c]
        out[c] = _stats(_matrix(pg.maps[ii], pg.pat[ii], n, how))
    return out


# Held-out trials per pattern and condition below which a comparison is flagged. Measured
# (docs/classify.md): with ~70 per pattern (10-min sessions) W x 1.8 was detected in 5 of 5 animals
# and 19 of 20 null pairs passed; with 1-2 (the demo) the maps' mutual ZNCC and even the sign of
# the difference change with the classifier's training seed (mean ZNCC 0.002-0.275, D -0.13 to +0.04).
FEW_TRIALS_PER_PATTERN = 10


def few_trials_warning(trials_per_pattern: float, a: str, b: str, method: str = "gradcam") -> list[str]:
    """One message when the median held-out trials per (animal, pattern, condition) is below
    :data:`FEW_TRIALS_PER_PATTERN`, else none; ``method``: the stores' ``gradcam.method``."""
    if trials_per_pattern >= FEW_TRIALS_PER_PATTERN:
        return []
    if method == "gradcam":
        why = ("Grad-CAM maps from so few trials depend on the classifier's training seed more than on the condition "
               "(on the demo the sign of the difference changes with classify.seed)")
        fix = ("record more trials per pattern (the validation used ~70), or use gradcam.method: hirescam, whose "
               "maps held across training seeds on the demo")
    else:
        why = "the comparison was validated with ~70 trials per pattern"
        fix = "record more trials per pattern"
    return [f"{a} vs {b}: a median of {trials_per_pattern:g} held-out trial(s) per pattern and condition, under "
            f"{FEW_TRIALS_PER_PATTERN}: {why}; treat the p-value as exploratory. Fix: {fix}"]


def compare_conditions(stores: Sequence[str | Path], a: str, b: str, params: Mapping[str, Any] | CompareParams,
                       metrics_files: Sequence[str | Path] = ()) -> dict:
    """The statistics of conditions ``a`` vs ``b`` from the sessions' gradcam.zarr stores (dict)."""
    p = CompareParams.from_config(params)
    strata, how, method = load_strata(stores)
    groups = sorted({g for g, _ in strata})
    paired = []
    for g in groups:
        if (g, a) in strata and (g, b) in strata:
            pg = _paired(strata[(g, a)], strata[(g, b)], g)
            if pg is not None:
                paired.append(pg)
    if not paired:
        raise CalflowInputError(f"no model group has held-out trials of both {a} and {b} with >= 2 common patterns",
                                file="config", fix="compare conditions recorded in the same animals (sessions "
                                                   "'<animal>_<condition>' sharing a targets table)")
    obs = np.stack([_group_stats(pg, pg.cond, how) for pg in paired])  # (G, 2 cond, 2 stat)
    d_obs = float(np.mean(obs[:, 1, 1] - obs[:, 0, 1]))
    rng = np.random.default_rng([p.seed, 1])
    null = np.empty(p.n_permutations)
    for r in range(p.n_permutations):
        diffs = []
        for pg in paired:
            cond = pg.cond.copy()
            for s in pg.strata:
                cond[s] = cond[s][rng.permutation(len(s))]
            st = _group_stats(pg, cond, how)
            diffs.append(st[1, 1] - st[0, 1])
        null[r] = np.mean(diffs)
    p_perm = float((1 + np.sum(np.abs(null) >= abs(d_obs) - 1e-12)) / (1 + p.n_permutations))
    rng = np.random.default_rng([p.seed, 2])
    boot = np.empty((p.n_bootstrap, 2, 2))
    for r in range(p.n_bootstrap):
        per_group = []
        for pg in paired:
            sel = []
            for c in (0, 1):
                for k in range(len(pg.patterns)):
                    ii = np.flatnonzero((pg.cond == c) & (pg.pat == k))
                    sel.append(ii[rng.integers(0, len(ii), len(ii))])
            per_group.append(_group_stats(pg, pg.cond, how, np.concatenate(sel)))
        boot[r] = np.mean(per_group, axis=0)
    lo, hi = (1 - p.ci) / 2 * 100, (1 + p.ci) / 2 * 100

    def ci(x: np.ndarray, est: float) -> list[float]:
        # basic (reverse-percentile) interval: resampling trials adds noise to the pattern means and
        # biases ZNCC down; reflecting the quantiles around the estimate removes that additive bias
        return [float(2 * est - np.nanpercentile(x, hi)), float(2 * est - np.nanpercentile(x, lo))]

    per_cond = {}
    for c, name in enumerate((a, b)):
        per_cond[name] = {
            "zncc_sum_offdiag": float(obs[:, c, 0].mean()), "zncc_sum_offdiag_ci": ci(boot[:, c, 0], obs[:, c, 0].mean()),
            "zncc_mean_offdiag": float(obs[:, c, 1].mean()),
            "zncc_mean_offdiag_ci": ci(boot[:, c, 1], obs[:, c, 1].mean()),
            "n_trials": int(sum(int((pg.cond == c).sum()) for pg in paired)),
        }
    per_pattern = [int(np.sum((pg.cond == c) & (pg.pat == k))) for pg in paired for c in (0, 1)
                   for k in range(len(pg.patterns))]
    trials_per_pattern = float(np.median(per_pattern))
    warnings = few_trials_warning(trials_per_pattern, a, b, method)
    for w in warnings:
        log.warning(w)
    acc = accuracy_by_condition(metrics_files)
    for name in (a, b):
        per_cond[name]["classifier_test_accuracy"] = acc.get(name)
    return {
        "a": a, "b": b, "conditions": per_cond,
        "groups": [{"group": pg.group, "patterns": pg.patterns, "n_patterns": len(pg.patterns),
                    "zncc_sum_offdiag": {a: float(o[0, 0]), b: float(o[1, 0])},
                    "zncc_mean_offdiag": {a: float(o[0, 1]), b: float(o[1, 1])}} for pg, o in zip(paired, obs, strict=True)],
        "difference_mean_offdiag": d_obs, "difference_mean_offdiag_ci": ci(boot[:, 1, 1] - boot[:, 0, 1], d_obs),
        "difference_sum_offdiag": float(np.mean(obs[:, 1, 0] - obs[:, 0, 0])),
        "difference_sum_offdiag_ci": ci(boot[:, 1, 0] - boot[:, 0, 0], float(np.mean(obs[:, 1, 0] - obs[:, 0, 0]))),
        "p_permutation": p_perm, "n_permutations": p.n_permutations, "n_bootstrap": p.n_bootstrap, "ci": p.ci,
        "zncc_map": how, "trials_per_pattern_median": trials_per_pattern,
        "warnings": warnings,
        "resampling_unit": "held-out trial, within (group, pattern, fold) for the permutation and within "
                           "(group, condition, pattern) for the bootstrap",
        "null_differences": [float(x) for x in np.quantile(null, [0.025, 0.5, 0.975])],
        "_matrices": {pg.group: {c: _matrix(pg.maps[pg.cond == i], pg.pat[pg.cond == i], len(pg.patterns), how)
                                 for i, c in enumerate((a, b))} for pg in paired},
    }


def accuracy_by_condition(metrics_files: Sequence[str | Path]) -> dict[str, float]:
    """Held-out accuracy per condition pooled over every group's metrics.json (frame-weighted)."""
    num: dict[str, float] = {}
    den: dict[str, int] = {}
    for f in metrics_files:
        m = json.loads(Path(f).read_text())
        for s in m["sessions"].values():
            t = s["test"]
            if t["accuracy"] is None:
                continue
            c = s["condition"]
            num[c] = num.get(c, 0.0) + t["accuracy"] * t["n_stimulated_frames"]
            den[c] = den.get(c, 0) + t["n_stimulated_frames"]
    return {c: num[c] / den[c] for c in num if den[c]}


def write_comparison(result: dict, out_json: str | Path, out_png: str | Path | None = None) -> None:
    """The JSON (without the matrices) and a figure: the matrices side by side and the statistics."""
    mats = result.pop("_matrices", {})
    with atomic_output(out_json) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    if out_png is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = result["a"], result["b"]
    groups = list(mats)
    fig, axes = plt.subplots(len(groups), 3, figsize=(13, 4.2 * len(groups)), squeeze=False)
    for r, g in enumerate(groups):
        names = next(x["patterns"] for x in result["groups"] if x["group"] == g)
        for c, cond in enumerate((a, b)):
            zncc_figure(mats[g][cond], names, f"{g} {cond}", ax=axes[r, c])
        ax = axes[r, 2]
        if r == 0:
            x = np.arange(2)
            mean = [result["conditions"][c]["zncc_mean_offdiag"] for c in (a, b)]
            cis = np.array([result["conditions"][c]["zncc_mean_offdiag_ci"] for c in (a, b)])
            ax.bar(x, mean, color=["#1f77b4", "#ff7f0e"])
            ax.errorbar(x, mean, yerr=np.abs([np.array(mean) - cis[:, 0], cis[:, 1] - np.array(mean)]), fmt="none", c="k")
            ax.set_xticks(x, [a, b])
            ax.set_ylabel("mean off-diagonal ZNCC")
            ax.set_title(f"p = {result['p_permutation']:.4f} (permutation, trials)", fontsize=9)
        else:
            ax.set_axis_off()
    fig.tight_layout()
    with atomic_output(out_png) as tmp_png:
        fig.savefig(tmp_png, dpi=90, format="png")
    plt.close(fig)
