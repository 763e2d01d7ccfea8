"""Motion correction: rigid + piecewise-rigid registration in torch, streamed chunk by chunk.

Why hand-written: motion correction is part of calflow's product, not a wrapped dependency. We
need one code path that runs batched on a GPU or on two CPU cores (torch), that streams a zarr
movie of any length with flat memory, that stores its shifts in calflow's sign convention and that
we can test to sub-pixel accuracy against known shifts. Suite2p and NoRMCorre each do parts of
this (and are used as the benchmark reference), but neither streams zarr stores nor shares our
conventions.

Sign convention (shared with :mod:`calflow.simulate`)
----------------------------------------------------
``shift[t] = (dy, dx)`` in pixels is the displacement of the *content*: the template point at
``(y, x)`` appears at ``(y + dy, x + dx)`` in frame ``t``, i.e.
``frame_t(y, x) = template(y - dy, x - dx)``. Correction samples frame ``t`` at ``(y + dy, x + dx)``
(it warps the frame back by ``-shift``). Patch shifts use the same convention, evaluated at the
patch centres.

Algorithm
---------
* Rigid: FFT cross-correlation (``rfft2``) of each mean-subtracted frame with the template. Only
  the template is windowed, with an exactly-zero border wider than the search radius, so the
  circular correlation equals the linear one and nothing fixed in frame coordinates (edges,
  wrap-around) pulls shifts towards 0 (Suite2p-style whitened phase correlation with both images
  tapered biased shifts by up to 40 % on cropped test frames). A Gaussian spectral weight
  (``smooth_sigma`` px) makes the peak Gaussian-shaped, so a 3-point log-parabola fit per axis
  gives the sub-pixel peak in closed form. The search is limited to ``|shift| <= max_shift``.
* Template: ``template_frames`` frames spread evenly over the movie; the initial reference is the
  mean of the 20 frames most correlated with the most "typical" frame (as in Suite2p), then
  ``iterations`` rounds of: register the sample, keep the best-correlated fraction, shift them
  with exact Fourier shifts (re-centred on their mean shift) and average. With ``piecewise`` one
  more round averages all piecewise-corrected frames and warps the result to their mean
  deformation, which sharpens the template where the tissue deforms.
* Piecewise-rigid (NoRMCorre-style): each frame is first shifted by its rounded rigid shift, then
  cut into overlapping ``patch_size`` patches (``overlap`` px shared, one ``unfold`` = one batch of
  patches), each registered against the matching template patch by masked normalised
  cross-correlation (the local energy of the frame under the shifted template window divides the
  correlation, so a bright cell sliding into a small patch cannot win), with the search bounded
  to ``max_deviation`` px around the rigid shift. Ambiguous patches use their correlation map
  averaged with their neighbours. The (patch_y, patch_x) shift grid is upsampled to a dense field
  by separable interpolation matrices (cubic or linear, exact at the patch centres, clamped
  outside them), and each batch is warped with one ``grid_sample`` of the raw frames (a single
  interpolation).
* Streaming: a reader thread decodes the next block and a writer thread compresses the previous
  one while torch registers the current block.
* Everything is float32, batched over frames; the template spectra are computed once per pass.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from calflow.device import resolve_device
from calflow.errors import CalflowInputError
from calflow.io import MovieReader, MovieWriter, atomic_output, write_array
from calflow.params import check_fields, from_section, invalid, param

log = logging.getLogger("calflow.motion")

SHIFT_CONVENTION = (
    "shift = (dy, dx) px is the displacement of the content: the template point (y, x) appears at "
    "(y + dy, x + dx) in the frame, frame_t(y, x) = template(y - dy, x - dx); correction samples "
    "frame_t at (y + dy, x + dx)"
)

_EPS = 1e-10
_RAMP = 4  # px, raised-cosine ramp of the template window
_BATCH_BYTES = 512 * 2**20  # working-set budget of one batch (see effective_batch)


# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MotionParams:
    """Tunables of the ``motion`` config section (pixels unless noted).

    max_shift: largest rigid shift searched, px. piecewise: also estimate patch shifts.
    patch_size / overlap: square patch side and overlap between neighbouring patches, px.
    max_deviation: largest patch shift away from the (rounded) rigid shift, px.
    smooth_sigma: Gaussian smoothing of the rigid cross-correlation, px. highpass_sigma: also
    remove structure larger than this from the rigid correlation, px (0 = off).
    patch_snr_threshold: patches whose correlation peak is less than this many times the next
    best peak use the map averaged with their neighbours (0 = off). patch_outlier_px: patch
    shifts further than this from the median of their 3x3 neighbourhood are replaced by it, px
    (0 = off).
    template_frames: frames sampled (evenly over the movie) to build the template.
    iterations: rigid template-refinement rounds. batch_size: frames per batch, capped
    automatically so a batch's working set stays near 512 MiB (see :func:`effective_batch`). device: auto | cpu | cuda. interpolation: bicubic | bilinear (final warp).
    field_interpolation: cubic | linear (patch grid -> dense field). output_dtype: input | float32.
    num_threads: torch CPU threads (0 = auto: usable cores - 1, the last core runs the overlapped
    zarr reading/compression). seed: fixes any randomness (ties, GPU).
    """

    max_shift: int = param(15, ge=1)
    piecewise: bool = True
    patch_size: int = param(64, ge=8)
    overlap: int = param(32, ge=0)
    max_deviation: int = param(5, ge=0)
    smooth_sigma: float = param(1.15, ge=0.3, le=5, fix="use about 1.15 (px)")
    highpass_sigma: float = param(0.0, ge=0, fix="use 0 (off) or about 10 (px)")
    template_frames: int = param(200, ge=1)
    iterations: int = param(3, ge=0)
    patch_snr_threshold: float = param(1.2, ge=0, fix="use 0 (off) or about 1.2")
    patch_outlier_px: float = param(2.0, ge=0, fix="use 0 (off) or about 2 (px)")
    batch_size: int = param(100, ge=1)
    device: str = param("auto", choices=("auto", "cpu", "cuda"), runtime=True)
    interpolation: str = param("bicubic", choices=("bicubic", "bilinear"))
    field_interpolation: str = param("cubic", choices=("cubic", "linear"))
    output_dtype: str = param("input", choices=("input", "float32"))
    num_threads: int = param(0, ge=0, runtime=True)
    seed: int = param(0, ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "motion")
        if self.overlap >= self.patch_size:
            raise invalid("motion", "overlap", self.overlap, f"must be smaller than patch_size ({self.patch_size})",
                          "use about patch_size / 2")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise invalid("motion", "device", self.device, "CUDA was requested but torch sees no GPU",
                          "use device: auto (GPU when present, CPU otherwise)")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | MotionParams | None) -> MotionParams:
        """Build from the config's ``motion`` mapping; unknown keys raise CalflowInputError."""
        return from_section(cls, "motion", config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def torch_device(self) -> torch.device:
        return resolve_device(self.device, key="motion.device")


# ----------------------------------------------------------------------------------------------
# registration kernels (pure torch, batched)
# ----------------------------------------------------------------------------------------------


def _window(h: int, w: int, zero: int, ramp: int, device: torch.device) -> torch.Tensor:
    """Separable border window (h, w): exactly 0 within ``zero`` px of an edge, a raised-cosine
    ramp over the next ``ramp`` px, 1 inside. Applied to the template only: a zero border at least
    as wide as the search radius makes the circular FFT correlation equal to the linear one, so
    nothing fixed in frame coordinates (edges, wrap-around) biases the shift towards 0."""

    def axis(n: int) -> torch.Tensor:
        d = torch.arange(n, dtype=torch.float32, device=device)
        e = torch.minimum(d, n - 1 - d) - zero
        return torch.where(e <= 0, 0.0, torch.where(e >= ramp, 1.0, 0.5 - 0.5 * torch.cos(math.pi * e / ramp)))

    return axis(h)[:, None] * axis(w)[None, :]


def _gauss_spectrum(h: int, w: int, sigma: float, device: torch.device) -> torch.Tensor:
    """rfft2-shaped (h, w//2+1) transfer function of a Gaussian blur of ``sigma`` px."""
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return torch.exp(-2 * math.pi**2 * sigma**2 * (fy**2 + fx**2)).to(torch.float32)


def _reference_spectrum(t: torch.Tensor, window: torch.Tensor, sigma: float, highpass: float) -> torch.Tensor:
    """conj(FFT(windowed template)) times the band-pass weight (Gaussian smoothing ``sigma`` px,
    optional high-pass removing structure larger than ``highpass`` px). Shape (..., h, w//2+1)."""
    h, w = t.shape[-2:]
    mean = (t * window).sum(dim=(-2, -1), keepdim=True) / window.sum()
    weight = _gauss_spectrum(h, w, sigma, t.device) if sigma > 0 else torch.ones((), device=t.device)
    if highpass > 0:
        weight = weight * (1 - _gauss_spectrum(h, w, highpass, t.device))
    return torch.conj(torch.fft.rfft2((t - mean) * window)) * weight


def _subpixel(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Offset of the peak from the middle sample ``b`` given neighbours a, c (Gaussian 3-point fit).

    Falls back to a parabola where a sample is not positive. Result clamped to [-1, 1].
    """
    tiny = 1e-12
    la, lb, lc = (torch.log(v.clamp_min(tiny)) for v in (a, b, c))
    den_g = la - 2 * lb + lc
    den_p = a - 2 * b + c
    gauss = 0.5 * (la - lc) / torch.where(den_g < 0, den_g, -torch.ones_like(den_g))
    parab = 0.5 * (a - c) / torch.where(den_p < 0, den_p, -torch.ones_like(den_p))
    use_gauss = (a > tiny) & (b > tiny) & (c > tiny) & (den_g < 0)
    off = torch.where(use_gauss, gauss, torch.where(den_p < 0, parab, torch.zeros_like(a)))
    return off.clamp(-1.0, 1.0)


def _window_of(cc: torch.Tensor, radius: int) -> torch.Tensor:
    """Correlation values at shifts -radius-1 .. radius+1 (circular indexing): (..., n, n), n = 2r+3."""
    k = radius + 1  # slicing + cat copies only the window (index_select on big maps is slow on CPU)
    rows = torch.cat((cc[..., -k:, :], cc[..., : k + 1, :]), dim=-2)
    return torch.cat((rows[..., -k:], rows[..., : k + 1]), dim=-1)


def _peak_in_window(win: torch.Tensor, distinctness: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Sub-pixel peak of windows from :func:`_window_of`.

    Returns (shift (..., 2) float32 (dy, dx), peak value (...), distinctness (...)): the peak
    over the largest value more than 2 px away from it (Suite2p's SNR; ~1 = ambiguous), or None
    when not ``distinctness``.
    """
    n = win.shape[-1]
    r = (n - 3) // 2
    inner = win[..., 1:-1, 1:-1].flatten(-2)
    idx = inner.argmax(dim=-1)
    py = idx // (2 * r + 1)
    px = idx % (2 * r + 1)
    wflat = win.flatten(-2)

    def at(dy: int, dx: int) -> torch.Tensor:
        return wflat.gather(-1, ((py + 1 + dy) * n + (px + 1 + dx)).unsqueeze(-1)).squeeze(-1)

    c0 = at(0, 0)
    sy = _subpixel(at(-1, 0), c0, at(1, 0))
    sx = _subpixel(at(0, -1), c0, at(0, 1))
    shift = torch.stack(((py - r).to(torch.float32) + sy, (px - r).to(torch.float32) + sx), dim=-1)
    if not distinctness:
        return shift, c0, None
    grid = torch.arange(2 * r + 1, device=win.device)
    far = ((grid[:, None] - py[..., None, None]).abs() > 2) | ((grid[None, :] - px[..., None, None]).abs() > 2)
    other = torch.where(far.flatten(-2), inner, torch.full_like(inner, -torch.inf)).amax(dim=-1)
    distinct = torch.where(other > 0, c0 / other.clamp_min(_EPS), torch.full_like(c0, torch.inf))
    return shift, c0, distinct


def _find_peak(cc: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel argmax of circular correlations ``cc`` (..., h, w) within |shift| <= radius.

    Returns (shift (..., 2) float32 as (dy, dx), peak value (...)).
    """
    shift, peak, _ = _peak_in_window(_window_of(cc, int(radius)), distinctness=False)
    return shift, peak


def _replace_outliers(resid: torch.Tensor, limit: float) -> torch.Tensor:
    """Patches whose shift (B, n_y, n_x, 2) differs by more than ``limit`` px from the median of
    their 3x3 neighbourhood take that median (tissue does not tear between patch centres)."""
    b, ny, nx, _ = resid.shape
    r = resid.permute(0, 3, 1, 2).reshape(b * 2, 1, ny, nx)
    nb = F.unfold(F.pad(r, (1, 1, 1, 1), mode="replicate"), 3)  # (2B, 9, ny * nx)
    med = nb.median(dim=1).values.reshape(b, 2, ny, nx).permute(0, 2, 3, 1)
    bad = ((resid - med).norm(dim=-1, keepdim=True) > limit)
    return torch.where(bad, med, resid)


def _integer_shift(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """out[b, y, x] = x[b, y + s[b,0], x + s[b,1]] with edge clamping; x (B, h, w), s (B, 2) long."""
    b, h, w = x.shape
    yy = (torch.arange(h, device=x.device)[None, :] + s[:, :1]).clamp(0, h - 1)
    xx = (torch.arange(w, device=x.device)[None, :] + s[:, 1:]).clamp(0, w - 1)
    out = x.gather(1, yy[:, :, None].expand(b, h, w))
    return out.gather(2, xx[:, None, :].expand(b, h, w))


def fourier_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Exact (periodic) sub-pixel resampling: out(y, x) = x(y + dy, x + dx); x (B, h, w), shift (B, 2)."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device)[None, :, None]
    fx = torch.fft.rfftfreq(w, device=x.device)[None, None, :]
    phase = 2 * math.pi * (fy * shift[:, 0, None, None] + fx * shift[:, 1, None, None])
    return torch.fft.irfft2(torch.fft.rfft2(x) * torch.polar(torch.ones_like(phase), phase), s=(h, w))


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


class Registration:
    """Registration of frame batches to a fixed template (all tensors on ``device``).

    ``rigid(x)`` -> (shifts (B, 2), peak (B,)); ``piecewise(x, rigid)`` -> patch shifts
    (B, n_y, n_x, 2); ``warp(x, rigid, patch)`` -> corrected frames (B, h, w).
    """

    def __init__(self, template: torch.Tensor, params: MotionParams, device: torch.device):
        self.p = params
        self.device = device
        t = template.to(device=device, dtype=torch.float32)
        self.template = t
        h, w = t.shape
        self.shape = (h, w)
        self.max_shift = search_radius(params.max_shift, h, w)
        hp = params.highpass_sigma
        self.window = _window(h, w, self.max_shift + 1, _RAMP, device)
        self.ref_spec = _reference_spectrum(t, self.window, params.smooth_sigma, hp)
        # warp grid (align_corners=True): normalised coordinate = 2 * px / (n - 1) - 1
        ys = torch.linspace(-1, 1, h, device=device)
        xs = torch.linspace(-1, 1, w, device=device)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        self.base_grid = torch.stack((gx, gy), dim=-1)[None]  # (1, h, w, 2)
        self.scale = torch.tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1)], device=device)
        self.grid: PatchGrid | None = None
        if params.piecewise:
            g = PatchGrid.make(h, w, params.patch_size, params.overlap)
            self.grid = g
            self.max_dev = int(min(params.max_deviation, g.size // 4))
            self.pwindow = _window(g.size, g.size, self.max_dev + 1, _RAMP, device)
            tp = g.unfold(t[None])[0]  # (n_y, n_x, s, s)
            ref = _reference_spectrum(tp, self.pwindow, params.smooth_sigma, hp)
            tw = torch.fft.irfft2(torch.conj(ref), s=(g.size, g.size))  # filtered, windowed, zero-mean
            self.patch_ref_spec = ref / (tw.flatten(-2).norm(dim=-1)[..., None, None] + _EPS)
            # wshift[k, y] = window1d(y - (k - r - 1)): sums under the window shifted by k - r - 1
            w1 = self.pwindow[g.size // 2]  # separable: the middle row is the 1-d window
            w1 = w1 / w1.max()
            offs = torch.arange(-self.max_dev - 1, self.max_dev + 2, device=device)
            yy = torch.arange(g.size, device=device)[None, :] - offs[:, None]
            wshift = torch.where((yy >= 0) & (yy < g.size), w1[yy.clamp(0, g.size - 1)], 0.0)
            self.wshift_y = wshift
            self.wshift_x_t = wshift.T.contiguous()
            self.pwin_sum = float(self.pwindow.sum())
            kind = params.field_interpolation
            self.wy = _interp_matrix(h, g.centres_y, kind).to(device)
            self.wx_t = _interp_matrix(w, g.centres_x, kind).T.contiguous().to(device)

    def rigid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.shape
        xc = x - x.mean(dim=(-2, -1), keepdim=True)
        cc = torch.fft.irfft2(torch.fft.rfft2(xc) * self.ref_spec, s=(h, w))
        shift, peak = _find_peak(cc, self.max_shift)
        # peak / frame norm ranks frames by similarity to the template
        return shift, peak / (xc.flatten(-2).norm(dim=-1) + _EPS)

    def piecewise(self, x: torch.Tensor, rigid: torch.Tensor) -> torch.Tensor:
        """Patch shifts (B, n_y, n_x, 2): the rounded rigid shift plus per-patch residuals."""
        assert self.grid is not None
        r_int = torch.round(rigid).to(torch.long)
        return self._patch_residual(_integer_shift(x, r_int)) + r_int[:, None, None, :].to(torch.float32)

    def _patch_residual(self, xs: torch.Tensor) -> torch.Tensor:
        """Residual shifts (B, n_y, n_x, 2) of the patches of pre-aligned frames xs (B, h, w)."""
        s = self.grid.size
        # masked normalised cross-correlation: numerator / (template norm * local std of the
        # frame patch under the shifted window), so a bright cell sliding into the window cannot
        # win over the true alignment. The windowed template has zero mean, so the numerator
        # ignores constant offsets; subtracting the frame mean keeps the float32 sums precise.
        f = self.grid.unfold(xs - xs.mean(dim=(-2, -1), keepdim=True))  # (B, n_y, n_x, s, s) view
        num = torch.fft.irfft2(torch.fft.rfft2(f) * self.patch_ref_spec, s=(s, s))
        num = _window_of(num, self.max_dev)  # (B, n_y, n_x, n, n)
        # local sums of f and f^2 under the shifted (separable) window, only at the searched
        # shifts: two small matmuls instead of two more FFTs
        s1 = self.wshift_y @ f @ self.wshift_x_t
        s2 = self.wshift_y @ (f * f) @ self.wshift_x_t
        var = (s2 - s1 * s1 / self.pwin_sum).clamp_min(_EPS)
        win = num / torch.sqrt(var)
        resid, _, distinct = _peak_in_window(win)
        thresh = self.p.patch_snr_threshold
        low = (distinct < thresh)[..., None] if thresh > 0 else None
        if low is not None and bool(low.any()):
            # ambiguous patches (flat or repetitive content) take the peak of their correlation
            # map averaged with their 3x3 neighbours, like Suite2p's low-SNR fallback
            b, ny, nx, n, _ = win.shape
            flat = win.permute(0, 3, 4, 1, 2).reshape(b, n * n, ny, nx)
            smooth = F.avg_pool2d(flat, 3, stride=1, padding=1, count_include_pad=False)
            smooth = smooth.reshape(b, n, n, ny, nx).permute(0, 3, 4, 1, 2)
            resid_s, _, _ = _peak_in_window(smooth, distinctness=False)
            resid = torch.where(low, resid_s, resid)
        if self.p.patch_outlier_px > 0 and resid.shape[1] * resid.shape[2] > 1:
            resid = _replace_outliers(resid, self.p.patch_outlier_px)
        return resid

    def field(self, patch: torch.Tensor) -> torch.Tensor:
        """Dense (B, h, w, 2) shift field (dy, dx) from patch shifts (B, n_y, n_x, 2)."""
        f = patch.permute(0, 3, 1, 2)  # (B, 2, n_y, n_x)
        f = torch.matmul(torch.matmul(self.wy, f), self.wx_t)  # (B, 2, h, w)
        return f.permute(0, 2, 3, 1)

    def warp(self, x: torch.Tensor, rigid: torch.Tensor, patch: torch.Tensor | None = None,
             mode: str | None = None) -> torch.Tensor:
        """Corrected frames: out(y, x) = x(y + dy, x + dx), one grid_sample for the batch."""
        if patch is None:
            disp = rigid[:, None, None, :]
        else:
            disp = self.field(patch)
        grid = self.base_grid + disp.flip(-1) * self.scale  # (dx, dy) order for grid_sample
        out = F.grid_sample(
            x[:, None], grid, mode=mode or self.p.interpolation, padding_mode="border", align_corners=True
        )
        return out[:, 0]

    def register(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Shifts and corrected frames for a batch: (rigid, patch or None, peak, corrected)."""
        rigid, peak = self.rigid(x)
        patch = self.piecewise(x, rigid) if self.grid is not None else None
        return rigid, patch, peak, self.warp(x, rigid, patch)


# ----------------------------------------------------------------------------------------------
# template
# ----------------------------------------------------------------------------------------------


def _read_sample(reader: MovieReader, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` frames spread evenly over the movie, read chunk by chunk: (indices, frames float32)."""
    n_t = reader.shape[0]
    idx = np.unique(np.linspace(0, n_t, min(n, n_t) + 1, dtype=np.int64)[:-1])
    out = np.empty((len(idx),) + reader.shape[1:], dtype=np.float32)
    chunk = reader.chunk_frames
    for c in np.unique(idx // chunk):
        sel = np.nonzero(idx // chunk == c)[0]
        a, b = idx[sel[0]], idx[sel[-1]] + 1
        block = reader[a:b]
        out[sel] = block[idx[sel] - a]
    return idx, out


def _initial_reference(frames: torch.Tensor, n_best: int = 20) -> torch.Tensor:
    """Mean of the frames most correlated with the most typical frame (Suite2p's seed rule)."""
    n = frames.shape[0]
    z = frames.reshape(n, -1).to(torch.float64)
    z = z - z.mean(dim=1, keepdim=True)
    z = z / (z.norm(dim=1, keepdim=True) + _EPS)
    cc = z @ z.T
    k = min(n_best, n)
    best = torch.topk(cc, k, dim=1).values[:, 1:].mean(dim=1) if k > 1 else cc.diagonal()
    seed = int(torch.argmax(best))
    members = torch.topk(cc[seed], k).indices
    return frames[members].mean(dim=0)


def effective_batch(params: MotionParams, h: int, w: int) -> int:
    """``params.batch_size`` capped so one batch's working set stays under ~_BATCH_BYTES.

    Estimate per frame: ~12 float32 copies of the frame (FFTs, warp grid, outputs) plus ~8 of its
    patches (a 512 x 512 frame has 225 overlapping 64-px patches, 3.5x its own pixels).
    """
    floats = 12 * h * w
    if params.piecewise and params.patch_size <= min(h, w):
        g = PatchGrid.make(h, w, params.patch_size, params.overlap)
        floats += 8 * g.n_y * g.n_x * g.size**2
    return int(max(1, min(params.batch_size, _BATCH_BYTES // (4 * floats))))


def _batched(frames: torch.Tensor, size: int):
    for a in range(0, frames.shape[0], size):
        yield frames[a : a + size]


def build_template(frames: np.ndarray | torch.Tensor, params: MotionParams, device: torch.device) -> torch.Tensor:
    """Iteratively refined template (h, w) float32 from sample frames (n, h, w).

    Rigid rounds: register, keep the best-correlated fraction (1/2 at the last round), shift
    them exactly (Fourier) to the template re-centred on their mean shift, and average. With
    ``params.piecewise`` a last round averages all piecewise-corrected frames and warps that
    mean to the frames' average deformation.
    """
    x = torch.as_tensor(frames, dtype=torch.float32).to(device)
    batch = effective_batch(params, x.shape[-2], x.shape[-1])
    ref = _initial_reference(x)
    n = x.shape[0]
    rigid_only = dataclasses.replace(params, piecewise=False)
    for it in range(params.iterations):
        reg = Registration(ref, rigid_only, device)
        shifts, peaks = zip(*(reg.rigid(b) for b in _batched(x, batch)), strict=True)
        shift, peak = torch.cat(shifts), torch.cat(peaks)
        keep = torch.argsort(peak, descending=True)[: max(2, int(n * (1 + it) / (2 * params.iterations)))]
        s = shift[keep] - shift[keep].mean(dim=0, keepdim=True)
        ref = torch.cat([fourier_shift(xb, sb) for xb, sb in zip(_batched(x[keep], batch),
                                                                 _batched(s, batch), strict=True)])
        ref = ref.mean(dim=0)
    if params.piecewise:
        # average *all* piecewise-corrected sample frames, then move the template to their average
        # deformation (patch shifts zero-mean over time; the constant part is the rigid centring).
        # On calflow.simulate movies this halved the field error against keeping the best half
        # without re-centring (0.35 -> 0.25 px; 0.24 with the true template).
        reg = Registration(ref, params, device)
        deviation = torch.zeros((reg.grid.n_y, reg.grid.n_x, 2), device=device)
        total = torch.zeros_like(ref)
        for b in _batched(x, batch):
            rigid, patch, _, corrected = reg.register(b)
            deviation += (patch - rigid[:, None, None, :]).sum(dim=0)
            total += corrected.sum(dim=0)
        ref = reg.warp((total / n)[None], torch.zeros(1, 2, device=device), -(deviation / n)[None],
                       mode="bicubic")[0]
    return ref


# ----------------------------------------------------------------------------------------------
# quality metrics
# ----------------------------------------------------------------------------------------------


def crispness(image: np.ndarray, margin: int = 0) -> float:
    """Frobenius norm of the spatial gradient of ``image`` (CaImAn's crispness); higher = sharper.

    ``margin`` px are cropped on every side first (borders touched by the warp).
    """
    img = np.asarray(image, dtype=np.float64)
    if margin > 0 and min(img.shape) > 2 * margin + 2:
        img = img[margin:-margin, margin:-margin]
    gy, gx = np.gradient(img)
    return float(np.sqrt(np.sum(gy**2 + gx**2)))


def _corr_with(x: torch.Tensor, tz: torch.Tensor, margin: int) -> torch.Tensor:
    """Pearson correlation (B,) of each frame's central crop with a z-normalised template crop."""
    if margin > 0:
        x = x[:, margin:-margin, margin:-margin]
    xf = x.reshape(x.shape[0], -1)
    xf = xf - xf.mean(dim=1, keepdim=True)
    return (xf @ tz) / (xf.norm(dim=1) + _EPS)


# ----------------------------------------------------------------------------------------------
# the stage
# ----------------------------------------------------------------------------------------------


def _prefetch(blocks, depth: int = 2):
    """Iterate ``blocks`` in a background thread, ``depth`` items ahead (zarr decoding releases
    the GIL, so reading overlaps registration). Exceptions are re-raised in the caller."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def run() -> None:
        try:
            for item in blocks:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            q.put(err)

    thread = threading.Thread(target=run, name="calflow-motion-read", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _cast_out(x: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = x.round().clamp_(float(info.min), float(info.max))
    return x.cpu().numpy().astype(dtype, copy=False)


def correct_motion(
    raw_store: str | Path,
    out_store: str | Path,
    *,
    params: MotionParams | Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Motion-correct the movie in ``raw_store`` (zarr, (time, y, x)) into ``out_store``.

    Streams ``batch_size`` frames at a time (memory independent of the movie length) and writes
    ``out_store`` atomically. Stored (dims in brackets; shifts in px, see SHIFT_CONVENTION):
    ``movie`` (time, y, x) corrected; ``rigid_shifts`` (time, axis=dy,dx);
    ``patch_shifts`` (time, patch_y, patch_x, axis); ``patch_centers_y`` (patch_y,),
    ``patch_centers_x`` (patch_x,) px; ``template`` (y, x); ``corr_with_template`` (time,)
    after correction and ``corr_with_template_before`` (time,); ``mean_before`` / ``mean_after``
    (y, x). Attrs: raw attrs (fps, source, ...) + ``crispness_before`` / ``crispness_after``,
    ``motion_params``, ``shift_convention``.

    Returns summary statistics (frames, seconds, frames_per_s, crispness, mean correlations,
    largest shift, device).
    """
    t_start = time.perf_counter()
    p = MotionParams.from_config(params)
    raw_store, out_store = Path(raw_store), Path(out_store)
    reader = MovieReader(raw_store)
    n_t, h, w = reader.shape
    if min(h, w) < 16:
        raise CalflowInputError(f"frames are {h} x {w} px, too small to register", file=raw_store,
                                fix="motion correction needs frames of at least 16 x 16 px")
    window_warning(p.max_shift, h, w, raw_store)
    device = p.torch_device()
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(p.num_threads or _auto_threads())
    try:
        return _correct_motion(reader, raw_store, out_store, p, device, progress, t_start)
    finally:
        torch.set_num_threads(threads_before)


def search_radius(max_shift: int, h: int, w: int) -> int:
    """The rigid search radius actually used, px: ``max_shift`` capped at a quarter of the smaller side."""
    return int(min(max_shift, min(h, w) // 4))


def window_warning(max_shift: int, h: int, w: int, source: str | Path = "") -> str | None:
    """A warning (logged and returned) when ``max_shift`` leaves under half of the frame's smaller
    side for the windowed template: the template is zero within ``max_shift + 1 + ramp`` px of
    every edge, and with little content left the correlation peak can lock onto the wrong
    structure (measured on the 64 x 64 demo with max_shift 15: estimated shifts of 12-16 px where
    the true motion was <= 3 px). None when the window is wide enough."""
    r = search_radius(max_shift, h, w)
    left = min(h, w) - 2 * (r + 1 + _RAMP)
    if left >= min(h, w) / 2:
        return None
    ok = max(1, int(min(h, w) / 4) - 1 - _RAMP)
    msg = (f"{source}: motion.max_shift = {max_shift} leaves {left} of {min(h, w)} px for the template "
           f"window; shifts may lock onto the wrong structure. Fix: set motion.max_shift to the largest motion "
           f"you expect (<= {ok} px keeps half the frame)")
    log.warning(msg)
    return msg


def _auto_threads() -> int:
    """CPU threads for torch: the cores this process may use, minus one for the reading and
    compressing threads that overlap with it. On small shared machines, more torch threads than
    free cores make OpenMP barriers wait for descheduled threads (measured 5-10x slower)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def _correct_motion(reader: MovieReader, raw_store: Path, out_store: Path, p: MotionParams,
                    device: torch.device, progress: bool, t_start: float) -> dict[str, Any]:
    n_t, h, w = reader.shape
    torch.manual_seed(p.seed)
    out_dtype = np.dtype(np.float32) if p.output_dtype == "float32" else np.dtype(reader.dtype)

    with torch.inference_mode():
        _, sample = _read_sample(reader, p.template_frames)
        template = build_template(sample, p, device)
        del sample
        reg = Registration(template, p, device)
        grid = reg.grid
        margin = min(reg.max_shift + (reg.max_dev if grid is not None else 0), min(h, w) // 4)
        tc = template[margin : h - margin, margin : w - margin].reshape(-1)
        tz = (tc - tc.mean()) / ((tc - tc.mean()).norm() + _EPS)

        n_py, n_px = (grid.n_y, grid.n_x) if grid is not None else (1, 1)
        rigid_all = np.zeros((n_t, 2), np.float32)
        patch_all = np.zeros((n_t, n_py, n_px, 2), np.float32)
        corr_before = np.zeros(n_t, np.float32)
        corr_after = np.zeros(n_t, np.float32)
        sum_before = torch.zeros((h, w), dtype=torch.float64, device=device)
        sum_after = torch.zeros((h, w), dtype=torch.float64, device=device)

        attrs = {k: v for k, v in reader.attrs.items() if k != "fps"}
        attrs.update({"stage": "motion", "motion_source": str(raw_store), "shift_convention": SHIFT_CONVENTION})
        batch = effective_batch(p, h, w)
        blocks = _prefetch(reader.iter_blocks(batch))
        if progress:
            from tqdm import tqdm

            blocks = tqdm(blocks, total=math.ceil(n_t / batch), desc="motion", unit="batch")
        with atomic_output(out_store) as tmp:
            writer = MovieWriter(tmp, (n_t, h, w), out_dtype, fps=reader.fps,
                                 chunk_frames=reader.chunk_frames, attrs=attrs)
            # compression + writing of batch k overlaps the registration of batch k+1
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calflow-motion-write")
            pending: Future | None = None
            try:
                for a, block in blocks:
                    x = torch.from_numpy(np.asarray(block, dtype=np.float32)).to(device)
                    rigid, patch, _, corrected = reg.register(x)
                    b = a + x.shape[0]
                    rigid_all[a:b] = rigid.cpu().numpy()
                    patch_all[a:b] = (patch if patch is not None else rigid[:, None, None, :]).cpu().numpy()
                    corr_before[a:b] = _corr_with(x, tz, margin).cpu().numpy()
                    corr_after[a:b] = _corr_with(corrected, tz, margin).cpu().numpy()
                    sum_before += x.sum(dim=0, dtype=torch.float64)
                    sum_after += corrected.sum(dim=0, dtype=torch.float64)
                    out_block = _cast_out(corrected, out_dtype)
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(writer.write, out_block)
                if pending is not None:
                    pending.result()
            finally:
                pool.shutdown(wait=True)
            writer.close()

            mean_before = (sum_before / n_t).to(torch.float32).cpu().numpy()
            mean_after = (sum_after / n_t).to(torch.float32).cpu().numpy()
            crisp_margin = int(math.ceil(np.abs(patch_all).max())) if n_t else 0
            crisp_margin = min(crisp_margin, min(h, w) // 4)
            crisp_before = crispness(mean_before, crisp_margin)
            crisp_after = crispness(mean_after, crisp_margin)
            cy = grid.centres_y if grid is not None else np.array([(h - 1) / 2])
            cx = grid.centres_x if grid is not None else np.array([(w - 1) / 2])
            px_attrs = {"units": "px", "axis": ["dy", "dx"], "convention": SHIFT_CONVENTION}
            write_array(tmp, "rigid_shifts", rigid_all, ("time", "axis"), px_attrs)
            write_array(tmp, "patch_shifts", patch_all, ("time", "patch_y", "patch_x", "axis"), px_attrs)
            write_array(tmp, "patch_centers_y", cy.astype(np.float32), ("patch_y",), {"units": "px"})
            write_array(tmp, "patch_centers_x", cx.astype(np.float32), ("patch_x",), {"units": "px"})
            write_array(tmp, "template", template.cpu().numpy(), ("y", "x"))
            write_array(tmp, "corr_with_template", corr_after, ("time",),
                        {"description": "Pearson r of the corrected frame with the template (central crop)"})
            write_array(tmp, "corr_with_template_before", corr_before, ("time",),
                        {"description": "Pearson r of the raw frame with the template (central crop)"})
            write_array(tmp, "mean_before", mean_before, ("y", "x"))
            write_array(tmp, "mean_after", mean_after, ("y", "x"))
            seconds = time.perf_counter() - t_start
            stats = {
                "n_frames": n_t,
                "frame_shape": [h, w],
                "device": str(device),
                "piecewise": bool(grid is not None),
                "batch_frames": batch,
                "patch_grid": [n_py, n_px],
                "seconds": round(seconds, 3),
                "frames_per_s": round(n_t / seconds, 1) if seconds > 0 else None,
                "crispness_before": crisp_before,
                "crispness_after": crisp_after,
                "crispness_margin_px": crisp_margin,
                "corr_with_template_before_mean": float(corr_before.mean()) if n_t else float("nan"),
                "corr_with_template_after_mean": float(corr_after.mean()) if n_t else float("nan"),
                "max_abs_rigid_shift_px": float(np.abs(rigid_all).max()) if n_t else 0.0,
                "max_abs_patch_shift_px": float(np.abs(patch_all).max()) if n_t else 0.0,
            }
            group = zarr.open_group(tmp, mode="a")
            group.attrs.update({**stats, "motion_params": p.to_dict()})
    return stats
