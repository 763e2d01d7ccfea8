"""``stim_maps.zarr``, written and read here only: :class:`StimMaps` holds the attrs and arrays as
stored, in the map-store layout :mod:`calflow.compare` reads (the ``gradcam.zarr`` one, without the
display, member and trace arrays); :func:`write_stim_maps` writes it through
:func:`calflow.io.atomic_output`, :func:`read_stim_maps` reads it back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calflow.compare.store import MapStoreAttrs
from calflow.errors import CalflowInputError
from calflow.io import open_group, write_group

# name -> xarray dims, in the order they are written
ARRAYS = {
    "trial_maps": ("trial", "ly", "lx"),
    "trial_pattern": ("trial",),
    "trial_fold": ("trial",),
    "trial_start": ("trial",),
    "pattern_maps": ("pattern", "ly", "lx"),
    "pattern_trials": ("pattern",),
    "zncc": ("pattern", "pattern2"),
}


@dataclass(frozen=True, eq=False)
class StimMaps(MapStoreAttrs):
    """One session's STA maps, named as stored: trial_maps (trial, ly, lx) float32 dF (movie units);
    trial_pattern (trial,) index into the patterns; trial_fold (trial,) zeros; trial_start (trial,)
    first stimulated frame; pattern_maps (pattern, ly, lx) float32 mean per pattern; pattern_trials
    (pattern,) trial counts; zncc (pattern, pattern2) float64. ``attrs``: session, condition, group
    (the animal), patterns (names), target_ids, method ``sta``, zncc_map ``signed``, members 1,
    control ``stimulus_triggered_average``, downsample, baseline_frames, tail_frames, units."""

    attrs: Mapping[str, Any]
    trial_maps: np.ndarray
    trial_pattern: np.ndarray
    trial_fold: np.ndarray
    trial_start: np.ndarray
    pattern_maps: np.ndarray
    pattern_trials: np.ndarray
    zncc: np.ndarray



def write_stim_maps(out_store: str | Path, maps: StimMaps) -> None:
    """``maps`` -> ``out_store`` (written to a temporary sibling, moved into place when complete)."""
    write_group(out_store, maps.attrs, {k: getattr(maps, k) for k in ARRAYS}, ARRAYS)


def read_stim_maps(store: str | Path) -> StimMaps:
    """A ``stim_maps.zarr`` written by :func:`write_stim_maps`; a store without one of its arrays is one
    CalflowInputError line."""
    g = open_group(store)
    missing = [k for k in ARRAYS if k not in set(g.array_keys())]
    if missing:
        raise CalflowInputError(f"missing arrays {missing}", file=store, fix="re-run the stim_maps stage")
    return StimMaps(attrs=dict(g.attrs), **{k: np.asarray(g[k][:]) for k in ARRAYS})
