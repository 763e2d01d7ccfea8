"""Segmenter networks: a U-Net with skip connections and a DCN-style multi-scale deconvolution net.

Both map (N, C_in, H, W) to (N, C_out, H, W) logits for any H, W (inputs are padded to a multiple
of ``2**depth`` inside :func:`calflow.segment.infer.predict`; the networks themselves require it).

* :class:`UNet` (Ronneberger et al. 2015): ``depth`` down-sampling stages of two 3x3 conv + BN +
  ReLU, channel count doubling from ``base``, a bottleneck, and up-sampling by 2x2 transposed
  convolution concatenated with the encoder feature map of the same scale (the skip connections).
* :class:`DCN` (the deep contextual network of Chen et al. 2016 used in the EM study): the same
  encoder without skips; every scale s (1..depth) has a head: a 1x1 conv to ``C_out`` followed by a
  transposed convolution with stride ``2**s`` and kernel size ``deconv_kernels[s-1]`` back to full
  resolution; the heads' outputs are **summed** (plus a full-resolution 1x1 head on scale 0).
  The deconvolution kernel sizes are the knob the EM study tuned (default 2 x stride).

:func:`build_model` makes either (or the set-prediction ``detr`` of :mod:`calflow.segment.detr`) from a plain dict (``arch``), which is what checkpoints store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class Encoder(nn.Module):
    def __init__(self, in_channels: int, base: int, depth: int):
        super().__init__()
        chans = [base * 2**i for i in range(depth + 1)]
        self.chans = chans
        self.blocks = nn.ModuleList([_block(in_channels, chans[0])] +
                                    [_block(chans[i - 1], chans[i]) for i in range(1, depth + 1)])
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.blocks[0](x)]
        for blk in self.blocks[1:]:
            feats.append(blk(self.pool(feats[-1])))
        return feats  # scale 0 (full) .. depth (bottleneck)


class UNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, base: int = 16, depth: int = 3):
        super().__init__()
        self.depth = depth
        self.encoder = Encoder(in_channels, base, depth)
        c = self.encoder.chans
        self.ups = nn.ModuleList([nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2) for i in reversed(range(depth))])
        self.decs = nn.ModuleList([_block(2 * c[i], c[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(c[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        y = feats[-1]
        for up, dec, skip in zip(self.ups, self.decs, reversed(feats[:-1]), strict=True):
            y = dec(torch.cat([up(y), skip], dim=1))
        return self.head(y)


def _crop_or_pad(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dh, dw = y.shape[-2] - h, y.shape[-1] - w
    if dh > 0 or dw > 0:
        t, left = max(dh, 0) // 2, max(dw, 0) // 2
        y = y[..., t:t + h if dh > 0 else None, left:left + w if dw > 0 else None]
    if dh < 0 or dw < 0:
        ph, pw = max(-dh, 0), max(-dw, 0)
        y = nn.functional.pad(y, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return y


class DCN(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, base: int = 16, depth: int = 3,
                 deconv_kernels: Sequence[int] | None = None):
        super().__init__()
        kernels = list(deconv_kernels) if deconv_kernels else [2 * 2**s for s in range(1, depth + 1)]
        if len(kernels) != depth:
            raise ValueError(f"deconv_kernels needs {depth} sizes (one per scale), got {kernels}")
        for s, k in enumerate(kernels, start=1):
            if k < 2**s:
                raise ValueError(f"deconvolution kernel {k} at scale {s} is smaller than its stride {2**s}")
        self.kernels = kernels
        self.encoder = Encoder(in_channels, base, depth)
        c = self.encoder.chans
        self.head0 = nn.Conv2d(c[0], out_channels, 1)
        self.proj = nn.ModuleList([nn.Conv2d(c[s], out_channels, 1) for s in range(1, depth + 1)])
        self.deconv = nn.ModuleList([
            nn.ConvTranspose2d(out_channels, out_channels, k, stride=2**s, padding=(k - 2**s) // 2)
            for s, k in enumerate(kernels, start=1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        feats = self.encoder(x)
        out = self.head0(feats[0])
        for f, proj, dec in zip(feats[1:], self.proj, self.deconv, strict=True):
            out = out + _crop_or_pad(dec(proj(f)), h, w)
        return out


def build_model(arch: Mapping[str, Any]) -> nn.Module:
    """``arch``: {"kind": "unet"|"dcn", "in_channels", "out_channels", "base", "depth", "deconv_kernels"},
    or {"kind": "detr", ...} (:func:`calflow.segment.detr.build_detr`)."""
    kind = arch.get("kind", "unet")
    if kind == "detr":
        from calflow.segment.detr import build_detr

        return build_detr(arch)
    common = {"in_channels": int(arch["in_channels"]), "out_channels": int(arch["out_channels"]),
              "base": int(arch.get("base", 16)), "depth": int(arch.get("depth", 3))}
    if kind == "unet":
        return UNet(**common)
    if kind == "dcn":
        return DCN(**common, deconv_kernels=arch.get("deconv_kernels"))
    raise ValueError(f"unknown network kind {kind!r} (use 'unet', 'dcn' or 'detr')")
