"""Method ``activity``: each frame's score is its top spatially and temporally high-passed residual over
the residual noise (:func:`activity_scores`, streamed); :func:`pick_top` keeps the K best frames at
least ``min_gap`` apart."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from calflow.io import MovieReader
from calflow.keyframes.params import KeyframeParams


def activity_scores(reader: MovieReader, p: KeyframeParams) -> np.ndarray:
    """(T,) activity score per frame (streamed)."""
    scores = np.zeros(reader.shape[0], dtype=np.float32)
    alpha = 1.0 / p.baseline_frames
    base = None
    n_px = reader.shape[1] * reader.shape[2]
    top = max(1, int(round(p.top_fraction * n_px)))
    for start, block in reader.iter_blocks(p.batch_size):
        x = block.astype(np.float32)
        x = x - ndimage.gaussian_filter(x, sigma=(0, p.highpass_sigma, p.highpass_sigma), mode="reflect")
        for i, frame in enumerate(x):
            if base is None:
                base = frame.copy()
            resid = (frame - base).ravel()
            noise = 1.4826 * np.median(np.abs(resid - np.median(resid))) + 1e-6
            scores[start + i] = np.partition(resid, n_px - top)[n_px - top:].mean() / noise
            base += alpha * (frame - base)
    return scores


def pick_top(scores: np.ndarray, k: int, min_gap: int) -> np.ndarray:
    """Indices of the ``k`` highest scores at least ``min_gap`` apart (greedy), ascending."""
    order = np.argsort(-scores, kind="stable")
    taken = np.zeros(scores.size, dtype=bool)
    chosen: list[int] = []
    for i in order:
        if len(chosen) >= k:
            break
        lo, hi = max(0, i - min_gap + 1), min(scores.size, i + min_gap)
        if min_gap > 1 and taken[lo:hi].any():
            continue
        taken[i] = True
        chosen.append(int(i))
    if len(chosen) < k:  # gap too strict for this movie: fill with the best remaining frames
        rest = [int(i) for i in order if not taken[i]]
        chosen += rest[: k - len(chosen)]
    return np.sort(np.asarray(chosen, dtype=np.int64))

