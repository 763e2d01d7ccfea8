"""The ``summary`` rule's entry point: :func:`compute_summary` streams the movie once through
:class:`~calflow.summary.images.SummaryAccumulator` and writes summary.zarr atomically."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from calflow.errors import CalflowInputError
from calflow.io import MovieReader, atomic_output
from calflow.summary.images import SummaryAccumulator
from calflow.summary.params import SummaryParams
from calflow.summary.store import write_summary


def compute_summary(movie_store: str | Path, out_store: str | Path, *,
                    params: SummaryParams | Mapping[str, Any] | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Stream the ``movie`` of ``movie_store`` once and write summary.zarr atomically.

    Arrays (y, x) float32: mean, max, std, local_corr, pnr, noise, baseline. Attrs: n_frames,
    fps, source. Returns a small dict of scalar statistics. ``progress`` shows a tqdm bar.
    """
    p = SummaryParams.from_config(params)
    reader = MovieReader(movie_store)
    n_t, h, w = reader.shape
    if n_t < 2:
        raise CalflowInputError(f"movie has {n_t} frame(s); summary images need at least 2",
                                file=movie_store, fix="check the upstream stage's input movie")
    acc = SummaryAccumulator((h, w))
    blocks = reader.iter_blocks(p.batch_size)
    if progress:
        from tqdm import tqdm

        blocks = tqdm(blocks, total=-(-n_t // p.batch_size), desc="summary", unit="block")
    for _, block in blocks:
        acc.update(block)
    images = acc.result()
    with atomic_output(out_store) as tmp:
        write_summary(tmp, images, n_frames=n_t, fps=reader.fps, movie_store=movie_store,
                      source=reader.attrs.get("source", str(movie_store)))
    return {
        "n_frames": n_t,
        "local_corr_max": float(images["local_corr"].max()),
        "pnr_max": float(images["pnr"].max()),
    }
