"""summary.zarr, written and read here: the (y, x) float32 images of :data:`SUMMARY_ARRAYS` with xarray
dims and a description each; attrs ``stage``, ``n_frames``, ``fps``, ``summary_source`` (the movie
store) and ``source`` (the raw movie). :func:`read_summary` returns them as :class:`SummaryImages`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from calflow.io import require_arrays, write_array

_DESCRIPTIONS = {
    "mean": "temporal mean",
    "max": "temporal maximum",
    "std": "temporal standard deviation (population)",
    "local_corr": "mean Pearson correlation over time with the 8 neighbouring pixels",
    "pnr": "peak-to-noise ratio (max - baseline) / noise",
    "noise": "std of first temporal differences / sqrt(2)",
    "baseline": "mean of per-block temporal medians",
}
SUMMARY_ARRAYS = tuple(_DESCRIPTIONS)


def write_summary(path: str | Path, images: dict[str, np.ndarray], *, n_frames: int, fps: float,
                  movie_store: str | Path, source: str) -> None:
    """Write summary.zarr at ``path`` (a temporary of :func:`calflow.io.atomic_output`)."""
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.attrs.update({
        "stage": "summary", "n_frames": n_frames, "fps": fps, "summary_source": str(movie_store),
        "source": source,
    })
    for name, img in images.items():
        write_array(path, name, img, ("y", "x"), {"description": _DESCRIPTIONS[name]})


@dataclass(frozen=True)
class SummaryImages:
    """summary.zarr's images, (y, x) float32 each (see :mod:`calflow.summary.images`), and the number
    of frames, frame rate and raw source they summarise."""

    mean: np.ndarray
    max: np.ndarray
    std: np.ndarray
    local_corr: np.ndarray
    pnr: np.ndarray
    noise: np.ndarray
    baseline: np.ndarray
    n_frames: int
    fps: float
    source: str


def read_summary_images(store: str | Path, names: tuple[str, ...] = SUMMARY_ARRAYS,
                        ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Only the images ``names`` of summary.zarr (as :func:`read_summary` reads them) and its attrs
    (CalflowInputError as :func:`read_summary`)."""
    group = require_arrays(store, names)
    return {name: np.asarray(group[name][...]) for name in names}, dict(group.attrs)


def read_summary(store: str | Path) -> SummaryImages:
    """Read summary.zarr; a store that does not open or lacks an image is one CalflowInputError line."""
    group = require_arrays(store, SUMMARY_ARRAYS)
    images = {name: np.asarray(group[name][...]) for name in SUMMARY_ARRAYS}
    attrs = group.attrs
    return SummaryImages(**images, n_frames=int(attrs["n_frames"]), fps=float(attrs["fps"]),
                         source=str(attrs["source"]))
