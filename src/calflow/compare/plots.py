"""The comparison's figure: per-animal effects of every source with the mean and its CI, and the
primary source's ZNCC matrices of the first animals (matplotlib imported on first use)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from calflow.compare.params import SOURCE_LABELS
from calflow.io import atomic_output


def plot_comparison(result: Mapping[str, Any], mats: Mapping[str, Mapping], out_png: str | Path) -> None:
    """The figure of a comparison result (its ``sources`` without ``_matrices``; ``mats``: per source
    the ``_matrices`` taken from it, animal -> condition -> ZNCC matrix) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = result["a"], result["b"]
    names = list(result["sources"])
    prim = result["primary"]
    show = list(mats.get(prim, {}))[:3]
    fig, axes = plt.subplots(1 + len(show), max(2, len(names)), figsize=(4.6 * max(2, len(names)),
                                                                           4.0 * (1 + len(show))), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for c, name in enumerate(names):
        r = result["sources"][name]
        ax = axes[0, c]
        ax.set_axis_on()
        eff = [x["effect"] for x in r["animals"]]
        ax.axhline(0, c="grey", lw=0.8)
        ax.scatter(np.zeros(len(eff)) + np.linspace(-0.15, 0.15, len(eff)), eff, c="k", s=18, zorder=3)
        lo, hi = r["effect_ci"]
        ax.errorbar([0.5], [r["effect"]], yerr=[[r["effect"] - (lo if lo is not None else r["effect"])],
                                                [(hi if hi is not None else r["effect"]) - r["effect"]]],
                    fmt="o", c="#d62728", capsize=4)
        ax.set_xticks([0, 0.5], ["animals", "mean, CI"])
        ax.set_xlim(-0.5, 1.0)
        ax.set_ylabel(f"{b} - {a}, {r['summary']} ZNCC ({r['statistic']})")
        ptxt = f"p = {r['test']['p']:.4f}" if r["test"]["p"] is not None else "no test (too few animals)"
        ax.set_title(f"{SOURCE_LABELS.get(name, name)}\n{ptxt}, n = {r['n_animals']} animals", fontsize=8)
    for row, an in enumerate(show, 1):
        pats = next(x["patterns"] for x in result["sources"][prim]["animals"] if x["animal"] == an)
        for c, cond in enumerate((a, b)):
            ax = axes[row, c]
            ax.set_axis_on()
            ax.imshow(mats[prim][an][cond], cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_xticks(range(len(pats)), pats, rotation=90, fontsize=6)
            ax.set_yticks(range(len(pats)), pats, fontsize=6)
            ax.set_title(f"{an} {cond} ({prim})", fontsize=9)
    fig.tight_layout()
    with atomic_output(out_png) as tmp_png:
        fig.savefig(tmp_png, dpi=80, format="png")
    plt.close(fig)
