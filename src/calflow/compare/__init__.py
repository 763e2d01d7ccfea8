"""Condition comparison of pattern-map similarity, with the animal as the unit of replication
(stage ``compare``; docs/compare.md). Modules: :mod:`~calflow.compare.params` (config section,
source names, pattern-pair sets), :mod:`~calflow.compare.zncc` (ZNCC and a condition's statistic),
:mod:`~calflow.compare.store` (map stores in, JSON out), :mod:`~calflow.compare.animal` (one
animal's trials), :mod:`~calflow.compare.resampling` (tests, bootstrap), :mod:`~calflow.compare.accuracy`
(classifier accuracy CI), :mod:`~calflow.compare.analysis` (one source, all animals),
:mod:`~calflow.compare.plots` (figure), :mod:`~calflow.compare.stage` (what the rule calls). The
names below are re-exported here; none of them imports torch or matplotlib at import.
"""

from calflow.compare.accuracy import ACCURACY_NOTE, accuracy_by_condition, clustered_accuracy
from calflow.compare.analysis import SEED_STUDY_LABEL, analyse_source
from calflow.compare.animal import AnimalPair, animal_stats, pair_animal
from calflow.compare.params import PRIMARY, SETS, SOURCE_LABELS, CompareParams
from calflow.compare.plots import plot_comparison
from calflow.compare.resampling import (
    MAX_EXACT_ANIMALS,
    MAX_EXACT_ASSIGNMENTS,
    _inner_bootstrap,  # noqa: F401 - not public; tests/test_compare.py checks it against animal_stats
    bc_interval,
    group_permutation_test,
    hierarchical_bootstrap,
    sign_flip_test,
)
from calflow.compare.stage import (
    FEW_TRIALS_PER_PATTERN,
    compare_conditions,
    few_trials_warning,
    write_comparison,
)
from calflow.compare.store import (
    SessionMaps,
    Source,
    Stratum,
    load_source,
    read_comparison,
    read_session_maps,
    write_comparison_json,
)
from calflow.compare.zncc import (
    condition_matrix,
    pair_sets,
    pattern_maps,
    pattern_targets,
    stats_of_pattern_maps,
    zncc_matrix,
)

__all__ = [
    "ACCURACY_NOTE", "FEW_TRIALS_PER_PATTERN", "MAX_EXACT_ANIMALS", "MAX_EXACT_ASSIGNMENTS", "PRIMARY",
    "SEED_STUDY_LABEL", "SETS", "SOURCE_LABELS", "AnimalPair", "CompareParams", "SessionMaps", "Source", "Stratum",
    "accuracy_by_condition", "analyse_source", "animal_stats", "bc_interval", "clustered_accuracy",
    "compare_conditions", "condition_matrix", "few_trials_warning", "group_permutation_test",
    "hierarchical_bootstrap", "load_source", "pair_animal", "pair_sets", "pattern_maps", "pattern_targets",
    "plot_comparison", "read_comparison", "read_session_maps", "sign_flip_test", "stats_of_pattern_maps",
    "write_comparison", "write_comparison_json", "zncc_matrix",
]
