"""Set-prediction segmenter (``segment.network: detr``): a windowed-attention backbone, an FPN and
a DETR/Mask2Former-style query decoder that predicts a set of cell masks, each with an objectness.

Shapes (B images of C channels, H x W px, H and W multiples of 8; Q queries, D = ``dim``):

* stem: two 3x3 convolutions -> (B, D, H, W) full-resolution features.
* backbone: a 4x4 stride-4 patch embedding plus a fixed 2-D sine position embedding, then stage 1
  (``blocks`` windowed self-attention blocks, D channels, stride 4), a 2x2 stride-2 patch merge and
  stage 2 (2D channels, stride 8). Attention runs inside non-overlapping ``window`` x ``window``
  token windows with a learned relative position bias (Swin-style); every second block shifts the
  windows by half a window (cyclic roll, no boundary mask). The token grid is zero-padded to a
  multiple of the window.
* FPN: 1x1 laterals to D, top-down nearest up-sampling and sums, 3x3 smoothing: stride 8, stride 4,
  and the per-pixel embedding (B, D, H, W) (stride-4 level up-sampled and summed with the stem).
* decoder: Q learned query embeddings (plus learned query positions) pass through ``decoder_layers``
  transformer decoder layers (self-attention among queries, cross-attention to the stride-8 and
  stride-4 FPN tokens with sine positions). After every layer (deep supervision) each query gives
  an objectness logit (a linear head) and a mask logit per pixel: the dot product of its mask
  embedding (a 3-layer MLP) with the per-pixel embedding, (B, Q, H, W).

:func:`predict_sets` runs the network on a whole image in overlapping tiles (a tile holds at most Q
cells); :func:`instances_from_sets` turns queries into a label image (objectness > threshold, mask
> 0.5, overlaps resolved by score). Losses and matching: :mod:`calflow.segment.matching`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def sine_position(h: int, w: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(dim, h, w) fixed 2-D sine/cosine position embedding (half the channels for y, half for x)."""
    if dim % 4:
        raise ValueError(f"position embedding needs dim % 4 == 0, got {dim}")
    q = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(q, device=device, dtype=torch.float32) / q))
    y = torch.arange(h, device=device, dtype=torch.float32)[:, None] * freq[None]  # (h, q)
    x = torch.arange(w, device=device, dtype=torch.float32)[:, None] * freq[None]  # (w, q)
    py = torch.cat([y.sin(), y.cos()], 1).T[:, :, None].expand(2 * q, h, w)
    px = torch.cat([x.sin(), x.cos()], 1).T[:, None, :].expand(2 * q, h, w)
    return torch.cat([py, px], 0)


class WindowBlock(nn.Module):
    """Pre-norm windowed multi-head self-attention + MLP on (B, H, W, C) tokens."""

    def __init__(self, dim: int, heads: int, window: int, shift: bool):
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.rel_bias = nn.Parameter(torch.zeros(heads, (2 * window - 1) ** 2))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        c = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (c[:, :, None] - c[:, None, :]) + window - 1  # (2, L, L) in 0..2w-2
        self.register_buffer("rel_index", rel[0] * (2 * window - 1) + rel[1], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        win = self.window
        ph, pw = (-h) % win, (-w) % win
        y = F.pad(self.norm1(x), (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        s = win // 2 if self.shift and min(hp, wp) > win else 0
        if s:
            y = torch.roll(y, (-s, -s), dims=(1, 2))
        y = y.view(b, hp // win, win, wp // win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, win * win, c)
        qkv = self.qkv(y).view(y.shape[0], win * win, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.rel_bias[:, self.rel_index]  # (heads, L, L)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias[None])
        y = self.proj(y.transpose(1, 2).reshape(-1, win * win, c))
        y = y.view(b, hp // win, wp // win, win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if s:
            y = torch.roll(y, (s, s), dims=(1, 2))
        x = x + y[:, :h, :w]
        return x + self.mlp(self.norm2(x))


class DETRSegmenter(nn.Module):
    """(B, C, H, W) -> {"logits": (B, Q), "masks": (B, Q, H, W), "aux": [per earlier decoder layer]}."""

    def __init__(self, in_channels: int, dim: int = 32, queries: int = 32, window: int = 8, blocks: int = 2,
                 heads: int = 2, decoder_layers: int = 2):
        super().__init__()
        d2 = 2 * dim
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1))
        self.embed = nn.Conv2d(in_channels, dim, 4, stride=4)
        self.embed_norm = nn.LayerNorm(dim)
        self.stage1 = nn.ModuleList([WindowBlock(dim, heads, window, i % 2 == 1) for i in range(blocks)])
        self.merge = nn.Conv2d(dim, d2, 2, stride=2)
        self.stage2 = nn.ModuleList([WindowBlock(d2, 2 * heads, window, i % 2 == 1) for i in range(blocks)])
        self.lat8, self.lat4, self.lat1 = nn.Conv2d(d2, dim, 1), nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)
        self.smooth4 = nn.Conv2d(dim, dim, 3, padding=1)
        self.pixel = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, dim, 1))
        self.level = nn.Parameter(torch.zeros(2, dim))  # which FPN level a memory token comes from
        self.query = nn.Embedding(queries, dim)
        self.query_pos = nn.Embedding(queries, dim)
        self.decoder = nn.ModuleList([
            nn.TransformerDecoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(decoder_layers)])
        self.out_norm = nn.LayerNorm(dim)
        self.cls = nn.Linear(dim, 1)
        self.mask_embed = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(),
                                        nn.Linear(dim, dim))

    def _heads(self, q: torch.Tensor, pix: torch.Tensor) -> dict[str, torch.Tensor]:
        q = self.out_norm(q)
        return {"logits": self.cls(q)[..., 0], "masks": torch.einsum("bqd,bdhw->bqhw", self.mask_embed(q), pix)}

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        b, _, h, w = x.shape
        if h % 8 or w % 8:
            raise ValueError(f"DETRSegmenter needs H and W multiples of 8, got {h} x {w}")
        dim = self.embed.out_channels
        t = self.embed(x)  # (B, D, H/4, W/4)
        t = t + sine_position(h // 4, w // 4, dim, x.device)[None]
        t = self.embed_norm(t.permute(0, 2, 3, 1))
        for blk in self.stage1:
            t = blk(t)
        f4 = t.permute(0, 3, 1, 2)
        t = self.merge(f4).permute(0, 2, 3, 1)
        for blk in self.stage2:
            t = blk(t)
        f8 = t.permute(0, 3, 1, 2)
        p8 = self.lat8(f8)
        p4 = self.smooth4(self.lat4(f4) + F.interpolate(p8, scale_factor=2.0, mode="nearest"))
        pix = self.pixel(self.lat1(self.stem(x)) + F.interpolate(p4, scale_factor=4.0, mode="bilinear",
                                                                 align_corners=False))
        mem = []
        for lvl, p in enumerate((p8, p4)):
            pos = sine_position(p.shape[2], p.shape[3], dim, x.device)[None] + self.level[lvl][None, :, None, None]
            mem.append((p + pos).flatten(2).transpose(1, 2))
        memory = torch.cat(mem, 1)  # (B, h/8*w/8 + h/4*w/4, D)
        qpos = self.query_pos.weight[None].expand(b, -1, -1)
        q = self.query.weight[None].expand(b, -1, -1)
        outs = []
        for layer in self.decoder:
            q = layer(q + qpos, memory)
            outs.append(self._heads(q, pix))
        return {**outs[-1], "aux": outs[:-1]}


def build_detr(arch: Mapping[str, Any]) -> DETRSegmenter:
    """``arch``: {"kind": "detr", "in_channels", "dim", "queries", "window", ...} (what checkpoints store)."""
    return DETRSegmenter(int(arch["in_channels"]), dim=int(arch.get("dim", 32)), queries=int(arch.get("queries", 32)),
                         window=int(arch.get("window", 8)), blocks=int(arch.get("blocks", 2)),
                         heads=int(arch.get("heads", 2)), decoder_layers=int(arch.get("decoder_layers", 2)))


@torch.no_grad()
def predict_tile(model: nn.Module, image: np.ndarray, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Objectness probabilities (Q,) and mask probabilities (Q, H, W) of one (C, H, W) image
    (reflect-padded to a multiple of 8 and cropped back)."""
    model.eval()
    _, h, w = image.shape
    ph, pw = (-h) % 8, (-w) % 8
    x = np.pad(image, ((0, 0), (0, ph), (0, pw)), mode="reflect") if ph or pw else image
    out = model(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None].to(device))
    return (torch.sigmoid(out["logits"][0]).cpu().numpy(),
            torch.sigmoid(out["masks"][0, :, :h, :w]).cpu().numpy())


def _starts(n: int, tile: int) -> list[int]:
    if n <= tile:
        return [0]
    step = tile // 2
    s = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(s))


@torch.no_grad()
def predict_sets(model: nn.Module, image: np.ndarray, *, tile: int = 64, device: torch.device | str = "cpu",
                 score_threshold: float = 0.05) -> tuple[np.ndarray, list[tuple[int, int, np.ndarray]]]:
    """Queries of a whole (C, H, W) image, in tiles of ``tile`` px overlapping by half a tile.

    A query of a tile is kept when its objectness exceeds ``score_threshold`` and its mask's
    (> 0.5) centroid lies in the tile's core (the central half, extended to the image border at the
    edges), so a cell is predicted by the one tile that sees it whole. Returns the scores (N,) and
    per query (y0, x0, mask probabilities of its tile).
    """
    _, h, w = image.shape
    scores, masks = [], []
    ys, xs = _starts(h, tile), _starts(w, tile)
    for y0 in ys:
        for x0 in xs:
            sub = image[:, y0:y0 + tile, x0:x0 + tile]
            sc, mk = predict_tile(model, sub, device)
            th, tw = sub.shape[1:]
            q = tile // 4
            cy0 = 0 if y0 == ys[0] else q
            cy1 = th if y0 == ys[-1] else th - q
            cx0 = 0 if x0 == xs[0] else q
            cx1 = tw if x0 == xs[-1] else tw - q
            for i in np.flatnonzero(sc > score_threshold):
                yy, xx = np.nonzero(mk[i] > 0.5)
                if yy.size == 0:
                    continue
                cy, cx = yy.mean(), xx.mean()
                if cy0 <= cy < cy1 and cx0 <= cx < cx1:
                    scores.append(float(sc[i]))
                    masks.append((y0, x0, mk[i]))
    return np.asarray(scores, np.float64), masks


def instances_from_sets(scores: np.ndarray, masks: list[tuple[int, int, np.ndarray]], shape: tuple[int, int], *,
                        prob_threshold: float = 0.5, min_size: int = 10, mask_threshold: float = 0.5,
                        min_kept: float = 0.5, **_: Any) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) int32 labels and (H, W) float32 mask probability of the instances from query sets.

    Queries with objectness > ``prob_threshold`` are taken by decreasing score; each claims its
    pixels with mask > ``mask_threshold`` not yet claimed, and is kept when it claims at least
    ``min_size`` px and ``min_kept`` of its own mask (else it duplicates a better query).
    ``cue_threshold`` and other U-Net keys are ignored.
    """
    labels = np.zeros(shape, np.int32)
    prob = np.zeros(shape, np.float32)
    k = 0
    for i in np.argsort(-scores, kind="stable"):
        if scores[i] <= prob_threshold:
            break
        y0, x0, m = masks[i]
        sl = (slice(y0, y0 + m.shape[0]), slice(x0, x0 + m.shape[1]))
        own = m > mask_threshold
        free = own & (labels[sl] == 0)
        if free.sum() < max(min_size, 1) or free.sum() < min_kept * own.sum():
            continue
        k += 1
        labels[sl][free] = k
        prob[sl][free] = m[free]
    return labels, prob


def segment_image_detr(model: nn.Module, arch: Mapping[str, Any], image: np.ndarray, post: Mapping[str, Any],
                       device: torch.device | str = "cpu") -> dict:
    """Probability map and instance labels of one (C, H, W) image (the ``segment_image`` contract; cue None)."""
    scores, masks = predict_sets(model, image, tile=int(arch.get("tile", 64)), device=device)
    labels, prob = instances_from_sets(scores, masks, image.shape[1:], **dict(post))
    return {"probability": prob, "cue": None, "labels": labels}


def n_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


__all__ = ["DETRSegmenter", "build_detr", "instances_from_sets", "predict_sets", "predict_tile", "segment_image_detr",
           "sine_position", "n_parameters"]
