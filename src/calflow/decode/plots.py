"""The stage's figure: the out-of-fold confusion matrix of every classifier (matplotlib is
imported when it is drawn, not with the package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calflow.io import atomic_output


def confusion_figure(result: dict[str, Any], path: str | Path) -> Path | None:
    """PNG of the out-of-fold confusion matrices (rows: true stimulus; row-normalised)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wanted = [*result.get("params", {}).get("classifiers", []), "selected"]
    names = [n for n in wanted if n in result.get("classifiers", {})]
    if not names:
        return None
    classes = result["classes"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 0.6, 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        cm = np.asarray(result["classifiers"][name]["confusion"], float)
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(cm, vmin=0, vmax=1, cmap="viridis")
        r = result["classifiers"][name]
        ax.set_title(f"{name}\nacc {r['accuracy']:.2f} (p={r.get('p_value', float('nan')):.3g})", fontsize=8)
        ticks = np.arange(len(classes))
        ax.set_xticks(ticks, classes, rotation=90, fontsize=6)
        ax.set_yticks(ticks, classes, fontsize=6)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("stimulus", fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="fraction of trials")
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
