"""Classifier inputs: the block-averaged, normalised movie, masks, stim-log labels, trials, folds.

Shapes: a session's movie is (T, h, w) float32 with h, w = H // d, W // d (full resolution H x W
block-averaged by ``downsample`` d while it is streamed once); labels (T, N + 1), multi-hot over
the N targets of the targets table plus a last "none" column; masks (h, w) float32: ones, the
cells (``mask: cells``, the footprints.zarr union) or the targets' neighbourhoods (``mask:
targets``), hiding everything else. Frames are normalised per session: ``(frame - mean image) /
std`` of the whole movie (a dF-like input: what changes, not the anatomy), or with ``normalise:
pixel`` by each pixel's own temporal std.

Memory (out of core, docs/design.md): the block-averaged movie (14 GB for 30 min of 512 x 512 at 30 Hz
and d = 2) is never held in RAM. :func:`open_movie` writes it to a raw float32 scratch file while
accumulating float64 per-pixel sums for the mean and std; training batches, predictions and
Grad-CAM windows read 2 * context + 1 consecutive frames with one ``os.preadv`` each and normalise
on read (:class:`ScratchMovie`). Why this design:

* a raw file, not zarr/HDF5: the windows are random, small and contiguous in time, i.e. one
  positioned read of ``(2 * context + 1) * h * w * 4`` bytes; chunked compressed stores would
  decode whole chunks per window, and the file is read back by the same process only;
* ``pread``, not ``np.memmap``: mapped pages that were touched count toward the process's RSS
  (and a cgroup limit would see them as the job's memory), growing with the movie as training
  samples it; pread copies into a fresh array and leaves the file to the page cache, which the
  kernel reclaims under pressure;
* normalise on read, not on write: the statistics are only known after the last block; a
  second pass to rewrite the file would double the I/O, the subtraction and division per window
  cost microseconds;
* a ``tempfile.TemporaryDirectory`` under ``classify.scratch_dir`` (default: the system temp
  dir, i.e. $TMPDIR, node-local scratch on clusters), named ``calflow-classify-{host}-{pid}-*``:
  deleted when the session is closed, garbage collected, on interpreter exit, or when streaming
  fails; a job killed by a signal (SIGKILL, SIGTERM) leaves its directory, and the next classify
  job on the same host deletes it (the process is gone). Nothing goes under results/. If $TMPDIR
  is a RAM-backed tmpfs the file costs RAM after all: point ``scratch_dir`` at a disk then.

Cross-fitting by trial blocks (never by single frames, neighbouring frames leak): the trials of
every session are cut, in time order, into ``n_folds`` contiguous blocks
(:func:`calflow.stimulation.find_trials`); a frame belongs to the block of the trial it follows
(the trial plus its inter-trial interval). Fold ``f``'s model trains on every block but ``f``,
leaving out the frames whose input window (``context`` frames each side) reaches into block ``f``
(:func:`training_frames`).

Shuffled-label control (:func:`shuffle_trial_labels`): the same training on labels permuted
between the trials of each session, a baseline for the maps.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calflow.classify.params import ClassifyParams, scratch_root
from calflow.errors import CalflowInputError
from calflow.io import (
    MovieReader,
    block_average,
    downsampled_hw,
    process_temp_prefix,
    remove_orphaned_temp_dirs,
)
from calflow.stimulation import Targets, TrialFolds, check_in_frame, find_trials, read_labels

_SCRATCH_STEM = "calflow-classify"


def _release(fd: int, tmpdir: tempfile.TemporaryDirectory) -> None:
    os.close(fd)
    tmpdir.cleanup()


class ScratchMovie:
    """A session's block-averaged movie, (T, h, w) float32, in a raw scratch file, normalised on read.

    Built by :func:`open_movie`. ``movie[key]`` (an int, a slice, or an integer array of any shape
    S) returns normalised float32 frames (h, w), (n, h, w) or (*S, h, w): ``(x - mean image) /
    std`` with the scalar or per-pixel std of ``info``. Frames are read with ``os.preadv``, one
    contiguous read per run of consecutive frames, into a fresh array: no memory map, so the
    process's RSS holds only what was asked for (the OS page cache keeps the hot parts of the file,
    outside RSS). :meth:`close` (or garbage collection, or interpreter exit) closes the file and
    deletes its temporary directory.
    """

    def __init__(self, path: Path, tmpdir: tempfile.TemporaryDirectory, shape: tuple[int, int, int], info: dict):
        self.shape = shape
        self.dtype = np.dtype(np.float32)
        self.info = info
        self.path = path
        self._frame_items = shape[1] * shape[2]
        self._mean = np.asarray(info["mean_image"], np.float32)
        std = info["std"]
        if np.ndim(std):
            floor = float(np.median(std)) * 1e-3 or 1.0  # constant pixels (e.g. a masked border) stay 0
            self._scale: float | np.ndarray = np.maximum(np.asarray(std, np.float32), floor)
        else:
            self._scale = float(std)
        self._fd = os.open(path, os.O_RDONLY)
        self._finalizer = weakref.finalize(self, _release, self._fd, tmpdir)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Close the scratch file and delete its directory (idempotent)."""
        self._finalizer()

    def __enter__(self) -> ScratchMovie:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_raw(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``start:stop`` as stored (block-averaged, not normalised), (n, h, w) float32, read
        into ``out`` (C-contiguous) when given."""
        if self.closed:
            raise ValueError("read from a closed ScratchMovie")
        n = stop - start
        out = np.empty((n, *self.shape[1:]), np.float32) if out is None else out
        view = memoryview(out.reshape(-1)).cast("B")
        offset, done = start * self._frame_items * 4, 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"{self.path}: scratch file ended at byte {offset + done}")
            done += got
        return out

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        x -= self._mean
        x /= self._scale
        return x

    def windows(self, starts: np.ndarray, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Normalised frames ``a .. a + n - 1`` for every ``a`` in ``starts``, clamped to the movie
        (frame 0 / T - 1 repeat at the ends): (B, n, h, w) float32, one read per window straight
        into the result (or into ``out``, C-contiguous: the training batches' windows, no sort, no
        gather copy)."""
        T = self.shape[0]
        out = np.empty((len(starts), n, *self.shape[1:]), np.float32) if out is None else out
        for b, a in enumerate(np.asarray(starts, np.int64).tolist()):
            k_lo, k_hi = min(max(-a, 0), n), min(max(T - a, 0), n)  # positions < k_lo: frame 0; >= k_hi: T - 1
            if k_lo < k_hi:
                self.read_raw(a + k_lo, a + k_hi, out[b, k_lo:k_hi])
                out[b, :k_lo] = out[b, k_lo]
                out[b, k_hi:] = out[b, k_hi - 1]
            else:  # the whole window lies before the first or after the last frame
                edge = 0 if a + n <= 0 else T - 1
                self.read_raw(edge, edge + 1, out[b, :1])
                out[b, 1:] = out[b, 0]
        return self._normalise(out)

    def _read_frames(self, idx: np.ndarray) -> np.ndarray:
        """Normalised frames ``idx`` (1-d int64, in range): one read per run of consecutive frames."""
        step = np.diff(idx)
        if len(idx) and ((step == 0) | (step == 1)).all():  # one window (clamped ends repeat a frame): one read
            buf = self._normalise(self.read_raw(int(idx[0]), int(idx[-1]) + 1))
            return buf if len(buf) == len(idx) else buf[idx - idx[0]]
        uniq, inverse = np.unique(idx, return_inverse=True)
        buf = np.empty((len(uniq), *self.shape[1:]), np.float32)
        if not len(uniq):
            return buf
        cuts = np.flatnonzero(np.diff(uniq) != 1) + 1
        starts, stops = np.concatenate(([0], cuts)), np.concatenate((cuts, [len(uniq)]))
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            self.read_raw(int(uniq[a]), int(uniq[a]) + b - a, buf[a:b])
        return self._normalise(buf)[inverse]

    def __getitem__(self, key: Any) -> np.ndarray:
        T = self.shape[0]
        if isinstance(key, int | np.integer):
            t = int(key) + T if key < 0 else int(key)
            if not 0 <= t < T:
                raise IndexError(f"frame {key} is outside the movie's {T} frames")
            return self._normalise(self.read_raw(t, t + 1))[0]
        if isinstance(key, slice):
            a, b, step = key.indices(T)
            if step == 1:
                return self._normalise(self.read_raw(a, max(a, b)))
            return self._read_frames(np.arange(a, b, step))
        idx = np.asarray(key)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"frames are indexed by ints, slices or integer arrays, not {idx.dtype}")
        if idx.size and (idx.min() < -T or idx.max() >= T):
            raise IndexError(f"frame indices outside the movie's {T} frames")
        flat = np.where(idx < 0, idx + T, idx).ravel().astype(np.int64)
        return self._read_frames(flat).reshape(*idx.shape, *self.shape[1:])


def open_movie(store: str | Path, downsample: int, block_frames: int = 200, normalise: str = "global",
               scratch_dir: str = "") -> ScratchMovie:
    """Stream a movie store once: block-average frames by ``downsample`` into a scratch file and
    accumulate the per-pixel statistics of the normalisation.

    ``normalise``: ``global`` = (frame - mean image) / std of the whole movie (scalar);
    ``pixel`` = (frame - mean image) / per-pixel temporal std (each pixel a z-score: bright anatomy
    and dark background weigh the same, only each pixel's change counts), floored at 1e-3 x the
    median std. Statistics: float64 sums of ``x - K`` and ``(x - K)**2`` per pixel, ``K`` the first
    block's mean image (a shift that keeps the sum of squares from cancelling). The scratch file
    (T x h x w float32) lives in a fresh ``calflow-classify-*`` directory under
    :func:`scratch_root`; it is deleted if streaming fails (NaN pixels, a full disk, ...), and
    otherwise when the returned movie is closed or collected. Peak memory: one block.
    """
    reader = MovieReader(store)
    T, H, W = reader.shape
    d = int(downsample)
    h, w = downsampled_hw(reader.shape, d, 4, "classify.downsample", store)
    if T == 0:
        raise CalflowInputError("the movie has no frames", file=store, fix="re-run motion correction")
    root = scratch_root(scratch_dir)
    need = T * h * w * 4
    free = shutil.disk_usage(root).free
    if free < need:
        raise CalflowInputError(f"the classifier's scratch file needs {need / 1e9:.2f} GB but {root} has "
                                f"{free / 1e9:.2f} GB free", file=store,
                                fix="set classify.scratch_dir to a directory with more room (node-local disk)")
    remove_orphaned_temp_dirs(root, _SCRATCH_STEM)
    tmpdir = tempfile.TemporaryDirectory(prefix=process_temp_prefix(_SCRATCH_STEM), dir=root)
    path = Path(tmpdir.name) / "frames.f32"
    try:
        shift = s1 = s2 = None
        with open(path, "wb") as f:
            for a, block in reader.iter_blocks(block_frames):
                b = block_average(block, d)
                if not np.isfinite(b).all():
                    raise CalflowInputError(f"the movie has NaN or infinite pixels (frames {a}-{a + len(b) - 1})",
                                            file=store, fix="re-run motion correction")
                try:
                    f.write(np.ascontiguousarray(b, np.float32).data)
                except OSError as err:
                    raise CalflowInputError(f"cannot write the classifier's scratch file in {root} ({err.strerror})",
                                            file=store, fix="set classify.scratch_dir to a directory with room "
                                                            f"for {need / 1e9:.2f} GB") from err
                x = b.astype(np.float64)
                if shift is None:
                    shift = x.mean(axis=0)
                    s1, s2 = np.zeros_like(shift), np.zeros_like(shift)
                x -= shift
                s1 += x.sum(axis=0)
                s2 += np.einsum("tij,tij->ij", x, x)
        m1 = s1 / T
        var = np.maximum(s2 / T - m1 * m1, 0.0)  # population variance per pixel, as numpy's std
        mean = (shift + m1).astype(np.float32)
        std: float | np.ndarray
        if normalise == "pixel":
            std = np.sqrt(var).astype(np.float32)
        else:
            std = float(np.sqrt(var.mean())) or 1.0
        info = {"mean_image": mean, "std": std, "frame_shape": [int(H), int(W)]}
        return ScratchMovie(path, tmpdir, (int(T), h, w), info)
    except BaseException:
        tmpdir.cleanup()
        raise


def load_frames(store: str | Path, downsample: int, block_frames: int = 200,
                normalise: str = "global", scratch_dir: str = "") -> tuple[np.ndarray, dict]:
    """The whole normalised movie in RAM, ``(frames (T, H/d, W/d) float32, info)``: :func:`open_movie`
    read back at once, for small movies and tests (the stages use the :class:`ScratchMovie`).
    ``info``: mean image (h, w), std (scalar, or the (h, w) std image), full-resolution frame shape."""
    with open_movie(store, downsample, block_frames, normalise, scratch_dir) as movie:
        return movie[:], movie.info


def target_mask(targets: Targets, frame_shape: Sequence[int], radius: float) -> np.ndarray:
    """(H, W) bool: discs of ``radius`` px around every target (full resolution)."""
    yy, xx = np.mgrid[: frame_shape[0], : frame_shape[1]]
    m = np.zeros(tuple(frame_shape), bool)
    for y, x in targets.yx:
        m |= (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
    return m


def cell_mask(footprints_store: str | Path, dilate: int) -> np.ndarray:
    """(H, W) bool: the union of the segmenter's footprints, dilated by ``dilate`` px."""
    from scipy import ndimage

    from calflow.segment.footprints import read_footprints

    fp, attrs = read_footprints(footprints_store)
    shape = tuple(attrs["frame_shape"])
    m = (np.asarray(fp.sum(axis=0)).ravel() > 0).reshape(shape)
    if dilate > 0:
        m = ndimage.binary_dilation(m, iterations=int(dilate))
    return m


def downsample_mask(mask: np.ndarray, d: int) -> np.ndarray:
    """Full-resolution bool mask -> float32 mask at the classifier's resolution (any pixel kept)."""
    h, w = mask.shape[0] // d, mask.shape[1] // d
    return mask[: h * d, : w * d].reshape(h, d, w, d).any(axis=(1, 3)).astype(np.float32)


@dataclass
class SessionData:
    """Everything the classifier needs of one session (frames at the classifier's resolution).

    ``frames``: the normalised movie, (T, h, w) float32, as a :class:`ScratchMovie` (on disk,
    read window by window) or an in-RAM array. :meth:`close` (or ``with``) deletes the scratch file.
    """

    session: str
    condition: str
    frames: ScratchMovie | np.ndarray  # (T, h, w) float32 normalised
    labels: np.ndarray  # (T, N + 1)
    trials: TrialFolds
    mask: np.ndarray  # (h, w) float32, ones when no mask
    info: dict
    true_labels: np.ndarray | None = None  # the stim log's labels when ``labels`` are shuffled (control)

    @property
    def eval_labels(self) -> np.ndarray:
        """The labels held-out predictions are scored against: the stim log's (also for the control)."""
        return self.labels if self.true_labels is None else self.true_labels

    def close(self) -> None:
        if isinstance(self.frames, ScratchMovie):
            self.frames.close()

    def __enter__(self) -> SessionData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_session(entry: Mapping[str, Any], targets: Targets, p: ClassifyParams) -> SessionData:
    """``entry``: session, condition, motion (store), stim_log, [footprints].

    The stim log and the mask are checked before the movie is streamed (:func:`open_movie`, into
    ``p.scratch_dir``); close the returned session (or use ``with``) to delete its scratch file.
    """
    n_frames, *frame_shape = MovieReader(entry["motion"]).shape
    check_in_frame(targets, frame_shape, entry["targets"])
    labels = read_labels(entry["stim_log"], targets, n_frames)
    if labels[:, :-1].sum() == 0:
        raise CalflowInputError("the stim log has no stimulated frame", file=entry["stim_log"],
                                fix="give a stim log with at least one stimulated frame per fold")
    trials = find_trials(labels, p.n_folds)
    if len(trials.start) < p.n_folds:
        raise CalflowInputError(f"{len(trials.start)} trial(s) for {p.n_folds} folds", file=entry["stim_log"],
                                fix="use fewer classify.n_folds or a longer session")
    frames = open_movie(entry["motion"], p.downsample, normalise=p.normalise, scratch_dir=p.scratch_dir)
    try:
        shape = frames.info["frame_shape"]
        if p.mask == "targets":
            full = target_mask(targets, shape, p.mask_radius)
        elif p.mask == "cells":
            if not entry.get("footprints"):
                raise CalflowInputError("classify.mask = cells needs the session's footprints.zarr",
                                        file=entry["motion"], fix="run the segment stage or use mask: targets/none")
            full = cell_mask(entry["footprints"], p.mask_dilate)
            if tuple(full.shape) != tuple(shape):
                raise CalflowInputError(f"footprints frame shape {full.shape} != movie {tuple(shape)}",
                                        file=entry["footprints"], fix="re-run segment on this session")
        else:
            full = np.ones(shape, bool)
    except BaseException:
        frames.close()
        raise
    return SessionData(str(entry["session"]), str(entry.get("condition", "")), frames, labels, trials,
                       downsample_mask(full, p.downsample), frames.info)



def window(s: SessionData, idx: np.ndarray, context: int, out: np.ndarray | None = None) -> np.ndarray:
    """(B, 2 * context + 1, h, w) float32 normalised: frames idx - context .. idx + context, clamped at
    the ends (from a :class:`ScratchMovie`: one read per window, :meth:`ScratchMovie.windows`),
    written into ``out`` when given."""
    if isinstance(s.frames, ScratchMovie):
        return s.frames.windows(np.asarray(idx, np.int64) - context, 2 * context + 1, out=out)
    offs = np.arange(-context, context + 1)
    t = np.clip(np.asarray(idx)[:, None] + offs[None], 0, len(s.frames) - 1)
    if out is None:
        return s.frames[t]
    out[...] = s.frames[t]
    return out


def _net_input(s: SessionData, frames: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(B, C, h, w) frames windows -> cropped to the network's size and masked."""
    return np.ascontiguousarray(frames[:, :, : hw[0], : hw[1]] * s.mask[: hw[0], : hw[1]])


def training_frames(frame_fold: np.ndarray, fold: int, context: int) -> np.ndarray:
    """Frames fold ``fold``'s model may train on: outside the fold, and with no frame of the fold in
    their input window (t - context .. t + context)."""
    held = (frame_fold == fold).astype(np.int64)
    near = np.convolve(held, np.ones(2 * context + 1, np.int64), mode="same") > 0 if context else held > 0
    return np.flatnonzero(~near)



def shuffle_trial_labels(labels: np.ndarray, trials: TrialFolds, seed: int, session: str) -> np.ndarray:
    """Labels of the shuffled-label control: every trial's frames get the pattern of another trial
    of the same session (a permutation of the session's trials drawn from ``[seed, crc32(session),
    0, 4]``). A trial keeps one label over all its frames, the session's multiset of patterns is
    unchanged, unstimulated frames stay ``none``."""
    out = np.array(labels, np.float32, copy=True)
    n_t = out.shape[1] - 1
    perm = np.random.default_rng([int(seed), zlib.crc32(session.encode()), 0, 4]).permutation(len(trials.start))
    for i, j in enumerate(perm):
        a, b = int(trials.start[i]), int(trials.stop[i])
        out[a:b, :n_t] = 0.0
        out[a:b, list(trials.pattern[int(j)])] = 1.0
    return out
