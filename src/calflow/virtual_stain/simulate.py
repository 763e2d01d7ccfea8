"""Paired label-free / fluorescence images with known marker-positive cells (demo and tests).

No paired data set is reachable, so this makes one. The label-free image imitates phase
contrast: a flat, slowly shaded background with camera noise; every cell is a dark body with a
bright halo at its edge. A random subset of cells carries the marker (cardiomyocyte-like):
in the fluorescence image only they shine (blurred, with background and noise); in the
label-free image they are larger and show sarcomere-like striations (a sinusoidal texture of
~3-4 px period), while negative cells are smooth with a dark nucleus. The texture is the
learnable cue. The positive fraction of cells varies per image (``positive_fraction`` range),
so per-image efficiencies spread for the correlation. Intensities are unitless (label-free
around 0.5, fluorescence 0-1); images are float32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from calflow.params import check_fields, invalid, param


@dataclass
class PairParams:
    """Simulator settings (pixels unless said)."""

    height: int = param(160, ge=16)
    width: int = param(160, ge=16)
    n_cells: int = param(30, ge=1)
    radius: list[float] = param(factory=lambda: [6.0, 10.0])   # semi-axis range of negative cells
    positive_scale: float = 1.3          # positive cells are this much larger
    positive_fraction: list[float] = param(factory=lambda: [0.1, 0.8])  # per-image range
    stripe_period: float = 3.5           # px, striation period of positive cells
    stripe_contrast: float = 0.12        # label-free units
    noise: float = 0.03                  # label-free camera noise (sd)
    fluo_noise: float = 0.03             # fluorescence noise (sd)

    def __post_init__(self) -> None:
        check_fields(self, "virtual_stain.demo")
        f = self.positive_fraction
        if len(f) != 2 or not 0 <= f[0] <= f[1] <= 1:
            raise invalid("virtual_stain.demo", "positive_fraction", self.positive_fraction,
                          "must be [low, high] with 0 <= low <= high <= 1", "give e.g. [0.1, 0.8]")

    def to_dict(self) -> dict:
        return asdict(self)


def simulate_pair(params: PairParams | dict | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """One pair: ``label_free`` and ``fluorescence`` (H, W) float32, ``positive`` (H, W) bool (the
    true marker-positive cell pixels), ``cells`` (H, W) int32 labels (0 = none) and
    ``cell_positive`` (n,) bool."""
    p = params if isinstance(params, PairParams) else PairParams(**(params or {}))
    rng = np.random.default_rng(seed)
    H, W = p.height, p.width
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    frac = rng.uniform(*p.positive_fraction)
    cells = np.zeros((H, W), np.int32)
    body = np.zeros((H, W))          # phase darkening
    texture = np.zeros((H, W))
    nucleus = np.zeros((H, W))
    is_pos = []
    k = 0
    for _ in range(p.n_cells * 20):
        if k == p.n_cells:
            break
        pos = rng.random() < frac
        a, b = rng.uniform(*p.radius, size=2) * (p.positive_scale if pos else 1.0)
        a = max(a, b) * (1.4 if pos else 1.0)    # positive cells elongated
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        th = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dy * np.cos(th) + dx * np.sin(th)
        v = -dy * np.sin(th) + dx * np.cos(th)
        r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        inside = r <= 1
        if not inside.any() or (cells[inside] > 0).mean() > 0.15:
            continue   # keep cells mostly apart, as in a sparse culture
        k += 1
        new = inside & (cells == 0)
        cells[new] = k
        body[new] = 1.0
        is_pos.append(pos)
        if pos:
            phase = rng.uniform(0, 2 * np.pi)
            texture[new] = np.sin(2 * np.pi * u[new] / p.stripe_period + phase)
        else:
            nucleus[(r <= 0.35) & new] = 1.0
    cell_positive = np.array(is_pos, bool)
    positive = np.isin(cells, np.flatnonzero(cell_positive) + 1)
    # label-free (phase-contrast-like): shading + dark bodies + bright halo at the edges + texture
    shade = 0.5 + 0.05 * np.sin(2 * np.pi * (yy / H * rng.uniform(0.3, 1) + xx / W * rng.uniform(0.3, 1)))
    smooth_body = ndimage.gaussian_filter(body, 1.0)
    halo = np.clip(ndimage.gaussian_filter(body, 2.5) - smooth_body, 0, None)
    lf = (shade - 0.18 * smooth_body + 0.6 * halo + p.stripe_contrast * ndimage.gaussian_filter(texture, 0.6)
          - 0.1 * ndimage.gaussian_filter(nucleus, 1.0))
    lf = lf + rng.normal(0, p.noise, (H, W))
    # fluorescence: positive cells only, per-cell brightness, blurred, background + noise
    bright = np.zeros((H, W))
    for c in np.flatnonzero(cell_positive) + 1:
        bright[cells == c] = rng.uniform(0.6, 1.0)
    fl = ndimage.gaussian_filter(bright, 1.2) + 0.05 + rng.normal(0, p.fluo_noise, (H, W))
    return {"label_free": lf.astype(np.float32), "fluorescence": fl.astype(np.float32), "positive": positive,
            "cells": cells, "cell_positive": cell_positive}


def write_pair(label_free_path: str, fluorescence_path: str, params: PairParams | dict | None = None,
               seed: int = 0) -> dict[str, np.ndarray]:
    """Simulate one pair and write both images as float32 TIFFs (atomically)."""
    import tifffile

    from calflow.io import atomic_output

    pair = simulate_pair(params, seed)
    for key, path in (("label_free", label_free_path), ("fluorescence", fluorescence_path)):
        with atomic_output(path) as tmp:
            tifffile.imwrite(tmp, pair[key], photometric="minisblack")
    return pair
