"""keyframes.zarr, written and read here: ``indices`` (keyframe,) int64 ascending, ``frames``
(keyframe, y, x) float32, ``scores`` (time,) float32 (activity score, or distance to the cluster
centre for kmeans) and ``projection_max`` / ``projection_mean`` / ``projection_std`` (y, x) float32
over the keyframes; attrs ``method``, ``n_frames``, ``params``, ``source``. :func:`read_keyframes`
returns them as :class:`Keyframes`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from calflow.io import require_arrays, write_array
from calflow.keyframes.params import KeyframeParams

PROJECTIONS = ("projection_max", "projection_mean", "projection_std")
KEYFRAME_ARRAYS = ("indices", "frames", "scores", *PROJECTIONS)


def write_keyframes(path: str | Path, res: dict[str, np.ndarray], p: KeyframeParams, movie_store: str | Path,
                    n_frames: int) -> None:
    """Write keyframes.zarr at ``path`` (a temporary of :func:`calflow.io.atomic_output`) from the
    result of :func:`calflow.keyframes.select_keyframes`."""
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.attrs.update({"method": p.method, "n_frames": n_frames, "params": dataclasses.asdict(p),
                        "source": str(movie_store)})
    write_array(path, "indices", res["indices"], ("keyframe",))
    write_array(path, "frames", res["frames"], ("keyframe", "y", "x"))
    write_array(path, "scores", res["scores"].astype(np.float32), ("time",))
    for name in PROJECTIONS:
        write_array(path, name, res[name].astype(np.float32), ("y", "x"))


@dataclass(frozen=True)
class Keyframes:
    """keyframes.zarr's arrays (see the module docstring) and attrs: the method, the movie's frame
    count, the :class:`KeyframeParams` used (as a dict) and the movie store they came from."""

    indices: np.ndarray
    frames: np.ndarray
    scores: np.ndarray
    projection_max: np.ndarray
    projection_mean: np.ndarray
    projection_std: np.ndarray
    method: str
    n_frames: int
    params: dict[str, Any]
    source: str


def read_keyframes(store: str | Path) -> Keyframes:
    """Read keyframes.zarr; a store that does not open or lacks an array is one CalflowInputError line."""
    group = require_arrays(store, KEYFRAME_ARRAYS)
    arrays = {name: np.asarray(group[name][...]) for name in KEYFRAME_ARRAYS}
    attrs = group.attrs
    return Keyframes(**arrays, method=str(attrs["method"]), n_frames=int(attrs["n_frames"]),
                     params=dict(attrs["params"]), source=str(attrs["source"]))
