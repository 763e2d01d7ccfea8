"""Stimulation inputs shared by classify, stim_maps, gradcam and decode: the targets table, the
stim log as multi-hot frame labels, and the trials (runs of frames with one target set).

``targets`` CSV: ``id,y,x[,radius]`` (px, full resolution); ``stim_log`` CSV: ``frame,targets``
with ``;``-separated target ids (empty = none). Both are validated by calflow.config first.
No torch here: the model-free stages import this module alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calflow.config import check_stim_log, check_targets
from calflow.errors import CalflowInputError

NONE = "none"


@dataclass
class Targets:
    """A session's targets table: ids (N,), positions (N, 2) (y, x) px, radii (N,) px (NaN if absent)."""

    ids: list[str]
    yx: np.ndarray
    radius: np.ndarray

    def same_as(self, other: Targets) -> bool:
        return self.ids == other.ids and np.allclose(self.yx, other.yx) and np.allclose(
            self.radius, other.radius, equal_nan=True)


def read_targets(path: str | Path) -> Targets:
    """Read and validate ``id,y,x[,radius]`` (calflow.config.check_targets)."""
    df = check_targets(path)
    ids = [str(int(float(v))) for v in df["id"]]
    yx = df[["y", "x"]].astype(float).to_numpy()
    radius = df["radius"].astype(float).to_numpy() if "radius" in df.columns else np.full(len(ids), np.nan)
    if not ids:
        raise CalflowInputError("the targets table has no rows", file=path, fix="list at least one target")
    return Targets(ids, yx, radius)


def check_in_frame(targets: Targets, frame_shape: tuple[int, int], path: str | Path) -> None:
    """Every target lies inside the (H, W) frame (full-resolution px), or a :class:`CalflowInputError`
    naming the first row outside it."""
    H, W = int(frame_shape[0]), int(frame_shape[1])
    for i, (tid, (y, x)) in enumerate(zip(targets.ids, targets.yx, strict=True)):
        for name, v, size in (("y", y, H), ("x", x, W)):
            if not 0 <= v < size:
                raise CalflowInputError(
                    f"row {i + 2}, field '{name}': target {tid} at {name} = {v:g} is outside the {H} x {W} px frame",
                    file=path, fix=f"give y in 0-{H - 1} and x in 0-{W - 1}, in pixels of this session's movie")


def read_labels(path: str | Path, targets: Targets, n_frames: int) -> np.ndarray:
    """Multi-hot labels (T, N + 1) float32 from a stim log; the last column is "none".

    Frames missing from the log are unstimulated. An unknown target id or a frame outside the
    movie is a :class:`CalflowInputError` naming the row.
    """
    df = check_stim_log(path)
    index = {t: j for j, t in enumerate(targets.ids)}
    n = len(targets.ids)
    labels = np.zeros((n_frames, n + 1), np.float32)
    for i, (frame, tg) in enumerate(zip(df["frame"], df["targets"], strict=True)):
        t = int(frame)
        if t >= n_frames:
            raise CalflowInputError(f"row {i + 2}, field 'frame': frame {t} is past the movie's {n_frames} frames",
                                    file=path, fix="the stim log must describe this session's movie")
        for tok in filter(None, (x.strip() for x in tg.split(";"))):
            key = str(int(tok))
            if key not in index:
                raise CalflowInputError(f"row {i + 2}, field 'targets': target id {tok} is not in the targets table",
                                        file=path, fix=f"use the ids of the targets table ({', '.join(targets.ids)})")
            labels[t, index[key]] = 1.0
    labels[:, n] = labels[:, :n].sum(axis=1) == 0
    return labels


@dataclass
class TrialFolds:
    """Trials of a session (maximal runs of frames with the same non-empty set of targets) as the
    classifier's cross-fitting units: every frame's trial and every trial's fold. Not
    :class:`calflow.decode.Trials` (a stimulus schedule: onsets, stops and string labels of any
    stimulus, and spontaneous epochs, from a stim log or a stimulus table).

    ``start``/``stop`` (n,) frames, ``pattern`` (n,) tuples of target indices, ``unit`` (T,) the
    trial each frame belongs to (the trial plus the frames up to the next trial; frames before the
    first trial belong to it), ``fold`` (n,) the cross-fitting fold of each trial.
    """

    start: np.ndarray
    stop: np.ndarray
    pattern: list[tuple[int, ...]]
    unit: np.ndarray
    fold: np.ndarray

    @property
    def frame_fold(self) -> np.ndarray:
        return self.fold[self.unit] if len(self.fold) else np.zeros(len(self.unit), np.int64)


def find_trials(labels: np.ndarray, n_folds: int) -> TrialFolds:
    """Trials and their folds (contiguous blocks of trials in time order) from the labels."""
    stim = labels[:, :-1] > 0.5
    T = len(labels)
    starts, stops, pats = [], [], []
    prev: tuple[int, ...] = ()
    for t in range(T):
        cur = tuple(np.flatnonzero(stim[t]).tolist())
        if cur and cur != prev:
            if starts and stops[-1] is None:
                stops[-1] = t
            starts.append(t)
            stops.append(None)
            pats.append(cur)
        elif not cur and prev:
            stops[-1] = t
        prev = cur
    if stops and stops[-1] is None:
        stops[-1] = T
    start = np.array(starts, np.int64)
    unit = np.zeros(T, np.int64)
    for i, s in enumerate(start[1:], 1):
        unit[s:] = i
    n = len(start)
    fold = (np.arange(n) * n_folds // max(n, 1)).astype(np.int64)
    return TrialFolds(start, np.array(stops, np.int64), pats, unit, fold)
