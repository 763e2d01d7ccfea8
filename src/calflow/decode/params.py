"""The ``decode`` config section (:class:`DecodeParams`) and the names its keys may take."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calflow.params import check_fields, from_section, invalid, param

CLASSIFIERS = ("logistic", "random_forest", "hist_gradient_boosting", "adaboost")
TRACES = ("dff", "C", "C_raw")
CV_SCHEMES = ("blocks", "shuffled")
SPONTANEOUS = ("auto", "epochs", "gaps")
_GUARD_FIX = "give seconds >= 0 (at least 3 decay times of the indicator, e.g. 2 for GCaMP6f, 5 for GCaMP6s)"


@dataclass
class DecodeParams:
    """The ``decode`` config section (times in seconds relative to stimulus onset)."""

    traces: str = param("dff", choices=TRACES)  # of cnmf.zarr
    accepted_only: bool = True               # only components with accepted == True
    window_s: list[float] = param(factory=lambda: [0.0, 0.5])
    baseline_s: list[float] = param(factory=lambda: [-0.5, 0.0])
    spontaneous: str = param("auto", choices=SPONTANEOUS)  # epochs (the stimulus table's) | gaps (between trials)
    spont_guard_s: float = param(2.0, ge=0, fix=_GUARD_FIX)  # s after each trial before frames count as spontaneous
    zscore: bool = True                      # z-score each neuron by its spontaneous activity (before the PCs)
    remove_spontaneous_pcs: int = param(32, ge=0)  # k top spontaneous PCs projected out (capped; 0 = off)
    tree_neurons: int = param(64, ge=0)      # tree ensembles see the most selective neurons (ANOVA F; 0 = all)
    classifiers: list[str] = param(factory=lambda: list(CLASSIFIERS), choices=CLASSIFIERS, min_items=1)
    cv: str = param("blocks", choices=CV_SCHEMES)  # blocks (contiguous trials) | shuffled
    folds: int = param(5, ge=2)
    n_permutations: int = param(100, ge=0)   # label permutations of the refit test (0 = fold test only)
    refit_test: list[str] = param(factory=list, choices=CLASSIFIERS)
    nested_selection: bool = False           # also score a classifier chosen by inner cross-validation
    n_estimators: int = param(100, ge=1)     # random forest trees
    max_iter: int = param(30, ge=1)          # hist_gradient_boosting iterations
    adaboost_estimators: int = param(50, ge=1)  # AdaBoost rounds (depth-1 trees)
    seed: int = param(0, ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "decode")
        for key in ("window_s", "baseline_s"):
            v = getattr(self, key)
            if len(v) != 2 or not v[0] < v[1]:
                raise invalid("decode", key, v, "must be [start, stop] with start < stop",
                              "give [start, stop] in seconds relative to onset with start < stop")
            setattr(self, key, [float(x) for x in v])
        if not math.isfinite(self.spont_guard_s):
            raise invalid("decode", "spont_guard_s", self.spont_guard_s, "must be finite", _GUARD_FIX)
        self.spont_guard_s = float(self.spont_guard_s)
        self.classifiers, self.refit_test = list(self.classifiers), list(self.refit_test)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | DecodeParams | None) -> DecodeParams:
        return from_section(cls, "decode", config)
