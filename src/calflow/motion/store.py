"""motion.zarr, written and read here only: the corrected ``movie`` (time, y, x), chunked like
raw.zarr, and the small arrays of :class:`MotionShifts` (rigid and patch shifts in px, in
:data:`SHIFT_CONVENTION`, patch centres, correlations with the template) and :class:`MotionImages`
((y, x) float32), each with xarray dims; attrs are raw.zarr's plus ``stage``, ``motion_source``,
``shift_convention``, the run statistics of :func:`calflow.motion.correct_motion` and
``motion_params``. No torch, so stages and the report without it can read the store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from calflow.io import MovieWriter, require_arrays, write_array

SHIFT_CONVENTION = (
    "shift = (dy, dx) px is the displacement of the content: the template point (y, x) appears at "
    "(y + dy, x + dx) in the frame, frame_t(y, x) = template(y - dy, x - dx); correction samples "
    "frame_t at (y + dy, x + dx)"
)
SHIFT_ARRAYS = ("rigid_shifts", "patch_shifts", "patch_centers_y", "patch_centers_x", "corr_with_template",
                "corr_with_template_before")
IMAGE_ARRAYS = ("template", "mean_before", "mean_after")


@dataclass(frozen=True)
class MotionShifts:
    """The per-frame results, named as stored. Shifts are (dy, dx) px (:data:`SHIFT_CONVENTION`).

    rigid_shifts (time, 2); patch_shifts (time, patch_y, patch_x, 2), rigid + residual ((time, 1, 1, 2)
    = rigid without ``piecewise``); patch_centers_y (patch_y,) / patch_centers_x (patch_x,) px;
    corr_with_template (time,) Pearson r of the corrected frame with the template (central crop),
    corr_with_template_before (time,) the same for the raw frame. All float32.
    """

    rigid_shifts: np.ndarray
    patch_shifts: np.ndarray
    patch_centers_y: np.ndarray
    patch_centers_x: np.ndarray
    corr_with_template: np.ndarray
    corr_with_template_before: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.rigid_shifts.shape[0])


@dataclass(frozen=True)
class MotionImages:
    """The (y, x) float32 images: the final ``template`` and the mean images of the raw
    (``mean_before``) and corrected (``mean_after``) movie."""

    template: np.ndarray
    mean_before: np.ndarray
    mean_after: np.ndarray


@dataclass(frozen=True)
class MotionRecord:
    """Everything in motion.zarr but the movie: shifts, images and the group's attrs."""

    shifts: MotionShifts
    images: MotionImages
    attrs: Mapping[str, Any]

    @property
    def fps(self) -> float:
        """Frames per second (NaN when the store has none)."""
        return float(self.attrs.get("fps", np.nan))


def movie_writer(path: str | Path, shape: tuple[int, int, int], dtype: np.dtype, *, fps: float,
                 chunk_frames: int, raw_attrs: Mapping[str, Any], raw_store: str | Path) -> MovieWriter:
    """Create motion.zarr at ``path`` with its (still empty) corrected movie: ``chunk_frames`` frames a
    chunk, attrs = raw.zarr's (``raw_attrs``; ``fps`` is the writer's own) + ``stage``,
    ``motion_source`` and ``shift_convention``. Write the frames and close it, then
    :func:`write_motion` and :func:`write_attrs`."""
    attrs = {k: v for k, v in raw_attrs.items() if k != "fps"}
    attrs.update({"stage": "motion", "motion_source": str(raw_store), "shift_convention": SHIFT_CONVENTION})
    return MovieWriter(path, shape, dtype, fps=fps, chunk_frames=chunk_frames, attrs=attrs)


def write_motion(path: str | Path, shifts: MotionShifts, images: MotionImages) -> None:
    """Add the shifts and images to the store begun by :func:`movie_writer`."""
    px_attrs = {"units": "px", "axis": ["dy", "dx"], "convention": SHIFT_CONVENTION}
    write_array(path, "rigid_shifts", shifts.rigid_shifts, ("time", "axis"), px_attrs)
    write_array(path, "patch_shifts", shifts.patch_shifts, ("time", "patch_y", "patch_x", "axis"), px_attrs)
    write_array(path, "patch_centers_y", shifts.patch_centers_y, ("patch_y",), {"units": "px"})
    write_array(path, "patch_centers_x", shifts.patch_centers_x, ("patch_x",), {"units": "px"})
    write_array(path, "template", images.template, ("y", "x"))
    write_array(path, "corr_with_template", shifts.corr_with_template, ("time",),
                {"description": "Pearson r of the corrected frame with the template (central crop)"})
    write_array(path, "corr_with_template_before", shifts.corr_with_template_before, ("time",),
                {"description": "Pearson r of the raw frame with the template (central crop)"})
    write_array(path, "mean_before", images.mean_before, ("y", "x"))
    write_array(path, "mean_after", images.mean_after, ("y", "x"))


def write_attrs(path: str | Path, attrs: Mapping[str, Any]) -> None:
    """Add ``attrs`` (the run statistics and ``motion_params``) to the store's group attrs, last."""
    group = zarr.open_group(path, mode="a")
    group.attrs.update(dict(attrs))


def _shifts(group: zarr.Group) -> MotionShifts:
    return MotionShifts(*(np.asarray(group[name]) for name in SHIFT_ARRAYS))


def _images(group: zarr.Group) -> MotionImages:
    return MotionImages(*(np.asarray(group[name]) for name in IMAGE_ARRAYS))


def read_shifts(store: str | Path) -> MotionShifts:
    """The shifts and correlations of motion.zarr; a store that does not open or lacks one of them
    raises CalflowInputError."""
    return _shifts(require_arrays(store, SHIFT_ARRAYS))


def read_images(store: str | Path) -> MotionImages:
    """The template and mean images of motion.zarr (CalflowInputError as :func:`read_shifts`)."""
    return _images(require_arrays(store, IMAGE_ARRAYS))


def read_shifts_header(store: str | Path) -> tuple[MotionShifts, dict[str, Any], tuple[int, ...] | None]:
    """:func:`read_shifts`, the attrs of motion.zarr and its movie's shape (None without one), in one
    opening of the store and without reading the movie or the images (CalflowInputError as
    :func:`read_shifts`)."""
    group = require_arrays(store, SHIFT_ARRAYS)
    shape = tuple(int(n) for n in group["movie"].shape) if "movie" in group else None
    return _shifts(group), dict(group.attrs), shape


def read_motion(store: str | Path) -> MotionRecord:
    """Shifts, images and attrs of motion.zarr, never the movie (CalflowInputError as :func:`read_shifts`)."""
    group = require_arrays(store, SHIFT_ARRAYS + IMAGE_ARRAYS)
    return MotionRecord(_shifts(group), _images(group), dict(group.attrs))
