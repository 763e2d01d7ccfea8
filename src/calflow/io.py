"""Shared storage layer: chunked zarr v3 movie stores (the layout xarray reads) and atomic outputs.

Every movie calflow writes (raw.zarr, motion.zarr, ...) is a zarr v3 group holding an xarray
Dataset with a ``movie`` variable of dims ``(time, y, x)``, chunked along time only (whole frames
per chunk, which is what motion correction and summary images read), compressed with
Blosc-zstd + bit-shuffle. A ``time`` coordinate in seconds is derived from ``fps``.

Outputs are written into a hidden sibling directory and renamed into place only when complete,
so a killed job never leaves a store that a rerun would trust.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from calflow.errors import CalflowInputError, disk_full, is_disk_full

if TYPE_CHECKING:
    import xarray as xr

MOVIE_VAR = "movie"
# Snakemake drops a ``.snakemake_timestamp`` file into directory outputs; zarr warns about it.
_SNAKEMAKE_STAMP = r"Object at \.snakemake_timestamp is not recognized"


def open_group(store: str | Path, mode: str = "r") -> zarr.Group:
    """``zarr.open_group`` without the warning about Snakemake's timestamp file."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SNAKEMAKE_STAMP)
        return zarr.open_group(store, mode=mode)
DIMS = ("time", "y", "x")


def require_arrays(store: str | Path, needed: tuple[str, ...]) -> zarr.Group:
    """Open the zarr group ``store`` for reading, holding the arrays ``needed``: a store that does not
    open, or lacks one of them, is one CalflowInputError line (fix: rerun the stage that writes it)."""
    store = Path(store)
    try:
        group = zarr.open_group(store, mode="r")
    except Exception as err:  # noqa: BLE001 - zarr raises many types for broken stores
        raise CalflowInputError(f"not a readable zarr store ({err})", file=store,
                                fix="rerun the stage that writes it") from err
    missing = [k for k in needed if k not in group]
    if missing:
        raise CalflowInputError(f"missing arrays {missing}", file=store, fix="rerun the stage that writes it")
    return group


def blosc_zstd(clevel: int = 5) -> BloscCodec:
    """Blosc with zstd and bit-shuffle: about 2-3x on uint16 two-photon data at >1 GB/s."""
    return BloscCodec(cname="zstd", clevel=clevel, shuffle="bitshuffle")


def store_codecs(clevel: int = 5) -> tuple:
    """Blosc-zstd, then a CRC-32C checksum of every chunk: a flipped bit or a truncated chunk fails
    to read instead of decoding to wrong numbers (Blosc/zstd alone do not notice most bit flips)."""
    return (blosc_zstd(clevel), Crc32cCodec())


# Every chunk of a movie is written, even one equal to the fill value, so a missing chunk file means
# a damaged store (zarr itself would silently read it as zeros). Stores written so are marked.
_WRITE_ALL = {"write_empty_chunks": True}
_ALL_CHUNKS_ATTR = "calflow_all_chunks_written"
# xarray's encoding of a float NaN fill value (base64 of the 8 bytes), kept so stores read as before
_NAN_FILL_B64 = "AAAAAAAA+H8="


_HOST = socket.gethostname()


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete temporaries of ``path`` left by writers that were killed (same host, process gone).

    A job killed mid-write (SIGKILL, out of memory, a cluster time limit) cannot clean up its hidden
    ``.{name}.tmp-{host}-{pid}-{id}`` sibling; the next writer of ``path`` removes it here. Temporaries of
    live processes, or of other hosts, are left alone.
    """
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)-[0-9a-f]{{8}}$")
    removed = []
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        m = pattern.match(sibling.name)
        if m and m["host"] in (None, _HOST) and not _pid_alive(int(m["pid"])):
            _remove(sibling)
            removed.append(sibling)
    return removed


def process_temp_prefix(stem: str) -> str:
    """Name prefix ``{stem}-{host}-{pid}-`` of a temporary directory owned by this process, which
    :func:`remove_orphaned_temp_dirs` can recognise once the process is gone."""
    return f"{stem}-{_HOST}-{os.getpid()}-"


def remove_orphaned_temp_dirs(root: str | Path, stem: str) -> list[Path]:
    """Delete ``root/{stem}-{host}-{pid}-*`` directories of killed processes on this host.

    The counterpart of :func:`remove_stale_temporaries` for scratch directories (e.g. the
    classifier's streamed movie, named with :func:`process_temp_prefix`): directories of live
    processes, or of other hosts, are left alone.
    """
    pattern = re.compile(rf"^{re.escape(stem)}-{re.escape(_HOST)}-(\d+)-")
    removed = []
    for d in Path(root).glob(f"{glob.escape(stem)}-{glob.escape(_HOST)}-*"):
        m = pattern.match(d.name)
        if m and d.is_dir() and not _pid_alive(int(m[1])):
            _remove(d)
            removed.append(d)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    Works for files and directories (zarr stores). On any exception the temporary output is
    deleted and ``path`` is left as it was (or absent), so no half-written output survives; a full
    disk becomes one :class:`CalflowInputError` line (:func:`calflow.errors.disk_full`).
    Temporaries of earlier writers of ``path`` that were killed are deleted first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
    except BaseException as err:
        _remove(tmp)
        if is_disk_full(err):
            raise disk_full(path) from err
        raise
    if not tmp.exists():
        raise RuntimeError(f"{path}: the writer produced no output")
    _remove(path)
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any, *, indent: int = 2) -> None:
    """``obj`` as indented JSON (NaN allowed, a trailing newline), written atomically
    (:func:`atomic_output`). Every stage's JSON output (decode.json, metrics.json, ...) goes through here."""
    import json

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, allow_nan=True) + "\n")


def read_json(path: str | Path, *, what: str, fix: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object in ``path`` (a stage's JSON output, ``what`` names it in messages).

    A missing, unreadable or non-object file, or one without a key of ``required``, is one
    :class:`CalflowInputError` naming the file and ``fix`` (e.g. "rerun the decode stage")."""
    import json

    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CalflowInputError(f"{what} not found", file=path, fix=fix) from err
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CalflowInputError(f"cannot parse {what} ({err})", file=path, fix=fix) from err
    if not isinstance(obj, dict):
        raise CalflowInputError(f"{what} does not hold a JSON object", file=path, fix=fix)
    missing = [k for k in required if k not in obj]
    if missing:
        raise CalflowInputError(f"{what} lacks {', '.join(map(repr, missing))} (written by an older calflow?)",
                                file=path, fix=fix)
    return obj


class MovieWriter:
    """Write a (time, y, x) movie into a zarr v3 store frame-chunk by frame-chunk.

    Create the store with :meth:`create`, then call :meth:`write` with consecutive blocks of
    frames (any block length; blocks are buffered to whole chunks so every chunk is written
    once). Peak memory is about one chunk plus the block being written.

    Extra per-frame or static arrays (e.g. shifts, template) go into the same store with
    :func:`write_array` after :meth:`close`.
    """

    def __init__(
        self,
        store: str | Path,
        shape: tuple[int, int, int],
        dtype: np.dtype | str,
        *,
        fps: float,
        chunk_frames: int = 100,
        attrs: Mapping[str, Any] | None = None,
        clevel: int = 5,
    ):
        if len(shape) != 3:
            raise ValueError(f"movie shape must be (time, y, x), got {shape}")
        self.store = Path(store)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.chunk_frames = int(max(1, min(chunk_frames, self.shape[0])))
        self.fps = float(fps)
        n_t, n_y, n_x = self.shape
        # The layout xarray's ``Dataset.to_zarr`` writes (a ``movie`` variable and a ``time`` coordinate
        # in s, dimension names, the same metadata byte for byte, tested), made with zarr alone:
        # importing dask and xarray cost ~2 s of every writing job's start-up (a Snakemake job is a
        # fresh interpreter).
        group = zarr.open_group(self.store, mode="w", zarr_format=3)
        group.attrs.update({"fps": self.fps, **(dict(attrs) if attrs else {})})
        group.create_array("time", data=np.arange(n_t, dtype=np.float64) / self.fps, dimension_names=("time",),
                           chunks=(n_t,), fill_value=np.nan, attributes={"units": "s", "_FillValue": _NAN_FILL_B64})
        # ``config``: open_array ignores it for an existing array (zarr 3) and Array.with_config is newer
        # than zarr 3.1.5 (which dandi pins), so the array is created with it: chunks equal to the fill
        # value (blank frames: a closed shutter) are written too, not silently skipped
        self._array = group.create_array(MOVIE_VAR, shape=self.shape, dtype=self.dtype,
                                         chunks=(self.chunk_frames, n_y, n_x), compressors=store_codecs(clevel),
                                         fill_value=0, dimension_names=DIMS, config=_WRITE_ALL)
        self._pos = 0
        self._buf: list[np.ndarray] = []
        self._buf_len = 0

    def write(self, block: np.ndarray) -> None:
        """Append ``block`` of shape (n, y, x) after the frames written so far."""
        block = np.asarray(block)
        if block.ndim == 2:
            block = block[None]
        if block.shape[1:] != self.shape[1:]:
            raise ValueError(f"block frame shape {block.shape[1:]} != movie frame shape {self.shape[1:]}")
        if self._pos + self._buf_len + block.shape[0] > self.shape[0]:
            raise ValueError("more frames written than the movie holds")
        block = block.astype(self.dtype, copy=False)
        if self._buf_len:  # complete the pending chunk first
            need = self.chunk_frames - self._buf_len
            self._buf.append(block[:need])
            self._buf_len += min(need, block.shape[0])
            block = block[need:]
            if self._buf_len < self.chunk_frames:
                return
            self._flush(self._buf_len)
        n_whole = (block.shape[0] // self.chunk_frames) * self.chunk_frames
        for a in range(0, n_whole, self.chunk_frames):  # whole chunks straight from the block: no copy
            self._array[self._pos : self._pos + self.chunk_frames] = block[a : a + self.chunk_frames]
            self._pos += self.chunk_frames
        if n_whole < block.shape[0]:
            self._buf = [block[n_whole:].copy()]
            self._buf_len = block.shape[0] - n_whole

    def _flush(self, n: int) -> None:
        joined = np.concatenate(self._buf, axis=0) if len(self._buf) > 1 else self._buf[0]
        self._array[self._pos : self._pos + n] = joined[:n]
        self._pos += n
        self._buf, self._buf_len = [], 0

    def adopt_chunks(self, source: str | Path) -> None:
        """Append the frames of the movie store ``source`` by taking its encoded chunk files as they are
        (hard links; a byte copy where the filesystem refuses links): nothing is decoded or held in
        memory. ``source`` must have this movie's frame shape, dtype, chunk length and codecs, and
        start on a chunk boundary of this movie (no frames buffered by :meth:`write`); it is a whole
        number of chunks long unless it ends this movie."""
        src = open_group(source, mode="r")[MOVIE_VAR]
        n = int(src.shape[0])
        mine, theirs = self._array.metadata, src.metadata
        problem = (
            "frames are pending from write()" if self._buf_len
            else f"starts at frame {self._pos}, not on a chunk boundary" if self._pos % self.chunk_frames
            else f"frame shape {src.shape[1:]} != {self.shape[1:]}" if tuple(src.shape[1:]) != self.shape[1:]
            else f"dtype {src.dtype} != {self.dtype}" if src.dtype != self.dtype
            else f"{src.chunks[0]} frames a chunk, not {self.chunk_frames}" if src.chunks[0] != self.chunk_frames
            else "other codecs" if theirs.to_dict()["codecs"] != mine.to_dict()["codecs"]
            else f"{n} frames after frame {self._pos} of {self.shape[0]}" if self._pos + n > self.shape[0]
            or (n % self.chunk_frames and self._pos + n != self.shape[0])
            else None
        )
        if problem:
            raise ValueError(f"{source}: cannot adopt its chunks into {self.store}: {problem}")
        first = self._pos // self.chunk_frames
        for idx, key in _chunk_keys(src):
            dst = self.store / MOVIE_VAR / mine.encode_chunk_key((first + idx[0],) + idx[1:])
            dst.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                dst.unlink()
            try:
                os.link(Path(source) / MOVIE_VAR / key, dst)
            except OSError as err:
                if isinstance(err, FileNotFoundError):
                    raise
                shutil.copyfile(Path(source) / MOVIE_VAR / key, dst)
        self._pos += n

    def close(self) -> None:
        if self._buf_len:
            self._flush(self._buf_len)
        if self._pos != self.shape[0]:
            raise ValueError(f"{self.store}: wrote {self._pos} frames, expected {self.shape[0]}")
        missing = [k for _, k in _chunk_keys(self._array) if not (self.store / MOVIE_VAR / k).is_file()]
        if missing:  # zarr skipped a chunk: never mark such a store complete
            raise RuntimeError(f"{self.store}: zarr did not write chunk(s) {', '.join(missing[:3])}")
        self._array.attrs[_ALL_CHUNKS_ATTR] = True  # set last: readers check every chunk of marked stores

    def __enter__(self) -> MovieWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def write_group(out_store: str | Path, attrs: Mapping[str, Any], arrays: Mapping[str, np.ndarray | None],
                dims: Mapping[str, tuple[str, ...]]) -> None:
    """A store of small arrays at ``out_store``, whole or not at all (:func:`atomic_output`): the group's
    ``attrs``, then every array of ``dims`` (name -> xarray dims, in that order) whose value in
    ``arrays`` is not None."""
    with atomic_output(out_store) as tmp:
        zarr.open_group(tmp, mode="w", zarr_format=3).attrs.update(dict(attrs))
        for name, names in dims.items():
            if arrays.get(name) is not None:
                write_array(tmp, name, arrays[name], names)


def write_array(
    store: str | Path,
    name: str,
    data: np.ndarray,
    dims: tuple[str, ...],
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Add a small array ``name`` with xarray ``dims`` (and attrs) to an existing zarr v3 store."""
    data = np.asarray(data)
    if data.ndim != len(dims):
        raise ValueError(f"{name}: {data.ndim}-d data for dims {dims}")
    group = zarr.open_group(store, mode="a")
    group.create_array(
        name,
        data=data,
        dimension_names=dims,
        attributes=dict(attrs) if attrs else {},
        compressors=store_codecs(),
        overwrite=True,
        config=_WRITE_ALL,
    )


def _chunk_keys(array: zarr.Array) -> Iterator[tuple[tuple[int, ...], str]]:
    """Every chunk's grid index and key of ``array`` (e.g. ``(0, 0, 0), "c/0/0/0"``), whether or not
    the chunk exists."""
    for idx in np.ndindex(*array.cdata_shape):
        yield idx, array.metadata.encode_chunk_key(idx)


def downsampled_hw(shape: tuple[int, ...], factor: int, min_px: int, key: str, store: str | Path) -> tuple[int, int]:
    """(h, w) = (H // factor, W // factor) of a (T, H, W) movie, or a :class:`CalflowInputError`
    naming ``key`` (the config key of the factor) when either side is under ``min_px``."""
    H, W = int(shape[1]), int(shape[2])
    h, w = H // int(factor), W // int(factor)
    if h < min_px or w < min_px:
        raise CalflowInputError(f"frames {H}x{W} are too small for {key} = {factor}", file=store,
                                fix="use a smaller downsample factor")
    return h, w


def block_average(frames: np.ndarray, d: int, dtype: type = np.float32) -> np.ndarray:
    """(n, H, W) frames -> (n, H // d, W // d) means of d x d blocks (the ragged edge is dropped)."""
    n, H, W = frames.shape
    h, w = H // d, W // d
    x = np.asarray(frames, dtype)[:, : h * d, : w * d]
    return x.reshape(n, h, d, w, d).mean(axis=(2, 4))


class MovieReader:
    """Read-only access to a calflow movie store, streamed in frame blocks.

    ``reader.shape`` is (time, y, x); ``reader[a:b]`` returns frames as numpy;
    :meth:`iter_blocks` yields ``(start, block)`` pairs for out-of-core loops.
    """

    def __init__(self, store: str | Path, var: str = MOVIE_VAR):
        self.store = Path(store)
        self._var = var
        if not self.store.exists():
            raise CalflowInputError("movie store does not exist", file=self.store, fix="run the stage that makes it")
        try:
            group = open_group(self.store, mode="r")
            self._array = group[var]
            self.attrs: dict[str, Any] = dict(group.attrs)
        except Exception as err:  # noqa: BLE001 - zarr raises many types for broken stores
            raise CalflowInputError(
                f"not a readable calflow zarr store ({type(err).__name__}: {err})",
                file=self.store,
                fix="delete it and rerun the stage that writes it",
            ) from err
        if self._array.ndim != 3:
            raise CalflowInputError(
                f"'{var}' has shape {self._array.shape}, expected (time, y, x)", file=self.store
            )
        self.shape: tuple[int, int, int] = tuple(int(s) for s in self._array.shape)  # type: ignore[assignment]
        self.dtype = self._array.dtype
        self.chunk_frames = int(self._array.chunks[0])
        self.fps = float(self.attrs.get("fps", np.nan))
        if self._array.attrs.get(_ALL_CHUNKS_ATTR):
            self._check_chunks(var)

    def _check_chunks(self, var: str) -> None:
        """Every chunk file is present (zarr would read a missing one as zeros without a word)."""
        for idx, key in _chunk_keys(self._array):
            if not (self.store / var / key).is_file():
                a = idx[0] * self.chunk_frames
                b = min(a + self.chunk_frames, self.shape[0]) - 1
                raise CalflowInputError(
                    f"chunk {var}/{key} (frames {a}-{b}) is missing; the store is incomplete or damaged",
                    file=self.store,
                    fix="delete the store and rerun the stage that writes it",
                )

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self._array[key])
        except Exception as err:  # noqa: BLE001
            raise CalflowInputError(
                self._describe_read_error(key, err),
                file=self.store,
                fix="delete the store and rerun the stage that writes it",
            ) from err

    def _describe_read_error(self, key: Any, err: Exception) -> str:
        """Name the first chunk that fails to decode (a checksum mismatch, a truncated file, ...)."""
        first = key if isinstance(key, int | np.integer) else key.start if isinstance(key, slice) else None
        if isinstance(first, int | np.integer) or first is None:
            start = int(first or 0) % max(self.shape[0], 1)
            for c in range(start // self.chunk_frames, -(-self.shape[0] // self.chunk_frames)):
                a, b = c * self.chunk_frames, min((c + 1) * self.chunk_frames, self.shape[0])
                try:
                    self._array[a:b]
                except Exception as chunk_err:  # noqa: BLE001
                    name = self._array.metadata.encode_chunk_key((c,) + (0,) * (self._array.ndim - 1))
                    why = ("checksum mismatch" if "checksum" in str(chunk_err).lower()
                           else f"{type(chunk_err).__name__}: {str(chunk_err)[:80]}")
                    return f"chunk {self._var}/{name} (frames {a}-{b - 1}) is corrupt ({why})"
        return f"cannot read frames {key} ({type(err).__name__}: {err}); a chunk is corrupt or missing"

    def iter_blocks(self, block_frames: int | None = None, start: int = 0, stop: int | None = None):
        """Yield ``(first_frame, frames)`` with ``frames`` of shape (<=block_frames, y, x)."""
        block = int(block_frames or self.chunk_frames)
        stop = self.shape[0] if stop is None else min(stop, self.shape[0])
        for a in range(start, stop, block):
            yield a, self[a : min(a + block, stop)]


def open_dataset(store: str | Path) -> xr.Dataset:
    """Open a calflow zarr store lazily as an xarray Dataset (dask-backed)."""
    import xarray as xr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SNAKEMAKE_STAMP)
        return xr.open_zarr(store, zarr_format=3, consolidated=False)
