"""Condition comparison of pattern-map similarity, with the animal as the unit of replication
(stage ``compare``; docs/compare.md). Modules: :mod:`~calflow.compare.params` (config section,
source names, pattern-pair sets), :mod:`~calflow.compare.zncc` (ZNCC and a condition's statistic),
:mod:`~calflow.compare.store` (map stores in, JSON out), :mod:`~calflow.compare.animal` (one
animal's trials), :mod:`~calflow.compare.resampling` (tests, bootstrap), :mod:`~calflow.compare.accuracy`
(classifier accuracy CI), :mod:`~calflow.compare.analysis` (one source, all animals),
:mod:`~calflow.compare.plots` (figure), :mod:`~calflow.compare.stage` (what the rule calls). The
names below are re-exported here and imported on first use (:mod:`calflow.lazy`), so a reader of a
map store (:mod:`~calflow.compare.store`, which gradcam's store and the NWB export use) pulls in
neither matplotlib nor the statistics.
"""

from calflow.lazy import lazy_exports

# name -> module it is defined in
_EXPORTS = {
    **dict.fromkeys(("ACCURACY_NOTE", "accuracy_by_condition", "clustered_accuracy"), "calflow.compare.accuracy"),
    **dict.fromkeys(("SEED_STUDY_LABEL", "analyse_source"), "calflow.compare.analysis"),
    **dict.fromkeys(("AnimalPair", "animal_stats", "pair_animal"), "calflow.compare.animal"),
    **dict.fromkeys(("PRIMARY", "SETS", "SOURCE_LABELS", "CompareParams"), "calflow.compare.params"),
    "plot_comparison": "calflow.compare.plots",
    # _inner_bootstrap is not public; tests/test_compare.py checks it against animal_stats
    **dict.fromkeys(("MAX_EXACT_ANIMALS", "MAX_EXACT_ASSIGNMENTS", "_inner_bootstrap", "bc_interval",
                     "group_permutation_test", "hierarchical_bootstrap", "sign_flip_test"),
                    "calflow.compare.resampling"),
    **dict.fromkeys(("FEW_TRIALS_PER_PATTERN", "compare_conditions", "few_trials_warning", "write_comparison"),
                    "calflow.compare.stage"),
    **dict.fromkeys(("SessionMaps", "Source", "Stratum", "load_source", "read_comparison", "read_session_maps",
                     "write_comparison_json"), "calflow.compare.store"),
    **dict.fromkeys(("condition_matrix", "pair_sets", "pattern_maps", "pattern_targets", "stats_of_pattern_maps",
                     "zncc_matrix"), "calflow.compare.zncc"),
}
_SUBMODULES = ("accuracy", "analysis", "animal", "params", "plots", "resampling", "stage", "store", "zncc")

__all__ = sorted(k for k in _EXPORTS if not k.startswith("_"))

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
