"""Keyframe selection: K representative frames of the motion-corrected movie, streamed.

Two methods (config ``keyframes.method``):

* ``activity``: every frame is spatially high-pass filtered (frame minus its Gaussian blur of
  ``highpass_sigma`` px: removes neuropil and background), then temporally high-pass filtered
  (minus a per-pixel exponential running baseline with time constant ``baseline_frames``). Its
  score is the mean of the top ``top_fraction`` of positive residual pixels divided by the
  residual noise: frames where some cells are clearly active rank high. The K best frames at least
  ``min_gap`` frames apart are kept (greedy, best first), so one long transient does not take all.
* ``kmeans``: frames are block-averaged by ``downsample``, reduced by incremental PCA
  (scikit-learn ``IncrementalPCA``, fitted block by block), clustered by k-means into K clusters
  and the medoid (the real frame nearest each cluster centre) of every cluster is kept: frames
  that represent the movie's distinct states.

Both read the movie in blocks of ``batch_size`` frames: memory is one block plus O(T) scalars
(activity) or O(T x n_components) features (kmeans, 20 floats per frame).

Output ``keyframes.zarr``: ``indices`` (keyframe,) int64 ascending, ``frames`` (keyframe, y, x)
float32 (the corrected frames), ``scores`` (time,) float32 (the activity score, or the distance
to the cluster centre for kmeans), ``projection_max`` / ``projection_mean`` / ``projection_std``
(y, x) float32 over the keyframes; attrs ``method``, ``n_frames``, ``params``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import ndimage

from calflow.io import MovieReader, atomic_output, write_array
from calflow.params import check_fields, from_section, param


@dataclass(frozen=True)
class KeyframeParams:
    """``keyframes`` config section (see the module docstring)."""

    method: str = param("activity", choices=("activity", "kmeans"))
    n_keyframes: int = param(50, ge=1)
    batch_size: int = param(200, ge=1)
    highpass_sigma: float = param(6.0, gt=0)
    baseline_frames: int = param(50, ge=1)
    top_fraction: float = param(0.01, gt=0, le=1)
    min_gap: int = param(3, ge=1)
    n_components: int = param(20, ge=1)
    downsample: int = param(2, ge=1)
    seed: int = param(0, ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "keyframes")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | KeyframeParams | None) -> KeyframeParams:
        return from_section(cls, "keyframes", config)


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


def _down(x: np.ndarray, f: int) -> np.ndarray:
    n, h, w = x.shape
    h2, w2 = h // f * f, w // f * f
    return x[:, :h2, :w2].reshape(n, h2 // f, f, w2 // f, f).mean(axis=(2, 4)).reshape(n, -1)


def kmeans_keyframes(reader: MovieReader, p: KeyframeParams) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distance of each frame to its cluster centre) by PCA + k-means medoids."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import IncrementalPCA

    t = reader.shape[0]
    n_comp = min(p.n_components, t, (reader.shape[1] // p.downsample) * (reader.shape[2] // p.downsample))
    ipca = IncrementalPCA(n_components=n_comp)
    pending = None
    for _, block in reader.iter_blocks(p.batch_size):
        x = _down(block.astype(np.float32), p.downsample)
        pending = x if pending is None else np.concatenate([pending, x])
        if pending.shape[0] >= n_comp:  # partial_fit needs >= n_components samples per call
            ipca.partial_fit(pending)
            pending = None
    if pending is not None:
        if hasattr(ipca, "components_"):
            if pending.shape[0] >= n_comp:
                ipca.partial_fit(pending)
        else:
            ipca.fit(pending)
    feats = np.concatenate([ipca.transform(_down(b.astype(np.float32), p.downsample))
                            for _, b in reader.iter_blocks(p.batch_size)])
    k = min(p.n_keyframes, t)
    km = KMeans(n_clusters=k, n_init=4, random_state=p.seed).fit(feats)
    dist = np.linalg.norm(feats - km.cluster_centers_[km.labels_], axis=1)
    medoids = []
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        if members.size:
            medoids.append(int(members[np.argmin(dist[members])]))
    return np.unique(np.asarray(medoids, dtype=np.int64)), dist.astype(np.float32)


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
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        group.attrs.update({"method": p.method, "n_frames": n_frames, "params": dataclasses.asdict(p),
                            "source": str(movie_store)})
        write_array(tmp, "indices", res["indices"], ("keyframe",))
        write_array(tmp, "frames", res["frames"], ("keyframe", "y", "x"))
        write_array(tmp, "scores", res["scores"].astype(np.float32), ("time",))
        for name in ("projection_max", "projection_mean", "projection_std"):
            write_array(tmp, name, res[name].astype(np.float32), ("y", "x"))
    return {"method": p.method, "n_keyframes": int(res["indices"].size), "n_frames": n_frames}
