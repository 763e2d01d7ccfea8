"""Annotation-free seeds for CNMF (``segment.method: corr_pnr``), after CaImAn's correlation x
peak-to-noise ("greedy corr-PNR") initialisation; no network and no annotation involved.

1. One streaming pass over the corrected movie: every frame is high-passed in space (a gaussian of
   sigma ``gsig`` minus a gaussian of ``4 gsig``: cell-sized structure stays, neuropil and
   background go) and fed to the summary stage's accumulator, which gives the filtered movie's
   local-correlation image (mean correlation with the 8 neighbours) and peak-to-noise ratio
   (max - baseline) / noise.
2. Seeds: local maxima of ``corr x pnr`` at least ``radius`` apart with ``corr >= min_corr`` and
   ``pnr >= min_pnr``, strongest first (at most ``max_cells``).
3. A second pass gives every seed its shape: the Pearson correlation, over time, of each pixel
   within ``2 radius`` of the seed with the seed's filtered trace (3 x 3 mean); the footprint is the
   connected region around the seed where it is >= ``footprint_corr``, weighted by it. Where
   footprints overlap the stronger correlation keeps the pixel (the footprints store holds
   non-overlapping shapes); shapes under a fifth of a disc of ``radius`` are dropped.

The output is a footprints.zarr like the network's (``probability`` is ``corr x pnr`` scaled to
[0, 1]), so CNMF takes it unchanged. Memory: one block of frames plus O(K x (4 radius + 1)^2) sums.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from calflow.errors import CalflowInputError
from calflow.io import MovieReader
from calflow.segment.params import CorrPnrParams


def highpass(frames: np.ndarray, gsig: float) -> np.ndarray:
    """(T, H, W) frames minus their broad blur, lightly smoothed: gaussian(gsig) - gaussian(4 gsig)."""
    x = np.asarray(frames, np.float32)
    fine = ndimage.gaussian_filter(x, (0, gsig, gsig), mode="reflect")
    broad = ndimage.gaussian_filter(x, (0, 4 * gsig, 4 * gsig), mode="reflect")
    return fine - broad


def corr_pnr_images(reader: MovieReader, p: CorrPnrParams) -> dict[str, np.ndarray]:
    """Local correlation and peak-to-noise ratio of the high-passed movie (one streaming pass)."""
    from calflow.summary import SummaryAccumulator

    T, H, W = reader.shape
    acc = SummaryAccumulator((H, W))
    for a in range(0, T, p.chunk_frames):
        acc.update(highpass(reader[a:min(T, a + p.chunk_frames)], p.gsig))
    res = acc.result()
    return {"corr": res["local_corr"], "pnr": res["pnr"]}


def find_seeds(corr: np.ndarray, pnr: np.ndarray, p: CorrPnrParams) -> np.ndarray:
    """(K, 2) int seed pixels, strongest corr x pnr first."""
    from skimage.feature import peak_local_max

    score = ndimage.gaussian_filter(np.clip(corr, 0, None) * np.clip(pnr, 0, None), 1.0)
    ok = (corr >= p.min_corr) & (pnr >= p.min_pnr)
    peaks = peak_local_max(np.where(ok, score, 0), min_distance=max(1, int(round(p.radius))), exclude_border=False,
                           threshold_abs=1e-12)
    peaks = peaks[ok[peaks[:, 0], peaks[:, 1]]]
    order = np.argsort(-score[peaks[:, 0], peaks[:, 1]], kind="stable")
    peaks = peaks[order]
    return peaks[: p.max_cells] if p.max_cells else peaks


def seed_shapes(reader: MovieReader, seeds: np.ndarray, p: CorrPnrParams) -> np.ndarray:
    """(K, 2R+1, 2R+1) correlation of each pixel near a seed with the seed's trace (second pass)."""
    T, H, W = reader.shape
    R = int(np.ceil(2 * p.radius))
    K = len(seeds)
    w = 2 * R + 1
    if K == 0:
        return np.zeros((0, w, w), np.float32)
    off = np.arange(-R, R + 1)
    ys = seeds[:, 0, None, None] + R + off[None, :, None]  # in the R-padded frame
    xs = seeds[:, 1, None, None] + R + off[None, None, :]
    sx = np.zeros((K, w, w))
    sxx = np.zeros((K, w, w))
    sxs = np.zeros((K, w, w))
    ss = np.zeros(K)
    sss = np.zeros(K)
    step = max(1, min(p.chunk_frames, int(2e7 // max(K * w * w, 1))))
    for a in range(0, T, step):
        f = highpass(reader[a:min(T, a + step)], p.gsig)
        fp = np.pad(f, ((0, 0), (R, R), (R, R)))
        win = fp[:, ys, xs].astype(np.float64)  # (t, K, w, w)
        s = win[:, :, R - 1:R + 2, R - 1:R + 2].mean(axis=(2, 3))  # (t, K) seed traces
        sx += win.sum(axis=0)
        sxx += np.einsum("tkyx,tkyx->kyx", win, win)
        sxs += np.einsum("tkyx,tk->kyx", win, s)
        ss += s.sum(axis=0)
        sss += (s * s).sum(axis=0)
    mx, ms = sx / T, ss / T
    vx = np.maximum(sxx / T - mx**2, 0)
    vs = np.maximum(sss / T - ms**2, 0)
    den = np.sqrt(vx * vs[:, None, None])
    corr = np.where(den > 0, (sxs / T - mx * ms[:, None, None]) / np.where(den > 0, den, 1), 0)
    # pixels outside the frame (padding) never belong to a footprint
    inside = (ys >= R) & (ys < H + R) & (xs >= R) & (xs < W + R)
    return np.where(inside, corr, 0).astype(np.float32)


def labels_from_shapes(seeds: np.ndarray, shapes: np.ndarray, frame_shape: tuple[int, int],
                       p: CorrPnrParams) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) int32 labels (stronger correlation wins overlaps) and (H, W) float32 weights."""
    H, W = frame_shape
    R = shapes.shape[-1] // 2
    best = np.zeros((H + 2 * R, W + 2 * R), np.float32)
    labels = np.zeros((H + 2 * R, W + 2 * R), np.int32)
    yy, xx = np.mgrid[-R:R + 1, -R:R + 1]
    disc = yy**2 + xx**2 <= (2 * p.radius) ** 2
    for k, ((y, x), c) in enumerate(zip(seeds, shapes, strict=True), start=1):
        m = (c >= p.footprint_corr) & disc
        lab, _ = ndimage.label(m)
        if lab[R, R] == 0:
            continue
        m = lab == lab[R, R]
        sl = (slice(y, y + 2 * R + 1), slice(x, x + 2 * R + 1))
        win = m & (c > best[sl])
        labels[sl][win] = k
        best[sl][win] = c[win]
    labels, best = labels[R:R + H, R:R + W], best[R:R + H, R:R + W]
    sizes = np.bincount(labels.ravel())
    small = sizes < max(4.0, 0.2 * np.pi * p.radius**2)
    small[0] = False
    labels[small[labels]] = 0
    from skimage.segmentation import relabel_sequential

    labels = relabel_sequential(labels)[0].astype(np.int32)
    return labels, np.where(labels > 0, best, 0).astype(np.float32)


def seed_movie(movie_store: str | Path, params: Mapping[str, Any] | CorrPnrParams | None = None) -> dict[str, Any]:
    """Labels, weights, seed map and images of a corrected movie (no files written)."""
    p = CorrPnrParams.from_config(params)
    reader = MovieReader(movie_store)
    T, H, W = reader.shape
    if T < 2:
        raise CalflowInputError(f"movie has {T} frame(s); corr_pnr seeds need at least 2", file=movie_store)
    img = corr_pnr_images(reader, p)
    seeds = find_seeds(img["corr"], img["pnr"], p)
    shapes = seed_shapes(reader, seeds, p)
    labels, weights = labels_from_shapes(seeds, shapes, (H, W), p)
    score = np.clip(img["corr"], 0, None) * np.clip(img["pnr"], 0, None)
    score = (score / score.max()).astype(np.float32) if score.max() > 0 else score.astype(np.float32)
    return {"labels": labels, "weights": weights, "seeds": seeds, "score": score, "params": dataclasses.asdict(p), **img}


def seed_session(movie_store: str | Path, summary_store: str | Path | None, out_store: str | Path, *,
                 params: Mapping[str, Any] | CorrPnrParams | None = None) -> dict:
    """corr_pnr seeds of one session -> footprints.zarr (the network's format); return a summary dict."""
    from calflow.segment.infer import write_footprints

    res = seed_movie(movie_store, params)
    n = write_footprints(out_store, res["labels"], res["weights"], probability=res["score"],
                         attrs={"method": "corr_pnr", "model": "", "corr_pnr": res["params"],
                                "n_candidates": int(len(res["seeds"]))})
    return {"n_components": n, "n_candidates": int(len(res["seeds"])), "method": "corr_pnr"}
