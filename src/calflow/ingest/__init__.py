"""Ingest (stage ``ingest``): any supported raw movie -> ``raw.zarr`` (zarr v3, dims time/y/x), streamed.

Sources (format from the extension; ``#name`` selects a dataset): TIFF, one file or a folder, glob
or ``;``-list concatenated in time; HDF5 (``movie.h5#/path``); NWB (a TwoPhotonSeries); zarr; .npy.
Bad input is one :class:`~calflow.errors.CalflowInputError` line and no output. Submodules, each
importing only those before it: :mod:`~calflow.ingest.params`, :mod:`~calflow.ingest.paths` (the
movie spec, used by the workflow at parse time), :mod:`~calflow.ingest.frames` (reader protocol),
:mod:`~calflow.ingest.tiff`, :mod:`~calflow.ingest.arrays` (zarr, npy), :mod:`~calflow.ingest.hdf5`
(HDF5, NWB), :mod:`~calflow.ingest.sources` (dispatch), :mod:`~calflow.ingest.nans`,
:mod:`~calflow.ingest.store` (raw.zarr) and :mod:`~calflow.ingest.stage` (:func:`ingest`). tifffile,
h5py, pynwb and tqdm are imported when first used, not here.
"""

from calflow.ingest.arrays import ArraySource, _open_npy, _open_zarr
from calflow.ingest.frames import FrameSource, _check_3d, _ContiguousFrames
from calflow.ingest.hdf5 import Hdf5Source, NwbSource
from calflow.ingest.nans import _handle_nans, _nan_frames
from calflow.ingest.params import IngestParams
from calflow.ingest.paths import (
    HDF5_EXT,
    NPY_EXT,
    NWB_EXT,
    TIFF_EXT,
    ZARR_EXT,
    _expand_tiffs,
    _split_spec,
    sha256_of,
    source_paths,
)
from calflow.ingest.sources import MIN_FRAMES, _open_source, open_source
from calflow.ingest.stage import ingest
from calflow.ingest.store import RAW_ATTRS, RawInfo, raw_attrs, raw_writer, read_raw, store_dtype
from calflow.ingest.tiff import TiffSource

__all__ = [
    "HDF5_EXT", "MIN_FRAMES", "NPY_EXT", "NWB_EXT", "RAW_ATTRS", "TIFF_EXT", "ZARR_EXT", "ArraySource",
    "FrameSource", "Hdf5Source", "IngestParams", "NwbSource", "RawInfo", "TiffSource", "_check_3d",
    "_ContiguousFrames", "_expand_tiffs", "_handle_nans", "_nan_frames", "_open_npy", "_open_source",
    "_open_zarr", "_split_spec", "ingest", "open_source", "raw_attrs", "raw_writer", "read_raw",
    "sha256_of", "source_paths", "store_dtype",
]
