"""Trials and responses: a stim log or stimulus table read into :class:`Trials` (frame units),
the frames that count as spontaneous activity, and the response matrix (mean of the window minus
mean of the baseline per trial and neuron), read from the traces in blocks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from calflow.decode.params import DecodeParams
from calflow.errors import CalflowInputError

SPONT_LABEL = "spontaneous"   # stimulus-table rows with this name (and a stop) are spontaneous epochs


@dataclass
class Trials:
    """Stimulus trials in frame units, and spontaneous epochs (a stimulus schedule; the classifier's
    trials with their cross-fitting folds are :class:`calflow.stimulation.TrialFolds`).

    ``onset`` (n,) first frame, ``stop`` (n,) one past the last stimulated frame, ``label`` (n,) str;
    ``spont`` (E, 2) int64 ``[start, stop)`` frames of spontaneous epochs (none: shape (0, 2)).
    """

    onset: np.ndarray
    stop: np.ndarray
    label: np.ndarray
    spont: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))

    def __len__(self) -> int:
        return int(self.onset.size)


def _norm_targets(text: str) -> str:
    ids = sorted({int(t) for t in str(text).replace(" ", "").split(";") if t != ""})
    return ";".join(map(str, ids))


def _frame_column(df: pd.DataFrame, col: str, path: Path, optional: bool = False) -> np.ndarray:
    """Non-negative integer column (``-1`` where an optional cell is empty)."""
    text = df[col].str.strip()
    empty = (text == "").to_numpy()
    values = pd.to_numeric(text.where(~empty, "-1" if optional else ""), errors="coerce")
    badrow = (values.isna() | ((values < 0) & ~empty) | (values % 1 != 0)).to_numpy()
    if badrow.any():
        i = int(badrow.nonzero()[0][0])
        raise CalflowInputError(f"row {i + 2}, field {col!r}: {df[col].iloc[i]!r} is not a non-negative integer",
                                file=path, fix="give the movie frame (0 = the first) as a whole number")
    return values.to_numpy(np.int64)


def read_trials(path: str | Path) -> Trials:
    """Trials of a stim log (``frame,targets``) or a stimulus table (``frame,stimulus[,stop]``).

    In a table, ``stop`` (optional, one past the stimulus' last frame) sets a trial's end; rows
    whose stimulus is ``spontaneous`` are spontaneous epochs ``[frame, stop)`` (stop required).
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError as err:
        raise CalflowInputError("stim log not found", file=path, fix="check the sessions sheet's stim_log") from err
    except Exception as err:  # noqa: BLE001 - pandas parser errors
        raise CalflowInputError(f"cannot parse the stim log ({err})", file=path) from err
    df.columns = [c.strip() for c in df.columns]
    if "frame" not in df.columns or not ({"targets", "stimulus"} & set(df.columns)):
        raise CalflowInputError(f"columns {', '.join(df.columns)}: need frame and targets (stim log) or frame and "
                                "stimulus (stimulus table)", file=path, fix="write a header frame,targets or frame,stimulus")
    frames = _frame_column(df, "frame", path)
    if "stimulus" in df.columns:
        labels = df["stimulus"].str.strip().to_numpy(str)
        if (labels == "").any():
            i = int((labels == "").nonzero()[0][0])
            raise CalflowInputError(f"row {i + 2}, field 'stimulus' is empty", file=path,
                                    fix="name the stimulus shown at every onset row")
        stops = _frame_column(df, "stop", path, optional=True) if "stop" in df.columns else np.full(frames.size, -1)
        is_spont = labels == SPONT_LABEL
        wrong = (stops >= 0) & (stops <= frames) | (is_spont & (stops < 0))
        if wrong.any():
            i = int(wrong.nonzero()[0][0])
            raise CalflowInputError(f"row {i + 2}, field 'stop': {'missing' if stops[i] < 0 else int(stops[i])} "
                                    f"(frame {int(frames[i])})", file=path,
                                    fix="give stop > frame (one past the last frame); a 'spontaneous' epoch needs one")
        stops = np.where(stops < 0, frames + 1, stops)
        order = np.argsort(frames, kind="stable")
        trial = order[~is_spont[order]]
        spont = np.stack([frames[order][is_spont[order]], stops[order][is_spont[order]]], axis=1).astype(np.int64)
        return Trials(frames[trial], stops[trial], labels[trial], spont.reshape(-1, 2))
    try:
        targets = np.array([_norm_targets(t) for t in df["targets"]], dtype=object)
    except ValueError as err:
        raise CalflowInputError(f"field 'targets' holds a non-integer id ({err})", file=path,
                                fix="write ';'-separated integer target ids, empty for none") from err
    order = np.argsort(frames, kind="stable")
    frames, targets = frames[order], targets[order]
    onsets, stops, labels = [], [], []
    for f, t in zip(frames, targets, strict=True):
        if t == "":
            continue
        if onsets and labels[-1] == t and stops[-1] == f:
            stops[-1] = f + 1
        else:
            onsets.append(f)
            stops.append(f + 1)
            labels.append(t)
    return Trials(np.array(onsets, np.int64), np.array(stops, np.int64), np.array(labels, dtype=str))


def trials_from_truth(truth: Any) -> Trials:
    """Trials of a :class:`calflow.simulate.GroundTruth` (labels as a stim log would give them)."""
    labels = [";".join(str(j) for j in sorted(truth.patterns[p]) if j >= 0) for p in truth.trial_pattern]
    return Trials(truth.trial_start.astype(np.int64), truth.trial_stop.astype(np.int64), np.array(labels, dtype=str))


def _frames(span_s: list[float], fps: float) -> tuple[int, int]:
    """[start, stop) in frames relative to onset of a span in seconds (at least one frame)."""
    start = int(round(span_s[0] * fps))
    return start, max(int(round(span_s[1] * fps)), start + 1)


def spontaneous_frames(n_frames: int, trials: Trials, fps: float, p: DecodeParams) -> np.ndarray:
    """(T,) bool: frames that count as spontaneous activity.

    Never a frame from a trial's baseline start to ``spont_guard_s`` after its end (the later of
    its stimulus' last frame and its response window); with ``spontaneous`` = ``epochs`` (or
    ``auto`` and the table has epochs) only frames of the spontaneous epochs, else every other frame.
    """
    (w0, w1), (b0, b1) = _frames(p.window_s, fps), _frames(p.baseline_s, fps)
    guard = int(math.ceil(p.spont_guard_s * fps - 1e-9))
    if p.spontaneous == "epochs" and not len(trials.spont):
        raise CalflowInputError("decode.spontaneous is 'epochs' but the stimulus table has no spontaneous epochs",
                                file="config", fix=f"add rows frame,{SPONT_LABEL},stop to the stimulus table or use "
                                                   "decode.spontaneous: auto")
    if len(trials.spont) and p.spontaneous != "gaps":
        free = np.zeros(n_frames, bool)
        for a, b in trials.spont:
            free[max(a, 0): b] = True
    else:
        free = np.ones(n_frames, bool)
    for on, st in zip(trials.onset, trials.stop, strict=True):
        free[max(on + min(w0, b0, 0), 0): max(st, on + max(w1, b1)) + guard] = False
    return free


def response_matrix(traces: np.ndarray, trials: Trials, fps: float, p: DecodeParams,
                    block_frames: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(trials inside, neurons) float64 mean(window) - mean(baseline), and the (trials,) inside mask.

    ``traces`` (N, T) of any float dtype is read in blocks of ``block_frames`` frames (transposed
    copies of N x block) so that memory stays O(N x block) beyond the result.
    """
    n, t = traces.shape
    (w0, w1), (b0, b1) = _frames(p.window_s, fps), _frames(p.baseline_s, fps)
    lo, hi = trials.onset + min(w0, b0), trials.onset + max(w1, b1)
    inside = (lo >= 0) & (hi <= t)
    idx = np.flatnonzero(inside)
    idx = idx[np.argsort(lo[idx], kind="stable")]
    row = np.empty(trials.onset.size, np.int64)
    row[np.flatnonzero(inside)] = np.arange(idx.size)
    resp = np.empty((idx.size, n))
    i = 0
    while i < idx.size:
        start = int(lo[idx[i]])
        j = i + 1
        while j < idx.size and hi[idx[j]] - start <= block_frames:
            j += 1
        seg = np.ascontiguousarray(traces[:, start: int(hi[idx[i:j]].max())].T, dtype=np.float64)  # (frames, N)
        for k in idx[i:j]:
            on = int(trials.onset[k]) - start
            resp[row[k]] = seg[on + w0: on + w1].mean(axis=0) - seg[on + b0: on + b1].mean(axis=0)
        i = j
    return resp, inside
