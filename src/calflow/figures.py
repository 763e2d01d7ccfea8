"""Helpers of the stages' figure files (PNG by default, SVG or PDF on request), with matplotlib's
Agg backend set before ``pyplot`` is imported (take ``plt`` from here): :func:`check_formats`,
:func:`save_figure` (one file per format, 110 dpi) and :func:`show_image` (a greyscale panel clipped
to the 1st-99.7th percentile). Import it only where figures are drawn: it imports matplotlib."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from calflow.errors import CalflowInputError  # noqa: E402


def save_figure(fig: plt.Figure, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    formats = tuple(formats)
    bad = [f for f in formats if f not in ("png", "svg", "pdf")]
    if bad or not formats:
        raise CalflowInputError(f"unsupported figure format(s) {bad or formats}", fix="use png, svg or pdf")
    return formats


def show_image(ax: plt.Axes, img: np.ndarray, title: str) -> None:
    lo, hi = np.percentile(img, [1, 99.7])
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
