"""Stimulation classifier: which target cell(s) were photo-stimulated in each frame.

A small CNN (:class:`StimNet`) maps one motion-corrected frame to N + 1 logits: one per target of
the session's targets table and a last "none" output (no target stimulated). Training is
multi-label (sigmoid + binary cross-entropy against the multi-hot labels of the stim log), with
random brightness/contrast augmentation and an optional binary mask that hides everything outside
the cells (``mask: cells``, from footprints.zarr) or outside the targets' neighbourhoods
(``mask: targets``).

Seed ensemble (``members``, default 5): every fold trains K networks that differ only in their
initialisation and batches, as one :class:`StimEnsemble` (grouped convolutions, a per-member head;
one forward/backward trains all K, each member on its own batch). Held-out probabilities are the
mean over members of the sigmoid; calflow.gradcam keeps every member's map and their mean.

Shuffled-label control (:func:`shuffle_trial_labels`, ``train_group(..., shuffle_labels=True)``):
the same training on labels permuted between the trials of each session, a baseline for the maps.

One model is trained per *target group* (:func:`group_of`): the sessions of one animal, which share
the targets table (ids and positions), pooled over conditions. The condition comparison then looks
at the same network's maps of held-out trials of both conditions, which is what makes its
trial-level permutation test exact (docs/classify.md).

Cross-fitting by trial blocks (never by single frames, neighbouring frames leak): the trials of
every session are cut, in time order, into ``n_folds`` contiguous blocks; a frame belongs to the
block of the trial it follows (the trial plus its inter-trial interval). Model ``f`` trains on every
block but ``f`` and is tested on block ``f``, so every frame has a held-out prediction and a
held-out Grad-CAM map; training frames whose input window (``context`` frames each side) reaches
into block ``f`` are left out of its training. Metrics: accuracy under "correct when the top prediction is among the
stimulated targets" (frames with a stimulation), per-target accuracy, a confusion matrix (true
pattern x top output), train vs test.

Frames are block-averaged by ``downsample`` while the movie is streamed once, and normalised per
session: ``(frame - mean image) / std`` of the whole movie (a dF-like input: what changes, not the
anatomy), or with ``normalise: pixel`` by each pixel's own temporal std.

Memory (out of core, DESIGN.md): the block-averaged movie (T x h x w float32, 14 GB for 30 min of
512 x 512 at 30 Hz and d = 2) is never held in RAM. :func:`open_movie` writes it to a raw float32
scratch file while accumulating float64 per-pixel sums for the mean and std; training batches,
predictions and Grad-CAM windows read 2 * context + 1 consecutive frames with one ``os.preadv``
each and normalise on read (:class:`ScratchMovie`). Why this design:

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
  fails; a job killed by a signal (SIGKILL, SIGTERM) leaves its directory, and the next classify job on the same host
  deletes it (the process is gone). Nothing goes under results/. If $TMPDIR is a RAM-backed tmpfs
  the file costs RAM after all: point ``scratch_dir`` at a disk then.

Determinism: member m's initialisation from ``torch.manual_seed(member_seed(seed, fold, m))``
(``1000 * seed + fold`` for member 0); at every iteration member m draws its batch and
augmentation from ``numpy.random.default_rng([seed, fold, iteration, m])`` and torch (dropout) is
re-seeded from ``[seed, fold, iteration, 0, 1]``, so a run
resumed from ``fold{f}_last.pt`` ends with the same weights as an uninterrupted one. Checkpoints
and the model file hold tensors and plain values only (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import weakref
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from calflow.device import resolve_device
from calflow.errors import CalflowInputError
from calflow.io import (
    MovieReader,
    atomic_output,
    block_average,
    process_temp_prefix,
    remove_orphaned_temp_dirs,
)
from calflow.params import from_section
from calflow.stimulation import NONE, Targets, Trials, find_trials, read_labels, read_targets  # noqa: F401 - re-exported

log = logging.getLogger("calflow.classify")

MAX_MEMBERS = 64


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifyParams:
    """The ``classify`` config section (docs/classify.md explains every key)."""

    downsample: int = 2  # block-average frames by this factor (128 -> 64 px)
    normalise: str = "global"  # global: (F - mean image) / std of the movie | pixel: per-pixel z-score over time
    context: int = 5  # input channels: frames t - context .. t + context (clamped at the movie's ends)
    depth: int = 2  # conv blocks (each: two 3x3 conv + ReLU; 2x2 max-pool between blocks)
    width: int = 8  # channels of the first block (doubling per block, capped at 4 x width)
    head_channels: int = 4  # 1x1 conv channels before the position-aware linear head
    dropout: float = 0.5
    mask: str = "none"  # none | cells | targets
    mask_radius: float = 8.0  # targets mask: px (full resolution) around each target
    mask_dilate: int = 2  # cells mask: dilation of the footprint union, px (full resolution)
    brightness: float = 0.4  # additive jitter in normalised units
    contrast: float = 0.4  # gain drawn from [1 - c, 1 + c]
    shift: int = 2  # random translation by up to this many px (classifier resolution), residual motion
    mix: float = 0.0  # probability of adding an unstimulated training window (other spontaneous activity)
    n_folds: int = 2  # cross-fitting folds of contiguous trial blocks
    iterations: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
    group_by: str = "animal"  # animal (sessions '<animal><sep><condition>' share one model) | session
    animal_separator: str = "_"
    num_threads: int = 0  # torch CPU threads (0 = leave as set by the runner)
    scratch_dir: str = ""  # directory of the downsampled movie's scratch file ("" = system temp dir, $TMPDIR)
    members: int = 5  # seed ensemble: networks per fold, trained at once as one grouped module (1 = one network)
    shuffle_control: bool = True  # workflow: also train a control classifier on shuffled trial labels

    def __post_init__(self) -> None:
        def bad(key: str, fix: str) -> CalflowInputError:
            return CalflowInputError(f"classify.{key} = {getattr(self, key)!r}", file="config", fix=fix)

        if self.mask not in ("none", "cells", "targets"):
            raise bad("mask", "use none, cells or targets")
        if self.normalise not in ("global", "pixel"):
            raise bad("normalise", "use global or pixel")
        if self.group_by not in ("animal", "session"):
            raise bad("group_by", "use animal or session")
        if self.n_folds < 2:
            raise bad("n_folds", "use 2 or more (every frame needs a held-out prediction)")
        if self.downsample < 1 or self.depth < 1 or self.width < 1 or self.iterations < 1 or self.batch_size < 1:
            raise bad("downsample" if self.downsample < 1 else "depth", "use positive integers")
        if not 0 <= self.dropout < 1:
            raise bad("dropout", "use a value in [0, 1)")
        if not 1 <= self.members <= MAX_MEMBERS:
            raise bad("members", f"use 1 (one network) to {MAX_MEMBERS}")
        scratch_root(self.scratch_dir)  # an existing writable directory, or ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ClassifyParams | None) -> ClassifyParams:
        return from_section(cls, "classify", config)


def group_of(session: str, group_by: str = "animal", separator: str = "_") -> str:
    """Model group of a session: the animal (name before ``separator``) or the session itself."""
    if group_by == "session" or not separator:
        return session
    return session.split(separator, 1)[0]


# --------------------------------------------------------------------------------------------
# inputs: targets, stim log, trials, folds, frames
# --------------------------------------------------------------------------------------------


def scratch_root(scratch_dir: str = "") -> Path:
    """Directory the scratch files go to: ``scratch_dir`` (``~`` and ``$VARS`` expanded) or, when
    empty, the system temp dir (``tempfile.gettempdir()``: $TMPDIR, i.e. node-local scratch on most
    clusters). A bad directory is a :class:`CalflowInputError` naming ``classify.scratch_dir``."""
    if not scratch_dir:
        return Path(tempfile.gettempdir())
    path = Path(os.path.expandvars(os.path.expanduser(str(scratch_dir))))
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise CalflowInputError(f"classify.scratch_dir = {scratch_dir!r}: {path} is not an existing writable directory",
                                file="config", fix="create it (node-local disk with room for the downsampled movie) "
                                                   "or use '' for the system temp dir ($TMPDIR)")
    return path


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
    h, w = H // d, W // d
    if h < 4 or w < 4:
        raise CalflowInputError(f"frames {H}x{W} are too small for classify.downsample = {d}", file=store,
                                fix="use a smaller downsample factor")
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

    from calflow.segment.infer import read_footprints

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
    trials: Trials
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
    n_frames = MovieReader(entry["motion"]).shape[0]
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


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------


class StimNet(nn.Module):
    """``depth`` conv blocks (two 3x3 conv + ReLU each, 2x2 max-pool between blocks), then a
    position-aware head (1x1 conv to ``reduce`` channels -> flatten -> dropout -> linear) to ``n_out`` logits.

    The head is not a global average pool: which target was stimulated is a question of *where*
    the activity is. ``features[i]`` is block i; Grad-CAM reads any of them (default the last).
    Input (B, C, h, w) (C = 2 * context + 1 frames around the labelled one) with h, w multiples of ``2**(depth - 1)``.
    """

    def __init__(self, n_out: int, frame_hw: Sequence[int], depth: int = 3, width: int = 16, dropout: float = 0.25,
                 in_channels: int = 1, reduce: int = 4):
        super().__init__()
        chans = [min(width * 2**i, 4 * width) for i in range(depth)]
        blocks: list[nn.Module] = []
        cin = in_channels
        for i, c in enumerate(chans):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
            blocks.append(nn.Sequential(*layers))
            cin = c
        self.features = nn.Sequential(*blocks)
        self.n_out = int(n_out)
        f = 2 ** (depth - 1)
        self.layer_hw = (int(frame_hw[0]) // f, int(frame_hw[1]) // f)
        self.head = nn.Sequential(nn.Conv2d(cin, reduce, 1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(reduce * self.layer_hw[0] * self.layer_hw[1], n_out))

    @property
    def input_hw(self) -> tuple[int, int]:
        """(h, w) of the input the head was built for (frames are cropped to it)."""
        f = 2 ** (len(self.features) - 1)
        return self.layer_hw[0] * f, self.layer_hw[1] * f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class StimEnsemble(nn.Module):
    """``members`` (K) :class:`StimNet` networks as one module, trained and evaluated in one pass.

    Every convolution is grouped (``groups=K``: member k's output channels see only member k's
    input channels, which are channels ``k * c .. (k + 1) * c - 1`` of a layer with K * c
    channels), the head is a grouped 1x1 conv and a per-member linear layer (weight (K, F, n_out),
    applied with einsum). Input (B, K, C, h, w) (member k sees ``x[:, k]``, its own samples) or
    (B, C, h, w) (every member sees the same frames); output logits (B, K, n_out). The members
    share no parameter, so with the loss summed over members each member's gradient, and with
    AdamW (elementwise) each member's update, is that of a network trained alone on its batches.
    ``features[i]`` is block i (activations (B, K * c, h', w')); :meth:`member` extracts member k
    as a plain :class:`StimNet` and :meth:`from_members` stacks plain networks (tests/test_classify.py
    checks that the two agree, output and Grad-CAM).
    """

    def __init__(self, n_out: int, frame_hw: Sequence[int], depth: int = 3, width: int = 16, dropout: float = 0.25,
                 in_channels: int = 1, reduce: int = 4, members: int = 1):
        super().__init__()
        K = self.members = int(members)
        self.in_channels = int(in_channels)
        self.chans = [min(width * 2**i, 4 * width) for i in range(depth)]
        blocks: list[nn.Module] = []
        cin = self.in_channels
        for i, c in enumerate(self.chans):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            layers += [nn.Conv2d(K * cin, K * c, 3, padding=1, groups=K), nn.ReLU(),
                       nn.Conv2d(K * c, K * c, 3, padding=1, groups=K), nn.ReLU()]
            blocks.append(nn.Sequential(*layers))
            cin = c
        self.features = nn.Sequential(*blocks)
        self.n_out = int(n_out)
        self.reduce = int(reduce)
        f = 2 ** (depth - 1)
        self.layer_hw = (int(frame_hw[0]) // f, int(frame_hw[1]) // f)
        n_feat = self.reduce * self.layer_hw[0] * self.layer_hw[1]
        self.head_conv = nn.Conv2d(K * cin, K * self.reduce, 1, groups=K)
        self.head_dropout = nn.Dropout(dropout)
        self.head_weight = nn.Parameter(torch.zeros(K, n_feat, self.n_out))
        self.head_bias = nn.Parameter(torch.zeros(K, self.n_out))

    input_hw = StimNet.input_hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K, C = self.members, self.in_channels
        if x.dim() == 4:  # the same frames for every member
            x = x.unsqueeze(1).expand(-1, K, -1, -1, -1)
        B = x.shape[0]
        # channels-last: the grouped convolutions are 2-4 x faster on the CPU (oneDNN) in NHWC
        a = self.features(x.reshape(B, K * C, *x.shape[-2:]).contiguous(memory_format=torch.channels_last))
        r = self.head_dropout(self.head_conv(a).reshape(B, K, -1))  # member k: its (reduce, ly, lx), flattened
        return torch.einsum("bkf,kfo->bko", r, self.head_weight) + self.head_bias

    def member_channels(self, layer_channels: int) -> int:
        """Channels per member of a layer with ``layer_channels`` channels."""
        return layer_channels // self.members

    @classmethod
    def from_members(cls, nets: Sequence[StimNet], arch: Mapping[str, Any]) -> StimEnsemble:
        """The ensemble whose member k has exactly the weights of ``nets[k]`` (same ``arch``)."""
        ens = cls(**_net_kwargs(arch), members=len(nets))
        with torch.no_grad():
            for (name, p), group in zip(_ensemble_params(ens), zip(*(_net_params(n) for n in nets), strict=True),
                                        strict=True):
                vals = [q for _, q in group]
                if name == "head_weight":
                    p.copy_(torch.stack([v.T for v in vals]))
                elif name == "head_bias":
                    p.copy_(torch.stack(vals))
                else:
                    p.copy_(torch.cat(vals))
        return ens

    def member(self, k: int) -> StimNet:
        """Member ``k`` as a plain :class:`StimNet` (a copy of its weights, eval mode, on the CPU)."""
        K = self.members
        net = StimNet(self.n_out, self.input_hw, len(self.features), self.chans[0], self.head_dropout.p,
                      self.in_channels, self.reduce)
        with torch.no_grad():
            for (name, p), (_, q) in zip(_ensemble_params(self), _net_params(net), strict=True):
                if name == "head_weight":
                    q.copy_(p[k].T)
                elif name == "head_bias":
                    q.copy_(p[k])
                else:
                    n = p.shape[0] // K
                    q.copy_(p[k * n : (k + 1) * n])
        return net.eval()


def _net_params(net: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """A :class:`StimNet`'s parameters in the order of :func:`_ensemble_params`."""
    convs = [m for m in net.features.modules() if isinstance(m, nn.Conv2d)] + [net.head[0]]
    out = [(n, p) for c in convs for n, p in (("w", c.weight), ("b", c.bias))]
    return [*out, ("head_weight", net.head[3].weight), ("head_bias", net.head[3].bias)]


def _ensemble_params(ens: StimEnsemble) -> list[tuple[str, torch.Tensor]]:
    convs = [m for m in ens.features.modules() if isinstance(m, nn.Conv2d)] + [ens.head_conv]
    out = [(n, p) for c in convs for n, p in (("w", c.weight), ("b", c.bias))]
    return [*out, ("head_weight", ens.head_weight), ("head_bias", ens.head_bias)]


def _net_kwargs(arch: Mapping[str, Any]) -> dict[str, Any]:
    return {"n_out": int(arch["n_out"]), "frame_hw": arch["frame_hw"], "depth": int(arch["depth"]),
            "width": int(arch["width"]), "dropout": float(arch.get("dropout", 0.0)),
            "in_channels": int(arch.get("in_channels", 1)), "reduce": int(arch.get("reduce", 4))}


def build_model(arch: Mapping[str, Any]) -> StimNet:
    """A plain single network (:class:`StimNet`) of ``arch``."""
    return StimNet(**_net_kwargs(arch))


def build_ensemble(arch: Mapping[str, Any]) -> StimEnsemble:
    """The :class:`StimEnsemble` of ``arch`` (``members``; 1 when absent, as in model files from
    before the ensemble)."""
    return StimEnsemble(**_net_kwargs(arch), members=int(arch.get("members", 1)))


def member_seed(seed: int, fold: int, member: int) -> int:
    """Torch seed of member ``member``'s initialisation: ``1000 * seed + fold`` for member 0 (the
    single network of before the ensemble), one drawn from ``[seed, fold, member, 0, 3]`` otherwise."""
    if member == 0:
        return 1000 * int(seed) + int(fold)
    return int(np.random.default_rng([int(seed), int(fold), int(member), 0, 3]).integers(2**62))


def init_ensemble(arch: Mapping[str, Any], seed: int, fold: int) -> StimEnsemble:
    """A fresh ensemble: member k initialised as a :class:`StimNet` under ``member_seed(seed, fold, k)``."""
    nets = []
    for k in range(int(arch.get("members", 1))):
        torch.manual_seed(member_seed(seed, fold, k))
        nets.append(build_model(arch))
    return StimEnsemble.from_members(nets, arch)


def ensemble_state(arch: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A fold's state dict as the ensemble's: a plain :class:`StimNet` state (``arch`` without
    ``members``, model files from before the ensemble) becomes a K = 1 ensemble's."""
    if "members" in arch:
        return dict(state)
    net = build_model(arch)
    net.load_state_dict(state)
    return StimEnsemble.from_members([net], arch).state_dict()


def crop_hw(h: int, w: int, depth: int) -> tuple[int, int]:
    """The largest frame size the network takes (a multiple of ``2**(depth-1)``)."""
    f = 2 ** (depth - 1)
    return (h // f) * f, (w // f) * f


def save_model(path: str | Path, model: nn.Module, arch: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Weights-only model file ``{"state_dict", "arch", "meta"}`` written atomically."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_output(path) as tmp:
        torch.save({"state_dict": state, "arch": json.loads(json.dumps(dict(arch))),
                    "meta": json.loads(json.dumps(dict(meta)))}, tmp)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[StimNet, dict]:
    """Load a classifier file with ``weights_only=True``; returns (model in eval mode, blob sans weights)."""
    blob = torch.load(path, map_location=device, weights_only=True)
    model = build_model(blob["arch"])
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    return model, {"arch": blob["arch"], "meta": blob.get("meta", {})}


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def window(s: SessionData, idx: np.ndarray, context: int) -> np.ndarray:
    """(B, 2 * context + 1, h, w) float32 normalised: frames idx - context .. idx + context, clamped at
    the ends (from a :class:`ScratchMovie`: one contiguous read per window, or per run of overlapping ones)."""
    offs = np.arange(-context, context + 1)
    t = np.clip(np.asarray(idx)[:, None] + offs[None], 0, len(s.frames) - 1)
    return s.frames[t]


def _net_input(s: SessionData, frames: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(B, C, h, w) frames windows -> cropped to the network's size and masked."""
    return np.ascontiguousarray(frames[:, :, : hw[0], : hw[1]] * s.mask[: hw[0], : hw[1]])


def training_frames(frame_fold: np.ndarray, fold: int, context: int) -> np.ndarray:
    """Frames fold ``fold``'s model may train on: outside the fold, and with no frame of the fold in
    their input window (t - context .. t + context)."""
    held = (frame_fold == fold).astype(np.int64)
    near = np.convolve(held, np.ones(2 * context + 1, np.int64), mode="same") > 0 if context else held > 0
    return np.flatnonzero(~near)


# settings of the machine a job runs on (and shuffle_control, a workflow switch), not of the model: they leave
# the checkpoint fingerprint alone
_RUNTIME_KEYS = ("device", "num_threads", "checkpoint_every", "scratch_dir", "shuffle_control")


def _fingerprint(p: ClassifyParams, data: Sequence[SessionData], fold: int) -> str:
    keep = {k: v for k, v in dataclasses.asdict(p).items() if k not in _RUNTIME_KEYS}
    h = hashlib.sha256(json.dumps({**keep, "fold": fold}, sort_keys=True).encode())
    for s in data:
        h.update(s.frames[:: max(1, len(s.frames) // 50)].tobytes())
        h.update(s.labels.tobytes())
        h.update(s.mask.tobytes())
    return h.hexdigest()[:16]


@dataclass
class _Pools:
    """A fold's training frames per session: all of them, the stimulated ones and the ``none`` ones
    (computed once per fold, not per batch)."""

    all: list[np.ndarray]
    stim: list[np.ndarray]
    none: list[np.ndarray]

    @classmethod
    def of(cls, data: Sequence[SessionData], pools: list[np.ndarray]) -> _Pools:
        none = [s.labels[pool, -1] > 0.5 for s, pool in zip(data, pools, strict=True)]
        return cls(pools, [pool[~m] for pool, m in zip(pools, none, strict=True)],
                   [pool[m] for pool, m in zip(pools, none, strict=True)])


def _batch(data: Sequence[SessionData], pools: _Pools, p: ClassifyParams, fold: int, it: int,
           hw: tuple[int, int], member: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Member ``member``'s batch of iteration ``it``: (B, C, h, w) inputs and (B, N + 1) labels drawn
    from ``default_rng([seed, fold, it, member])`` (member 0: the single network's ``[seed, fold, it]``).

    Every random number is drawn first, sample by sample; then each session's windows are read at
    once (one read per run of consecutive frames) and augmented as one array."""
    rng = np.random.default_rng([p.seed, fold, it, member])
    sizes = np.array([len(x) for x in pools.all], float)
    which = rng.choice(len(pools.all), size=p.batch_size, p=sizes / sizes.sum())
    t = np.zeros(p.batch_size, np.int64)
    quiet_t = np.full(p.batch_size, -1, np.int64)
    gain, offset, quiet_w = (np.zeros(p.batch_size, np.float32) for _ in range(3))
    roll = np.zeros((p.batch_size, 2), np.int64)
    for i, k in enumerate(which):
        pool = pools.all[k]
        stim = pools.stim[k]
        if i % 2 == 0 and len(stim):  # every other frame a stimulated one: balanced against "none"
            pool = stim
        t[i] = int(pool[rng.integers(0, len(pool))])
        gain[i] = rng.uniform(1 - p.contrast, 1 + p.contrast)
        offset[i] = rng.uniform(-p.brightness, p.brightness)
        if p.mix and rng.random() < p.mix:  # background mixing: the label stays, the spontaneous activity changes
            quiet = pools.none[k]
            if len(quiet):
                quiet_w[i] = rng.uniform(0.5, 1.0)
                quiet_t[i] = int(quiet[rng.integers(0, len(quiet))])
        if p.shift:
            roll[i] = rng.integers(-p.shift, p.shift + 1, size=2)
    n_in = 2 * p.context + 1
    xs = np.empty((p.batch_size, n_in, *hw), np.float32)
    ys = np.empty((p.batch_size, data[0].labels.shape[1]), np.float32)
    for k in np.unique(which).tolist():
        sel = np.flatnonzero(which == k)
        s = data[k]
        x = window(s, t[sel], p.context)
        mixed = quiet_t[sel] >= 0
        if mixed.any():
            x[mixed] += quiet_w[sel][mixed, None, None, None] * window(s, quiet_t[sel][mixed], p.context)
        x = x * gain[sel, None, None, None] + offset[sel, None, None, None]
        if p.shift:
            for j, (dy, dx) in enumerate(roll[sel].tolist()):
                x[j] = np.roll(x[j], (dy, dx), axis=(1, 2))
        xs[sel] = _net_input(s, x, hw)
        ys[sel] = s.labels[t[sel]]
    return torch.from_numpy(xs), torch.from_numpy(ys)


CPU_PASS_BYTES = 4 << 20  # CPU: first-block activations per forward/backward pass, about a cache's worth


def pass_rows(model: StimEnsemble | StimNet, device: torch.device | str) -> int | None:
    """Samples per forward (and backward) pass: on the CPU as many as keep the first block's
    activations (K x width channels at the input resolution, float32) within :data:`CPU_PASS_BYTES`
    (a batch of 32 windows of 64 x 64 px trained 5 members 1.4 x faster in 4-6 passes than in one:
    the grouped layers' activations stay in cache); on a GPU None (the whole batch)."""
    if torch.device(device).type != "cpu":
        return None
    h, w = model.input_hw
    chans = model.chans[0] if isinstance(model, StimEnsemble) else model.features[0][0].out_channels
    return max(1, CPU_PASS_BYTES // (getattr(model, "members", 1) * chans * h * w * 4))


def _ensemble_batch(data: Sequence[SessionData], pools: _Pools, p: ClassifyParams, fold: int, it: int,
                    hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member's own batch of iteration ``it``: inputs (B, K, C, h, w), labels (B, K, N + 1)."""
    xs, ys = zip(*(_batch(data, pools, p, fold, it, hw, k) for k in range(p.members)), strict=True)
    return torch.stack(xs, dim=1), torch.stack(ys, dim=1)


def train_fold(data: Sequence[SessionData], p: ClassifyParams, fold: int, checkpoint_dir: str | Path,
               stop_at: int | None = None) -> tuple[StimEnsemble, dict]:
    """Train the ensemble of ``fold`` on every other fold's frames; resumable from ``fold{f}_last.pt``.

    One forward/backward pass per iteration trains all ``p.members`` members (:class:`StimEnsemble`),
    each on its own batch; the loss is the sum over members of each member's mean BCE."""
    device = resolve_device(p.device, key="classify.device")
    h, w = data[0].frames.shape[1:]
    hw = crop_hw(h, w, p.depth)
    n_out = data[0].labels.shape[1]
    arch = {"n_out": n_out, "in_channels": 2 * p.context + 1, "frame_hw": list(hw), "depth": p.depth,
            "width": p.width, "dropout": p.dropout, "context": p.context, "reduce": p.head_channels,
            "members": p.members}
    model = init_ensemble(arch, p.seed, fold).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    pools = [training_frames(s.trials.frame_fold, fold, p.context) for s in data]
    if not any(len(x) for x in pools):
        raise CalflowInputError(f"fold {fold} leaves no training frames", fix="use fewer classify.n_folds")
    batch_pools = _Pools.of(data, pools)
    ckdir = Path(checkpoint_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    last = ckdir / f"fold{fold}_last.pt"
    fp = _fingerprint(p, data, fold)
    it, history, resumed = 0, [], None
    if last.exists():
        ck = torch.load(last, map_location=device, weights_only=True)
        if ck.get("fingerprint") == fp:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            it, history, resumed = int(ck["iteration"]), list(ck["history"]), int(ck["iteration"])
            log.info("fold %d: resuming from %s at iteration %d", fold, last, it)
        else:
            log.info("fold %d: ignoring %s (other data or settings)", fold, last)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    rows = pass_rows(model, device) or p.batch_size
    n_pass = -(-p.batch_size // rows)
    end = p.iterations if stop_at is None else min(stop_at, p.iterations)
    model.train()
    t0 = time.perf_counter()
    while it < end:
        for g in opt.param_groups:  # cosine decay
            g["lr"] = float(p.lr * 0.5 * (1 + np.cos(np.pi * it / p.iterations)))
        x, y = _ensemble_batch(data, batch_pools, p, fold, it, hw)
        # dropout: per iteration ([seed, fold, it, 0, 1]: no member's batch seed)
        torch.manual_seed(int(np.random.default_rng([p.seed, fold, it, 0, 1]).integers(2**62)))
        opt.zero_grad(set_to_none=True)
        per_member = torch.zeros(p.members, device=device)  # (K,) each member's mean BCE over its batch
        for xc, yc in zip(x.tensor_split(n_pass), y.tensor_split(n_pass), strict=True):  # gradients accumulate
            part = bce(model(xc.to(device)), yc.to(device)).mean(dim=2).sum(dim=0) / len(x)
            part.sum().backward()  # the loss: the sum over members of each member's mean BCE
            per_member += part.detach()
        opt.step()
        it += 1
        if it % p.checkpoint_every == 0 or it == end:
            history.append({"iteration": it, "loss": float(per_member.mean().item()),
                            "member_loss": [float(v) for v in per_member.detach().cpu()]})
            log.info("fold %d iteration %d loss %.4f (mean over %d members)", fold, it, history[-1]["loss"],
                     p.members)
            with atomic_output(last) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it,
                            "history": history, "fingerprint": fp}, tmp)
    model.eval()
    return model, {"fold": fold, "iterations": it, "history": history, "resumed_from": resumed,
                   "seconds": time.perf_counter() - t0, "arch": arch, "fingerprint": fp}


@torch.no_grad()
def predict(model: StimEnsemble | StimNet, s: SessionData, frames: np.ndarray | None = None, batch: int = 256,
            members: bool = False) -> np.ndarray:
    """Sigmoid outputs of ``model`` on the session's frames (or the given indices): the ensemble's
    (mean over members of the sigmoid), (T, N + 1), or with ``members`` every member's, (T, K, N + 1)."""
    device = next(model.parameters()).device
    idx = np.arange(len(s.frames)) if frames is None else np.asarray(frames)
    K = getattr(model, "members", 1)
    out = np.empty((len(idx), K, model.n_out), np.float32)
    model.eval()
    ctx = (model.in_channels if isinstance(model, StimEnsemble) else model.features[0][0].in_channels) // 2
    batch = min(batch, pass_rows(model, device) or batch)
    for a in range(0, len(idx), batch):
        x = torch.from_numpy(_net_input(s, window(s, idx[a : a + batch], ctx), model.input_hw)).to(device)
        out[a : a + batch] = torch.sigmoid(model(x)).reshape(len(x), K, model.n_out).cpu().numpy()
    return out if members else out.mean(axis=1)


def frame_metrics(prob: np.ndarray, labels: np.ndarray, target_ids: Sequence[str]) -> dict:
    """Accuracy ("top prediction among the stimulated targets", stimulated frames), per target,
    none-frame accuracy, and the confusion matrix (true pattern x top output).

    ``target_accuracy``: the same on stimulated frames with the top taken over the target outputs
    only (which cell, given that one was stimulated); ``missed_as_none``: the fraction of
    stimulated frames whose top output is ``none`` (on the demo nearly all errors, at the first and
    last frames of a trial, docs/classify.md)."""
    n = len(target_ids)
    stim = labels[:, :n] > 0.5
    is_stim = stim.any(axis=1)
    top = prob.argmax(axis=1)
    correct = np.zeros(len(labels), bool)
    correct[is_stim] = stim[is_stim, np.minimum(top[is_stim], n - 1)] & (top[is_stim] < n)
    none_ok = top[~is_stim] == n
    top_target = prob[:, :n].argmax(axis=1)
    target_ok = stim[is_stim, top_target[is_stim]]
    per_target = {}
    for j, tid in enumerate(target_ids):
        sel = stim[:, j]
        per_target[tid] = {"accuracy": float(correct[sel].mean()) if sel.any() else None, "frames": int(sel.sum())}
    patterns = sorted({tuple(np.flatnonzero(r)) for r in stim[is_stim]}, key=lambda t: (len(t), t))
    names = ["+".join(target_ids[j] for j in pat) for pat in patterns] + [NONE]
    rows = {pat: i for i, pat in enumerate(patterns)}
    conf = np.zeros((len(names), n + 1), np.int64)
    for t in range(len(labels)):
        r = rows[tuple(np.flatnonzero(stim[t]))] if is_stim[t] else len(names) - 1
        conf[r, top[t]] += 1
    return {
        "accuracy": float(correct[is_stim].mean()) if is_stim.any() else None,
        "n_stimulated_frames": int(is_stim.sum()),
        "target_accuracy": float(target_ok.mean()) if is_stim.any() else None,
        # a top target drawn at random: on average the stimulated targets' share of the N
        "chance_target_accuracy": float((stim[is_stim].sum(axis=1) / n).mean()) if is_stim.any() else None,
        "missed_as_none": float((top[is_stim] == n).mean()) if is_stim.any() else None,
        "none_accuracy": float(none_ok.mean()) if none_ok.size else None,
        "n_none_frames": int((~is_stim).sum()),
        "per_target": per_target,
        "confusion": {"rows": names, "columns": [*target_ids, NONE], "counts": conf.tolist()},
    }


UNTRAINED_ACCURACY = 0.6  # a fold whose accuracy on its own training frames is below this did not learn


def untrained_folds(fold_train: np.ndarray, group: str = "") -> list[str]:
    """One message per fold whose accuracy on its own stimulated training frames, ``fold_train``
    (n_folds, 2) = (correct, frames), is below :data:`UNTRAINED_ACCURACY` (trained folds reach
    0.97-0.99 on the demo; a stuck one about 0.45 in 1 of 25 simulated animals)."""
    out = []
    for f, (correct, n) in enumerate(np.asarray(fold_train, np.float64)):
        if n and correct / n < UNTRAINED_ACCURACY:
            out.append(f"classifier {group!r} fold {f} did not learn: accuracy {correct / n:.2f} on its own "
                       f"training frames; its held-out predictions and Grad-CAM maps are unreliable. Fix: "
                       f"re-train with another classify.seed or more classify.iterations")
    return out


CONTROL = "shuffled_labels"


def shuffle_trial_labels(labels: np.ndarray, trials: Trials, seed: int, session: str) -> np.ndarray:
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


def train_group(entries: Sequence[Mapping[str, Any]], targets_path: str | Path, section: Mapping[str, Any] | ClassifyParams,
                out_dir: str | Path, *, seed: int = 0, group: str = "", stop_at: int | None = None,
                shuffle_labels: bool = False) -> dict:
    """Train the cross-fitted classifier of one target group and write its outputs.

    ``entries``: one mapping per session (session, condition, motion, stim_log, targets,
    [footprints]). Writes ``out_dir/model.pt`` (every fold's weights), ``out_dir/metrics.json``
    and ``out_dir/predictions.npz``; checkpoints in ``out_dir/checkpoints/``. Returns the metrics.
    ``shuffle_labels``: the shuffled-label control (:func:`shuffle_trial_labels`), trained exactly
    like the real classifier; its held-out metrics are scored against the stim log's labels.
    """
    cfg = dict(section) if not isinstance(section, ClassifyParams) else dataclasses.asdict(section)
    cfg["seed"] = int(cfg.get("seed", 0)) + int(seed)
    p = ClassifyParams.from_config(cfg)
    if p.num_threads:
        torch.set_num_threads(p.num_threads)
    targets = read_targets(targets_path)
    for e in entries:
        other = read_targets(e["targets"])
        if not other.same_as(targets):
            raise CalflowInputError(
                f"session {e['session']}'s targets differ from {targets_path} of its group {group!r}",
                file=e["targets"], fix="give the sessions of one animal the same targets table, or set "
                                       "classify.group_by: session")
    with contextlib.ExitStack() as stack:  # every session's scratch file is deleted, also when a step fails
        data = [stack.enter_context(load_session(e, targets, p)) for e in entries]
        if shuffle_labels:
            for s in data:
                s.true_labels = s.labels
                s.labels = shuffle_trial_labels(s.labels, s.trials, p.seed, s.session)
        return _train_loaded(data, entries, targets, p, Path(out_dir), group, stop_at,
                             CONTROL if shuffle_labels else None)


def _spread(values: Sequence[float | None]) -> dict:
    v = np.array([x for x in values if x is not None], np.float64)
    if not v.size:
        return {"min": None, "max": None, "std": None}
    return {"min": float(v.min()), "max": float(v.max()), "std": float(v.std())}


def _train_loaded(data: Sequence[SessionData], entries: Sequence[Mapping[str, Any]], targets: Targets,
                  p: ClassifyParams, out_dir: Path, group: str, stop_at: int | None,
                  control: str | None = None) -> dict:
    """:func:`train_group` once its sessions are loaded."""
    shapes = {s.frames.shape[1:] for s in data}
    if len(shapes) > 1:
        raise CalflowInputError(f"the group's sessions have different frame shapes {sorted(shapes)}",
                                file=entries[0]["motion"], fix="group only sessions of one field of view")
    if stop_at is not None:
        for f in range(p.n_folds):
            train_fold(data, p, f, out_dir / "checkpoints", stop_at=stop_at)
        return {"stopped_at": stop_at}
    models, runs = [], []
    for f in range(p.n_folds):
        m, r = train_fold(data, p, f, out_dir / "checkpoints")
        models.append(m)
        runs.append(r)
    ids = targets.ids
    K = p.members
    per_session, preds, member_preds = {}, {}, {}
    fold_train = np.zeros((len(models), 2))  # per fold: correct and stimulated training frames
    for s in data:
        ff = s.trials.frame_fold
        prob_members = np.zeros((len(s.labels), K, s.labels.shape[1]), np.float32)
        train_m = []
        for f, m in enumerate(models):
            sel = np.flatnonzero(ff == f)
            prob_members[sel] = predict(m, s, sel, members=True)
            tr = np.flatnonzero(ff != f)
            fit = frame_metrics(predict(m, s, tr), s.labels[tr], ids)  # the labels it trained on
            train_m.append(fit)
            if fit["accuracy"] is not None:
                fold_train[f] += (fit["accuracy"] * fit["n_stimulated_frames"], fit["n_stimulated_frames"])
        prob_test = prob_members.mean(axis=1)  # the ensemble: mean over members of the sigmoid
        test = frame_metrics(prob_test, s.eval_labels, ids)
        member_test = [frame_metrics(prob_members[:, k], s.eval_labels, ids) for k in range(K)]
        train_acc = [t["accuracy"] for t in train_m if t["accuracy"] is not None]
        member_acc = [t["accuracy"] for t in member_test]
        member_target = [t["target_accuracy"] for t in member_test]
        per_session[s.session] = {"condition": s.condition, "test": test,
                                  "train_accuracy": float(np.mean(train_acc)) if train_acc else None,
                                  "train_none_accuracy": float(np.mean([t["none_accuracy"] for t in train_m
                                                                        if t["none_accuracy"] is not None])),
                                  "n_trials": int(len(s.trials.start)),
                                  "members": {"test_accuracy": member_acc, "test_accuracy_spread": _spread(member_acc),
                                              "test_target_accuracy": member_target,
                                              "test_target_accuracy_spread": _spread(member_target)}}
        if s.true_labels is not None:  # the control: held-out frames against the labels it was trained on
            trained_on = frame_metrics(prob_test, s.labels, ids)
            per_session[s.session]["test_vs_shuffled_labels"] = {
                k: trained_on[k] for k in ("accuracy", "target_accuracy", "missed_as_none", "none_accuracy")}
        preds[s.session] = prob_test
        member_preds[s.session] = prob_members
    per_condition: dict[str, dict] = {}
    for cond in sorted({s.condition for s in data}):
        ss = [s for s in data if s.condition == cond]
        lab = np.concatenate([s.eval_labels for s in ss])
        pr = np.concatenate([preds[s.session] for s in ss])
        m = frame_metrics(pr, lab, ids)
        pm = np.concatenate([member_preds[s.session] for s in ss])
        mm = [frame_metrics(pm[:, k], lab, ids) for k in range(K)]
        per_condition[cond] = {"sessions": [s.session for s in ss], "test_accuracy": m["accuracy"],
                               "test_target_accuracy": m["target_accuracy"], "test_missed_as_none": m["missed_as_none"],
                               "test_none_accuracy": m["none_accuracy"],
                               "chance_target_accuracy": m["chance_target_accuracy"],
                               "train_accuracy": float(np.mean([per_session[s.session]["train_accuracy"] for s in ss])),
                               "per_target": m["per_target"],
                               "member_test_accuracy": [x["accuracy"] for x in mm],
                               "member_test_accuracy_spread": _spread([x["accuracy"] for x in mm]),
                               "member_test_target_accuracy": [x["target_accuracy"] for x in mm],
                               "member_test_target_accuracy_spread": _spread([x["target_accuracy"] for x in mm])}
    lab_all = np.concatenate([s.eval_labels for s in data])
    pm_all = np.concatenate([member_preds[s.session] for s in data])
    m_all = [frame_metrics(pm_all[:, k], lab_all, ids) for k in range(K)]
    ens_all = frame_metrics(pm_all.mean(axis=1), lab_all, ids)
    members_summary = {
        "members": K, "ensemble_test_accuracy": ens_all["accuracy"],
        "ensemble_test_target_accuracy": ens_all["target_accuracy"],
        "chance_target_accuracy": ens_all["chance_target_accuracy"],
        "test_accuracy": [x["accuracy"] for x in m_all], "test_accuracy_spread": _spread([x["accuracy"] for x in m_all]),
        "test_target_accuracy": [x["target_accuracy"] for x in m_all],
        "test_target_accuracy_spread": _spread([x["target_accuracy"] for x in m_all]),
        "rule": "every member's held-out predictions on all the group's frames; the ensemble's probability is the "
                "mean over members of the sigmoid"}
    arch = runs[0]["arch"]
    # the scratch dir is a path of the training machine; the gradcam job uses its own
    params_meta = {k: v for k, v in dataclasses.asdict(p).items() if k != "scratch_dir"}
    meta = {"group": group, "sessions": [s.session for s in data], "target_ids": ids, "params": params_meta,
            "downsample": p.downsample, "folds": p.n_folds, "outputs": [*ids, NONE], "members": K,
            "control": control}
    with atomic_output(out_dir / "model.pt") as tmp:
        torch.save({"folds": [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in models],
                    "arch": json.loads(json.dumps(arch)), "meta": json.loads(json.dumps(meta))}, tmp)
    warnings = untrained_folds(fold_train, group) if control is None else []  # the control is not meant to learn
    for w in warnings:
        log.warning(w)
    metrics = {"group": group, "target_ids": ids, "outputs": [*ids, NONE], "rule": "top prediction among the "
               "stimulated targets, on frames with a stimulation (held-out fold of every frame)",
               "device": str(resolve_device(p.device, key="classify.device")), "arch": arch, "n_folds": p.n_folds,
               "control": control, "members": members_summary,
               "sessions": per_session, "conditions": per_condition, "warnings": warnings,
               "training": [{k: r[k] for k in ("fold", "iterations", "seconds", "resumed_from", "history")} for r in runs]}
    if control is not None:
        metrics["control_rule"] = ("trained on shuffled trial labels (each trial labelled with another trial's "
                                   "pattern of the same session); test metrics against the stim log's labels, "
                                   "test_vs_shuffled_labels against the labels it was trained on")
    with atomic_output(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    with atomic_output(out_dir / "predictions.npz") as tmp, open(tmp, "wb") as f:  # a file: no ".npz" appended
        np.savez_compressed(f, **preds)
    return metrics


def load_fold_models(path: str | Path, device: torch.device | str = "cpu") -> tuple[list[StimEnsemble], dict]:
    """Every fold's ensemble of a group's ``model.pt`` (``weights_only=True``) and its arch/meta.

    A model file from before the ensemble (a plain :class:`StimNet` state per fold, no ``members``
    in its arch) loads as a K = 1 ensemble."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    arch = blob["arch"]
    models = []
    for state in blob["folds"]:
        m = build_ensemble(arch)
        m.load_state_dict(ensemble_state(arch, state))
        models.append(m.to(device).eval())
    return models, {"arch": {**arch, "members": int(arch.get("members", 1))}, "meta": blob["meta"]}
