"""Segmentation metrics: instance matching (IoU + Hungarian, Neurofinder centroids) and pixel IoU.

Masks are handled as a sparse boolean ``(K, Y*X)`` CSR matrix (:func:`as_masks`), so overlapping
annotations (Neurofinder ROIs may overlap) are kept, and IoU between thousands of cells is one
sparse product.

* :func:`match_iou`: one-to-one matching by the Hungarian algorithm
  (:func:`scipy.optimize.linear_sum_assignment`) maximising the summed IoU; a pair counts as a
  true positive when its IoU >= ``threshold`` (0.5). With IoU >= 0.5 a mask can overlap at most
  one other that well, so the matching is unique and the Hungarian step only makes it explicit.
* :func:`match_centroids`: the Neurofinder criterion: Hungarian matching of centroids on their
  Euclidean distance; matched pairs closer than ``max_distance`` px (default 5, as neurofinder's
  evaluation) are true positives.
* :func:`pixel_iou`: foreground IoU of two binary images (semantic segmentation, e.g. EM).

All return plain dicts of floats/ints, ready for JSON.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment

from calflow.errors import CalflowInputError

log = logging.getLogger("calflow.metrics")


def labels_to_masks(labels: np.ndarray) -> sp.csr_matrix:
    """A (Y, X) integer label image (0 = background) -> boolean CSR (K, Y*X), labels in ascending order."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label image must be 2-d, got shape {labels.shape}")
    flat = labels.ravel()
    pix = np.flatnonzero(flat)
    ids, rows = np.unique(flat[pix], return_inverse=True)
    data = np.ones(pix.size, dtype=bool)
    return sp.csr_matrix((data, (rows, pix)), shape=(ids.size, flat.size))


def as_masks(masks: Any, shape: tuple[int, int] | None = None) -> sp.csr_matrix:
    """Accept a label image (Y, X), a stack (K, Y, X) or a sparse (K, Y*X) matrix; return boolean CSR."""
    if sp.issparse(masks):
        out = sp.csr_matrix(masks, dtype=bool)
        out.eliminate_zeros()
        return out
    arr = np.asarray(masks)
    if arr.ndim == 2 and (shape is None or arr.shape == tuple(shape)):
        return labels_to_masks(arr)
    if arr.ndim == 3:
        return sp.csr_matrix(arr.reshape(arr.shape[0], -1) > 0)
    raise ValueError(f"cannot interpret masks of shape {arr.shape}")


def centroids(masks: sp.csr_matrix, shape: tuple[int, int]) -> np.ndarray:
    """(K, 2) centroids (y, x) of boolean masks over an image of ``shape``."""
    masks = sp.csr_matrix(masks, dtype=np.float64)
    yy, xx = np.divmod(np.arange(shape[0] * shape[1]), shape[1])
    n = np.asarray(masks.sum(axis=1)).ravel()
    n[n == 0] = 1
    return np.stack([masks @ yy / n, masks @ xx / n], axis=1)


def iou_matrix(a: sp.csr_matrix, b: sp.csr_matrix) -> np.ndarray:
    """Dense (Ka, Kb) IoU between two sets of boolean masks over the same pixels."""
    a = sp.csr_matrix(a, dtype=np.float64)
    b = sp.csr_matrix(b, dtype=np.float64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"masks cover different images: {a.shape[1]} vs {b.shape[1]} pixels")
    inter = (a @ b.T).toarray()
    na = np.asarray(a.sum(axis=1)).ravel()
    nb = np.asarray(b.sum(axis=1)).ravel()
    union = na[:, None] + nb[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _scores(n_true: int, n_pred: int, tp: int) -> dict[str, float | int]:
    precision = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    recall = tp / n_true if n_true else (1.0 if n_pred == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "n_true": int(n_true), "n_pred": int(n_pred), "n_matched": int(tp)}


def match_iou(true: Any, pred: Any, threshold: float = 0.5, shape: tuple[int, int] | None = None) -> dict:
    """Precision, recall, F1 of ``pred`` against ``true`` at IoU >= ``threshold`` (Hungarian matching).

    Also returns ``mean_iou_matched`` (over true positives) and the matched index pairs.
    """
    a, b = as_masks(true, shape), as_masks(pred, shape)
    iou = iou_matrix(a, b) if a.shape[0] and b.shape[0] else np.zeros((a.shape[0], b.shape[0]))
    rows, cols = linear_sum_assignment(-iou) if iou.size else (np.array([], int), np.array([], int))
    ok = iou[rows, cols] >= threshold
    out = _scores(a.shape[0], b.shape[0], int(ok.sum()))
    out["iou_threshold"] = float(threshold)
    out["mean_iou_matched"] = float(iou[rows[ok], cols[ok]].mean()) if ok.any() else 0.0
    out["pairs"] = [[int(r), int(c)] for r, c in zip(rows[ok], cols[ok], strict=True)]
    return out


def match_centroids(true_yx: np.ndarray, pred_yx: np.ndarray, max_distance: float = 5.0) -> dict:
    """Neurofinder criterion: Hungarian matching on centroid distance, a hit when closer than ``max_distance`` px."""
    t = np.asarray(true_yx, dtype=float).reshape(-1, 2)
    p = np.asarray(pred_yx, dtype=float).reshape(-1, 2)
    if len(t) and len(p):
        d = np.linalg.norm(t[:, None, :] - p[None, :, :], axis=-1)
        rows, cols = linear_sum_assignment(d)
        tp = int((d[rows, cols] < max_distance).sum())
    else:
        tp = 0
    out = _scores(len(t), len(p), tp)
    out["max_distance"] = float(max_distance)
    return out


def evaluate_instances(true: Any, pred: Any, shape: tuple[int, int], *, iou_threshold: float = 0.5,
                       max_distance: float = 5.0) -> dict:
    """Both criteria at once: ``{"iou": match_iou(...), "centroid": match_centroids(...)}`` (pairs dropped)."""
    a, b = as_masks(true, shape), as_masks(pred, shape)
    iou = match_iou(a, b, iou_threshold)
    iou.pop("pairs")
    return {"iou": iou, "centroid": match_centroids(centroids(a, shape), centroids(b, shape), max_distance)}


def pixel_iou(true: np.ndarray, pred: np.ndarray) -> float:
    """IoU of two binary images (foreground = nonzero); 1.0 when both are empty."""
    t, p = np.asarray(true) > 0, np.asarray(pred) > 0
    union = np.logical_or(t, p).sum()
    return float(np.logical_and(t, p).sum() / union) if union else 1.0


def restrict(masks: sp.csr_matrix, shape: tuple[int, int], region: tuple[slice, slice]) -> sp.csr_matrix:
    """Keep the masks whose centroid lies in ``region`` (a (y-slice, x-slice) of the image)."""
    c = centroids(masks, shape)
    ys, xs = region
    y0, y1, _ = ys.indices(shape[0])
    x0, x1, _ = xs.indices(shape[1])
    keep = (c[:, 0] >= y0) & (c[:, 0] < y1) & (c[:, 1] >= x0) & (c[:, 1] < x1)
    return sp.csr_matrix(masks)[np.flatnonzero(keep)]


def read_neurofinder_regions(path: str | Path, shape: tuple[int, int]) -> sp.csr_matrix:
    """Neurofinder ``regions.json`` (list of {"coordinates": [[y, x], ...]}) -> boolean CSR (K, Y*X).

    Pixels outside the (Y, X) frame are dropped, and regions left empty with them (a crop of a
    larger annotation reads this way); a warning names the file and how many were dropped."""
    path = Path(path)
    try:
        regions = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CalflowInputError(f"cannot read Neurofinder regions ({err})", file=path,
                                fix='give a JSON list of {"coordinates": [[y, x], ...]} per cell') from err
    if isinstance(regions, dict):
        regions = regions.get("regions", [])
    rows, cols = [], []
    k = clipped = dropped = 0
    for region in regions:
        coords = np.asarray(region.get("coordinates", []), dtype=np.int64).reshape(-1, 2)
        ok = (coords[:, 0] >= 0) & (coords[:, 0] < shape[0]) & (coords[:, 1] >= 0) & (coords[:, 1] < shape[1])
        outside = len(coords) and not ok.all()
        clipped += int(outside)
        coords = coords[ok]
        if not len(coords):
            dropped += int(outside)
            continue
        pix = np.unique(coords[:, 0] * shape[1] + coords[:, 1])
        rows.append(np.full(pix.size, k))
        cols.append(pix)
        k += 1
    if clipped:
        log.warning("%s: %d of %d regions reach outside the %d x %d frame; their outside pixels were dropped "
                    "(%d regions lay entirely outside and were left out). Check that the annotation belongs to "
                    "this movie", path, clipped, len(regions), shape[0], shape[1], dropped)
    if k == 0:
        return sp.csr_matrix((0, shape[0] * shape[1]), dtype=bool)
    r, c = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(r.size, bool), (r, c)), shape=(k, shape[0] * shape[1]))


def read_masks(path: str | Path, shape: tuple[int, int]) -> sp.csr_matrix:
    """Read user annotations: a label image (.tif/.tiff/.png/.npy, 0 = background) or Neurofinder regions.json."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return read_neurofinder_regions(path, shape)
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            labels = tifffile.imread(path)
        elif suffix == ".npy":
            labels = np.load(path)
        elif suffix == ".png":
            import skimage.io

            labels = skimage.io.imread(path)
            if labels.ndim == 3:
                labels = labels[..., 0]
        else:
            raise CalflowInputError(f"unknown mask format '{suffix}'", file=path,
                                    fix="use a label image (.tif/.png/.npy) or a Neurofinder regions.json")
    except CalflowInputError:
        raise
    except Exception as err:  # noqa: BLE001 - image readers raise many types for damaged files
        raise CalflowInputError(f"cannot read masks ({type(err).__name__}: {err})", file=path,
                                fix="give a label image (0 = background, 1..K = cells) of the movie's frame size") from err
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise CalflowInputError(f"mask image has shape {labels.shape}, the movie's frames are {tuple(shape)}",
                                file=path, fix="annotate on the motion-corrected field of view")
    return labels_to_masks(labels.astype(np.int64))


def masks_to_labels(masks: sp.csr_matrix, shape: tuple[int, int]) -> np.ndarray:
    """Boolean CSR (K, Y*X) -> (Y, X) int32 label image (k + 1; later masks win where they overlap)."""
    out = np.zeros(shape[0] * shape[1], dtype=np.int32)
    m = sp.csr_matrix(masks)
    for k in range(m.shape[0]):
        out[m.indices[m.indptr[k]:m.indptr[k + 1]]] = k + 1
    return out.reshape(shape)
