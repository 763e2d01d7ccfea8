"""The summary images in one streaming pass (:class:`SummaryAccumulator`), memory independent of T:
mean, max, population std, CaImAn-style local correlation (mean Pearson r with the 8 neighbours,
fewer at the borders), PNR ``(max - baseline) / noise`` with noise the std of first temporal
differences / sqrt(2) and baseline the mean of per-block temporal medians. Accumulators are float64
sums taken relative to the first block's mean image, so the one-pass covariances keep precision."""

from __future__ import annotations

import numpy as np

# the 4 neighbour offsets (dy, dx) whose mirror images give the other 4 of the 8-neighbourhood
_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


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

