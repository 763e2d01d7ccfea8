"""The files of the comparison: the map stores it reads (``gradcam.zarr``, ``gradcam_shuffled.zarr``,
``stim_maps.zarr``, one per session: :func:`read_session_maps` -> :class:`SessionMaps`, pooled per
(animal, condition) by :func:`load_source` into a :class:`Source`) and the JSON it writes
(``results/compare/{a}_vs_{b}.json``, keys in docs/compare.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calflow.errors import CalflowInputError
from calflow.io import open_group, read_json, write_json


class MapStoreAttrs:
    """The attrs every map store has (``gradcam.zarr``, ``gradcam_shuffled.zarr``,
    ``stim_maps.zarr``), as properties of a dataclass with an ``attrs`` mapping."""

    attrs: Mapping[str, Any]

    @property
    def session(self) -> str:
        return str(self.attrs["session"])

    @property
    def patterns(self) -> list[str]:
        """The patterns' names (target ids joined by ``+``), in the order of the pattern axis."""
        return list(self.attrs["patterns"])


@dataclass(frozen=True)
class SessionMaps:
    """One session's map store: its held-out trial maps and the attrs the comparison uses.

    ``maps`` (n, h, w) float64; ``patterns`` the pattern name of every trial; ``folds`` (n,) the
    cross-fitting fold (zeros in a store without ``trial_fold``); ``members`` (K, n, h, w) the
    ensemble members' own maps, or None; ``zncc_map`` how the maps are compared (``signed`` when
    the store does not say); ``method`` the map method, None when the store does not say.
    """

    session: str
    animal: str  # the store's ``group`` attr: the classifier's target group, i.e. the animal
    condition: str
    maps: np.ndarray
    patterns: list[str]
    folds: np.ndarray
    members: np.ndarray | None
    zncc_map: str
    method: str | None


def read_session_maps(store: str | Path) -> SessionMaps:
    """Read one map store (attrs session, condition, group, patterns, zncc_map, method, [members];
    arrays trial_maps, trial_pattern, trial_fold, [member_trial_maps]). A store that lacks one of
    them or whose trial patterns do not match its maps is one CalflowInputError."""
    try:
        g = open_group(store)
        a = dict(g.attrs)
        names = list(a["patterns"])
        tp = np.asarray(g["trial_pattern"][:], np.int64)
        maps = np.asarray(g["trial_maps"][:], np.float64)
        folds = np.asarray(g["trial_fold"][:], np.int64) if "trial_fold" in g else np.zeros(len(tp), np.int64)
        mem = np.asarray(g["member_trial_maps"][:], np.float64) if "member_trial_maps" in g else None
        animal, condition = str(a["group"]), str(a["condition"])
    except (KeyError, FileNotFoundError) as err:
        raise CalflowInputError(f"not a map store with trial maps ({err})", file=store,
                                fix="delete it and re-run the stage that writes it") from err
    if len(tp) != len(maps) or (len(tp) and (tp.min() < 0 or tp.max() >= len(names))):
        raise CalflowInputError("trial_pattern does not match trial_maps / patterns", file=store,
                                fix="delete it and re-run the stage that writes it")
    return SessionMaps(str(a.get("session", store)), animal, condition, maps, [names[k] for k in tp], folds, mem,
                       str(a.get("zncc_map", "signed")), str(a["method"]) if "method" in a else None)


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
    """Read map stores (:func:`read_session_maps`) into (animal = ``group`` attr, condition)
    strata. Stores of one animal and condition are pooled."""
    acc: dict[tuple[str, str], list[SessionMaps]] = {}
    how, method, members = None, None, set()
    for st in stores:
        sm = read_session_maps(st)
        how = how or sm.zncc_map
        method = method or (name if sm.method is None else sm.method)
        members.add(1 if sm.members is None else len(sm.members))
        acc.setdefault((sm.animal, sm.condition), []).append(sm)
    strata = {}
    for key, items in acc.items():
        mems = [i.members for i in items]
        member_maps = (np.concatenate(mems, axis=1) if all(m is not None for m in mems)
                       and len({len(m) for m in mems}) == 1 else None)
        strata[key] = Stratum(np.concatenate([i.maps for i in items]), [n for i in items for n in i.patterns],
                              np.concatenate([i.folds for i in items]), [i.session for i in items], member_maps)
    return Source(name, strata, how or "signed", method or name, max(members) if members else 1)


def write_comparison_json(result: Mapping[str, Any], out_json: str | Path) -> None:
    """The comparison's JSON (a result of calflow.compare.compare_conditions without its
    ``_matrices``), written atomically."""
    write_json(out_json, dict(result))


def read_comparison(path: str | Path) -> dict[str, Any]:
    """A comparison JSON as :func:`write_comparison_json` wrote it."""
    return read_json(path, what="the comparison JSON", fix="rerun the compare stage (delete the file first)")
