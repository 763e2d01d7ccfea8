"""What every movie reader shares: the :class:`FrameSource` protocol (``shape``, ``dtype``, ``fps``,
``read(start, stop)``), the check that a source is (time, y, x), and :class:`_ContiguousFrames`, plain
file reads of uncompressed frames stored back to back (TIFF series and .npy files)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from calflow.errors import CalflowInputError


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
