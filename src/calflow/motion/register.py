"""Registration of frame batches to a fixed template, in torch (float32, batched over frames).
Rigid: FFT cross-correlation (``rfft2``) of each mean-subtracted frame with the windowed template
(exactly-zero border wider than the search radius, so the circular correlation equals the linear
one), a Gaussian spectral weight and a 3-point log-parabola sub-pixel peak per axis, within
``|shift| <= max_shift`` px. Piecewise: masked normalised cross-correlation of template patches
(:mod:`calflow.motion.patches`) within ``max_deviation`` px of the rounded rigid shift, then one
``grid_sample`` warp per batch. Shifts are (dy, dx) px, the displacement of the content
(:data:`calflow.motion.store.SHIFT_CONVENTION`); :func:`effective_batch` sizes a batch's working set."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from calflow.motion.params import MotionParams
from calflow.motion.patches import PatchGrid, _interp_matrix, _replace_outliers

log = logging.getLogger("calflow.motion")

_EPS = 1e-10
_RAMP = 4  # px, raised-cosine ramp of the template window
_BATCH_BYTES = 512 * 2**20  # working-set budget of one batch (see effective_batch)


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
