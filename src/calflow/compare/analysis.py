"""One map source, all animals: per animal the effect ``statistic(b) - statistic(a)`` on every
pattern-pair set, the sign-flip test and the hierarchical-bootstrap CI over animals, the seed
study's summed statistic, the seed-ensemble spread and, with experimental groups, the group x
condition interactions (docs/compare.md)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from calflow.compare.animal import AnimalPair, animal_stats, pair_animal
from calflow.compare.params import SETS, SOURCE_LABELS, CompareParams
from calflow.compare.resampling import (
    _session_difference,
    bc_interval,
    group_permutation_test,
    hierarchical_bootstrap,
    sign_flip_test,
)
from calflow.compare.zncc import _nanmean, condition_matrix

if TYPE_CHECKING:
    from calflow.compare.store import Source

SEED_STUDY_LABEL = ("the seed study's statistic: summed off-diagonal ZNCC over all pattern pairs (set all, summary "
                    "sum) of this run's maps; reported for reference, not the headline test")


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
