"""Open a movie spec as a :class:`~calflow.ingest.frames.FrameSource`: dispatch on the extension to
the TIFF, HDF5, NWB, zarr and NumPy readers, and refuse movies shorter than :data:`MIN_FRAMES`."""

from __future__ import annotations

from pathlib import Path

from calflow.errors import CalflowInputError
from calflow.ingest.arrays import _open_npy, _open_zarr
from calflow.ingest.frames import FrameSource
from calflow.ingest.hdf5 import Hdf5Source, NwbSource
from calflow.ingest.paths import HDF5_EXT, NPY_EXT, NWB_EXT, TIFF_EXT, ZARR_EXT, _split_spec, source_paths
from calflow.ingest.tiff import TiffSource

MIN_FRAMES = 2  # motion needs a template and a frame to align; summary images need a time axis


def open_source(spec: str | Path, base_dir: Path | None = None) -> FrameSource:
    """Open a movie given as in the sessions sheet's ``movie`` column (see module docstring);
    a single image (or a movie of fewer than :data:`MIN_FRAMES` frames) is refused here."""
    src = _open_source(spec, base_dir)
    if src.shape[0] < MIN_FRAMES:
        src.close()
        what = (f"is a single 2-D image ({src.shape[1]} x {src.shape[2]} px), not a movie" if src.shape[0] == 1
                else f"has {src.shape[0]} frames")
        raise CalflowInputError(what, file=src.paths[0] if len(src.paths) == 1 else str(spec),
                                fix=f"give a movie of at least {MIN_FRAMES} frames (time, y, x); a folder of "
                                    "single-frame TIFFs is read as one movie")
    return src


def _open_source(spec: str | Path, base_dir: Path | None = None) -> FrameSource:
    name = _split_spec(str(spec))[1]
    paths = source_paths(spec, base_dir)
    for p in paths:
        if not p.exists():
            raise CalflowInputError("the movie file does not exist", file=p, fix="check the sessions sheet's movie column")
    suffixes = {p.suffix.lower() for p in paths}
    if suffixes <= set(TIFF_EXT):
        return TiffSource(paths)
    if len(paths) != 1:
        raise CalflowInputError(
            "several files are supported for TIFF only", file=str(spec), fix="give one HDF5/NWB/zarr/npy movie per session"
        )
    path = paths[0]
    ext = path.suffix.lower()
    if ext in HDF5_EXT:
        return Hdf5Source(path, name)
    if ext in NWB_EXT:
        return NwbSource(path, name)
    if ext in ZARR_EXT:
        return _open_zarr(path, name)
    if ext in NPY_EXT:
        return _open_npy(path)
    raise CalflowInputError(
        f"unknown movie format '{ext}'",
        file=path,
        fix="use .tif/.tiff, .h5/.hdf5, .nwb, .zarr or .npy",
    )

