"""Register one session's summary image to the reference session's: rigid, then affine, then piecewise.

Convention: a *coordinate map* is a (2, Y, X) float64 array of (y, x) positions: ``to_session[:, p]`` is
where the reference pixel p appears in the session's frames, ``to_reference[:, q]`` where the session
pixel q lies in the reference's. An image of the session resampled onto the reference grid is
``map_coordinates(img, to_session)`` (:func:`warp_to`). Pixel centres are at integers.

The rigid step is :func:`skimage.registration.phase_cross_correlation` of the whole (high-passed) image;
the affine step fits :class:`skimage.transform.AffineTransform` to the shifts of overlapping patches
(phase correlation each, after the rigid step), rejecting outliers with :func:`skimage.measure.ransac`;
the piecewise step adds a smooth thin-plate-spline residual (:class:`scipy.interpolate.RBFInterpolator`)
through the patch displacements that the affine map leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.interpolate import RBFInterpolator

from calflow.tracking.params import TrackingParams


@dataclass(frozen=True)
class Registration:
    """The transform of one session: coordinate maps (2, Y, X) both ways (module doc), the reference
    and session points (n, 2) (y, x) px it was fitted to, the rigid shift (2,) px and the affine
    matrix (3, 3) (homogeneous (y, x, 1), reference -> session) and which transform was used."""

    to_session: np.ndarray
    to_reference: np.ndarray
    ref_points: np.ndarray
    session_points: np.ndarray
    rigid_shift: np.ndarray
    affine: np.ndarray
    kind: str


def prepare(image: np.ndarray, highpass_px: float) -> np.ndarray:
    """High-passed, robustly normalised copy (Y, X) float64 of a summary image: the image minus its
    gaussian blur (sigma ``highpass_px``), divided by its median absolute deviation; NaN -> 0."""
    img = np.nan_to_num(np.asarray(image, np.float64))
    hp = img - ndimage.gaussian_filter(img, highpass_px, mode="reflect")
    hp -= np.median(hp)
    mad = np.median(np.abs(hp))
    return hp / mad if mad > 0 else hp


def _phase_shift(ref: np.ndarray, mov: np.ndarray) -> np.ndarray:
    """(dy, dx) such that ``mov(p - d) ~ ref(p)`` (skimage's convention), 1/10 px."""
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(ref, mov, upsample_factor=10, normalization=None)
    return np.asarray(shift, np.float64)


def _grid(shape: tuple[int, int]) -> np.ndarray:
    return np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)


def _patch_points(ref: np.ndarray, mov_r: np.ndarray, p: TrackingParams) -> tuple[np.ndarray, np.ndarray]:
    """Patch centres (n, 2) of the reference and their shifts (n, 2) in the rigidly aligned session
    image (``mov_r(c - s) ~ ref(c)``), for patches with texture and a shift within a patch's quarter."""
    Y, X = ref.shape
    size = min(p.patch_size, Y, X)
    step = max(size // 2, 1)
    centres, shifts = [], []
    win = np.outer(np.hanning(size), np.hanning(size))
    for y0 in range(0, Y - size + 1, step):
        for x0 in range(0, X - size + 1, step):
            a = ref[y0 : y0 + size, x0 : x0 + size]
            b = mov_r[y0 : y0 + size, x0 : x0 + size]
            if a.std() < 1e-6 or b.std() < 1e-6:
                continue
            s = _phase_shift(a * win, b * win)
            if np.abs(s).max() <= size / 4:
                centres.append((y0 + (size - 1) / 2, x0 + (size - 1) / 2))
                shifts.append(s)
    return np.asarray(centres, np.float64).reshape(-1, 2), np.asarray(shifts, np.float64).reshape(-1, 2)


def _affine_fit(src: np.ndarray, dst: np.ndarray, seed: int) -> np.ndarray:
    """Affine (3, 3) mapping (y, x) src -> dst, robust to outlier patches (RANSAC, 1 px residual)."""
    from skimage.measure import ransac
    from skimage.transform import AffineTransform

    # skimage transforms work on (x, y): swap in and out
    model, inliers = ransac((src[:, ::-1], dst[:, ::-1]), AffineTransform, min_samples=3, residual_threshold=1.0,
                            max_trials=200, rng=seed)
    if model is None or inliers is None or inliers.sum() < 3:
        raise ValueError("affine fit failed")
    m = model.params  # x' = m @ (x, y, 1)
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float64)
    return swap @ m @ swap


def _apply_affine(A: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ A[:2, :2].T + A[:2, 2]


def _coordinate_map(shape: tuple[int, int], A: np.ndarray, src: np.ndarray | None, resid: np.ndarray | None,
                    smoothing: float) -> np.ndarray:
    """(2, Y, X) map p -> A p + residual(p) (thin-plate spline through ``resid`` at ``src``)."""
    g = _grid(shape).reshape(2, -1).T
    out = _apply_affine(A, g)
    if src is not None and resid is not None and len(src) >= 4:
        out += RBFInterpolator(src, resid, kernel="thin_plate_spline", smoothing=smoothing, degree=1)(g)
    return out.T.reshape(2, *shape)


def register(reference: np.ndarray, image: np.ndarray, params: TrackingParams | None = None, *,
             seed: int = 0) -> Registration:
    """Register a session's summary ``image`` (Y, X) to the ``reference`` one (same shape) -> Registration.

    Falls back to the previous step (affine -> rigid) when too few patches give a shift (< 3 for the
    affine fit, < 4 for the piecewise residual). Deterministic in ``seed`` (RANSAC).
    """
    p = params or TrackingParams()
    ref = prepare(reference, p.highpass_px)
    mov = prepare(image, p.highpass_px)
    shape = ref.shape
    rigid = _phase_shift(ref, mov)
    if np.abs(rigid).max() > p.max_shift_px:
        rigid = np.zeros(2)  # implausible: an empty or unrelated image; say so through the residual
    A = np.eye(3)
    A[:2, 2] = -rigid  # reference p appears at session p - rigid
    src = dst = np.zeros((0, 2))
    kind = "rigid"
    resid = None
    if p.transform != "rigid":
        mov_r = ndimage.shift(mov, rigid, order=1, mode="constant")
        src, s = _patch_points(ref, mov_r, p)
        dst = src - s - rigid
        try:
            A = _affine_fit(src, dst, seed)
            kind = "affine"
        except ValueError:
            pass
        if p.transform == "piecewise" and kind == "affine" and len(src) >= 4:
            resid = dst - _apply_affine(A, src)
            keep = np.linalg.norm(resid, axis=1) <= 2.0  # RANSAC outliers stay out of the residual too
            src, dst, resid = src[keep], dst[keep], resid[keep]
            kind = "piecewise" if len(src) >= 4 else kind
    smoothing = float(len(src))  # thin-plate spline smoothing ~ one px^2 per point
    to_session = _coordinate_map(shape, A, src if kind == "piecewise" else None, resid, smoothing)
    Ainv = np.linalg.inv(A)
    inv_resid = None
    if kind == "piecewise":
        inv_resid = src - _apply_affine(Ainv, dst)
    to_reference = _coordinate_map(shape, Ainv, dst if kind == "piecewise" else None, inv_resid, smoothing)
    return Registration(to_session=to_session, to_reference=to_reference, ref_points=src, session_points=dst,
                        rigid_shift=rigid, affine=A, kind=kind)


def identity(shape: tuple[int, int]) -> Registration:
    """The reference session's own (identity) registration."""
    g = _grid(shape)
    return Registration(to_session=g, to_reference=g.copy(), ref_points=np.zeros((0, 2)),
                        session_points=np.zeros((0, 2)), rigid_shift=np.zeros(2), affine=np.eye(3), kind="identity")


def warp_to(image: np.ndarray, coordinate_map: np.ndarray, order: int = 1) -> np.ndarray:
    """Resample ``image`` (Y, X) at ``coordinate_map`` (2, Y', X') -> (Y', X') float32 (0 outside)."""
    return ndimage.map_coordinates(np.asarray(image, np.float32), coordinate_map, order=order, mode="constant",
                                   cval=0.0, output=np.float32)


def map_points(coordinate_map: np.ndarray, points_yx: np.ndarray) -> np.ndarray:
    """Points (n, 2) (y, x) through a coordinate map (bilinear between pixels) -> (n, 2)."""
    pts = np.asarray(points_yx, np.float64).reshape(-1, 2).T
    return np.stack([ndimage.map_coordinates(coordinate_map[i], pts, order=1, mode="nearest") for i in (0, 1)], 1)
