"""One animal: its held-out trials of both conditions on the patterns they share
(:class:`AnimalPair`) and its statistics per condition and pattern-pair set, on all its trials or
a resample, relabelling or ensemble member of them (:func:`animal_stats`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from calflow.compare.params import CompareParams
from calflow.compare.zncc import pair_sets, pattern_maps, stats_of_pattern_maps
from calflow.errors import CalflowInputError

if TYPE_CHECKING:
    from calflow.compare.store import Stratum


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
