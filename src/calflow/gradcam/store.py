"""``gradcam.zarr`` and ``gradcam_shuffled.zarr`` (the same layout), written and read here only:
:class:`GradcamMaps` holds the attrs and the arrays as stored (contract in docs/classify.md),
:func:`write_gradcam` writes one through :func:`calflow.io.atomic_output`, :func:`read_gradcam`
reads one back. No torch, so the report and the NWB export can read the store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calflow.compare.store import MapStoreAttrs
from calflow.errors import CalflowInputError
from calflow.io import open_group, write_group

# name -> xarray dims, in the order they are written; the trace arrays only with a cnmf store
ARRAYS = {
    "pattern_maps": ("pattern", "ly", "lx"),
    "pattern_maps_relu": ("pattern", "ly", "lx"),
    "display_maps": ("pattern", "y", "x"),
    "zncc": ("pattern", "pattern2"),
    "pattern_targets": ("pattern", "slot"),
    "pattern_trials": ("pattern",),
    "trial_maps": ("trial", "ly", "lx"),
    "member_trial_maps": ("member", "trial", "ly", "lx"),
    "trial_pattern": ("trial",),
    "trial_fold": ("trial",),
    "trial_start": ("trial",),
    "mean_image": ("cy", "cx"),
    "target_yx": ("target", "axis"),
    "trace_corr": ("target", "target2"),
    "trace_component": ("target",),
}
OPTIONAL = ("trace_corr", "trace_component")


@dataclass(frozen=True, eq=False)
class GradcamMaps(MapStoreAttrs):
    """One session's maps, named as stored. Layer-resolution maps (ly, lx), display maps (y, x):

    pattern_maps (pattern) signed mean over the pattern's held-out trials, float32 (NaN without
    trials); pattern_maps_relu their ReLU; display_maps ReLU-ed and bilinearly upsampled to the
    frame; zncc (pattern, pattern2) float64 between the maps of ``attrs['zncc_map']``;
    pattern_targets (pattern, slot) target indices (-1 padded); pattern_trials (pattern,) trial
    counts; trial_maps (trial) the mean over ensemble members of member_trial_maps (member, trial);
    trial_pattern / trial_fold / trial_start (trial,) int64; mean_image (cy, cx) float32;
    target_yx (target, 2) px; trace_corr (target, target2) and trace_component (target,) with a
    cnmf store, else None. ``attrs``: session, condition, group, model, layer, members, control,
    method, score, zncc_map, patterns (names), target_ids, frame_shape, downsample, layer_shape,
    n_folds, heldout, cnmf.
    """

    attrs: Mapping[str, Any]
    pattern_maps: np.ndarray
    pattern_maps_relu: np.ndarray
    display_maps: np.ndarray
    zncc: np.ndarray
    pattern_targets: np.ndarray
    pattern_trials: np.ndarray
    trial_maps: np.ndarray
    member_trial_maps: np.ndarray
    trial_pattern: np.ndarray
    trial_fold: np.ndarray
    trial_start: np.ndarray
    mean_image: np.ndarray
    target_yx: np.ndarray
    trace_corr: np.ndarray | None = field(default=None)
    trace_component: np.ndarray | None = field(default=None)


    @property
    def method(self) -> str:
        return str(self.attrs.get("method", "gradcam"))

    @property
    def members(self) -> int:
        return int(self.attrs.get("members", 1))

    @property
    def control(self) -> str | None:
        return self.attrs.get("control")


def write_gradcam(out_store: str | Path, maps: GradcamMaps) -> None:
    """``maps`` -> ``out_store`` (written to a temporary sibling, moved into place when complete)."""
    write_group(out_store, maps.attrs, {k: getattr(maps, k) for k in ARRAYS}, ARRAYS)


def read_gradcam_arrays(store: str | Path, names: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The attrs of a gradcam store and only its arrays ``names`` (an optional array the store lacks,
    e.g. ``trace_corr``, is left out), for readers that need neither the trial maps nor the rest."""
    g = open_group(store)
    have = [k for k in names if k in g]  # membership only: listing the group opens every array's metadata
    missing = [k for k in names if k not in have and k not in OPTIONAL]
    if missing:
        raise CalflowInputError(f"missing arrays {missing}", file=store, fix="re-run the gradcam stage")
    return dict(g.attrs), {k: np.asarray(g[k][:]) for k in have}


def read_gradcam(store: str | Path) -> GradcamMaps:
    """A ``gradcam.zarr`` / ``gradcam_shuffled.zarr`` written by :func:`write_gradcam`; a store without
    one of its arrays is one CalflowInputError line."""
    g = open_group(store)
    have = set(g.array_keys())
    missing = [k for k in ARRAYS if k not in have and k not in OPTIONAL]
    if missing:
        raise CalflowInputError(f"missing arrays {missing}", file=store, fix="re-run the gradcam stage")
    return GradcamMaps(attrs=dict(g.attrs), **{k: np.asarray(g[k][:]) for k in ARRAYS if k in have})
