"""Ingest: any supported raw movie -> ``raw.zarr`` (zarr v3, dims time/y/x), streamed in frame blocks.

Supported sources (the format is taken from the extension; a ``#name`` suffix selects a dataset):

- TIFF (``.tif``/``.tiff``, classic and BigTIFF), one file or several: a directory, a glob
  pattern, or ``;``-separated paths, concatenated along time in sorted / given order.
- HDF5 (``.h5``/``.hdf5``): ``movie.h5#/path/to/dataset``; without ``#`` the single 3-D dataset.
- NWB (``.nwb``): a ``TwoPhotonSeries`` in acquisition, ``file.nwb#SeriesName`` or the only one.
- zarr (``.zarr``): an array, or a group holding one 3-D array (or a ``movie`` variable).
- NumPy (``.npy``): memory-mapped.

Readers expose ``shape``, ``dtype`` and ``read(start, stop)`` so ingest never holds more than one
block of frames. Wrong dimensionality, corrupt or truncated files and NaN frames raise
:class:`~calflow.errors.CalflowInputError` naming the file and the fix; the output store is
written atomically so a failure leaves nothing behind.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from calflow import __version__
from calflow.errors import CalflowInputError
from calflow.io import MovieWriter, atomic_output
from calflow.params import check_fields, from_section, param

log = logging.getLogger(__name__)

TIFF_EXT = (".tif", ".tiff", ".btf", ".tf8")
HDF5_EXT = (".h5", ".hdf5", ".hdf")
NWB_EXT = (".nwb",)
ZARR_EXT = (".zarr",)
NPY_EXT = (".npy",)


class FrameSource(Protocol):
    """A movie that can be read in frame ranges without loading it whole."""

    paths: list[Path]
    shape: tuple[int, int, int]
    dtype: np.dtype
    fps: float | None

    def read(self, start: int, stop: int) -> np.ndarray: ...

    def close(self) -> None: ...


def _check_3d(shape: tuple[int, ...], file: Path | str, what: str = "movie") -> tuple[int, int, int]:
    squeezed = tuple(int(s) for s in shape if s != 1) if len(shape) > 3 else tuple(int(s) for s in shape)
    if len(squeezed) == 2 and len(shape) >= 2:
        # a single frame: one time point
        squeezed = (1, *squeezed)
    if len(squeezed) != 3:
        raise CalflowInputError(
            f"{what} has shape {tuple(shape)}, expected 3 dimensions (time, y, x)",
            file=file,
            fix="give a single-channel, single-plane movie (split channels/planes first, "
            "or point the sessions sheet at one dataset with '#name')",
        )
    if min(squeezed) < 1:
        raise CalflowInputError(f"{what} is empty (shape {tuple(shape)})", file=file, fix="check the file")
    return squeezed  # type: ignore[return-value]


# --------------------------------------------------------------------------- TIFF
class _TiffWarnings(logging.Handler):
    """Collect tifffile's warnings (it logs, rather than raises, on a broken IFD chain)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if any(k in msg for k in ("invalid page offset", "corrupted", "truncated", "failed to reshape")):
            self.messages.append(msg.split("> ", 1)[-1])

    def __enter__(self) -> _TiffWarnings:
        logging.getLogger("tifffile").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("tifffile").removeHandler(self)


class _ContiguousFrames:
    """Frames stored contiguously and uncompressed, read with plain file reads.

    Not a memory map on purpose: mapped pages of a multi-GB file count towards the process's
    resident memory (and a cluster job's memory limit) until the kernel reclaims them.
    """

    def __init__(self, path: Path, offset: int, dtype: np.dtype, shape: tuple[int, int, int]):
        self.path, self.offset, self.dtype, self.shape = path, offset, np.dtype(dtype), shape
        self.frame_bytes = int(np.prod(shape[1:])) * self.dtype.itemsize

    def __getitem__(self, key: slice) -> np.ndarray:
        a, b, _ = key.indices(self.shape[0])
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + a * self.frame_bytes)
            data = np.fromfile(fh, dtype=self.dtype, count=(b - a) * self.frame_bytes // self.dtype.itemsize)
        if data.size * self.dtype.itemsize != (b - a) * self.frame_bytes:
            raise OSError(f"short read: frames {a}-{b - 1} run past the end of the file")
        return data.reshape((b - a, *self.shape[1:]))


class TiffSource:
    """One or more TIFF files (classic or BigTIFF) read frame-range by frame-range with tifffile.

    Contiguous uncompressed series (what tifffile and ImageJ write for big stacks) are memory-mapped;
    other series are decoded page by page. Files are checked for truncation up front: the frame
    count announced by the metadata must match the pages present, and the last frame's bytes must
    lie inside the file.
    """

    def __init__(self, paths: list[Path]):
        import tifffile

        self.paths = paths
        self.fps = None
        self._files: list[Any] = []
        self._direct: list[_ContiguousFrames | None] = []
        self._offsets: list[int] = []
        n_total = 0
        frame_shape = None
        dtype = None
        for path in paths:
            try:
                with _TiffWarnings() as warned:
                    tif = tifffile.TiffFile(path)
                    series = tif.series[0]
                    len(tif.pages)  # walks the whole IFD chain: a truncated file breaks it
                shape = _check_3d(series.shape, path)
                if warned.messages:
                    tif.close()
                    raise CalflowInputError(
                        f"TIFF is truncated or corrupt ({warned.messages[0]})",
                        file=path,
                        fix="copy the file again from the microscope / original storage",
                    )
                direct = self._check_complete(tif, series, shape, path)
            except CalflowInputError:
                raise
            except Exception as err:  # noqa: BLE001 - tifffile raises many error types for bad files
                raise CalflowInputError(
                    f"not a readable TIFF ({type(err).__name__}: {err})",
                    file=path,
                    fix="re-export the movie, or check that the file was copied completely",
                ) from err
            if frame_shape is None:
                frame_shape, dtype = shape[1:], series.dtype
                if tif.imagej_metadata and tif.imagej_metadata.get("finterval"):
                    self.fps = 1.0 / float(tif.imagej_metadata["finterval"])
            elif shape[1:] != frame_shape or series.dtype != dtype:
                tif.close()
                raise CalflowInputError(
                    f"frame shape {shape[1:]} / dtype {series.dtype} differs from the first file's "
                    f"{frame_shape} / {dtype}",
                    file=path,
                    fix="list only files of the same acquisition in this session",
                )
            self._files.append(tif)
            self._direct.append(direct)
            self._offsets.append(n_total)
            n_total += shape[0]
        self.shape = (n_total, *frame_shape)  # type: ignore[misc]
        self.dtype = np.dtype(dtype)

    @staticmethod
    def _check_complete(tif: Any, series: Any, shape: tuple[int, int, int], path: Path) -> _ContiguousFrames | None:
        """Raise if the file is truncated; return a direct reader for contiguous uncompressed data."""
        truncated = CalflowInputError(
            "TIFF is truncated or corrupt: the metadata announce more frames than the file holds",
            file=path,
            fix="copy the file again from the microscope / original storage",
        )
        n_announced = None  # frames the metadata promise
        if tif.shaped_metadata and tif.shaped_metadata[0].get("shape"):
            n_announced = int(np.prod(tif.shaped_metadata[0]["shape"])) // int(shape[1] * shape[2])
        elif tif.imagej_metadata and tif.imagej_metadata.get("images"):
            n_announced = int(tif.imagej_metadata["images"])
        if n_announced is not None and n_announced != shape[0]:
            raise truncated
        size = tif.filehandle.size
        offset = series.dataoffset
        if offset is not None:  # contiguous, uncompressed
            if offset + series.nbytes > size:
                raise truncated
            return _ContiguousFrames(path, offset, series.dtype.newbyteorder(tif.byteorder), shape)
        pages = series.pages
        if len(pages) < shape[0]:
            raise truncated
        last = pages[shape[0] - 1]
        last = last.keyframe if last is None else last
        if last.dataoffsets and last.dataoffsets[-1] + last.databytecounts[-1] > size:
            raise truncated
        return None

    def _read_file(self, i: int, a: int, b: int) -> np.ndarray:
        tif, direct, path = self._files[i], self._direct[i], self.paths[i]
        try:
            data = direct[a:b] if direct is not None else tif.asarray(key=range(a, b), series=0)
            data = np.asarray(data, dtype=self.dtype).reshape((b - a, *self.shape[1:]))
        except Exception as err:  # noqa: BLE001
            raise CalflowInputError(
                f"cannot read frames {a}-{b - 1} ({type(err).__name__}: {err}); the file is corrupt or truncated",
                file=path,
                fix="copy the file again from the original storage",
            ) from err
        return data

    def read(self, start: int, stop: int) -> np.ndarray:
        parts = []
        for i, off in enumerate(self._offsets):
            n_i = (self._offsets[i + 1] if i + 1 < len(self._offsets) else self.shape[0]) - off
            a, b = max(start - off, 0), min(stop - off, n_i)
            if a < b:
                parts.append(self._read_file(i, a, b))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def close(self) -> None:
        self._direct = [None] * len(self._direct)
        for tif in self._files:
            tif.close()


# --------------------------------------------------------------------------- arrays: zarr / npy / HDF5 / NWB
class ArraySource:
    """Any sliceable (time, y, x) array: a zarr array, a memory-mapped .npy, an HDF5 dataset."""

    def __init__(self, path: Path, array: Any, fps: float | None = None):
        self.paths = [path]
        self._data = array
        self.shape = _check_3d(tuple(array.shape), path)
        self.dtype = np.dtype(array.dtype)
        self.fps = fps

    def read(self, start: int, stop: int) -> np.ndarray:
        try:
            return np.asarray(self._data[start:stop]).reshape((stop - start, *self.shape[1:]))
        except Exception as err:  # noqa: BLE001
            raise CalflowInputError(
                f"cannot read frames {start}-{stop - 1} ({type(err).__name__}: {err})",
                file=self.paths[0],
                fix="the file is corrupt or truncated; copy it again",
            ) from err

    def close(self) -> None:
        pass


class Hdf5Source(ArraySource):
    """A 3-D dataset inside an HDF5 file, read by slicing (h5py reads only those chunks)."""

    def __init__(self, path: Path, dataset: str | None):
        import h5py

        self.paths = [path]
        self.fps = None
        try:
            self._file = h5py.File(path, "r")
        except Exception as err:  # noqa: BLE001
            raise CalflowInputError(
                f"not a readable HDF5 file ({type(err).__name__}: {err})", file=path, fix="check the file"
            ) from err
        if dataset is None:
            found: list[str] = []
            self._file.visititems(
                lambda name, obj: found.append(name)
                if isinstance(obj, h5py.Dataset) and obj.ndim == 3
                else None
            )
            if len(found) != 1:
                self._file.close()
                raise CalflowInputError(
                    f"found {len(found)} 3-D datasets ({', '.join(found) or 'none'})",
                    file=path,
                    fix="name the dataset in the sessions sheet as 'movie.h5#/path/to/data'",
                )
            dataset = found[0]
        if dataset not in self._file:
            self._file.close()
            raise CalflowInputError(
                f"no dataset '{dataset}'", file=path, fix="check the '#/dataset' part of the movie path"
            )
        self._data = self._file[dataset]
        self.shape = _check_3d(self._data.shape, f"{path}#{dataset}")
        self.dtype = np.dtype(self._data.dtype)
        fps = self._data.attrs.get("fps", self._data.attrs.get("rate"))
        self.fps = float(fps) if fps is not None else None

    def close(self) -> None:
        self._file.close()


class NwbSource(Hdf5Source):
    """A TwoPhotonSeries of an NWB file (read through pynwb; data stay on disk)."""

    def __init__(self, path: Path, series_name: str | None):
        from pynwb import NWBHDF5IO
        from pynwb.ophys import TwoPhotonSeries

        self.paths = [path]
        try:
            self._io = NWBHDF5IO(str(path), "r")
            nwb = self._io.read()
        except Exception as err:  # noqa: BLE001
            raise CalflowInputError(
                f"not a readable NWB file ({type(err).__name__}: {err})", file=path, fix="check the file"
            ) from err
        series = {k: v for k, v in nwb.acquisition.items() if isinstance(v, TwoPhotonSeries)}
        if series_name is None:
            if len(series) != 1:
                self._io.close()
                raise CalflowInputError(
                    f"found {len(series)} TwoPhotonSeries in acquisition ({', '.join(series) or 'none'})",
                    file=path,
                    fix="name one in the sessions sheet as 'file.nwb#SeriesName'",
                )
            series_name = next(iter(series))
        if series_name not in series:
            self._io.close()
            raise CalflowInputError(
                f"no TwoPhotonSeries '{series_name}' (have: {', '.join(series) or 'none'})",
                file=path,
                fix="check the '#SeriesName' part of the movie path",
            )
        ts = series[series_name]
        if ts.external_file is not None and ts.data is None:
            self._io.close()
            raise CalflowInputError(
                "the TwoPhotonSeries points to external files", file=path, fix="list those files as the movie instead"
            )
        self._data = ts.data
        self.shape = _check_3d(self._data.shape, f"{path}#{series_name}")
        self.dtype = np.dtype(self._data.dtype)
        self.fps = float(ts.rate) if ts.rate else None

    def close(self) -> None:
        self._io.close()


def _open_zarr(path: Path, name: str | None) -> ArraySource:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:  # noqa: BLE001
        raise CalflowInputError(
            f"not a readable zarr store ({type(err).__name__}: {err})", file=path, fix="check the path"
        ) from err
    fps = None
    if isinstance(node, zarr.Group):
        fps = node.attrs.get("fps")
        if name is None:
            arrays = [k for k, v in node.arrays() if v.ndim == 3]
            name = "movie" if "movie" in arrays else (arrays[0] if len(arrays) == 1 else None)
            if name is None:
                raise CalflowInputError(
                    f"found {len(arrays)} 3-D arrays ({', '.join(arrays) or 'none'})",
                    file=path,
                    fix="name the array in the sessions sheet as 'store.zarr#name'",
                )
        if name not in node:
            raise CalflowInputError(f"no array '{name}'", file=path, fix="check the '#name' part of the movie path")
        node = node[name]
    return ArraySource(path, node, float(fps) if fps else None)


def _open_npy(path: Path) -> ArraySource:
    """C-ordered .npy files are read with plain file reads (see _ContiguousFrames), others mapped."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
        if dtype.hasobject:
            raise ValueError("object arrays are not movies")
        if fortran or len(shape) != 3:
            arr: Any = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            arr = _ContiguousFrames(path, offset, dtype, shape)
            if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
                raise ValueError("the file is shorter than its header says (truncated)")
    except Exception as err:  # noqa: BLE001
        raise CalflowInputError(
            f"not a readable .npy file ({type(err).__name__}: {err})",
            file=path,
            fix="save the movie with numpy.save as a (time, y, x) array",
        ) from err
    return ArraySource(path, arr)


# --------------------------------------------------------------------------- dispatch
def _split_spec(spec: str) -> tuple[str, str | None]:
    if "#" in spec:
        base, name = spec.split("#", 1)
        return base, (name or None)
    return spec, None


def _expand_tiffs(spec: str, base_dir: Path | None) -> list[Path]:
    parts = [p.strip() for p in spec.split(";") if p.strip()]
    paths: list[Path] = []
    for part in parts:
        p = Path(part)
        if base_dir is not None and not p.is_absolute():
            p = base_dir / p
        if any(c in part for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(p)))
            if not matches:
                raise CalflowInputError("the pattern matches no file", file=p, fix="check the movie path")
            paths.extend(matches)
        elif p.is_dir() and p.suffix.lower() not in ZARR_EXT:
            matches = sorted(q for q in p.iterdir() if q.suffix.lower() in TIFF_EXT)
            if not matches:
                raise CalflowInputError("the folder holds no .tif/.tiff file", file=p, fix="check the movie path")
            paths.extend(matches)
        else:
            paths.append(p)
    return paths


def source_paths(spec: str | Path, base_dir: Path | None = None) -> list[Path]:
    """The files behind a movie spec: ``#name`` stripped, ``;``-lists, globs and TIFF folders expanded.

    Paths need not exist yet (the workflow may make them); a glob or folder that matches no file
    raises :class:`CalflowInputError`.
    """
    return _expand_tiffs(_split_spec(str(spec))[0], base_dir)


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


def sha256_of(paths: list[Path], block: int = 1 << 22) -> str:
    """SHA-256 over the bytes of ``paths`` in order (directories: their files in sorted order)."""
    h = hashlib.sha256()
    for path in paths:
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            if path.is_dir():
                h.update(str(f.relative_to(path)).encode())
            with open(f, "rb") as fh:
                while chunk := fh.read(block):
                    h.update(chunk)
    return h.hexdigest()


@dataclass
class IngestParams:
    """Tunables of the ingest stage (config section ``ingest``)."""

    chunk_frames: int = param(100, ge=1)  # frames per zarr chunk (whole frames)
    read_frames: int = param(100, ge=1)  # frames read from the source per step
    nan_policy: str = param("error", choices=("error", "fill_previous"))
    clevel: int = param(5, ge=1, le=9)  # zstd level

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | IngestParams | None) -> IngestParams:
        return from_section(cls, "ingest", cfg)

    def __post_init__(self) -> None:
        check_fields(self, "ingest")


def _nan_frames(block: np.ndarray, first: int) -> list[int]:
    return [first + int(i) for i in np.nonzero(np.isnan(block).any(axis=(1, 2)))[0]]


def _handle_nans(
    block: np.ndarray, first: int, last_good: np.ndarray | None, policy: str, src: FrameSource, read_frames: int
):
    bad = np.isnan(block)
    if not bad.any():
        return block, block[-1]
    if policy == "error":
        frames = _nan_frames(block, first)
        for a in range(first + block.shape[0], src.shape[0], read_frames):  # list them all for the message
            frames += _nan_frames(src.read(a, min(a + read_frames, src.shape[0])), a)
        file = src.paths[0]
        shown = ", ".join(map(str, frames[:10])) + (" ..." if len(frames) > 10 else "")
        raise CalflowInputError(
            f"{len(frames)} frame(s) contain NaN (frames {shown})",
            file=file,
            fix="set ingest.nan_policy: fill_previous to replace NaN pixels by the previous frame's values, "
            "or drop those frames from the movie",
        )
    out = block.copy()
    for i in range(out.shape[0]):
        nan_i = np.isnan(out[i])
        if nan_i.any():
            if last_good is not None:
                out[i][nan_i] = last_good[nan_i]
            else:  # leading NaNs: use the frame's own finite mean
                finite = out[i][~nan_i]
                out[i][nan_i] = finite.mean() if finite.size else 0.0
        last_good = out[i]
    return out, last_good


def ingest(
    spec: str | Path,
    out_store: str | Path,
    *,
    fps: float,
    params: IngestParams | dict[str, Any] | None = None,
    session: str | None = None,
    base_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Convert a raw movie into ``out_store`` (zarr v3, ``movie`` (time, y, x), source dtype).

    ``fps`` (frames/s) comes from the sessions sheet. Returns the attrs written plus timing.
    Integer data keep their dtype; float data are stored as float32.
    """
    p = IngestParams.from_config(params)
    if not np.isfinite(fps) or fps <= 0:
        raise CalflowInputError(f"fps must be a positive number, got {fps}", file=str(spec), fix="set fps in the sessions sheet")
    t0 = time.perf_counter()
    src = open_source(spec, base_dir)
    try:
        dtype = src.dtype
        if dtype.kind == "f":
            dtype = np.dtype(np.float32)
        elif dtype.kind not in "iu" and dtype.kind != "b":
            raise CalflowInputError(f"unsupported pixel type {dtype}", file=src.paths[0], fix="convert to integer or float")
        if dtype.kind == "b":
            dtype = np.dtype(np.uint8)
        attrs = {
            "fps": float(fps),
            "source": ";".join(str(x) for x in src.paths),
            "source_spec": str(spec),
            "source_sha256": sha256_of(src.paths),
            "source_dtype": str(src.dtype),
            "source_fps": src.fps,
            "session": session,
            "calflow_version": __version__,
        }
        n_t = src.shape[0]
        last_good = None
        with atomic_output(out_store) as tmp:
            writer = MovieWriter(tmp, src.shape, dtype, fps=fps, chunk_frames=p.chunk_frames, attrs=attrs, clevel=p.clevel)
            steps = range(0, n_t, p.read_frames)
            if progress:
                from tqdm import tqdm

                steps = tqdm(steps, desc=f"ingest {session or ''}".strip(), unit="block")
            for a in steps:
                b = min(a + p.read_frames, n_t)
                block = src.read(a, b)
                if block.dtype.kind == "f":
                    block, last_good = _handle_nans(block, a, last_good, p.nan_policy, src, p.read_frames)
                writer.write(block)
            writer.close()
    finally:
        src.close()
    elapsed = time.perf_counter() - t0
    log.info("ingested %s: %d frames in %.1f s (%.0f frames/s)", spec, n_t, elapsed, n_t / max(elapsed, 1e-9))
    return {**attrs, "frames": n_t, "shape": list(src.shape), "seconds": elapsed}
