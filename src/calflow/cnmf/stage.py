"""What rule ``cnmf`` calls: seeded CNMF of one session -> ``cnmf.zarr`` (layout in docs/cnmf.md).

:func:`run_cnmf` reads the corrected movie (motion.zarr, streamed), the segmenter's footprints and,
when given, the summary mean image; fits the model (:mod:`calflow.cnmf.model`), deconvolves the
traces (:mod:`calflow.cnmf.deconv`), scores and accepts components and computes dF/F
(:mod:`calflow.cnmf.evaluate`), and writes the store atomically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from calflow.cnmf.params import CNMFParams
from calflow.cnmf.store import write_cnmf
from calflow.device import resolve_device
from calflow.errors import CalflowInputError
from calflow.io import MovieReader
from calflow.segment.footprints import read_footprints
from calflow.summary.store import read_summary_images

log = logging.getLogger("calflow.cnmf")


def load_seeds(footprints_store: str | Path, frame_shape: tuple[int, int]) -> sp.csr_matrix:
    """footprints.zarr -> CSR (K, H*W) float32, checked against the movie's frame shape."""
    path = Path(footprints_store)
    try:
        seeds, attrs = read_footprints(path)
    except Exception as err:  # noqa: BLE001 - zarr raises many types for broken stores
        raise CalflowInputError(f"not a readable footprints store ({type(err).__name__}: {err})", file=path,
                                fix="rerun rule segment") from err
    if tuple(attrs.get("frame_shape", ())) != tuple(frame_shape):
        raise CalflowInputError(f"footprints are for frames {attrs.get('frame_shape')}, the movie's are "
                                f"{list(frame_shape)}", file=path, fix="rerun rule segment on this session's movie")
    if seeds.nnz and not np.isfinite(seeds.data).all():
        raise CalflowInputError("footprints hold NaN or infinite weights", file=path, fix="rerun rule segment")
    return seeds


def run_cnmf(movie_store: str | Path, footprints_store: str | Path, out_store: str | Path, *,
             params: Mapping[str, Any] | CNMFParams | None = None, summary_store: str | Path | None = None,
             fps: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Seeded CNMF of one session; writes ``cnmf.zarr`` and returns a summary dict."""
    import torch

    from calflow.cnmf.deconv import deconvolve_traces
    from calflow.cnmf.evaluate import accept, background_under, dff, transient_snr
    from calflow.cnmf.model import FitSettings, fit

    p = CNMFParams.from_config(params)
    if p.backend == "caiman":
        from calflow.cnmf.caiman import run_caiman

        return run_caiman(movie_store, footprints_store, out_store, params=p, fps=fps)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    reader = MovieReader(movie_store)
    T, H, W = reader.shape
    fps = float(fps if fps is not None else reader.fps)
    if not np.isfinite(fps) or fps <= 0:
        raise CalflowInputError(f"frame rate {fps} is not a positive number", file=movie_store,
                                fix="set the session's fps in the sessions sheet")
    seeds = load_seeds(footprints_store, (H, W))
    mean = None
    if summary_store is not None:
        mean = np.asarray(read_summary_images(summary_store, ("mean",))[0]["mean"], np.float32)
        if mean.shape != (H, W) or not np.isfinite(mean).all():
            raise CalflowInputError(f"mean image of shape {mean.shape} (or not finite) for frames {(H, W)}",
                                    file=summary_store, fix="rerun rule summary")
    settings = FitSettings(**{k: getattr(p, k) for k in FitSettings.__dataclass_fields__ if k != "device"},
                           device=resolve_device(p.device, key="cnmf.device"))
    res = fit(reader, seeds, settings, mean)
    t_fit = time.perf_counter() - t0
    t1 = time.perf_counter()
    dec = deconvolve_traces(res.C_raw, p.ar_order)
    t_deconv = time.perf_counter() - t1
    snr = transient_snr(dec["C"], dec["baseline"], res.C_raw)
    ok = accept(snr, res.r_spatial, p.min_snr, p.min_r_spatial)
    bg = background_under(res.A, res.b, res.f)
    window = max(3, int(round(p.dff_window_s * fps)))
    dff_, _ = dff(res.C_raw, bg, window, p.dff_percentile)
    info = {"n_seeds": int(seeds.shape[0]), "n_components": int(res.A.shape[0]), "n_accepted": int(ok.sum()),
            "n_added": res.n_added, "merged": res.merged, "passes": res.passes, "frames": T,
            "fit_s": round(t_fit, 3), "deconv_s": round(t_deconv, 3), "total_s": round(time.perf_counter() - t0, 3), "device": str(settings.device)}
    write_cnmf(out_store, A=res.A, C=dec["C"], C_raw=res.C_raw, S=dec["S"], dff=dff_, b=res.b.reshape(-1, H, W),
               f=res.f, accepted=ok, snr=snr, r_spatial=res.r_spatial, g=dec["g"], frame_shape=(H, W), fps=fps,
               attrs={"params": asdict(p), "seed_index": res.seed_index.tolist(), **info,
                      "movie": str(movie_store), "footprints": str(footprints_store), "backend": "calflow"})
    log.info("cnmf: %s", info)
    return info
