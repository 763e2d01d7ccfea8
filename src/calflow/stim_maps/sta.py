"""The stimulus-triggered average (STA) of every trial, streamed: the maps are
``M (n_trials, T) @ movie (T, ly * lx)`` with M a sparse matrix of +1/n_response and -1/n_baseline
weights (:func:`trial_weights`), accumulated block by block of frames (:func:`compute_trial_maps`;
peak memory: one block), so the movie is read once, in order, whatever its length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import sparse

from calflow.errors import CalflowInputError
from calflow.io import MovieReader, block_average, downsampled_hw


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
