"""Array movies: :class:`ArraySource` (any sliceable (time, y, x) array) and the zarr and NumPy
openers :func:`_open_zarr` (an array, or a group holding one) and :func:`_open_npy` (plain file reads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calflow.errors import CalflowInputError
from calflow.ingest.frames import _check_3d, _ContiguousFrames


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

