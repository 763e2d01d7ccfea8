"""raw.zarr, written here: the ``movie`` (time, y, x) in the source's integer dtype (float as float32,
bool as uint8), chunked in whole frames through :class:`calflow.io.MovieWriter`, with attrs naming
the source (:data:`RAW_ATTRS`); :func:`read_raw` gives them back typed (:class:`RawInfo`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calflow import __version__
from calflow.errors import CalflowInputError
from calflow.ingest.frames import FrameSource
from calflow.ingest.paths import sha256_of
from calflow.io import MovieReader, MovieWriter

RAW_ATTRS = ("fps", "source", "source_spec", "source_sha256", "source_dtype", "source_fps", "session",
             "calflow_version")


def store_dtype(src: FrameSource) -> np.dtype:
    """The dtype raw.zarr stores ``src`` in: integers kept, float -> float32, bool -> uint8."""
    dtype = src.dtype
    if dtype.kind == "f":
        dtype = np.dtype(np.float32)
    elif dtype.kind not in "iu" and dtype.kind != "b":
        raise CalflowInputError(f"unsupported pixel type {dtype}", file=src.paths[0], fix="convert to integer or float")
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    return dtype


def raw_attrs(spec: str | Path, src: FrameSource, fps: float, session: str | None) -> dict[str, Any]:
    """raw.zarr's attrs (:data:`RAW_ATTRS`, in that order): fps from the sheet, the source's files,
    spec, SHA-256, dtype and own fps, the session and the calflow version."""
    return {
        "fps": float(fps),
        "source": ";".join(str(x) for x in src.paths),
        "source_spec": str(spec),
        "source_sha256": sha256_of(src.paths),
        "source_dtype": str(src.dtype),
        "source_fps": src.fps,
        "session": session,
        "calflow_version": __version__,
    }


def raw_writer(path: str | Path, shape: tuple[int, int, int], dtype: np.dtype, *, fps: float,
               attrs: dict[str, Any], chunk_frames: int, clevel: int) -> MovieWriter:
    """The writer of raw.zarr's ``movie`` at ``path`` (a temporary of :func:`calflow.io.atomic_output`)."""
    return MovieWriter(path, shape, dtype, fps=fps, chunk_frames=chunk_frames, attrs=attrs, clevel=clevel)


@dataclass(frozen=True)
class RawInfo:
    """What raw.zarr says about its movie: shape (time, y, x), stored dtype, fps (from the sheet) and
    the source's files (``source``, ``;``-joined), spec, SHA-256, dtype and fps (None if unknown)."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    fps: float
    source: str
    source_spec: str
    source_sha256: str
    source_dtype: str
    source_fps: float | None
    session: str | None
    calflow_version: str


def read_raw(store: str | Path) -> RawInfo:
    """raw.zarr's shape, dtype and attrs, without reading frames."""
    reader = MovieReader(store)
    attrs = reader.attrs
    return RawInfo(shape=tuple(int(s) for s in reader.shape), dtype=np.dtype(reader.dtype),  # type: ignore[arg-type]
                   **{k: attrs.get(k) for k in RAW_ATTRS})
