"""The ground truth of a simulated session: :class:`GroundTruth`, everything but the movie.

Shapes, dtypes and units are on its fields (K cells, T frames, (Y, X) FOV; positions in world
coordinates, pixels, ``(y, x)``; fluorescence in F units). Its derived views live here too: dense
footprints, the label image, the stimulation log, the static FOV placement and the cubic-spline
bases of the non-rigid field (used by :mod:`calflow.simulate.motion_field`). Reading and writing
``ground_truth.npz``: :mod:`calflow.simulate.files`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

from calflow.simulate.params import SimParams


@dataclass(eq=False)
class GroundTruth:
    """Everything about a simulated session except the movie (small: O(K*T + Y*X)).

    Shapes: K cells, T frames, (Y, X) FOV, R background rank, (gy, gx) control grid,
    N targets, P patterns. Fluorescence in F units (see :class:`SimParams`).
    """

    params: SimParams
    seed: int
    # cells (world coordinates, pixels)
    centers: np.ndarray  # (K, 2) float64 (y, x)
    radii: np.ndarray  # (K,) float64, geometric mean of the semi-axes
    semi_axes: np.ndarray  # (K, 2) float64 (major, minor) in px
    angles: np.ndarray  # (K,) float64, major-axis angle in rad from the +y axis towards +x
    overlap_partner: np.ndarray  # (K,) int64, the cell it was placed to overlap, -1 none
    f0: np.ndarray  # (K,) float32 resting fluorescence, F units
    boxes: list[tuple[int, int, np.ndarray]]  # per cell (y0, x0, float32 patch), unit max
    # activity
    rate_hz: np.ndarray  # (K, T) float32 firing rate used to draw the spikes
    spikes: np.ndarray  # (K, T) float32 spike counts per frame
    calcium: np.ndarray  # (K, T) float32, F units
    g: np.ndarray  # (K, 2) float64 AR(2) coefficients (g1, g2)
    tau_rise_s: np.ndarray  # (K,)
    tau_decay_s: np.ndarray  # (K,)
    spike_amplitude: np.ndarray  # (K,) peak transient of one isolated spike, F units
    spike_weight: np.ndarray  # (K,) AR input per spike: c[t] = g1 c[t-1] + g2 c[t-2] + w s[t]
    population: np.ndarray  # (T,) float32 shared rate modulation factor (mean 1)
    # neuropil / background, maps on the padded world canvas (Y + 2 pad, X + 2 pad)
    pad: int
    neuropil_map: np.ndarray  # (Y+2p, X+2p) float32, mean 1 over the FOV
    neuropil_trace: np.ndarray  # (T,) float32, F units
    bg_maps: np.ndarray  # (R, Y+2p, X+2p) float32, mean 1 over the FOV
    bg_traces: np.ndarray  # (R, T) float32, F units
    # motion
    rigid_shifts: np.ndarray  # (T, 2) float64 (dy, dx) px
    nonrigid_grid: np.ndarray  # (T, gy, gx, 2) float64 (dy, dx) px at the control points
    control_y: np.ndarray  # (gy,) float64 control point rows, px
    control_x: np.ndarray  # (gx,) float64 control point columns, px
    # stimulation / connectivity
    W: np.ndarray  # (K, K) float64, W[source, target]
    target_cells: np.ndarray  # (N,) int64: target id j is cell target_cells[j]
    patterns: np.ndarray  # (P, 2) int64 target ids, -1 padding for single-target patterns
    trial_start: np.ndarray  # (n_trials,) int64 first stimulated frame
    trial_stop: np.ndarray  # (n_trials,) int64 one past the last stimulated frame
    trial_pattern: np.ndarray  # (n_trials,) int64 index into patterns
    trial_block: np.ndarray  # (n_trials,) int64 block number
    stim: np.ndarray  # (T, N) bool, stim[t, j] = target j stimulated in frame t
    delay_frames: int = 0
    anatomy_seed: int | None = None  # seed of cells, targets, pairs, W and maps (None = seed)
    # per-session nuisance (None = none: a ground truth saved before these existed)
    cell_scale: np.ndarray | None = None  # (T,) float32: cells render as cell_scale[t] * (f0 + calcium[t])
    bleach: np.ndarray | None = None  # (T,) float32 exp(-t / (fps * bleach_tau_s)); in cell_scale and neuropil_trace
    artifact: np.ndarray | None = None  # (T,) float32 F units added to every pixel of frame t (stim artefact)
    stim_drive: np.ndarray | None = None  # (K, N) float64 Hz of extra rate of cell k while target j is stimulated
    fov_offset: np.ndarray | None = None  # (2,) float64 static (dy, dx) px of the session's FOV
    fov_rotation_deg: float = 0.0  # static rotation of the content about the FOV centre, degrees
    present: np.ndarray | None = None  # (K,) bool: cell k gives light in this session (None = all; turnover)

    # -- derived -------------------------------------------------------------------------

    @property
    def n_cells(self) -> int:
        return int(self.centers.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.params.n_frames)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Movie shape (T, Y, X)."""
        return (self.params.n_frames, self.params.height, self.params.width)

    @property
    def fps(self) -> float:
        return float(self.params.fps)

    @property
    def w_gain(self) -> float:
        return float(self.params.w_gain)

    @property
    def footprints(self) -> np.ndarray:
        """Dense footprints (K, Y, X) float32, unit max (allocates K*Y*X*4 bytes)."""
        out = np.zeros((self.n_cells, self.params.height, self.params.width), np.float32)
        for k, (y0, x0, box) in enumerate(self.boxes):
            out[k, y0 : y0 + box.shape[0], x0 : x0 + box.shape[1]] = box
        return out

    def footprint(self, k: int) -> np.ndarray:
        """Dense footprint of cell k, (Y, X) float32, unit max."""
        out = np.zeros((self.params.height, self.params.width), np.float32)
        y0, x0, box = self.boxes[k]
        out[y0 : y0 + box.shape[0], x0 : x0 + box.shape[1]] = box
        return out

    @property
    def neuropil_spatial(self) -> np.ndarray:
        """Neuropil map on the FOV, (Y, X) float32 (mean 1)."""
        p = self.pad
        return self.neuropil_map[p : p + self.params.height, p : p + self.params.width]

    @property
    def background_spatial(self) -> np.ndarray:
        """Background maps on the FOV, (R, Y, X) float32 (mean 1 each)."""
        p = self.pad
        return self.bg_maps[:, p : p + self.params.height, p : p + self.params.width]

    def masks(self) -> np.ndarray:
        """Label image (Y, X) uint16: k+1 where cell k's footprint >= 0.5 (holes filled).

        Where several cells qualify, the one contributing most resting light
        (``f0[k] * footprint_k``) wins; 0 = no cell.
        """
        Y, X = self.params.height, self.params.width
        labels = np.zeros((Y, X), np.uint16)
        best = np.zeros((Y, X), np.float32)
        for k, (y0, x0, box) in enumerate(self.boxes):
            if self.present is not None and not self.present[k]:
                continue  # absent in this session (turnover): not in the label image
            region = ndimage.binary_fill_holes(box >= 0.5)
            value = np.where(region, np.maximum(box, 1e-6) * self.f0[k], 0).astype(np.float32)
            sl = (slice(y0, y0 + box.shape[0]), slice(x0, x0 + box.shape[1]))
            win = value > best[sl]
            labels[sl][win] = k + 1
            best[sl][win] = value[win]
        return labels

    def stim_log(self) -> list[str]:
        """Per frame (T,) the ';'-joined stimulated target ids, '' for none."""
        out = []
        for row in self.stim:
            ids = np.flatnonzero(row)
            out.append(";".join(str(int(i)) for i in ids))
        return out

    @cached_property
    def _spline_y(self) -> CubicSpline:
        return CubicSpline(self.control_y, np.eye(len(self.control_y)), bc_type="natural")

    @cached_property
    def _spline_x(self) -> CubicSpline:
        return CubicSpline(self.control_x, np.eye(len(self.control_x)), bc_type="natural")

    @cached_property
    def _basis_y(self) -> np.ndarray:
        return np.ascontiguousarray(self._spline_y(np.arange(self.params.height, dtype=np.float64)))

    @cached_property
    def _basis_x(self) -> np.ndarray:
        return np.ascontiguousarray(self._spline_x(np.arange(self.params.width, dtype=np.float64)))

    @property
    def has_static(self) -> bool:
        """True if the session's FOV is re-placed (``fov_offset`` / ``fov_rotation_deg``)."""
        return bool((self.fov_offset is not None and np.any(self.fov_offset)) or self.fov_rotation_deg)

    @property
    def has_motion(self) -> bool:
        """True if rendering warps the world: motion or a static FOV re-placement."""
        return bool(np.any(self.rigid_shifts) or np.any(self.nonrigid_grid) or self.has_static)

    def fov_transform(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(R, c, o)`` of the static FOV placement: world point q appears at ``c + R (q - c) + o``.

        R (2, 2) rotates (y, x) by ``fov_rotation_deg`` from +y towards +x, c the FOV centre
        ``((Y-1)/2, (X-1)/2)``, o = ``fov_offset``. Within-session motion comes on top of this.
        """
        a = math.radians(self.fov_rotation_deg)
        R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        c = np.array([(self.params.height - 1) / 2, (self.params.width - 1) / 2])
        o = np.zeros(2) if self.fov_offset is None else np.asarray(self.fov_offset, np.float64)
        return R, c, o

    def static_displacement(self, points_yx: np.ndarray) -> np.ndarray:
        """Generative displacement of the static FOV placement at frame points (n, 2) -> (n, 2).

        ``S(p) = (p - c) - R^T (p - c - o)``, so that without motion ``frame(p) = world(p - S(p))``.
        It is added to the within-session field: ``frame_t(p) = world(p - D_t(p) - S(p))``.
        """
        pts = np.asarray(points_yx, np.float64).reshape(-1, 2)
        if not self.has_static:
            return np.zeros_like(pts)
        R, c, o = self.fov_transform()
        return (pts - c) - (pts - c - o) @ R  # row vectors: v @ R = (R^T v^T)^T

    @property
    def fov_centers(self) -> np.ndarray:
        """(K, 2) where each cell centre appears in this session's FOV before within-session motion."""
        R, c, o = self.fov_transform()
        return c + (self.centers - c) @ R.T + o

    @cached_property
    def _static_field(self) -> np.ndarray | None:
        """Static generative field on the frame grid (2, Y, X) float64, None if there is none."""
        if not self.has_static:
            return None
        Y, X = self.params.height, self.params.width
        yy, xx = np.mgrid[0:Y, 0:X].astype(np.float64)
        return np.moveaxis(self.static_displacement(np.column_stack([yy.ravel(), xx.ravel()])).reshape(Y, X, 2), -1, 0)
