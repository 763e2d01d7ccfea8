"""Match footprints across sessions and build their union (footprints in the reference's frame).

A session's footprints (CSR (K, Y*X), one row per cell) are resampled onto the reference grid
(:func:`warp_footprints`). Each pair of a session's cell and a union cell within
``max_distance_px`` gets a score in [0, 1] (:func:`pair_scores`):
``iou_weight * IoU + (1 - iou_weight) * exp(-d^2 / (2 distance_scale_px^2))``, with IoU the overlap of
the binary masks (weights >= ``mask_threshold`` of the peak) and d the distance of the weighted
centroids in px. The threshold comes from the distribution of those scores (:func:`choose_threshold`):
same-cell pairs score high and neighbouring different cells low, so a two-component Gaussian mixture
(scikit-learn) finds the two modes and the threshold is the valley of the score density between them
(CellReg and Track2p also take their thresholds from the score distributions). Then
:func:`scipy.optimize.linear_sum_assignment` pairs cells one-to-one on the scores (:func:`match_union`);
a pair below the threshold is no match, and an unmatched cell starts a union cell of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from calflow.tracking.params import TrackingParams


def warp_footprints(A: sp.csr_matrix, shape: tuple[int, int], coordinate_map: np.ndarray) -> sp.csr_matrix:
    """Footprints A (K, Y*X) of a session resampled at ``coordinate_map`` (2, Y', X'; where each target
    pixel lies in the session) -> CSR (K, Y'*X') float32. Each footprint is sampled only inside the
    target pixels that map into its bounding box (one box at a time: memory O(Y*X))."""
    A = sp.csr_matrix(A, dtype=np.float32)
    Y, X = shape
    cy, cx = coordinate_map[0].ravel(), coordinate_map[1].ravel()
    rows, cols, vals = [], [], []
    for k in range(A.shape[0]):
        idx = A.indices[A.indptr[k] : A.indptr[k + 1]]
        if idx.size == 0:
            continue
        yy, xx = np.divmod(idx, X)
        y0, y1, x0, x1 = yy.min() - 1, yy.max() + 1, xx.min() - 1, xx.max() + 1
        inside = np.flatnonzero((cy >= y0) & (cy <= y1) & (cx >= x0) & (cx <= x1))
        if inside.size == 0:
            continue
        box = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.float32)
        box[yy - y0, xx - x0] = A.data[A.indptr[k] : A.indptr[k + 1]]
        v = ndimage.map_coordinates(box, np.stack([cy[inside] - y0, cx[inside] - x0]), order=1, mode="constant")
        keep = v > 0
        rows.append(np.full(int(keep.sum()), k))
        cols.append(inside[keep])
        vals.append(v[keep])
    n = coordinate_map[0].size
    if not rows:
        return sp.csr_matrix((A.shape[0], n), dtype=np.float32)
    out = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(A.shape[0], n), dtype=np.float32)
    out.sum_duplicates()
    return out


def centroids(A: sp.csr_matrix, width: int) -> np.ndarray:
    """Weighted centroids (K, 2) (y, x) px of footprints A (K, Y*X); NaN for an empty footprint."""
    A = sp.csr_matrix(A, dtype=np.float64)
    yy, xx = np.divmod(np.arange(A.shape[1]), width)
    w = np.asarray(A.sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([A @ yy / w, A @ xx / w], axis=1)


def binary_masks(A: sp.csr_matrix, threshold: float) -> sp.csr_matrix:
    """CSR (K, P) float64 0/1 masks: weights >= ``threshold`` x each footprint's peak."""
    A = sp.csr_matrix(A, dtype=np.float64)
    peak = np.asarray(A.max(axis=1).todense()).ravel()
    rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
    keep = A.data >= threshold * peak[rows]
    return sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], A.indices[keep])), shape=A.shape)


def pair_scores(A: sp.csr_matrix, B: sp.csr_matrix, width: int, p: TrackingParams) -> tuple[np.ndarray, np.ndarray,
                                                                                               np.ndarray]:
    """Scores (Ka, Kb) of every footprint pair of A and B (same grid), NaN where the centroids are
    farther than ``max_distance_px``; also the IoU (Ka, Kb) and the centroid distances (Ka, Kb) in px."""
    ma, mb = binary_masks(A, p.mask_threshold), binary_masks(B, p.mask_threshold)
    inter = np.asarray((ma @ mb.T).todense())
    area_a, area_b = np.asarray(ma.sum(axis=1)).ravel(), np.asarray(mb.sum(axis=1)).ravel()
    union = area_a[:, None] + area_b[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    ca, cb = centroids(A, width), centroids(B, width)
    d = np.linalg.norm(ca[:, None, :] - cb[None, :, :], axis=-1)
    score = p.iou_weight * iou + (1 - p.iou_weight) * np.exp(-(d * d) / (2 * p.distance_scale_px ** 2))
    score = np.where(d <= p.max_distance_px, score, np.nan)
    return score, iou, d


@dataclass(frozen=True)
class Threshold:
    """The match threshold, how it was chosen (``mixture`` or ``fixed``; ``fixed (fallback)`` when the
    mixture could not separate two modes) and the mixture's means, sds and weights ((2,) each, low mode
    first; NaN without a mixture)."""

    value: float
    method: str
    means: np.ndarray
    sds: np.ndarray
    weights: np.ndarray


def choose_threshold(scores: np.ndarray, p: TrackingParams, *, seed: int = 0) -> Threshold:
    """The threshold between the different-cell and same-cell modes of candidate-pair ``scores`` (n,).

    ``threshold: mixture`` fits a two-component Gaussian mixture to find the two modes and returns the
    valley between them: the minimum of the scores' kernel density estimate (scipy ``gaussian_kde``,
    Scott's bandwidth) between the two means. (The equal-density point of the two Gaussians was tried
    first: the same-cell mode is narrow and the different-cell one wide, which put that point next to
    the same-cell mode and lost true matches; docs/tracking.md.) It falls back to ``fixed_threshold``
    with fewer than 8 scores, or when the modes do not separate (means closer than 0.1 or the valley
    outside (0.05, 0.95)).
    """
    nan2 = np.full(2, np.nan)
    s = np.asarray(scores, np.float64)
    s = s[np.isfinite(s)]
    if p.threshold == "fixed":
        return Threshold(p.fixed_threshold, "fixed", nan2, nan2, nan2)
    fallback = Threshold(p.fixed_threshold, "fixed (fallback)", nan2, nan2, nan2)
    if s.size < 8 or np.ptp(s) < 1e-6:
        return fallback
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(2, random_state=seed, reg_covar=1e-4, n_init=3).fit(s[:, None])
    order = np.argsort(gm.means_.ravel())
    mu = gm.means_.ravel()[order]
    sd = np.sqrt(gm.covariances_.ravel()[order])
    w = gm.weights_.ravel()[order]
    if mu[1] - mu[0] < 0.1:
        return Threshold(p.fixed_threshold, "fixed (fallback)", mu, sd, w)
    from scipy.stats import gaussian_kde

    x = np.linspace(mu[0], mu[1], 501)
    value = float(x[np.argmin(gaussian_kde(s)(x))])  # the valley of the score density between the modes
    if not 0.05 < value < 0.95:
        return Threshold(p.fixed_threshold, "fixed (fallback)", mu, sd, w)
    return Threshold(value, "mixture", mu, sd, w)


def assign(score: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """One-to-one pairs (i, j, score) maximising the total score (Hungarian), candidates only (finite
    scores), each pair's score >= ``threshold``."""
    if score.size == 0:
        return []
    cost = np.where(np.isfinite(score), -score, 1e6)
    ri, ci = linear_sum_assignment(cost)
    return [(int(i), int(j), float(score[i, j])) for i, j in zip(ri, ci, strict=True)
            if np.isfinite(score[i, j]) and score[i, j] >= threshold]


@dataclass(frozen=True)
class Union:
    """The union of an animal's cells: ``footprints`` CSR (U, Y*X) in the reference frame (mean of the
    members' warped footprints, peak 1), ``members`` (U, S) int64 (the cell's component index in
    session s, -1 where it was not found), ``scores`` (U, S) float64 (the score with which it joined
    the union cell, NaN for the cell that started it and where absent)."""

    footprints: sp.csr_matrix
    members: np.ndarray
    scores: np.ndarray


def _normalise_rows(M: sp.csr_matrix) -> sp.csr_matrix:
    """Copy of M (K, P) with every row scaled to peak 1 (empty rows stay empty)."""
    M = sp.csr_matrix(M, dtype=np.float32, copy=True)
    M.sum_duplicates()
    peak = np.asarray(M.max(axis=1).todense()).ravel()
    scale = np.where(peak > 0, 1.0 / np.maximum(peak, 1e-12), 0.0).astype(np.float32)
    M.data *= scale[np.repeat(np.arange(M.shape[0]), np.diff(M.indptr))]
    return M


def match_union(warped: list[sp.csr_matrix], width: int, threshold: float, p: TrackingParams) -> Union:
    """Union of the sessions' footprints ``warped`` (each CSR (K_s, Y*X) on the reference grid, the
    reference session first): sessions are taken in order and each is assigned one-to-one to the union
    built so far; a cell matched at >= ``threshold`` joins that union cell, any other starts a new one."""
    S = len(warped)
    first = _normalise_rows(warped[0])
    members = [[k] + [-1] * (S - 1) for k in range(first.shape[0])]
    scores = [[np.nan] * S for _ in range(first.shape[0])]
    sums = [first[k] for k in range(first.shape[0])]
    for s in range(1, S):
        cur = _normalise_rows(warped[s])
        union = _normalise_rows(sp.vstack(sums, format="csr")) if sums else sp.csr_matrix((0, cur.shape[1]))
        score, _, _ = pair_scores(union, cur, width, p) if union.shape[0] and cur.shape[0] else (
            np.zeros((union.shape[0], cur.shape[0])), None, None)
        taken = set()
        for u, k, sc in assign(score, threshold):
            members[u][s] = k
            scores[u][s] = sc
            sums[u] = sums[u] + cur[k]
            taken.add(k)
        for k in range(cur.shape[0]):
            if k not in taken:
                members.append([-1] * S)
                members[-1][s] = k
                scores.append([np.nan] * S)
                sums.append(cur[k])
    fp = _normalise_rows(sp.vstack(sums, format="csr")) if sums else sp.csr_matrix((0, first.shape[1]))
    return Union(footprints=sp.csr_matrix(fp, dtype=np.float32), members=np.asarray(members, np.int64).reshape(-1, S),
                 scores=np.asarray(scores, np.float64).reshape(-1, S))


def candidate_scores(warped: list[sp.csr_matrix], width: int, p: TrackingParams) -> np.ndarray:
    """Scores (n,) of every candidate pair (centroids within ``max_distance_px``) between the reference
    session (``warped[0]``) and each other session: the sample :func:`choose_threshold` fits."""
    out = [pair_scores(warped[0], w, width, p)[0].ravel() for w in warped[1:] if warped[0].shape[0] and w.shape[0]]
    s = np.concatenate(out) if out else np.zeros(0)
    return s[np.isfinite(s)]
