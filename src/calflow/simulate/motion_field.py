"""The true motion of a simulated session: displacement fields of a :class:`GroundTruth`.

:func:`true_displacement` at points and :func:`dense_displacement` at every pixel, as ``(dy, dx)``
in px, in world or frame coordinates, with or without the session's static FOV placement. The
sign convention (a displacement moves the content) is in :mod:`calflow.simulate`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from calflow.errors import CalflowInputError
from calflow.simulate.truth import GroundTruth


def _frame_field(truth: GroundTruth, t: int) -> np.ndarray:
    """Generative field on the frame pixel grid, (2, Y, X) float64: frame_t(p) = world(p - D(p)).

    Tensor-product natural cubic spline through the control displacements, plus the rigid
    shift, plus the static FOV placement (if any). Elementwise sums in a fixed order, so the
    result does not depend on threads/blocks.
    """
    by, bx = truth._basis_y, truth._basis_x  # (Y, gy), (X, gx)
    static = truth._static_field
    out = np.empty((2, by.shape[0], bx.shape[0]))
    for c in range(2):
        rows = by @ truth.nonrigid_grid[t, :, :, c]  # (Y, gx)
        acc = np.full((by.shape[0], bx.shape[0]), truth.rigid_shifts[t, c])
        if static is not None:
            acc += static[c]
        for j in range(bx.shape[1]):
            acc += rows[:, j : j + 1] * bx[None, :, j]
        out[c] = acc
    return out


def _field_at(truth: GroundTruth, t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Generative (frame-coordinate) displacement of frames ``t`` (n_t,) at their own points
    (n_t, n, 2) -> (n_t, n, 2), in px (vectorised over frames: the report evaluates every frame)."""
    wy = truth._spline_y(pts[..., 0])  # (n_t, n, gy)
    wx = truth._spline_x(pts[..., 1])  # (n_t, n, gx)
    nr = np.einsum("tni,tijc,tnj->tnc", wy, truth.nonrigid_grid[t], wx)
    if truth.has_static:
        static = truth.static_displacement(pts.reshape(-1, 2)).reshape(pts.shape)
        return truth.rigid_shifts[t][:, None, :] + static + nr
    return truth.rigid_shifts[t][:, None, :] + nr


def _as_frames(truth: GroundTruth, frames: int | Sequence[int] | np.ndarray | slice) -> np.ndarray:
    if isinstance(frames, slice):
        return np.arange(truth.n_frames)[frames]
    idx = np.atleast_1d(np.asarray(frames, dtype=np.int64))
    if idx.size and (idx.min() < 0 or idx.max() >= truth.n_frames):
        raise CalflowInputError(f"frame index out of range 0..{truth.n_frames - 1}", fix="pass valid frames")
    return idx


def true_displacement(
    truth: GroundTruth,
    frames: int | Sequence[int] | np.ndarray | slice,
    points_yx: np.ndarray | Sequence[Sequence[float]],
    *,
    coords: str = "world",
    static: bool = True,
) -> np.ndarray:
    """Total (rigid + non-rigid) displacement (n_frames, n_points, 2) as (dy, dx) in px.

    ``coords="world"`` (default): ``points_yx`` are world/template positions q and the result D
    says where they appear: at ``q + D`` in frame t (exact fixed-point inverse of the
    generative field; this is what a motion-corrector estimates in template coordinates).
    ``coords="frame"``: ``points_yx`` are frame pixel positions p and D is the generative
    field: ``frame_t(p) = world(p - D)``. Both agree to O(|grad D| * |D|) (~0.01 px by default).

    ``static=True`` includes the session's static FOV placement (``fov_offset``,
    ``fov_rotation_deg``): the displacement relative to the reference FOV. ``static=False``
    leaves it out: the within-session motion only, what a corrector registering the session to
    its own mean image estimates (the same as without a re-placement).
    """
    if not static and truth.has_static:
        truth = dataclasses.replace(truth, fov_offset=None, fov_rotation_deg=0.0)
    pts = np.asarray(points_yx, dtype=np.float64).reshape(-1, 2)
    idx = _as_frames(truth, frames)
    if coords not in ("world", "frame"):
        raise CalflowInputError(f"coords={coords!r} is not 'world' or 'frame'", fix="use coords='world'")
    out = np.empty((idx.size, pts.shape[0], 2))
    block = max(1, (1 << 20) // max(1, pts.shape[0]))  # frames per block: bounded memory for many points
    for a in range(0, idx.size, block):
        t = idx[a : a + block]
        d = _field_at(truth, t, np.broadcast_to(pts, (t.size, *pts.shape)))
        if coords == "world":  # fixed point of q + D = p, frame by frame (a frame stops when it converged)
            active = np.arange(t.size)
            for _ in range(50):
                d_new = _field_at(truth, t[active], pts[None] + d[active])
                done = np.abs(d_new - d[active]).max(axis=(1, 2), initial=0) < 1e-10
                d[active] = d_new
                active = active[~done]
                if not active.size:
                    break
        out[a : a + block] = d
    return out


def dense_displacement(truth: GroundTruth, t: int, *, coords: str = "world", static: bool = True) -> np.ndarray:
    """Displacement field (Y, X, 2) of frame t at every pixel, (dy, dx) in px.

    ``coords="world"``: at world pixel q, the content of q appears at ``q + D[q]`` in frame t, so
    ``corrected = map_coordinates(frame_t, grid + D)`` undoes the motion. ``coords="frame"``: the
    generative field, ``frame_t(p) = world(p - D[p])``. ``static``: see :func:`true_displacement`.
    """
    if not static and truth.has_static:
        truth = dataclasses.replace(truth, fov_offset=None, fov_rotation_deg=0.0)
    Y, X = truth.params.height, truth.params.width
    if coords == "frame":
        return np.moveaxis(_frame_field(truth, int(_as_frames(truth, t)[0])), 0, -1)
    yy, xx = np.mgrid[0:Y, 0:X]
    pts = np.column_stack([yy.ravel(), xx.ravel()]).astype(np.float64)
    return true_displacement(truth, int(t), pts, coords=coords)[0].reshape(Y, X, 2)


def fov_footprints(truth: GroundTruth) -> np.ndarray:
    """Footprints (K, Y, X) float32 as they appear in this session's frames before within-session
    motion (the static FOV placement applied: ``fov(p) = world(p - S(p))``); what a motion-corrected
    session's segmentation sees. Absent cells (turnover, ``truth.present``) are all zeros."""
    fps = truth.footprints
    if truth.present is not None:
        fps[~np.asarray(truth.present, bool)] = 0
    static = truth._static_field
    if static is None:
        return fps
    from scipy import ndimage

    Y, X = truth.params.height, truth.params.width
    coords = np.mgrid[0:Y, 0:X].astype(np.float64) - static
    return np.stack([ndimage.map_coordinates(f, coords, order=1, mode="constant", output=np.float32) for f in fps])
