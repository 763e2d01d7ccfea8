"""Per-cell cross-day statistics of the tracked cells and the condition test with animals as the unit
of replication and cells nested in them (docs/tracking.md, "Cross-day statistics").

For every tracked cell and session (the re-extracted traces of rule ``track_traces``):

* ``response``: mean dF/F in frames where any target is stimulated minus the mean in frames where none
  is (dF/F units);
* ``target_r``: Pearson r of the cell's dF/F with the mean dF/F of the target cells (the union cells
  nearest each target, within ``target_radius_px``), targets themselves excluded.

Each animal gives one effect per statistic: the mean over its cells matched in both sessions of the
per-cell change (condition b minus a). The test is :func:`calflow.compare.resampling.sign_flip_test`
over those animal effects (cells never count as replicates); the CI is a two-level bootstrap (animals,
then cells within each drawn animal), percentile interval. :func:`crossday_compare` is rule
``track_crossday``'s entry point (kept here, apart from :mod:`calflow.tracking.stage`, so that the
rule's env needs neither torch nor scikit-learn).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calflow.tracking.store import read_tracking

STATISTICS = ("response", "target_r")


@dataclass(frozen=True)
class SessionTraces:
    """One session's tracked-cell dF/F (U, T) float64 (NaN rows: cells the re-extraction lost), the
    union cells' centroids in this session's frames (U, 2) px, its stimulated frames (T,) bool and
    the targets' positions (N, 2) px."""

    dff: np.ndarray
    centroids: np.ndarray
    stimulated: np.ndarray
    targets_yx: np.ndarray


def target_cells(centroids: np.ndarray, targets_yx: np.ndarray, radius_px: float) -> np.ndarray:
    """Union-cell index (N,) nearest each target, -1 where none is within ``radius_px``."""
    if len(centroids) == 0:
        return np.full(len(targets_yx), -1)
    d = np.linalg.norm(targets_yx[:, None, :] - centroids[None, :, :], axis=-1)
    d = np.where(np.isfinite(d), d, np.inf)
    near = np.argmin(d, axis=1)
    return np.where(d[np.arange(len(targets_yx)), near] <= radius_px, near, -1)


def cell_statistics(s: SessionTraces, radius_px: float = 6.0) -> dict[str, np.ndarray]:
    """Per cell (U,) ``response`` and ``target_r`` of one session (module doc); also ``is_target`` (U,)."""
    U = s.dff.shape[0]
    stim = np.asarray(s.stimulated, bool)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (lost traces) give NaN, as meant
        resp = (np.nanmean(s.dff[:, stim], axis=1) if stim.any() else np.full(U, np.nan)) - (
            np.nanmean(s.dff[:, ~stim], axis=1) if (~stim).any() else np.full(U, np.nan))
    tc = target_cells(s.centroids, s.targets_yx, radius_px)
    tc = np.unique(tc[tc >= 0])
    is_target = np.zeros(U, bool)
    is_target[tc] = True
    r = np.full(U, np.nan)
    if tc.size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.nanmean(s.dff[tc], axis=0)
        ref = ref - ref.mean()
        x = s.dff - s.dff.mean(axis=1, keepdims=True)
        den = np.sqrt((x * x).sum(axis=1) * (ref * ref).sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(den > 0, x @ ref / den, np.nan)
        r[is_target] = np.nan
    return {"response": resp, "target_r": r, "is_target": is_target}


def animal_changes(stats_a: Mapping[str, np.ndarray], stats_b: Mapping[str, np.ndarray],
                   matched: np.ndarray) -> dict[str, np.ndarray]:
    """Per statistic, the per-cell change b - a (n,) over the cells ``matched`` (U,) bool in both
    sessions and finite in both."""
    out = {}
    for name in STATISTICS:
        d = np.asarray(stats_b[name]) - np.asarray(stats_a[name])
        out[name] = d[matched & np.isfinite(d)]
    return out


def nested_test(changes: Mapping[str, Sequence[float] | np.ndarray], *, n_bootstrap: int = 2000,
                level: float = 0.95, seed: int = 0) -> dict:
    """Animals as units, cells nested: per animal the mean per-cell change; the sign-flip test over the
    animal means; a two-level bootstrap CI (animals, then cells within each); cell counts."""
    from calflow.compare.resampling import sign_flip_test

    names = [a for a, c in changes.items() if len(c)]
    d = np.array([float(np.mean(changes[a])) for a in names])
    out = {"animals": names, "animal_effect": d.tolist(), "n_cells": [int(len(changes[a])) for a in names],
           "effect": float(d.mean()) if len(d) else None, "test": sign_flip_test(d, seed=seed)}
    if len(d) and n_bootstrap:
        rng = np.random.default_rng([seed, 23])
        boot = np.empty(n_bootstrap)
        for i in range(n_bootstrap):
            pick = rng.integers(0, len(names), len(names))
            boot[i] = np.mean([np.mean(rng.choice(np.asarray(changes[names[j]]), len(changes[names[j]])))
                               for j in pick])
        lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
        out["ci"] = [float(lo), float(hi)]
        out["ci_level"] = level
    return out


def tracked_dff(traces_store: str | Path, n_cells: int) -> np.ndarray:
    """dF/F (U, T) float64 of the union cells from a track_traces store (row u = union cell u; NaN rows
    for seeds the CNMF dropped)."""
    from calflow.cnmf.store import read_cnmf

    c = read_cnmf(traces_store)
    out = np.full((n_cells, c["dff"].shape[1]), np.nan)
    idx = np.asarray(c["attrs"].get("seed_index", []), np.int64)
    ok = (idx >= 0) & (idx < n_cells)
    out[idx[ok]] = c["dff"][: len(idx)][ok]
    return out


def crossday_compare(animals: Mapping[str, Mapping[str, Any]], a: str, b: str, out_json: str | Path, *,
                     target_radius_px: float = 6.0, n_bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Cross-day statistics of the tracked cells, condition ``a`` vs ``b`` -> JSON (docs/tracking.md).

    ``animals`` maps each animal to its ``tracking`` store and, per condition ``a``/``b``, the dict
    ``{"session", "traces", "stim_log", "targets"}``. Cells count when matched in both sessions."""
    import json

    from calflow.io import atomic_output
    from calflow.stimulation import read_labels, read_targets
    from calflow.tracking.register import map_points

    changes: dict[str, dict[str, np.ndarray]] = {name: {} for name in STATISTICS}
    per_animal = {}
    for animal, files in animals.items():
        t = read_tracking(files["tracking"])
        stats, cols = {}, {}
        for cond in (a, b):
            f = files[cond]
            s = t.sessions.index(f["session"])
            dff = tracked_dff(f["traces"], t.n_cells)
            targets = read_targets(f["targets"])
            labels = read_labels(f["stim_log"], targets, dff.shape[1])
            cents = map_points(t.to_session[s].astype(np.float64), t.centroids) if t.n_cells else np.zeros((0, 2))
            stats[cond] = cell_statistics(SessionTraces(dff, cents, labels[:, -1] == 0, targets.yx), target_radius_px)
            cols[cond] = s
        matched = (t.members[:, cols[a]] >= 0) & (t.members[:, cols[b]] >= 0) & ~stats[a]["is_target"]
        ch = animal_changes(stats[a], stats[b], matched)
        for name in STATISTICS:
            changes[name][animal] = ch[name]
        per_animal[animal] = {"n_union": t.n_cells, "n_matched_non_target": int(matched.sum()),
                              **{f"{name}_{cond}_mean": float(np.nanmean(stats[cond][name][matched]))
                                 if matched.any() else None for name in STATISTICS for cond in (a, b)}}
    result = {"a": a, "b": b, "unit": "animal (cells nested: the per-animal mean of per-cell changes b - a)",
              "statistics": {name: nested_test(changes[name], n_bootstrap=n_bootstrap, seed=seed)
                             for name in STATISTICS},
              "animals": per_animal, "target_radius_px": target_radius_px}
    with atomic_output(out_json) as tmp:
        Path(tmp).write_text(json.dumps(_finite(result), indent=1, allow_nan=False) + "\n")
    return result


def _finite(x: Any) -> Any:
    """JSON-ready copy: NaN and infinities -> None, numpy scalars -> Python."""
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def read_crossday(path: str | Path) -> dict[str, Any]:
    """Read a ``crossday_{a}_vs_{b}.json`` (:func:`crossday_compare`); a missing, garbled or key-less file
    is one CalflowInputError line naming it (:func:`calflow.io.read_json`)."""
    from calflow.io import read_json

    return read_json(path, what="cross-day comparison", fix="rerun the track_crossday stage",
                     required=("a", "b", "statistics", "animals"))
