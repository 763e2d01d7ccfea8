"""The stage's figures: ``zncc.png`` (:func:`zncc_figure`, the pattern x pattern heatmap) and
``maps.png`` (:func:`overlay_figure`, every pattern's map on the mean image), from a store read with
:func:`~calflow.gradcam.store.read_gradcam` (:func:`plot_session`). matplotlib is imported on use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calflow.gradcam.cam import upsample
from calflow.gradcam.params import METHOD_NAMES
from calflow.gradcam.store import read_gradcam
from calflow.io import atomic_output


def plot_session(store: str | Path, plots_dir: str | Path) -> list[Path]:
    """``zncc.png`` (pattern x pattern heatmap) and ``maps.png`` (Grad-CAM overlays on the mean image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = read_gradcam(store)
    names = g.patterns
    z = g.zncc
    disp = g.display_maps
    signed = upsample(np.nan_to_num(g.pattern_maps), disp.shape[1:])
    mean = g.mean_image
    out_dir = Path(plots_dir)
    out = []
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        fig = zncc_figure(z, names, f"{g.session}: ZNCC of Grad-CAM maps")
        fig.savefig(tmp / "zncc.png", dpi=100)
        plt.close(fig)
        method = METHOD_NAMES.get(g.method, "Grad-CAM")
        fig = overlay_figure(mean, disp, names, g.session, signed, method)
        fig.savefig(tmp / "maps.png", dpi=80)
        plt.close(fig)
        out = [out_dir / "zncc.png", out_dir / "maps.png"]
    return out


def zncc_figure(z: np.ndarray, names: Sequence[str], title: str, ax: Any = None) -> Any:
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 5))
    im = ax.imshow(z, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_title(title, fontsize=9)
    if fig is not None:
        fig.colorbar(im, ax=ax, shrink=0.8, label="ZNCC")
        fig.tight_layout()
    return fig


def overlay_figure(mean: np.ndarray, disp: np.ndarray, names: Sequence[str], title: str,
                   signed: np.ndarray | None = None, method: str = "Grad-CAM") -> Any:
    """Grad-CAM per pattern on the mean image: the ReLU-ed display maps (inferno, above 15 % of
    each map's maximum) and, with ``signed`` (P, H, W), the signed maps below them (red positive,
    blue negative, each map scaled to its own largest magnitude)."""
    import matplotlib.pyplot as plt

    n = len(names)
    cols = min(8, max(n, 1))
    block = (n + cols - 1) // cols
    rows = block * (2 if signed is not None else 1)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows + 0.3), squeeze=False)
    H, W = disp.shape[1:]
    ext = (-0.5, W - 0.5, H - 0.5, -0.5)
    for ax in axes.ravel():
        ax.set_axis_off()
    for k in range(n):
        ax = axes[k // cols, k % cols]
        ax.imshow(mean, cmap="gray", extent=ext)
        m = disp[k]
        top = float(np.nanmax(m)) if np.isfinite(m).any() else 0.0
        ax.imshow(np.ma.masked_less_equal(m, 0.15 * top if top > 0 else 0), cmap="inferno", alpha=0.6, extent=ext)
        ax.set_title(f"{names[k]} (ReLU)" if signed is not None else names[k], fontsize=7)
        if signed is not None:
            ax = axes[block + k // cols, k % cols]
            ax.imshow(mean, cmap="gray", extent=ext)
            big = float(np.abs(signed[k]).max()) or 1.0
            ax.imshow(np.ma.masked_inside(signed[k], -0.15 * big, 0.15 * big), cmap="RdBu_r", vmin=-big, vmax=big,
                      alpha=0.6, extent=ext)
            ax.set_title(f"{names[k]} (signed)", fontsize=7)
    fig.suptitle(f"{title}: {method} per pattern (held-out trials)", fontsize=9)
    fig.tight_layout()
    return fig
