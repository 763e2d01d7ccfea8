"""The patch grid of piecewise-rigid registration and its shift field: :class:`PatchGrid` (square
patches, uniform stride, centred in the frame; centres in px), the interpolation matrices that
upsample a (patch_y, patch_x) shift grid to a dense (y, x) field (cubic or linear, exact at the
patch centres, constant outside them), and the 3 x 3-median replacement of outlying patch shifts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from calflow.errors import CalflowInputError


@dataclass(frozen=True)
class PatchGrid:
    """Regular grid of square patches: uniform stride, centred in the frame.

    ``centres_y`` / ``centres_x`` are patch-centre coordinates in px ((patch-1)/2 past the start).
    """

    size: int
    stride: int
    offset_y: int
    offset_x: int
    n_y: int
    n_x: int

    @classmethod
    def make(cls, h: int, w: int, size: int, overlap: int) -> PatchGrid:
        if size > min(h, w):
            raise CalflowInputError(
                f"motion.patch_size = {size} is larger than the frame ({h} x {w} px)",
                fix="lower motion.patch_size or set motion.piecewise: false",
            )
        stride = size - overlap
        n_y = (h - size) // stride + 1
        n_x = (w - size) // stride + 1
        off_y = (h - ((n_y - 1) * stride + size)) // 2
        off_x = (w - ((n_x - 1) * stride + size)) // 2
        return cls(size, stride, off_y, off_x, n_y, n_x)

    @property
    def centres_y(self) -> np.ndarray:
        return self.offset_y + np.arange(self.n_y) * self.stride + (self.size - 1) / 2

    @property
    def centres_x(self) -> np.ndarray:
        return self.offset_x + np.arange(self.n_x) * self.stride + (self.size - 1) / 2

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w) -> (B, n_y, n_x, size, size) view of the patches."""
        span_y = (self.n_y - 1) * self.stride + self.size
        span_x = (self.n_x - 1) * self.stride + self.size
        x = x[..., self.offset_y : self.offset_y + span_y, self.offset_x : self.offset_x + span_x]
        return x.unfold(-2, self.size, self.stride).unfold(-2, self.size, self.stride)


def _interp_matrix(n_out: int, centres: np.ndarray, kind: str) -> torch.Tensor:
    """(n_out, n_centres) weights interpolating values at uniformly spaced ``centres`` onto pixels.

    Linear or cubic-convolution (Catmull-Rom, a = -0.5) weights; exact at the centres, constant
    (edge value) outside the first/last centre. Rows sum to 1.
    """
    n = len(centres)
    mat = np.zeros((n_out, n), dtype=np.float64)
    if n == 1:
        mat[:, 0] = 1.0
        return torch.from_numpy(mat.astype(np.float32))
    step = centres[1] - centres[0]
    pos = np.clip((np.arange(n_out) - centres[0]) / step, 0, n - 1)
    i0 = np.minimum(np.floor(pos).astype(int), n - 2)
    f = pos - i0
    rows = np.arange(n_out)
    if kind == "linear":
        np.add.at(mat, (rows, i0), 1 - f)
        np.add.at(mat, (rows, i0 + 1), f)
    else:
        a = -0.5
        weights = (
            ((a * (f + 1) - 5 * a) * (f + 1) + 8 * a) * (f + 1) - 4 * a,
            ((a + 2) * f - (a + 3)) * f * f + 1,
            ((a + 2) * (1 - f) - (a + 3)) * (1 - f) ** 2 + 1,
            ((a * (2 - f) - 5 * a) * (2 - f) + 8 * a) * (2 - f) - 4 * a,
        )
        for k, wk in zip((-1, 0, 1, 2), weights, strict=True):
            np.add.at(mat, (rows, np.clip(i0 + k, 0, n - 1)), wk)
    return torch.from_numpy(mat.astype(np.float32))


def _replace_outliers(resid: torch.Tensor, limit: float) -> torch.Tensor:
    """Patches whose shift (B, n_y, n_x, 2) differs by more than ``limit`` px from the median of
    their 3x3 neighbourhood take that median (tissue does not tear between patch centres)."""
    b, ny, nx, _ = resid.shape
    r = resid.permute(0, 3, 1, 2).reshape(b * 2, 1, ny, nx)
    nb = F.unfold(F.pad(r, (1, 1, 1, 1), mode="replicate"), 3)  # (2B, 9, ny * nx)
    med = nb.median(dim=1).values.reshape(b, 2, ny, nx).permute(0, 2, 3, 1)
    bad = ((resid - med).norm(dim=-1, keepdim=True) > limit)
    return torch.where(bad, med, resid)
