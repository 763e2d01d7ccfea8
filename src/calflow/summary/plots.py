"""Figure of the ``summary`` stage: :func:`plot_summary` draws summary.zarr's mean, max, std,
local-correlation and PNR images into ``summary_images`` (.png by default). Imported on first use
from :mod:`calflow.summary`, so that computing the images does not import matplotlib."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calflow.figures import check_formats, plt, save_figure, show_image
from calflow.io import require_arrays


def plot_summary(summary_store: str | Path, out_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Figure ``summary_images`` (.png by default) with the mean, max, std, local-correlation and
    PNR images."""
    formats = check_formats(formats)
    names = ("mean", "max", "std", "local_corr", "pnr")
    g = require_arrays(summary_store, names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.6))
    for ax, name in zip(axes, names, strict=True):
        img = np.asarray(g[name])
        if name in ("local_corr", "pnr"):
            im = ax.imshow(img, cmap="magma", vmin=np.percentile(img, 1), vmax=np.percentile(img, 99.7))
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            ax.set_title(name, fontsize=9)
            ax.set_axis_off()
        else:
            show_image(ax, img, name)
    return save_figure(fig, out / "summary_images", formats)
