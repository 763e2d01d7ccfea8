"""What rule ``compare`` calls: :func:`compare_conditions` (every map source of conditions a vs b,
the controls set against the primary, the warnings, the classifier's accuracy) and
:func:`write_comparison` (the JSON and the figure)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calflow.compare.accuracy import ACCURACY_NOTE, accuracy_by_condition
from calflow.compare.analysis import analyse_source
from calflow.compare.params import PRIMARY, SOURCE_LABELS, CompareParams
from calflow.compare.plots import plot_comparison
from calflow.compare.store import load_source, write_comparison_json
from calflow.errors import CalflowInputError

log = logging.getLogger("calflow.compare")

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
        from calflow.runner import forked_pool

        with forked_pool(min(workers, len(todo))) as pool:
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


def write_comparison(result: dict, out_json: str | Path, out_png: str | Path | None = None) -> None:
    """The JSON (without the matrices; :func:`~calflow.compare.store.write_comparison_json`) and a
    figure (:func:`~calflow.compare.plots.plot_comparison`): per-animal effects of every source, and
    the primary source's matrices of the first animals."""
    mats = {name: r.pop("_matrices", {}) for name, r in result["sources"].items()}
    write_comparison_json(result, out_json)
    if out_png is None:
        return
    plot_comparison(result, mats, out_png)
