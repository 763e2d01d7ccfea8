"""HDF5 and NWB movies: :class:`Hdf5Source` (a 3-D dataset, ``movie.h5#/path``, or the only one) and
:class:`NwbSource` (a TwoPhotonSeries in acquisition, read through pynwb). h5py and pynwb are imported
on first use; the data stay on disk and are sliced block by block."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calflow.errors import CalflowInputError
from calflow.ingest.arrays import ArraySource
from calflow.ingest.frames import _check_3d


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

