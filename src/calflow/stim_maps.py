"""Model-free control of the condition comparison: stimulus-triggered average (STA) maps per trial.

For every stimulation trial (a run of frames with one non-empty target set, as the classifier
sees it, calflow.classify.find_trials) the map is the mean of the motion-corrected frames from the
trial's first stimulated frame to ``tail_frames`` after its last, minus the mean of the
``baseline_frames`` frames before it, block-averaged by ``downsample``: a dF image in the movie's
units, (ly, lx) = (H // downsample, W // downsample). No network is involved, so the maps cannot
depend on a training seed; calflow.compare runs them through the same ZNCC statistic and the same
animal-level test as the Grad-CAM maps and reports where the two disagree.

Streaming: the maps are ``M (n_trials, T) @ movie (T, ly * lx)`` with M a sparse matrix of
+1/n_response and -1/n_baseline weights, accumulated block by block of frames (peak memory: one
block), so the movie is read once, in order, whatever its length.

Store ``results/{session}/stim_maps.zarr`` has the map-store layout calflow.compare reads (the
gradcam.zarr one): attrs session, condition, group (the animal), patterns, method ``sta``,
zncc_map ``signed``, members 1; arrays trial_maps (trial, ly, lx) float32, trial_pattern
(trial,), trial_fold (trial,) zeros, trial_start (trial,), pattern_maps (pattern, ly, lx),
pattern_trials (pattern,), zncc (pattern, pattern2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import sparse

from calflow.compare import pattern_maps, zncc_matrix
from calflow.errors import CalflowInputError
from calflow.io import MovieReader, atomic_output, block_average, downsampled_hw, write_array
from calflow.params import check_fields, from_section, param
from calflow.stimulation import check_in_frame, find_trials, read_labels, read_targets


@dataclass(frozen=True)
class StimMapsParams:
    """The ``stim_maps`` config section (docs/classify.md, "Controls")."""

    downsample: int = param(2, ge=1)  # block-average factor of the maps (px per map pixel)
    baseline_frames: int = param(5, ge=1)  # frames before a trial's first stimulated frame
    tail_frames: int = param(5, ge=0)  # frames after its last stimulated frame that count as response
    block_frames: int = param(200, ge=1)  # frames read at a time

    def __post_init__(self) -> None:
        check_fields(self, "stim_maps")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | StimMapsParams | None) -> StimMapsParams:
        return from_section(cls, "stim_maps", config)


def trial_weights(start: np.ndarray, stop: np.ndarray, n_frames: int, baseline: int, tail: int) -> sparse.csc_matrix:
    """(n_trials, T) sparse weights: +1/n on the response frames [start, stop + tail), -1/n on the
    baseline frames [start - baseline, start), both clipped to the movie (and the response window
    to the next trial's start is not enforced: a short inter-trial interval shows in the map)."""
    rows, cols, vals = [], [], []
    for i, (a, b) in enumerate(zip(start.tolist(), stop.tolist(), strict=True)):
        resp = np.arange(a, min(b + tail, n_frames))
        base = np.arange(max(a - baseline, 0), a)
        if not len(base):
            base = resp[:0]
        for frames, sign in ((resp, 1.0), (base, -1.0)):
            if len(frames):
                rows += [i] * len(frames)
                cols += frames.tolist()
                vals += [sign / len(frames)] * len(frames)
    return sparse.csc_matrix((vals, (rows, cols)), shape=(len(start), n_frames))


def compute_trial_maps(store: str | Path, weights: sparse.csc_matrix, downsample: int,
                       block_frames: int = 200) -> np.ndarray:
    """(n_trials, H // d, W // d) float64: ``weights @ movie``, the movie streamed by blocks."""
    reader = MovieReader(store)
    d = int(downsample)
    h, w = downsampled_hw(reader.shape, d, 2, "stim_maps.downsample", store)
    out = np.zeros((weights.shape[0], h * w))
    for a, block in reader.iter_blocks(block_frames):
        wb = weights[:, a : a + len(block)]
        if not wb.nnz:
            continue
        x = block_average(block, d, np.float64)
        if not np.isfinite(x).all():
            raise CalflowInputError(f"the movie has NaN or infinite pixels (frames {a}-{a + len(block) - 1})",
                                    file=store, fix="re-run motion correction")
        out += wb @ x.reshape(len(x), -1)
    return out.reshape(-1, h, w)


def session_stim_maps(entry: Mapping[str, Any], section: Mapping[str, Any] | StimMapsParams,
                      out_store: str | Path, *, animal: str = "") -> dict:
    """STA maps of one session -> ``stim_maps.zarr``. ``entry``: session, condition, motion,
    stim_log, targets (as for classify). Returns a short summary."""
    p = StimMapsParams.from_config(section)
    targets = read_targets(entry["targets"])
    n_frames, *frame_shape = MovieReader(entry["motion"]).shape
    check_in_frame(targets, frame_shape, entry["targets"])
    labels = read_labels(entry["stim_log"], targets, n_frames)
    trials = find_trials(labels, 1)
    if not len(trials.start):
        raise CalflowInputError("the stim log has no stimulated frame", file=entry["stim_log"],
                                fix="give a stim log with at least one stimulation trial")
    wts = trial_weights(trials.start, trials.stop, n_frames, p.baseline_frames, p.tail_frames)
    maps = compute_trial_maps(entry["motion"], wts, p.downsample, p.block_frames)
    patterns = sorted(set(trials.pattern), key=lambda t: (len(t), t))
    index = {pat: i for i, pat in enumerate(patterns)}
    tp = np.array([index[t] for t in trials.pattern], np.int64)
    names = ["+".join(targets.ids[j] for j in pat) for pat in patterns]
    pm = pattern_maps(maps, tp, len(patterns))
    z = zncc_matrix(pm)
    with atomic_output(out_store) as tmp:
        g = zarr.open_group(tmp, mode="w", zarr_format=3)
        g.attrs.update({"session": str(entry["session"]), "condition": str(entry.get("condition", "")),
                        "group": animal or str(entry["session"]), "patterns": names, "target_ids": targets.ids,
                        "method": "sta", "zncc_map": "signed", "members": 1, "control": "stimulus_triggered_average",
                        "downsample": p.downsample, "baseline_frames": p.baseline_frames,
                        "tail_frames": p.tail_frames, "units": "dF (movie units), frames block-averaged"})
        write_array(tmp, "trial_maps", maps.astype(np.float32), ("trial", "ly", "lx"))
        write_array(tmp, "trial_pattern", tp, ("trial",))
        write_array(tmp, "trial_fold", np.zeros(len(tp), np.int64), ("trial",))
        write_array(tmp, "trial_start", trials.start.astype(np.int64), ("trial",))
        write_array(tmp, "pattern_maps", pm.astype(np.float32), ("pattern", "ly", "lx"))
        write_array(tmp, "pattern_trials", np.bincount(tp, minlength=len(patterns)).astype(np.int64), ("pattern",))
        write_array(tmp, "zncc", z, ("pattern", "pattern2"))
    return {"trials": int(len(tp)), "patterns": len(names)}
