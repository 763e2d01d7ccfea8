"""TIFF movies (:class:`TiffSource`): one or several classic or BigTIFF files read frame range by frame
range with tifffile (imported on first use), checked for truncation up front."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from calflow.errors import CalflowInputError
from calflow.ingest.frames import _check_3d, _ContiguousFrames


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

