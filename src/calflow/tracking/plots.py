"""Figures of the tracking stage (matplotlib only here): :func:`plot_tracking` draws one animal's
overlays of matched and unmatched cells and the match-score distribution with its threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from calflow.figures import plt, show_image
from calflow.io import atomic_output
from calflow.tracking.register import warp_to
from calflow.tracking.store import Tracking

IN_ALL, IN_SOME, IN_ONE = "#2ca02c", "#ff7f0e", "#d62728"


def _contours(ax: plt.Axes, A: sp.csr_matrix, shape: tuple[int, int], rows: np.ndarray, color: str,
              level: float = 0.3) -> None:
    """Contour at ``level`` x peak of footprints ``rows`` of A (K, Y*X), each drawn in its bounding box."""
    A = sp.csr_matrix(A)
    for k in rows:
        idx = A.indices[A.indptr[k] : A.indptr[k + 1]]
        if idx.size == 0:
            continue
        yy, xx = np.divmod(idx, shape[1])
        y0, y1, x0, x1 = yy.min() - 1, yy.max() + 2, xx.min() - 1, xx.max() + 2
        box = np.zeros((y1 - y0, x1 - x0))
        box[yy - y0, xx - x0] = A.data[A.indptr[k] : A.indptr[k + 1]]
        if box.max() <= 0:
            continue
        ax.contour(np.arange(x0, x1), np.arange(y0, y1), box, levels=[level * box.max()], colors=[color],
                   linewidths=0.8)


def plot_tracking(t: Tracking, images: list[np.ndarray], out_png: str | Path) -> Path:
    """One row per animal: the reference image with the union cells coloured by how many sessions they
    were found in (green: every session, orange: some, red: one), every other session's image resampled
    onto the reference with the same cells, and the histogram of candidate-pair scores with the
    threshold. ``images`` are the sessions' summary images (Y, X) in ``t.sessions`` order."""
    S = len(t.sessions)
    found = (t.members >= 0).sum(axis=1)
    groups = [(np.flatnonzero(found == S), IN_ALL, "every session"),
              (np.flatnonzero((found > 1) & (found < S)), IN_SOME, "some sessions"),
              (np.flatnonzero(found == 1), IN_ONE, "one session")]
    fig, axes = plt.subplots(1, S + 1, figsize=(3.4 * (S + 1), 3.6))
    for s, ax in enumerate(axes[:S]):
        img = images[s] if t.sessions[s] == t.reference else warp_to(images[s], t.to_session[s].astype(np.float64))
        kind = t.attrs.get("transforms", ["?"] * S)[s]
        show_image(ax, img, f"{t.sessions[s]}" + (" (reference)" if t.sessions[s] == t.reference else f" ({kind})"))
        here = t.members[:, s] >= 0
        for rows, color, _ in groups:
            _contours(ax, t.union, t.frame_shape, rows[here[rows]], color)
    ax = axes[S]
    scores = t.candidate_scores
    ax.hist(scores, bins=np.linspace(0, 1, 41), color="0.6")
    ax.axvline(t.threshold, color="k", linestyle="--", label=f"threshold {t.threshold:.2f}\n({t.attrs.get('threshold_method')})")
    for rows, color, label in groups:
        ax.plot([], [], color=color, label=f"{len(rows)} in {label}")
    ax.set_xlabel("match score (candidate pairs)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"{t.animal}: {t.n_cells} cells", fontsize=9)
    fig.tight_layout()
    out = Path(out_png)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
