"""The ``ingest`` rule's entry point: :func:`ingest` streams a movie spec into raw.zarr in blocks of
``read_frames`` frames, applying the NaN policy, and writes the store atomically."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from calflow.errors import CalflowInputError
from calflow.ingest.nans import _handle_nans
from calflow.ingest.params import IngestParams
from calflow.ingest.sources import open_source
from calflow.ingest.store import raw_attrs, raw_writer, store_dtype
from calflow.io import atomic_output

log = logging.getLogger("calflow.ingest")


def ingest(
    spec: str | Path,
    out_store: str | Path,
    *,
    fps: float,
    params: IngestParams | dict[str, Any] | None = None,
    session: str | None = None,
    base_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Convert a raw movie into ``out_store`` (zarr v3, ``movie`` (time, y, x), source dtype).

    ``fps`` (frames/s) comes from the sessions sheet. Returns the attrs written plus timing.
    Integer data keep their dtype; float data are stored as float32.
    """
    p = IngestParams.from_config(params)
    if not np.isfinite(fps) or fps <= 0:
        raise CalflowInputError(f"fps must be a positive number, got {fps}", file=str(spec), fix="set fps in the sessions sheet")
    t0 = time.perf_counter()
    src = open_source(spec, base_dir)
    try:
        dtype = store_dtype(src)
        attrs = raw_attrs(spec, src, fps, session)
        n_t = src.shape[0]
        last_good = None
        with atomic_output(out_store) as tmp:
            writer = raw_writer(tmp, src.shape, dtype, fps=fps, attrs=attrs, chunk_frames=p.chunk_frames, clevel=p.clevel)
            steps = range(0, n_t, p.read_frames)
            if progress:
                from tqdm import tqdm

                steps = tqdm(steps, desc=f"ingest {session or ''}".strip(), unit="block")
            for a in steps:
                b = min(a + p.read_frames, n_t)
                block = src.read(a, b)
                if block.dtype.kind == "f":
                    block, last_good = _handle_nans(block, a, last_good, p.nan_policy, src, p.read_frames)
                writer.write(block)
            writer.close()
    finally:
        src.close()
    elapsed = time.perf_counter() - t0
    log.info("ingested %s: %d frames in %.1f s (%.0f frames/s)", spec, n_t, elapsed, n_t / max(elapsed, 1e-9))
    return {**attrs, "frames": n_t, "shape": list(src.shape), "seconds": elapsed}
