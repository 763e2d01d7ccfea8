"""The ``keyframes`` rule's entry point: :func:`select_keyframes` runs the configured method and
takes the chosen frames and their projections; :func:`compute_keyframes` writes them atomically."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from calflow.io import MovieReader, atomic_output
from calflow.keyframes.activity import activity_scores, pick_top
from calflow.keyframes.kmeans import kmeans_keyframes
from calflow.keyframes.params import KeyframeParams
from calflow.keyframes.store import write_keyframes


def select_keyframes(movie_store: str | Path, params: Mapping[str, Any] | KeyframeParams | None = None
                     ) -> dict[str, np.ndarray]:
    """Choose keyframes of a movie store; return indices, frames, scores and projections (no writing)."""
    p = KeyframeParams.from_config(params)
    reader = MovieReader(movie_store)
    if p.method == "activity":
        scores = activity_scores(reader, p)
        idx = pick_top(scores, min(p.n_keyframes, reader.shape[0]), p.min_gap)
    else:
        idx, scores = kmeans_keyframes(reader, p)
    frames = np.stack([reader[int(i)] for i in idx]).astype(np.float32)
    return {"indices": idx, "frames": frames, "scores": scores,
            "projection_max": frames.max(axis=0), "projection_mean": frames.mean(axis=0),
            "projection_std": frames.std(axis=0)}


def compute_keyframes(movie_store: str | Path, out_store: str | Path,
                      params: Mapping[str, Any] | KeyframeParams | None = None) -> dict[str, Any]:
    """Select keyframes and write ``out_store`` (keyframes.zarr) atomically; return a summary."""
    p = KeyframeParams.from_config(params)
    res = select_keyframes(movie_store, p)
    n_frames = int(res["scores"].size)
    with atomic_output(out_store) as tmp:
        write_keyframes(tmp, res, p, movie_store, n_frames)
    return {"method": p.method, "n_keyframes": int(res["indices"].size), "n_frames": n_frames}
