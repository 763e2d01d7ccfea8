"""The ``compare`` config section (:class:`CompareParams`) and the comparison's fixed names: its map
sources (:data:`PRIMARY`, :data:`SOURCE_LABELS`) and its pattern-pair sets (:data:`SETS`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calflow.params import check_fields, from_section, invalid, param

PRIMARY = "gradcam"
SOURCE_LABELS = {
    "gradcam": "Grad-CAM (classifier ensemble)",
    "stim_maps": "stimulus-triggered average (model-free control)",
    "gradcam_shuffled": "Grad-CAM of a shuffled-label classifier (baseline)",
}
SETS = ("disjoint", "singles", "pairs", "all")


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
