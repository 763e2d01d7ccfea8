"""Summary images of a (motion-corrected) movie, in one streaming pass: memory independent of T.

Stored in ``summary.zarr`` (all (y, x) float32):

* ``mean``, ``max``, ``std`` (population std over time);
* ``local_corr``: CaImAn-style local-correlation image: for each pixel, the mean Pearson
  correlation over time with its 8 neighbours (fewer at the borders);
* ``pnr``: peak-to-noise ratio, ``(max - baseline) / noise`` per pixel, with ``noise`` the
  standard deviation of first temporal differences / sqrt(2) (white-noise level, little affected
  by slow calcium transients) and ``baseline`` the mean of per-block temporal medians (an
  approximation of the median that streams);
* ``noise`` and ``baseline`` themselves.

All accumulators are float64 sums over frames taken relative to the first block's mean image,
so the one-pass covariances do not lose precision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from calflow.errors import CalflowInputError
from calflow.io import MovieReader, atomic_output, write_array
from calflow.params import check_fields, from_section, param

# the 4 neighbour offsets (dy, dx) whose mirror images give the other 4 of the 8-neighbourhood
_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


@dataclass(frozen=True)
class SummaryParams:
    """``summary`` config section. batch_size: frames per streamed block (memory ~ 8 x block)."""

    batch_size: int = param(200, ge=2, fix="use about 200")

    def __post_init__(self) -> None:
        check_fields(self, "summary")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | SummaryParams | None) -> SummaryParams:
        return from_section(cls, "summary", config)


def _pair(a: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Views (p, q) of a (..., h, w) array such that q is p's neighbour at (+dy, +dx)."""
    h, w = a.shape[-2:]
    ys_p = slice(0, h - dy)
    ys_q = slice(dy, h)
    xs_p = slice(max(0, -dx), w - max(0, dx))
    xs_q = slice(max(0, dx), w - max(0, -dx))
    return a[..., ys_p, xs_p], a[..., ys_q, xs_q]


class SummaryAccumulator:
    """Streaming accumulator: feed (n, h, w) blocks in time order with :meth:`update`."""

    def __init__(self, shape: tuple[int, int]):
        h, w = shape
        self.n = 0
        self.ref: np.ndarray | None = None
        self.s1 = np.zeros((h, w))
        self.s2 = np.zeros((h, w))
        self.cross = [np.zeros(_pair(self.s1, dy, dx)[0].shape) for dy, dx in _OFFSETS]
        self.max = np.full((h, w), -np.inf)
        self.diff2 = np.zeros((h, w))
        self.last: np.ndarray | None = None
        self.median_sum = np.zeros((h, w))
        self.median_weight = 0

    def update(self, block: np.ndarray) -> None:
        x = np.asarray(block, dtype=np.float64)
        if x.ndim == 2:
            x = x[None]
        if self.ref is None:
            self.ref = x.mean(axis=0)
        d = x - self.ref
        self.n += x.shape[0]
        self.s1 += d.sum(axis=0)
        self.s2 += np.einsum("tyx,tyx->yx", d, d)
        for acc, (dy, dx) in zip(self.cross, _OFFSETS, strict=True):
            p, q = _pair(d, dy, dx)
            acc += np.einsum("tyx,tyx->yx", p, q)
        np.maximum(self.max, x.max(axis=0), out=self.max)
        seq = x if self.last is None else np.concatenate((self.last[None], x))
        self.diff2 += (np.diff(seq, axis=0) ** 2).sum(axis=0)
        self.last = x[-1]
        self.median_sum += np.median(x, axis=0) * x.shape[0]
        self.median_weight += x.shape[0]

    def result(self) -> dict[str, np.ndarray]:
        if self.n == 0 or self.ref is None:
            raise ValueError("no frames")
        n = self.n
        m1 = self.s1 / n
        var = np.maximum(self.s2 / n - m1**2, 0.0)
        std = np.sqrt(var)
        corr_sum = np.zeros_like(m1)
        count = np.zeros_like(m1)
        for acc, (dy, dx) in zip(self.cross, _OFFSETS, strict=True):
            mp, mq = _pair(m1, dy, dx)
            sp, sq = _pair(std, dy, dx)
            denom = sp * sq
            r = np.where(denom > 0, (acc / n - mp * mq) / np.where(denom > 0, denom, 1), 0.0)
            for view in _pair(corr_sum, dy, dx):
                view += r
            for view in _pair(count, dy, dx):
                view += 1
        local_corr = corr_sum / np.maximum(count, 1)
        noise = np.sqrt(self.diff2 / (2 * max(n - 1, 1)))
        baseline = self.median_sum / self.median_weight
        pnr = np.where(noise > 0, (self.max - baseline) / np.where(noise > 0, noise, 1), 0.0)
        out = {"mean": self.ref + m1, "max": self.max, "std": std, "local_corr": local_corr, "pnr": pnr,
               "noise": noise, "baseline": baseline}
        return {k: v.astype(np.float32) for k, v in out.items()}


_DESCRIPTIONS = {
    "mean": "temporal mean",
    "max": "temporal maximum",
    "std": "temporal standard deviation (population)",
    "local_corr": "mean Pearson correlation over time with the 8 neighbouring pixels",
    "pnr": "peak-to-noise ratio (max - baseline) / noise",
    "noise": "std of first temporal differences / sqrt(2)",
    "baseline": "mean of per-block temporal medians",
}


def compute_summary(movie_store: str | Path, out_store: str | Path, *,
                    params: SummaryParams | Mapping[str, Any] | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Stream the ``movie`` of ``movie_store`` once and write summary.zarr atomically.

    Arrays (y, x) float32: mean, max, std, local_corr, pnr, noise, baseline. Attrs: n_frames,
    fps, source. Returns a small dict of scalar statistics. ``progress`` shows a tqdm bar.
    """
    p = SummaryParams.from_config(params)
    reader = MovieReader(movie_store)
    n_t, h, w = reader.shape
    if n_t < 2:
        raise CalflowInputError(f"movie has {n_t} frame(s); summary images need at least 2",
                                file=movie_store, fix="check the upstream stage's input movie")
    acc = SummaryAccumulator((h, w))
    blocks = reader.iter_blocks(p.batch_size)
    if progress:
        from tqdm import tqdm

        blocks = tqdm(blocks, total=-(-n_t // p.batch_size), desc="summary", unit="block")
    for _, block in blocks:
        acc.update(block)
    images = acc.result()
    with atomic_output(out_store) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        group.attrs.update({
            "stage": "summary", "n_frames": n_t, "fps": reader.fps, "summary_source": str(movie_store),
            "source": reader.attrs.get("source", str(movie_store)),
        })
        for name, img in images.items():
            write_array(tmp, name, img, ("y", "x"), {"description": _DESCRIPTIONS[name]})
    return {
        "n_frames": n_t,
        "local_corr_max": float(images["local_corr"].max()),
        "pnr_max": float(images["pnr"].max()),
    }
